"""
A reload that adds the first [subnet6:...] starts DHCPv6 and its Router
Advertisements, and opens TFTP's and HTTP's [::] listeners, as a start with
that file would; one that removes the last stops and closes them.  Real twistd, a real SIGHUP, real clients (rdisc6, ISC
dhclient -6) in network namespaces this test creates and deletes.
"""

import os
import re
import signal
import subprocess

from twisted.trial import unittest

from tests import netns
from tests.lab.waits import wait_until

SERVER6, NETWORK6 = "fd78::1", "fd78::/64"
CLIENT6 = "fd78::2"  # outside the pool (fd78::100-fd78::1ff)


TOOLS = (("dhclient", "isc-dhcp-client"), ("rdisc6", "ndisc6"), ("ss", "iproute2"),
           ("curl", "curl"))


class ReloadStartsDhcp6(unittest.TestCase):
    skip = netns.skip_reason(TOOLS)
    timeout = 180

    def setUp(self):
        from tests.lab import ownsocket_argv, ownsocket_env
        self.work = os.path.abspath(self.mktemp())
        os.makedirs(self.work)
        self.root = os.path.join(self.work, "root")
        os.makedirs(self.root)
        with open(os.path.join(self.root, "snponly.efi"), "wb") as handle:
            handle.write(b"boot" * 100)
        self.lab = netns.Lab()
        self.addCleanup(self.lab.close)
        self.topology = netns.server_client(self.lab)
        self.server, self.client = self.topology.server, self.topology.client
        for space, interface in ((self.server, "srv0"), (self.client, "cli0")):
            space.run(["sysctl", "-qw", f"net.ipv6.conf.{interface}.accept_dad=0"])
        self.server.ip("addr", "add", f"{SERVER6}/64", "dev", "srv0", "nodad")
        wait_until(lambda: "tentative" not in self.client.ip("-6", "addr", "show", "dev", "cli0")
                 and "fe80::" in self.client.ip("-6", "addr", "show", "dev", "cli0"), 10)
        self.config = os.path.join(self.work, "ownsocket.ini")
        self.log = os.path.join(self.work, "ownsocket.log")
        self.write(subnet6=False, default="first.efi")
        self.process = self.server.spawn(ownsocket_argv(self.config, self.log), env=ownsocket_env(),
                                         stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        self.assertTrue(wait_until(lambda: "ownsocket 0" in self.read_log(), 30), self.read_log())
        self.assertIsNone(self.process.poll(), self.read_log())

    def write(self, subnet6, default):
        lines = ["[dhcp]", f"leases = {os.path.join(self.work, 'leases.sqlite')}", "interfaces = srv0",
                 "", "[tftp]", f"root = {self.root}", "", "[http]", "enabled = true", "port = 8080",
                 "", "[boot]", f"default = {default}", "", "[admin]", "enabled = false", ""]
        if subnet6:
            lines += ["[subnet6:lab]", f"network = {NETWORK6}", "pool = fd78::100-fd78::1ff",
                      "interface = srv0", "lease_time = 600", ""]
        partial = self.config + ".new"
        with open(partial, "w") as handle:
            handle.write("\n".join(lines))
        os.replace(partial, self.config)

    def read_log(self):
        try:
            with open(self.log) as handle:
                return handle.read()
        except OSError:
            return ""

    def reload(self):
        """SIGHUP; wait for its 'reloaded' line (a failed reload fails the test)."""
        before = len(re.findall(r"reloaded \S+ \(sha256|reload of \S+ failed", self.read_log()))
        os.kill(self.process.pid, signal.SIGHUP)
        self.assertTrue(wait_until(lambda: len(re.findall(r"reloaded \S+ \(sha256|reload of \S+ failed",
                                                        self.read_log())) > before, 30), self.read_log())
        self.assertNotRegex(self.read_log(), r"reload of \S+ failed")

    def listening(self, port, host=None, tcp=False):
        """Whether something listens on C{port} (on C{host}, e.g. "[::]", if given)."""
        out = self.server.run(["ss", "-H", "-tln" if tcp else "-uln"]).stdout
        want = f"{host}:{port}" if host else f":{port}"
        return any((line.split()[3] == want) if host else line.split()[3].endswith(want)
                   for line in out.splitlines() if len(line.split()) > 3)

    def tftp6(self):
        """curl's exit code fetching snponly.efi over TFTP on IPv6 from the
        client, from a global address of its own (a transfer to a
        link-local peer cannot open its session port: no scope id)."""
        if CLIENT6 not in self.client.ip("-6", "addr", "show", "dev", "cli0"):
            self.client.ip("addr", "add", f"{CLIENT6}/64", "dev", "cli0", "nodad")
        out = os.path.join(self.work, "tftp6.out")
        result = self.client.run(["curl", "-s", "-g", "--max-time", "10", "-o", out,
                                  f"tftp://[{SERVER6}]/snponly.efi"], timeout=30, check=False)
        return result.returncode

    def router_advertisement(self, wait_ms):
        return self.client.run(["rdisc6", "-1", "-w", str(wait_ms), "cli0"], timeout=20, check=False)

    def dhclient(self, name):
        conf = os.path.join(self.work, f"{name}.conf")
        with open(conf, "w") as handle:
            handle.write("also request dhcp6.bootfile-url;\n")
        leases = os.path.join(self.work, f"{name}.leases")
        process = self.client.spawn(
            ["dhclient", "-6", "-d", "-v", "-1", "-cf", conf, "-lf", leases, "-sf", "/bin/true",
             "-pf", os.path.join(self.work, f"{name}.pid"), "cli0"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        got = wait_until(lambda: os.path.exists(leases) and "iaaddr" in open(leases).read(), 30)
        netns.stop(process)
        self.assertTrue(got, self.read_log())
        with open(leases) as handle:
            return handle.read()

    def test_first_subnet6_starts_dhcp6_and_ra_last_one_gone_stops_them(self):
        self.assertFalse(self.listening(547))
        self.assertNotEqual(self.router_advertisement(1500).returncode, 0)

        self.assertTrue(self.listening(69, "0.0.0.0"))
        self.assertFalse(self.listening(69, "[::]"))
        self.assertTrue(self.listening(8080, "0.0.0.0", tcp=True))
        self.assertFalse(self.listening(8080, "[::]", tcp=True))
        self.assertNotEqual(self.tftp6(), 0)

        self.write(subnet6=True, default="second.efi")
        self.reload()
        self.assertIn("DHCPv6 started", self.read_log())
        self.assertTrue(self.listening(547))
        # TFTP and HTTP on [::] too, in the same reload (IPv4 kept)
        self.assertTrue(self.listening(69, "[::]"))
        self.assertTrue(self.listening(8080, "[::]", tcp=True))
        self.assertTrue(self.listening(69, "0.0.0.0"))
        self.assertEqual(self.tftp6(), 0)
        ra = self.router_advertisement(3000)
        self.assertEqual(ra.returncode, 0, ra.stdout)
        self.assertRegex(ra.stdout, r"Stateful address conf\.\s*:\s*Yes")
        self.assertRegex(ra.stdout, r"Prefix\s*:\s*fd78::/64")
        text = self.dhclient("first")
        address = re.search(r"iaaddr (fd78::[0-9a-f:]+)", text).group(1)
        self.assertTrue(0x100 <= int(address.split("::")[1], 16) <= 0x1ff, address)
        self.assertIn('option dhcp6.bootfile-url "tftp://[fd78::1]/second.efi"', text)

        self.write(subnet6=False, default="third.efi")
        self.reload()
        self.assertIn("DHCPv6 and Router Advertisements stopped", self.read_log())
        self.assertTrue(wait_until(lambda: not self.listening(547), 10))
        self.assertTrue(wait_until(lambda: not self.listening(69, "[::]"), 10))
        self.assertTrue(wait_until(lambda: not self.listening(8080, "[::]", tcp=True), 10))
        self.assertTrue(self.listening(69, "0.0.0.0"))
        self.assertNotEqual(self.router_advertisement(1500).returncode, 0)
        self.assertIsNone(self.process.poll(), self.read_log())
