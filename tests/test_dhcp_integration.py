"""
ownsocket's DHCP server against real clients, on real (virtual) wires.

Each test builds its own network namespaces (L{tests.netns}), writes a
config into a temporary directory, starts the server inside the server
namespace as a separate process (C{python -m twisted -n ownsocket}), drives
a client in another namespace, and tears everything down by PID.  Nothing
is sent outside those namespaces.

The clients are the ones DHCP servers meet in the field: ISC dhclient (the
Debian default for years, strict about INIT-REBOOT), busybox udhcpc (every
initramfs and embedded box; renews by unicast, releases on request), and a
scripted client (L{tests.dhcp_client}) for what neither can do: bare BOOTP,
a relay agent at a giaddr, many MACs at once.

The same tests run against ISC Kea when C{OWNSOCKET_TEST_SERVER=kea}: the
config is rendered as Kea JSON instead of INI.  That is how the tests were
checked before the server existed, and it stays useful to tell a test bug
from a server bug: a test that fails against Kea too is suspect.

Needs root; skips (with the reason) when namespaces or a client binary are
missing.  Debian packages: iproute2, isc-dhcp-client, udhcpc (or busybox),
and kea-dhcp4-server for the Kea mode.
"""

import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import time

from twisted.trial import unittest

from tests import netns

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLIENT_SCRIPT = os.path.join(REPO, "tests", "dhcp_client.py")
SERVER_KIND = os.environ.get("OWNSOCKET_TEST_SERVER", "ownsocket")


# twistd with this interpreter: "python -m twisted" is the newer "twist" runner,
# which has no -n/--pidfile, and the twistd on PATH may belong to another Python.
TWISTD = ["-c", "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"]


# ---------------------------------------------------------------------------
# Scenario: what a test wants the server to do, independent of the server's
# config language.

class Subnet:
    def __init__(self, name, network, first, last, interface=None, router=None, lease_time=600):
        self.name, self.network, self.first, self.last = name, network, first, last
        self.interface, self.router, self.lease_time = interface, router, lease_time

    def in_pool(self, address):
        return (ipaddress.IPv4Address(self.first) <= ipaddress.IPv4Address(address)
                <= ipaddress.IPv4Address(self.last))


class Host:
    def __init__(self, name, mac, address):
        self.name, self.mac, self.address = name, mac, address


def render_ini(interfaces, subnets, hosts, leases, boot=()):
    lines = ["[dhcp]", f"interfaces = {' '.join(interfaces)}", f"leases = {leases}", "",
             "[tftp]", "enabled = false", ""]
    if boot:
        lines += ["[boot]"] + [f"arch.{arch} = {name}" for arch, name in boot] + [""]
    for subnet in subnets:
        lines += [f"[subnet:{subnet.name}]", f"network = {subnet.network}",
                  f"pool = {subnet.first}-{subnet.last}", f"lease_time = {subnet.lease_time}"]
        if subnet.router:
            lines.append(f"router = {subnet.router}")
        if subnet.interface:
            lines.append(f"interface = {subnet.interface}")
        lines.append("")
    for host in hosts:
        lines += [f"[host:{host.name}]", f"mac = {host.mac}", f"address = {host.address}", ""]
    return "\n".join(lines)


def render_kea(interfaces, subnets, hosts, leases, boot=()):
    kea_subnets = []
    for number, subnet in enumerate(subnets, 1):
        entry = {"id": number, "subnet": subnet.network,
                 "pools": [{"pool": f"{subnet.first} - {subnet.last}"}],
                 "valid-lifetime": subnet.lease_time}
        if subnet.interface:
            entry["interface"] = subnet.interface
        if subnet.router:
            entry["option-data"] = [{"name": "routers", "data": subnet.router}]
        network = ipaddress.IPv4Network(subnet.network)
        entry["reservations"] = [{"hw-address": h.mac, "ip-address": h.address}
                                 for h in hosts if ipaddress.IPv4Address(h.address) in network]
        kea_subnets.append(entry)
    config = {"Dhcp4": {
        "interfaces-config": {"interfaces": list(interfaces), "dhcp-socket-type": "raw"},
        "lease-database": {"type": "memfile", "persist": True, "name": leases, "lfc-interval": 0},
        "authoritative": True,  # NAK wrong-subnet INIT-REBOOTs, as ownsocket does
        "subnet4": kea_subnets,
        "hooks-libraries": [{"library": "/usr/lib/x86_64-linux-gnu/kea/hooks/libdhcp_bootp.so"}],
        "loggers": [{"name": "kea-dhcp4", "output_options": [{"output": "stdout"}],
                     "severity": "INFO"}],
    }}
    if boot:
        config["Dhcp4"]["client-classes"] = [
            {"name": f"arch{arch}", "test": f"option[93].hex == 0x{arch:04x}", "boot-file-name": name}
            for arch, name in boot]
    return json.dumps(config, indent=1)


# ---------------------------------------------------------------------------

def _wait_for(predicate, timeout, interval=0.1):
    """Poll C{predicate} until true or C{timeout}; every wait in these tests
    goes through here so none can hang a run."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


class ServerProcess:
    """The server under test, as a separate process in a namespace, so a
    kill -9 is a real crash and the lease file is really re-read."""

    def __init__(self, namespace, directory, interfaces, subnets, hosts=(), boot=()):
        self.namespace, self.directory = namespace, directory
        self.interfaces = tuple(interfaces)
        self.log_path = os.path.join(directory, f"{SERVER_KIND}.log")
        self.process = None
        self.starts = 0
        if SERVER_KIND == "kea":
            self.leases = os.path.join(directory, "leases4.csv")
            self.config_path = os.path.join(directory, "kea.json")
            text = render_kea(interfaces, subnets, hosts, self.leases, boot)
        else:
            self.leases = os.path.join(directory, "leases.sqlite")
            self.config_path = os.path.join(directory, "ownsocket.ini")
            text = render_ini(interfaces, subnets, hosts, self.leases, boot)
        with open(self.config_path, "w") as handle:
            handle.write(text)

    def argv(self):
        if SERVER_KIND == "kea":
            return ["kea-dhcp4", "-c", self.config_path]
        return [sys.executable, *TWISTD, "-n", "--pidfile=", "--logfile",
                self.log_path, "ownsocket", "--config", self.config_path]

    def start(self, timeout=20):
        self.starts += 1
        env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
                   KEA_LOCKFILE_DIR=self.directory, KEA_PIDFILE_DIR=self.directory)
        # twistd writes its own log; Kea and start-up tracebacks go here.
        console = open(os.path.join(self.directory, f"console{self.starts}.txt"), "w")
        with console:
            self.process = self.namespace.spawn(
                self.argv(), cwd=self.directory, env=env, stdout=console, stderr=subprocess.STDOUT)
        listening = _wait_for(lambda: self.process.poll() is not None or self._bound() >= len(self.interfaces),
                              timeout)
        if self.process.poll() is not None or not listening:
            raise AssertionError(f"server did not start listening on port 67 within {timeout}s "
                                 f"(exit {self.process.poll()}):\n{self.output()}")
        time.sleep(0.3)

    def _bound(self):
        out = self.namespace.run(["ss", "-H", "-uln", "sport", "=", ":67"], check=False).stdout
        return len([line for line in out.splitlines() if line.strip()])

    def kill9(self):
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def stop(self):
        if self.process is not None:
            netns.stop(self.process)

    def log(self):
        if SERVER_KIND == "kea":
            path = os.path.join(self.directory, f"console{self.starts}.txt")
        else:
            path = self.log_path
        try:
            with open(path, errors="replace") as handle:
                return handle.read()
        except OSError:
            return ""

    def output(self):
        parts = []
        for name in sorted(os.listdir(self.directory)):
            if name.startswith("console") or name.endswith(".log"):
                with open(os.path.join(self.directory, name), errors="replace") as handle:
                    parts.append(f"--- {name}\n{handle.read()[-4000:]}")
        return "\n".join(parts)


def scripted(namespace, *args, timeout=30):
    """Run L{tests.dhcp_client} inside C{namespace}; return its JSON."""
    done = namespace.run([sys.executable, CLIENT_SCRIPT, *args], timeout=timeout)
    return json.loads(done.stdout)


class NamespaceTestCase(unittest.TestCase):
    """Skips cleanly when this machine cannot run the tests, and guarantees
    teardown: processes by PID, then namespaces, even if setUp half failed."""

    timeout = 120
    needs = ()

    def setUp(self):
        ok, reason = netns.available()
        if not ok:
            raise unittest.SkipTest(reason)
        if shutil.which("ss") is None:
            raise unittest.SkipTest("'ss' (package iproute2) is not installed")
        for binary, package in self.needs:
            if shutil.which(binary) is None:
                raise unittest.SkipTest(f"{binary!r} is not installed (Debian package {package})")
        if SERVER_KIND == "kea":
            if shutil.which("kea-dhcp4") is None:
                raise unittest.SkipTest("kea-dhcp4 is not installed (package kea-dhcp4-server)")
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        self.lab = netns.Lab()
        self.addCleanup(self.lab.close)

    def server(self, namespace, interfaces, subnets, hosts=(), boot=()):
        server = ServerProcess(namespace, self.directory, interfaces, subnets, hosts, boot)
        self.addCleanup(server.stop)
        server.start()
        self.servers = getattr(self, "servers", []) + [server]
        return server

    def path(self, name):
        return os.path.join(self.directory, name)

    def write_script(self, name, text):
        path = self.path(name)
        with open(path, "w") as handle:
            handle.write(text)
        os.chmod(path, 0o755)
        return path

    def assertWellFormed(self, reply, label=""):
        """What every reply must satisfy whatever the client: parseable,
        ends with End, and at least 300 bytes (BOOTP's minimum, which the
        Linux in-kernel client and some ROMs enforce)."""
        self.assertIsNotNone(reply, f"{label}: no reply")
        self.assertEqual(reply["errors"], [], f"{label}: malformed reply {reply}")
        if SERVER_KIND != "kea":  # Kea sends shorter replies; our design pads
            self.assertGreaterEqual(reply["length"], 300, f"{label}: reply shorter than 300 bytes")

    def fail_with_log(self, message):
        logs = "\n".join(server.output() for server in getattr(self, "servers", []))
        self.fail(f"{message}\n{logs}")


# ---------------------------------------------------------------------------

LAN = Subnet("lan", "10.77.0.0/24", "10.77.0.100", "10.77.0.199", interface="srv0",
             router="10.77.0.1")
# One address: after a release, only a freed lease lets another MAC in.
ONE = Subnet("lan", "10.77.0.0/24", "10.77.0.100", "10.77.0.100", interface="srv0",
             router="10.77.0.1")

DHCLIENT_SCRIPT = """#!/bin/sh
# dhclient-script stand-in: records each event, configures the address.
# dhclient gives its script a fresh environment, so the path is written in.
EVENTS="@EVENTS@"
{ echo "reason=$reason interface=$interface ip=$new_ip_address mask=$new_subnet_mask \
server=$new_dhcp_server_identifier old=$old_ip_address lease=$new_dhcp_lease_time"; } >> "$EVENTS"
case "$reason" in
  PREINIT) ip link set dev "$interface" up ;;
  BOUND|RENEW|REBIND|REBOOT)
    ip addr flush dev "$interface"
    ip addr add "$new_ip_address/$new_subnet_mask" dev "$interface" ;;
  EXPIRE|FAIL|RELEASE|STOP) ip addr flush dev "$interface" ;;
esac
exit 0
"""

UDHCPC_SCRIPT = """#!/bin/sh
# udhcpc default.script stand-in: records each event, configures the address.
echo "event=$1 ip=$ip mask=$mask server=$serverid lease=$lease" >> "$EVENTS"
case "$1" in
  deconfig) ip addr flush dev "$interface"; ip link set dev "$interface" up ;;
  bound|renew) ip addr flush dev "$interface"; ip addr add "$ip/$mask" dev "$interface" ;;
esac
exit 0
"""


def read_events(path):
    """The script's event lines as dicts, oldest first."""
    events = []
    try:
        with open(path) as handle:
            for line in handle:
                fields = dict(word.partition("=")[::2] for word in line.split())
                events.append(fields)
    except OSError:
        pass
    return events


class DhclientTests(NamespaceTestCase):
    needs = (("dhclient", "isc-dhcp-client"),)
    MAC = "02:00:00:77:00:01"

    def dhclient(self, topology, *extra, spawn=False):
        conf = self.path("dhclient.conf")
        with open(conf, "w") as handle:
            handle.write("timeout 15;\nretry 2;\ninitial-interval 1;\n"
                         "request subnet-mask, broadcast-address, routers;\n")
        argv = ["dhclient", "-v", "-cf", conf,
                "-lf", self.path("dhclient.leases"), "-pf", self.path("dhclient.pid"),
                "-sf", self.script, *extra, topology.client_if]
        if spawn:
            log = open(self.path("dhclient.out"), "a")
            with log:
                return topology.client.spawn(argv, stdout=log, stderr=subprocess.STDOUT)
        return topology.client.run(argv, timeout=40, check=False)

    def wait_event(self, reasons, count_before, timeout=25):
        def found():
            events = read_events(self.events)[count_before:]
            return next((e for e in events if e.get("reason") in reasons), None)
        return _wait_for(found, timeout, 0.2)

    def test_obtain_reboot_release(self):
        """
        dhclient obtains a lease and configures it; a second dhclient with
        the same lease file asks for it back in INIT-REBOOT and gets the same
        address; C{dhclient -r} releases it and the server frees it.
        """
        self.events = self.path("events.txt")
        self.script = self.write_script("dhclient-script",
                                        DHCLIENT_SCRIPT.replace("@EVENTS@", self.events))
        topology = netns.server_client(self.lab)
        topology.client.set_mac(topology.client_if, self.MAC)
        server = self.server(topology.server, ["srv0"], [ONE])

        # 1. obtain (foreground, so we hold its PID).
        first = self.dhclient(topology, "-d", "-1", spawn=True)
        bound = self.wait_event(("BOUND",), 0)
        if bound is None:
            self.fail_with_log(f"dhclient got no lease; events {read_events(self.events)}")
        self.assertEqual(bound["ip"], "10.77.0.100")
        self.assertEqual(bound["server"], "10.77.0.1")
        self.assertEqual(bound["lease"], str(ONE.lease_time))
        self.assertIn("10.77.0.100/24", topology.client.addresses(topology.client_if))
        netns.stop(first)

        # 2. INIT-REBOOT: same lease file, so dhclient REQUESTs its old address.
        before = len(read_events(self.events))
        second = self.dhclient(topology, "-d", "-1", spawn=True)
        rebooted = self.wait_event(("REBOOT", "BOUND"), before)
        if rebooted is None:
            self.fail_with_log(f"dhclient got nothing on reboot; events {read_events(self.events)}")
        self.assertEqual(rebooted["reason"], "REBOOT",
                         "dhclient had to start over (DISCOVER) instead of keeping its lease")
        self.assertEqual(rebooted["ip"], "10.77.0.100")

        # While the lease is held, another MAC gets nothing from a one-address pool.
        other = scripted(topology.client, "dora", "--iface", topology.client_if,
                         "--mac", "02:00:00:77:00:99", "--timeout", "3")[0]
        self.assertIsNone(other["ack"], "a held lease was handed to another MAC")

        # 3. release: dhclient -r stops the running dhclient (via -pf) and sends RELEASE.
        before = len(read_events(self.events))
        done = self.dhclient(topology, "-r")
        self.assertEqual(done.returncode, 0, done.stdout + done.stderr)
        self.assertIsNotNone(self.wait_event(("RELEASE",), before, 10))
        second.wait(10)
        released = _wait_for(lambda: "release" in server.log().lower(), 5)
        self.assertTrue(released, f"server log does not mention the RELEASE:\n{server.log()[-3000:]}")

        # The freed address now goes to a different MAC.
        other = scripted(topology.client, "dora", "--iface", topology.client_if,
                         "--mac", "02:00:00:77:00:99")[0]
        if other["ack"] is None:
            self.fail_with_log(f"released address not offered to a new MAC: {other}")
        self.assertEqual(other["ack"]["yiaddr"], "10.77.0.100")


def _udhcpc_command():
    """udhcpc itself (package udhcpc), or busybox's applet (package busybox)."""
    if shutil.which("udhcpc"):
        return ["udhcpc"]
    busybox = shutil.which("busybox")
    if busybox:
        listing = subprocess.run([busybox, "--list"], capture_output=True, text=True).stdout
        if "udhcpc" in listing.split():
            return [busybox, "udhcpc"]
    return None


class UdhcpcTests(NamespaceTestCase):
    MAC = "02:00:00:77:00:02"

    def setUp(self):
        self.command = _udhcpc_command()
        if self.command is None:
            raise unittest.SkipTest("udhcpc is not installed (Debian package udhcpc or busybox)")
        super().setUp()

    def udhcpc(self, topology, *extra):
        return ["env", f"EVENTS={self.events}", *self.command, "-i", topology.client_if,
                "-s", self.script, "-t", "5", "-T", "1", "-A", "1", *extra]

    def wait_event(self, names, count_before, timeout=20):
        def found():
            events = read_events(self.events)[count_before:]
            return next((e for e in events if e.get("event") in names), None)
        return _wait_for(found, timeout, 0.2)

    def test_obtain_quit(self):
        """udhcpc -n -q: obtain a lease, configure it, exit 0."""
        self.events = self.path("events.txt")
        self.script = self.write_script("udhcpc-script", UDHCPC_SCRIPT)
        topology = netns.server_client(self.lab)
        topology.client.set_mac(topology.client_if, self.MAC)
        self.server(topology.server, ["srv0"], [LAN])
        done = topology.client.run(self.udhcpc(topology, "-n", "-q", "-f"), timeout=30, check=False)
        if done.returncode != 0:
            self.fail_with_log(f"udhcpc failed ({done.returncode}): {done.stdout}{done.stderr}")
        bound = self.wait_event(("bound",), 0, 1)
        self.assertIsNotNone(bound, read_events(self.events))
        self.assertTrue(LAN.in_pool(bound["ip"]), bound)
        self.assertEqual(bound["mask"], "24")
        self.assertEqual(bound["server"], "10.77.0.1")
        self.assertIn(f"{bound['ip']}/24", topology.client.addresses(topology.client_if))

    def test_requested_address(self):
        """udhcpc -r asks for a particular free address (option 50 in the
        DISCOVER) and gets it."""
        self.events = self.path("events.txt")
        self.script = self.write_script("udhcpc-script", UDHCPC_SCRIPT)
        topology = netns.server_client(self.lab)
        topology.client.set_mac(topology.client_if, self.MAC)
        self.server(topology.server, ["srv0"], [LAN])
        done = topology.client.run(self.udhcpc(topology, "-n", "-q", "-f", "-r", "10.77.0.150"),
                                   timeout=30, check=False)
        if done.returncode != 0:
            self.fail_with_log(f"udhcpc failed ({done.returncode}): {done.stdout}{done.stderr}")
        bound = self.wait_event(("bound",), 0, 1)
        self.assertIsNotNone(bound, read_events(self.events))
        self.assertEqual(bound["ip"], "10.77.0.150")

    def test_renew_release(self):
        """
        A running udhcpc renews on SIGUSR1 (a unicast REQUEST from its
        address, answered to ciaddr:68) and keeps its address; SIGUSR2
        releases it and the server frees it for another MAC.
        """
        self.events = self.path("events.txt")
        self.script = self.write_script("udhcpc-script", UDHCPC_SCRIPT)
        topology = netns.server_client(self.lab)
        topology.client.set_mac(topology.client_if, self.MAC)
        server = self.server(topology.server, ["srv0"], [ONE])
        out = open(self.path("udhcpc.out"), "w")
        with out:
            client = topology.client.spawn(self.udhcpc(topology, "-f"), stdout=out,
                                           stderr=subprocess.STDOUT)
        bound = self.wait_event(("bound",), 0)
        if bound is None:
            self.fail_with_log(f"udhcpc got no lease: {read_events(self.events)}")
        self.assertEqual(bound["ip"], "10.77.0.100")

        before = len(read_events(self.events))
        os.kill(client.pid, signal.SIGUSR1)
        renewed = self.wait_event(("renew", "bound", "deconfig"), before, 15)
        if renewed is None or renewed["event"] != "renew":
            self.fail_with_log(f"no renew after SIGUSR1: {read_events(self.events)}")
        self.assertEqual(renewed["ip"], "10.77.0.100")

        before = len(read_events(self.events))
        os.kill(client.pid, signal.SIGUSR2)
        self.assertIsNotNone(self.wait_event(("deconfig",), before, 10), read_events(self.events))
        released = _wait_for(lambda: "release" in server.log().lower(), 5)
        self.assertTrue(released, f"server log does not mention the RELEASE:\n{server.log()[-3000:]}")
        netns.stop(client)

        other = scripted(topology.client, "dora", "--iface", topology.client_if,
                         "--mac", "02:00:00:77:00:98")[0]
        if other["ack"] is None:
            self.fail_with_log(f"released address not offered to a new MAC: {other}")
        self.assertEqual(other["ack"]["yiaddr"], "10.77.0.100")


class ScriptedClientTests(NamespaceTestCase):
    """What only a scripted client can do."""

    def test_bootp_gets_bootp_reply(self):
        """
        A BOOTREQUEST without option 53 from a host with a fixed address gets
        a BOOTREPLY: yiaddr = the fixed address, and no option 53 (a BOOTP
        client may choke on DHCP options it never asked for, and a DHCP
        message type in a BOOTP reply is simply wrong).
        """
        mac = "02:00:00:77:00:50"
        topology = netns.server_client(self.lab)
        self.server(topology.server, ["srv0"], [LAN], [Host("printer", mac, "10.77.0.50")])
        result = scripted(topology.client, "bootp", "--iface", "cli0", "--mac", mac)[0]
        reply = result["reply"]
        if reply is None:
            self.fail_with_log(f"no BOOTP reply: {result}")
        self.assertWellFormed(reply, "BOOTP reply")
        self.assertNotIn("53", reply["options"])
        self.assertIsNone(reply["type"])
        self.assertEqual(reply["yiaddr"], "10.77.0.50")

    def test_relayed_discover(self):
        """
        A DISCOVER relayed from giaddr 10.79.0.1 (unicast from port 67) is
        answered from the relayed subnet's pool, sent back to giaddr:67,
        never to the client's port or as a broadcast on the server's LAN.
        """
        topology = netns.relayed(self.lab)
        relayed = Subnet("relayed", "10.79.0.0/24", "10.79.0.100", "10.79.0.150",
                         router="10.79.0.1")
        self.server(topology.server, ["srv0"], [LAN, relayed])
        circuit = "0105" + b"port7".hex()  # agent circuit id "port7"
        result = scripted(topology.relay, "relay", "--giaddr", topology.giaddr,
                          "--server", topology.server_address, "--mac", "02:00:00:79:00:01",
                          "--option", f"82,{circuit}")[0]
        if result["offer"] is None:
            self.fail_with_log(f"no OFFER at the relay: {result}")
        offer = result["offer"]
        self.assertWellFormed(offer, "relayed OFFER")
        self.assertTrue(relayed.in_pool(offer["yiaddr"]), offer)
        self.assertEqual(offer["giaddr"], topology.giaddr)
        self.assertEqual(offer["from"][1], 67)
        self.assertEqual(offer.get("to"), topology.giaddr, "reply not addressed to giaddr")
        self.assertEqual(offer["options"].get("82"), circuit,
                         "relay agent information (82) not echoed (RFC 3046 2.2)")
        self.assertEqual(offer.get("netmask"), "255.255.255.0")
        ack = result["ack"]
        if ack is None:
            self.fail_with_log(f"no ACK at the relay: {result}")
        self.assertEqual(ack["yiaddr"], offer["yiaddr"])

    def test_relayed_client_renews_by_unicast(self):
        """
        A client behind a relay renews by unicast straight to the server
        (RFC 2131 4.4.5: no relay in the path, giaddr 0, ciaddr = its
        address).  The server must find the lease's subnet from ciaddr, not
        from the interface the packet came in on, and ACK it to ciaddr:68;
        a NAK here makes every relayed client drop its address at T1.
        """
        topology = netns.relayed(self.lab)
        relayed = Subnet("relayed", "10.79.0.0/24", "10.79.0.100", "10.79.0.150",
                         router="10.79.0.1")
        self.server(topology.server, ["srv0"], [LAN, relayed])
        mac = "02:00:00:79:00:02"
        got = scripted(topology.relay, "relay", "--giaddr", topology.giaddr,
                       "--server", topology.server_address, "--mac", mac)[0]
        if got["ack"] is None:
            self.fail_with_log(f"no relayed lease: {got}")
        address = got["ack"]["yiaddr"]
        # The client now lives on the relayed LAN with that address and a
        # default route through the relay, which forwards like a router.
        topology.relay.run(["sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"])
        topology.client.ip("addr", "add", f"{address}/24", "dev", topology.client_if)
        topology.client.ip("route", "add", "default", "via", topology.giaddr)
        result = scripted(topology.client, "renew", "--ciaddr", address,
                          "--server", topology.server_address, "--mac", mac)[0]
        if result["ack"] is None:
            self.fail_with_log(f"relayed client's unicast renewal not ACKed: {result}")
        self.assertWellFormed(result["ack"], "renewal ACK")
        self.assertEqual(result["ack"]["yiaddr"], address)
        self.assertEqual(result["ack"].get("to"), address, "renewal ACK not sent to ciaddr")

    def test_routed_inform_gets_its_own_subnet(self):
        """
        A configured client on a routed LAN (10.79.0.0/24, behind a router
        that is not a relay agent) unicasts DHCPINFORM to the server.  The
        answer must describe the client's subnet (found from ciaddr: mask
        and router of [subnet:relayed]), not the subnet of the interface the
        packet arrived on, and go to ciaddr:68.
        """
        topology = netns.relayed(self.lab)
        relayed = Subnet("relayed", "10.79.0.0/24", "10.79.0.100", "10.79.0.150",
                         router="10.79.0.1")
        lan16 = Subnet("lan", "10.77.0.0/16", "10.77.0.100", "10.77.0.199", interface="srv0",
                       router="10.77.0.1")
        self.server(topology.server, ["srv0"], [lan16, relayed])
        topology.relay.run(["sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"])
        topology.client.ip("addr", "add", "10.79.0.20/24", "dev", topology.client_if)
        topology.client.ip("route", "add", "default", "via", topology.giaddr)
        result = scripted(topology.client, "inform", "--ciaddr", "10.79.0.20",
                          "--server", topology.server_address, "--mac", "02:00:00:79:00:03")[0]
        ack = result["ack"]
        if ack is None:
            self.fail_with_log(f"no ACK for a routed INFORM: {result}")
        self.assertEqual(ack.get("to"), "10.79.0.20")
        self.assertEqual(ack["options"].get("3"), "0a4f0001",
                         f"INFORM answered with another subnet's router: {ack}")
        # Kea 2.2 leaves the mask out of INFORM ACKs; a wrong one is the bug.
        self.assertIn(ack.get("netmask"), (None, "255.255.255.0"),
                      f"INFORM answered with another subnet's mask: {ack}")

    def test_uefi_pxe_client_gets_address(self):
        """A DISCOVER with a UEFI PXE client's options (93/94/60/97, as OVMF
        sends) completes DORA like any other; the options must not trip
        the server."""
        topology = netns.server_client(self.lab)
        self.server(topology.server, ["srv0"], [LAN], boot=[(7, "snponly.efi")])
        result = scripted(topology.client, "dora", "--uefi-pxe", "--iface", "cli0",
                          "--mac", "52:54:00:99:00:10")[0]
        if result["ack"] is None:
            self.fail_with_log(f"UEFI PXE DORA incomplete: {result}")
        for name in ("offer", "ack"):
            reply = result[name]
            self.assertWellFormed(reply, name)
            # EDK2 keeps only OFFERs that carry a boot file, so the OFFER needs it too.
            self.assertEqual(reply["file"], "snponly.efi", f"{name}: wrong boot file")
            self.assertEqual(reply.get("to"), "255.255.255.255",
                             f"{name}: a client without an address must get a broadcast")
        self.assertTrue(LAN.in_pool(result["ack"]["yiaddr"]))

    def test_kill9_restart_keeps_leases(self):
        """
        Five clients lease five of six pool addresses; the server is killed
        with SIGKILL (no chance to flush) and restarted.  Then a new MAC
        must get the sixth address and a second new MAC nothing (a server
        that lost the leases hands out the old ones here; asking the old
        clients first would not show it, since a server with no record may
        ACK a free address); finally each old client's INIT-REBOOT REQUEST
        is ACKed with its own address.
        """
        topology = netns.server_client(self.lab)
        six = Subnet("lan", "10.77.0.0/24", "10.77.0.100", "10.77.0.105", interface="srv0",
                     router="10.77.0.1")
        server = self.server(topology.server, ["srv0"], [six])
        macs = [f"02:00:00:77:01:{n:02x}" for n in range(1, 6)]
        args = ["dora", "--iface", "cli0"]
        for mac in macs:
            args += ["--mac", mac]
        first = scripted(topology.client, *args, timeout=60)
        leases = {}
        for result in first:
            if result["ack"] is None:
                self.fail_with_log(f"no ACK before the crash: {result}")
            self.assertWellFormed(result["ack"], "ACK")
            leases[result["mac"]] = result["ack"]["yiaddr"]
        self.assertEqual(len(set(leases.values())), len(macs), f"duplicate addresses: {leases}")

        server.kill9()
        server.start()

        newcomers = scripted(topology.client, "dora", "--iface", "cli0", "--timeout", "3",
                             "--mac", "02:00:00:77:01:fe", "--mac", "02:00:00:77:01:ff", timeout=40)
        if newcomers[0]["ack"] is None:
            self.fail_with_log(f"the one free address was not leased after the restart: {newcomers[0]}")
        self.assertNotIn(newcomers[0]["ack"]["yiaddr"], leases.values(),
                         "a lease from before the crash was handed to a new MAC")
        self.assertIsNone(newcomers[1]["ack"],
                          f"pool should be full after the restart, yet a new MAC got {newcomers[1]['ack']}")

        args = ["reboot", "--iface", "cli0"]
        for mac, address in leases.items():
            args += ["--mac", f"{mac}={address}"]
        for result in scripted(topology.client, *args, timeout=60):
            if result["ack"] is None:
                self.fail_with_log(f"lease lost in the crash (no ACK for init-reboot): {result}")
            self.assertEqual(result["ack"]["yiaddr"], leases[result["mac"]])

    def test_two_interfaces_two_subnets(self):
        """
        With legs into two LANs, each client gets an address from its own
        LAN's subnet, and the reply comes in on its own leg (the client
        socket is bound to that leg) from that leg's server address.  A
        server with one plain port-67 socket answers one LAN wrongly.
        """
        topology = netns.two_subnets(self.lab)
        net_a = Subnet("a", "10.77.0.0/24", "10.77.0.100", "10.77.0.199", interface="srva",
                       router="10.77.0.1")
        net_b = Subnet("b", "10.78.0.0/24", "10.78.0.100", "10.78.0.199", interface="srvb",
                       router="10.78.0.1")
        self.server(topology.server, list(topology.server_ifs), [net_a, net_b])
        for client, interface, subnet, server_id, mac in (
                (topology.client_a, topology.client_a_if, net_a, "10.77.0.1", "02:00:00:77:02:01"),
                (topology.client_b, topology.client_b_if, net_b, "10.78.0.1", "02:00:00:78:02:01")):
            result = scripted(client, "dora", "--iface", interface, "--mac", mac)[0]
            if result["ack"] is None:
                self.fail_with_log(f"no ACK on {interface}: {result}")
            self.assertWellFormed(result["ack"], f"ACK on {interface}")
            self.assertTrue(subnet.in_pool(result["ack"]["yiaddr"]), result["ack"])
            self.assertEqual(result["ack"].get("server_id"), server_id)

    def test_survives_malformed_datagrams(self):
        """
        Several hundred malformed datagrams (truncations, options past the
        end, wrong cookie, pad storms, random bytes) do not stop the server:
        it is still running and still completes a DORA afterwards.
        """
        topology = netns.server_client(self.lab)
        server = self.server(topology.server, ["srv0"], [LAN])
        sent = scripted(topology.client, "junk", "--iface", topology.client_if, "--count", "400")[0]
        self.assertGreater(sent["sent"], 300)
        result = scripted(topology.client, "dora", "--iface", topology.client_if,
                          "--mac", "02:00:00:77:06:01")[0]
        self.assertIsNone(server.process.poll(), "server died on malformed input")
        if result["ack"] is None:
            self.fail_with_log(f"no DORA after the malformed datagrams: {result}")
        self.assertWellFormed(result["ack"], "ACK")

    def test_only_configured_interfaces_answer(self):
        """
        With C{interfaces} naming one leg, a client on the other leg gets no
        answer at all, even though the server has an address there: a DHCP
        server that leaks onto a LAN it was not meant for takes over other
        people's machines.
        """
        topology = netns.two_subnets(self.lab)
        net_a = Subnet("a", "10.77.0.0/24", "10.77.0.100", "10.77.0.199", interface="srva")
        self.server(topology.server, ["srva"], [net_a])
        outside = scripted(topology.client_b, "dora", "--iface", topology.client_b_if,
                           "--mac", "02:00:00:78:07:01", "--timeout", "3")[0]
        self.assertIsNone(outside["offer"], f"answered on an interface not configured: {outside}")
        inside = scripted(topology.client_a, "dora", "--iface", topology.client_a_if,
                          "--mac", "02:00:00:77:07:01")[0]
        if inside["ack"] is None:
            self.fail_with_log(f"no ACK on the configured interface: {inside}")

    def test_request_for_other_server_frees_offer(self):
        """
        A client that REQUESTs with another server's identifier has turned
        our OFFER down (RFC 2131 3.1.4): no reply, and the offered address
        is free again at once (one-address pool: the next MAC gets it).
        """
        topology = netns.server_client(self.lab)
        self.server(topology.server, ["srv0"], [ONE])
        declined = scripted(topology.client, "choose-other", "--iface", topology.client_if,
                            "--other-server", "10.77.0.254", "--mac", "02:00:00:77:08:01")[0]
        if declined["offer"] is None:
            self.fail_with_log(f"no OFFER: {declined}")
        self.assertIsNone(declined["reply"], f"answered a REQUEST meant for another server: {declined}")
        other = scripted(topology.client, "dora", "--iface", topology.client_if,
                         "--mac", "02:00:00:77:08:02", "--timeout", "3")[0]
        if other["ack"] is None:
            self.fail_with_log(f"the turned-down offer was not freed: {other}")
        self.assertEqual(other["ack"]["yiaddr"], "10.77.0.100")

    def test_init_reboot_on_wrong_subnet_gets_nak(self):
        """
        A client that moved from LAN A to LAN B and asks for its old address
        in INIT-REBOOT must get a NAK (RFC 2131 4.3.2), or it keeps an address
        that cannot work on its new wire.
        """
        topology = netns.two_subnets(self.lab)
        net_a = Subnet("a", "10.77.0.0/24", "10.77.0.100", "10.77.0.199", interface="srva")
        net_b = Subnet("b", "10.78.0.0/24", "10.78.0.100", "10.78.0.199", interface="srvb")
        self.server(topology.server, list(topology.server_ifs), [net_a, net_b])
        mac = "02:00:00:78:03:01"
        first = scripted(topology.client_a, "dora", "--iface", topology.client_a_if, "--mac", mac)[0]
        if first["ack"] is None:
            self.fail_with_log(f"no lease on LAN A: {first}")
        moved = scripted(topology.client_b, "reboot", "--iface", topology.client_b_if,
                         "--mac", f"{mac}={first['ack']['yiaddr']}")[0]
        self.assertIsNone(moved["ack"], f"ACKed an address of another subnet: {moved}")
        if moved["nak"] is None:
            self.fail_with_log(f"no NAK for an address of another subnet: {moved}")
        self.assertWellFormed(moved["nak"], "NAK")
        self.assertEqual(moved["nak"].get("server_id"), "10.78.0.1")

    def test_inform_answered_to_ciaddr(self):
        """
        DHCPINFORM from a configured client: an ACK with configuration, no
        lease time and no yiaddr, sent to ciaddr:68 (RFC 2131 3.4, 4.3.5).
        """
        topology = netns.server_client(self.lab)
        topology.client.ip("addr", "add", "10.77.0.20/24", "dev", topology.client_if)
        self.server(topology.server, ["srv0"], [LAN])
        result = scripted(topology.client, "inform", "--iface", topology.client_if,
                          "--ciaddr", "10.77.0.20", "--mac", "02:00:00:77:04:01")[0]
        ack = result["ack"]
        if ack is None:
            self.fail_with_log(f"no ACK for INFORM: {result}")
        self.assertWellFormed(ack, "INFORM ACK")
        self.assertEqual(ack["yiaddr"], "0.0.0.0")
        self.assertNotIn("51", ack["options"], "INFORM ACK must not carry a lease time")
        self.assertEqual(ack.get("to"), "10.77.0.20", "INFORM ACK not unicast to ciaddr")
        self.assertEqual(ack["options"].get("3"), "0a4d0001", "router option missing")

    def test_declined_address_is_not_offered_again(self):
        """
        After a DECLINE (the client found the address in use), the server
        offers that client a different address instead of the same one.
        """
        topology = netns.server_client(self.lab)
        self.server(topology.server, ["srv0"], [LAN])
        result = scripted(topology.client, "decline", "--iface", topology.client_if,
                          "--mac", "02:00:00:77:05:01", timeout=40)[0]
        if result["first"]["ack"] is None or result["second"] is None or result["second"]["ack"] is None:
            self.fail_with_log(f"incomplete exchange around the DECLINE: {result}")
        self.assertNotEqual(result["second"]["ack"]["yiaddr"], result["first"]["ack"]["yiaddr"])
