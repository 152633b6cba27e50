"""
The lab's private Ethernet segment: a fresh network namespace with a bridge
holding the server address, tap devices for the guests, optional veth legs
into further namespaces (a second server that must not share port 67), and
an IPv6 Router Advertisement sender.

Everything lives in the namespace so that no packet can reach the host's own
networks.  Every process is tracked by PID and stopped, and the namespaces
deleted, when the ``with`` block ends, also on an exception or Ctrl-C.

For plain veth topologies without guests (real DHCP clients against a
server, the benches) see :mod:`tests.netns`.
"""

import ipaddress
import itertools
import os
import signal
import subprocess
import sys
import time

from tests.lab.capture import start_capture
from tests.lab.errors import LabError
from tests.lab.process import Process
from tests.lab.vm import DEFAULT_MAC

#: Address of the bridge inside the namespace: where servers under test listen.
SERVER_ADDRESS = "10.99.0.1"
#: The guests' segment; a DHCP server should hand out addresses from it.
SERVER_NETWORK = ipaddress.ip_network("10.99.0.0/24")
#: The IPv6 lab (:meth:`NetNamespace.add_ipv6`): the bridge's address, the
#: segment and the pool a DHCPv6 server hands out from.
SERVER6 = "fd99::1"
NETWORK6 = "fd99::/64"
POOL6 = "fd99::100-fd99::1ff"

_counter = itertools.count()


def _run(argv, check=True):
    r = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True)
    if check and r.returncode != 0:
        raise LabError("%s failed (%d): %s" % (" ".join(argv), r.returncode, r.stderr.strip()))
    return r


# Run as ``python -c _RA_SENDER IFNAME INTERVAL`` inside the namespace.
_RA_SENDER = r"""
import socket, struct, sys, time
ifname, interval = sys.argv[1], float(sys.argv[2])
index = socket.if_nametoindex(ifname)
s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, index)
# type 134, code 0, checksum (the kernel fills it in), cur hop limit 64,
# flags 0 (no M, no O), router lifetime 0, reachable time 0, retrans timer 0.
ra = struct.pack("!BBHBBHII", 134, 0, 0, 64, 0, 0, 0, 0)
while True:
    try:
        s.sendto(ra, ("ff02::1", 0, 0, index))
    except OSError as e:  # the bridge's link-local address may still be tentative
        print("ra:", e, flush=True)
    time.sleep(interval)
"""


class Leg:
    """A namespace joined to a :class:`NetNamespace`'s bridge by a veth pair."""

    def __init__(self, parent, name, ifname, address):
        self.parent, self.name, self.ifname, self.address = parent, name, ifname, address

    @property
    def ip(self):
        return self.address.split("/")[0]

    def start(self, argv, **kwargs):
        return self.parent.start(argv, netns=self.name, **kwargs)

    def run(self, argv, check=True, timeout=30):
        r = subprocess.run(self.parent.exec_argv(argv, self.name), stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise LabError("%s failed (%d): %s" % (" ".join(argv), r.returncode, r.stderr.strip()))
        return r


class NetNamespace:
    """
    A network namespace with one bridge and ``taps`` tap devices on it.

    The bridge gets ``address`` (default 10.99.0.1/24), which is where the
    server under test binds; guests attach to ``self.taps``.  The name is unique
    per process so that parallel tests and a crashed earlier run do not collide.

    Use as a context manager: on exit every process started through it is
    stopped by PID (latest first: guests before servers before capture), any
    process still left inside the namespace is killed by PID, and the namespace
    is deleted.
    """

    def __init__(self, name=None, *, bridge="br0", address="%s/24" % SERVER_ADDRESS,
                 taps=1, tap_prefix="tap"):
        self.name = name or "osk-%d-%d" % (os.getpid(), next(_counter))
        self.bridge = bridge
        self.address = address
        self.taps = ["%s%d" % (tap_prefix, i) for i in range(taps)]
        self.processes = []
        self.legs = []
        self.created = False

    @property
    def server_address(self):
        return self.address.split("/")[0]

    # -- set-up and tear-down ------------------------------------------------

    def __enter__(self):
        try:
            self.create()
        except BaseException:
            self.destroy()
            raise
        return self

    def __exit__(self, *exc):
        self.destroy()
        return False

    def create(self):
        if os.geteuid() != 0:
            raise LabError("network namespaces need root")
        if self.name in self.list_namespaces():
            raise LabError("namespace %s already exists" % self.name)
        _run(["ip", "netns", "add", self.name])
        self.created = True
        ns = ["ip", "netns", "exec", self.name]
        _run(ns + ["ip", "link", "set", "lo", "up"])
        _run(ns + ["ip", "link", "add", self.bridge, "type", "bridge",
                   "forward_delay", "0", "stp_state", "0"])
        # The guest's first DHCP is sent a moment after the link comes up: do not let
        # the bridge hold tap ports in a listening/learning state.
        _run(ns + ["ip", "addr", "add", self.address, "dev", self.bridge])
        _run(ns + ["ip", "link", "set", self.bridge, "up"])
        for tap in self.taps:
            _run(ns + ["ip", "tuntap", "add", "dev", tap, "mode", "tap"])
            _run(ns + ["ip", "link", "set", tap, "master", self.bridge])
            _run(ns + ["ip", "link", "set", tap, "up"])

    def destroy(self):
        """Stop everything and delete the namespace; safe to call twice."""
        for proc in reversed(self.processes):
            try:
                proc.stop()
            except Exception:
                pass
        self.processes = []
        if not self.created:
            return
        # Anything else still in a namespace (a child a server forked) would
        # keep it alive: kill those by PID too.
        for name in [leg.name for leg in self.legs] + [self.name]:
            for _ in range(3):
                r = _run(["ip", "netns", "pids", name], check=False)
                pids = [int(x) for x in r.stdout.split() if x.isdigit()]
                if not pids:
                    break
                for pid in pids:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                time.sleep(0.2)
            _run(["ip", "netns", "del", name], check=False)
        self.legs = []
        self.created = False

    def add_leg(self, suffix, address, ifname="eth0"):
        """
        A second namespace joined to the bridge by a veth pair, with ``address``
        (e.g. ``"10.99.0.2/24"``) on its end ``ifname``.

        For a second server on the same segment that must not share sockets
        (port 67) with the first: e.g. dnsmasq handing out addresses next to
        ownsocket in proxyDHCP mode.  Processes started with ``leg.start``
        are tracked and stopped like the others; the leg's namespace is
        deleted with this one.
        """
        if not self.created:
            raise LabError("namespace not created")
        leg = Leg(self, "%s-%s" % (self.name, suffix), ifname, address)
        _run(["ip", "netns", "add", leg.name])
        self.legs.append(leg)
        host_end = ("v" + suffix)[:15]
        _run(["ip", "-n", self.name, "link", "add", host_end, "type", "veth",
              "peer", "name", ifname, "netns", leg.name])
        _run(["ip", "-n", self.name, "link", "set", host_end, "master", self.bridge])
        _run(["ip", "-n", self.name, "link", "set", host_end, "up"])
        _run(["ip", "-n", leg.name, "link", "set", "lo", "up"])
        _run(["ip", "-n", leg.name, "addr", "add", address, "dev", ifname])
        _run(["ip", "-n", leg.name, "link", "set", ifname, "up"])
        return leg

    @staticmethod
    def list_namespaces():
        r = _run(["ip", "netns", "list"], check=False)
        return [line.split()[0] for line in r.stdout.splitlines() if line.strip()]

    # -- running things inside -----------------------------------------------

    def exec_argv(self, argv, netns=None):
        """``argv`` prefixed so that it runs inside this namespace (or ``netns``)."""
        return ["ip", "netns", "exec", netns or self.name] + list(argv)

    def run(self, argv, check=True, timeout=30):
        """Run a short command inside the namespace and wait for it (e.g. ``ip addr``)."""
        r = subprocess.run(self.exec_argv(argv), stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise LabError("%s failed (%d): %s" % (" ".join(argv), r.returncode, r.stderr.strip()))
        return r

    def start(self, argv, *, name=None, log=None, stdout=None, cwd=None, env=None, netns=None):
        """
        Start a long-running command (a server, a capture) inside the namespace.

        Output goes to ``log`` (stdout and stderr together) unless ``stdout`` is
        given (e.g. ``subprocess.PIPE``), in which case stderr goes to ``log``.
        The process is tracked and stopped when the namespace is destroyed; stop
        it earlier with :meth:`stop`.
        """
        if not self.created:
            raise LabError("namespace not created")
        logf = open(log, "ab") if log else subprocess.DEVNULL
        try:
            popen = subprocess.Popen(
                self.exec_argv(argv, netns),
                stdin=subprocess.DEVNULL,
                stdout=stdout if stdout is not None else logf,
                stderr=logf if (log or stdout is not None) else subprocess.DEVNULL,
                cwd=cwd, env=env,
                # Own session: a Ctrl-C in the terminal reaches only this
                # script, which then stops the children itself, in order.
                start_new_session=True,
            )
        finally:
            if log:
                logf.close()
        proc = Process(popen, name or os.path.basename(argv[0]), list(argv), log)
        self.processes.append(proc)
        return proc

    def stop(self, proc, grace=5.0):
        """Stop one process started here, by its PID."""
        rc = proc.stop(grace)
        if proc in self.processes:
            self.processes.remove(proc)
        return rc

    def start_guest(self, spec, *, tap=None, mac=DEFAULT_MAC, serial_log=None,
                    debugcon_log=None, log=None, uuid=None, extra_args=()):
        """
        Boot ``spec`` (see :func:`bios_ipxe`, :func:`uefi_pxe`, :func:`uefi_http`)
        on ``tap`` (default: the first).

        Nothing in the guest powers it off (Debian's iPXE has no ``poweroff``),
        so the caller stops it once it has seen what it waited for.  ``log``
        receives QEMU's own stderr; ``serial_log`` the guest's serial console
        (OVMF writes its boot messages there), ``debugcon_log`` port 0x402
        (SeaBIOS's log).
        """
        tap = tap or self.taps[0]
        if tap not in self.taps:
            raise LabError("no tap %s in namespace %s" % (tap, self.name))
        argv = spec.qemu_args(tap, mac=mac, serial_log=serial_log,
                              debugcon_log=debugcon_log, uuid=uuid, extra_args=extra_args)
        return self.start(argv, name="qemu-" + spec.name, log=log)

    def start_router_advertiser(self, interval=0.5, interface=None, log=None):
        """
        Send an IPv6 Router Advertisement on the bridge every ``interval`` s.

        iPXE 1.0.0 waits for IPv6 autoconfiguration as well as DHCP before it
        fetches its boot file; with no router on the segment that costs it
        ~13 s per iPXE stage (FIRMWARE-FACTS.md 3).  An RA with no prefix, the
        M and O flags clear and router lifetime 0 ("I am not a default
        router, there is nothing to configure") ends that wait at once, as a
        real network's router would.  It changes nothing on the DHCP/TFTP side.
        """
        return self.start([sys.executable, "-c", _RA_SENDER, interface or self.bridge, str(interval)],
                          name="router-advertiser", log=log)

    def capture(self, bpf="", *, interface=None, pcap=None, log=None, ready_timeout=10):
        """
        Capture on the bridge (default) from now on; returns a
        :class:`tests.lab.capture.Capture` once the tool has the interface open.
        """
        return start_capture(self, bpf, interface=interface or self.bridge, pcap=pcap, log=log,
                             ready_timeout=ready_timeout)

    def add_ipv6(self):
        """
        :data:`SERVER6`/64 on the bridge, no DAD, no MLD snooping (the
        guests' multicast to ff02::1:2 must reach the server's socket at once).
        """
        self.run(["sysctl", "-qw", "net.ipv6.conf.%s.accept_dad=0" % self.bridge])
        self.run(["ip", "link", "set", self.bridge, "type", "bridge", "mcast_snooping", "0"])
        self.run(["ip", "addr", "add", "%s/64" % SERVER6, "dev", self.bridge, "nodad"])
