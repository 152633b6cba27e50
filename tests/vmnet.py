"""
Throw-away virtual networks with real network-boot firmware on them.

Unit tests with fakes can only check what we *think* firmware sends; this module
lets a test (or the fixture capture script) put real firmware - SeaBIOS with the
iPXE NIC ROM, OVMF's EDK2 PXE and HTTP boot - on a private Ethernet segment
next to a server under test, and watch the packets.

Everything lives in a fresh network namespace so that no packet can reach the
host's own networks: a bridge holding the server address, tap devices for the
guests, and the processes (servers, QEMU, packet capture) started inside it.
Every process is tracked by PID and stopped, and the namespace deleted, when
the ``with`` block ends, also on an exception or Ctrl-C.

Needs root, ``ip`` (iproute2), ``qemu-system-x86_64``; OVMF (Debian ``ovmf``)
and the iPXE ROMs (Debian ``ipxe-qemu``) for the firmware scenarios; ``dumpcap``
(Debian ``tshark``) or ``tcpdump`` for :meth:`NetNamespace.capture`.
Standard library only, no test framework.

Typical use::

    with NetNamespace() as ns:
        cap = ns.capture("udp")
        ns.start(["dnsmasq", "-d", ...], name="dnsmasq", log="/tmp/dnsmasq.log")
        vm = ns.start_guest(uefi_pxe(), serial_log="/tmp/serial.log")
        wait_until(lambda: any(p.dhcp_type == 3 for p in cap.udp(dport=67)), 90)
    # here every process is stopped and the namespace is gone

All guests use TCG (``-accel tcg``): on this host KVM is nested and both OVMF
and the iPXE ROM die with "emulation failure" under it (FIRMWARE-FACTS.md 5).
TCG is slow (tens of seconds to the first DHCP), so bound every wait.
"""

import ipaddress
import itertools
import os
import shutil
import signal
import struct
import subprocess
import threading
import time
from dataclasses import dataclass, field

__all__ = [
    "SERVER_ADDRESS",
    "SERVER_NETWORK",
    "DEFAULT_MAC",
    "GuestSpec",
    "bios_ipxe",
    "uefi_pxe",
    "uefi_http",
    "ipxe_rom",
    "ovmf_firmware",
    "Process",
    "Capture",
    "Packet",
    "NetNamespace",
    "wait_until",
    "dhcp_options",
    "dhcp_message_type",
    "VmnetError",
]

#: Address of the bridge inside the namespace: where servers under test listen.
SERVER_ADDRESS = "10.99.0.1"
#: The guests' segment; a DHCP server should hand out addresses from it.
SERVER_NETWORK = ipaddress.ip_network("10.99.0.0/24")
#: Fixed guest MAC so that captures and leases are reproducible.
DEFAULT_MAC = "52:54:00:99:00:10"

QEMU = "qemu-system-x86_64"

# Where Debian's ipxe-qemu puts the NIC ROMs (older releases used
# /usr/lib/ipxe/qemu only; QEMU's own copy is under /usr/share/qemu).
_ROM_DIRS = ("/usr/lib/ipxe/qemu", "/usr/share/qemu", "/usr/lib/ipxe")
_OVMF_PATHS = ("/usr/share/ovmf/OVMF.fd", "/usr/share/qemu/OVMF.fd")

_counter = itertools.count()


class VmnetError(RuntimeError):
    """A namespace, device or process could not be set up."""


def _which(*names):
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    return None


def ipxe_rom(name="pxe-e1000.rom"):
    """Path of an iPXE NIC ROM, so that tests do not hard-code Debian's layout."""
    for d in _ROM_DIRS:
        path = os.path.join(d, name)
        if os.path.exists(path):
            return path
    raise VmnetError("iPXE ROM %s not found in %s (install ipxe-qemu)" % (name, ", ".join(_ROM_DIRS)))


def ovmf_firmware():
    """Path of a combined OVMF image usable with ``-bios`` (no NVRAM file to manage)."""
    for path in _OVMF_PATHS:
        if os.path.exists(path):
            return path
    raise VmnetError("OVMF.fd not found (install ovmf)")


# ---------------------------------------------------------------------------
# Guest descriptions
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class GuestSpec:
    """
    One kind of network-booting machine.

    Kept as data (not a QEMU command line) so a test can say *which firmware*
    it boots and let :meth:`NetNamespace.start_guest` add the parts that depend
    on the namespace (tap name, logs).  ``nic`` gets ``netdev=...,mac=...``
    appended; ``romfile`` ``None`` keeps QEMU's default ROM for that NIC, ``""``
    removes it (so that the firmware's own network stack runs).
    """

    name: str
    nic: str
    romfile: "str | None" = None
    machine_args: tuple = ()
    memory: str = "256M"
    boot_args: tuple = ()

    def qemu_args(self, tap, mac=DEFAULT_MAC, serial_log=None, debugcon_log=None,
                  uuid=None, extra_args=()):
        """The full QEMU argv for this guest on ``tap``."""
        device = "%s,netdev=n0,mac=%s" % (self.nic, mac)
        if self.romfile is not None:
            device += ",romfile=%s" % self.romfile
        argv = [
            QEMU,
            "-nodefaults",
            "-accel", "tcg",
            "-m", self.memory,
            "-display", "none",
            "-monitor", "none",
            "-serial", ("file:%s" % serial_log) if serial_log else "null",
            "-netdev", "tap,id=n0,ifname=%s,script=no,downscript=no" % tap,
            "-device", device,
        ]
        argv += list(self.machine_args)
        argv += list(self.boot_args)
        if debugcon_log:
            # SeaBIOS and debug builds of OVMF log to I/O port 0x402.
            argv += ["-chardev", "file,id=dbgcon,path=%s" % debugcon_log,
                     "-device", "isa-debugcon,iobase=0x402,chardev=dbgcon"]
        if uuid:
            argv += ["-uuid", uuid]
        argv += list(extra_args)
        return argv


def bios_ipxe(nic="e1000", rom="pxe-e1000.rom"):
    """
    Legacy BIOS PXE as QEMU has it: SeaBIOS runs the iPXE option ROM of the NIC.

    SeaBIOS has no network stack, so the DHCP client here is iPXE
    (FIRMWARE-FACTS.md 0): user class ``iPXE``, option 175, arch 0.
    """
    return GuestSpec(name="bios-ipxe-" + nic, nic=nic, romfile=ipxe_rom(rom),
                     boot_args=("-boot", "order=n"))


def uefi_pxe(nic="virtio-net-pci"):
    """
    UEFI PXE by EDK2's own PxeBcDxe (arch 7), the only non-iPXE PXE client QEMU has.

    The NIC ROM is removed: with it OVMF would start the iPXE EFI driver from
    the ROM instead and EDK2's PXE client would never run.
    """
    return GuestSpec(name="uefi-pxe", nic=nic, romfile="",
                     machine_args=("-bios", ovmf_firmware()))


def uefi_http(nic="virtio-net-pci"):
    """
    UEFI HTTP boot by EDK2's HttpBootDxe (arch 16, vendor class ``HTTPClient``).

    OVMF tries PXE first; switching IPv4 and IPv6 PXE off through fw_cfg makes
    "UEFI HTTPv4" the first boot option, so the guest goes to HTTP boot at once.
    """
    return GuestSpec(name="uefi-http", nic=nic, romfile="",
                     machine_args=(
                         "-bios", ovmf_firmware(),
                         "-fw_cfg", "name=opt/org.tianocore/IPv4PXESupport,string=no",
                         "-fw_cfg", "name=opt/org.tianocore/IPv6PXESupport,string=no",
                     ))


# ---------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------


class Process:
    """
    A process started inside the namespace, stopped by its PID only.

    ``ip netns exec`` execs the command in place (no fork), so the PID of the
    Popen is the PID of the server or QEMU itself, and a signal reaches it.
    """

    def __init__(self, popen, name, argv, log=None):
        self.popen = popen
        self.name = name
        self.argv = argv
        self.log = log
        self.started = time.monotonic()
        self.started_wall = time.time()

    @property
    def pid(self):
        return self.popen.pid

    @property
    def running(self):
        return self.popen.poll() is None

    @property
    def returncode(self):
        return self.popen.poll()

    def elapsed(self):
        """Seconds since start, for timing firmware under TCG."""
        return time.monotonic() - self.started

    def wait(self, timeout=None):
        """Return the exit code, or ``None`` if it still runs after ``timeout`` s."""
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, grace=5.0):
        """SIGTERM, then SIGKILL after ``grace`` s: servers get a chance to flush."""
        if self.popen.poll() is None:
            try:
                os.kill(self.popen.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                try:
                    os.kill(self.popen.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.popen.wait(grace)
        # Pipes are left to their reader (a Capture drains what is buffered).
        return self.popen.returncode

    def read_log(self):
        """The log file's text so far ('' if there is none yet)."""
        if not self.log or not os.path.exists(self.log):
            return ""
        with open(self.log, "r", errors="replace") as f:
            return f.read()

    def __repr__(self):
        return "<Process %s pid=%s rc=%s>" % (self.name, self.pid, self.returncode)


def wait_until(predicate, timeout, interval=0.2, watch=()):
    """
    Poll ``predicate`` until true or ``timeout`` seconds pass; return its last value.

    Firmware under TCG has no reliable timing, so tests wait for an event, but
    never without a bound.  If a process in ``watch`` exits, stop waiting early:
    a QEMU that died will not send the packet being waited for.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            return value
        if any(not p.running for p in watch):
            return predicate()
        time.sleep(interval)


# ---------------------------------------------------------------------------
# Packet capture
# ---------------------------------------------------------------------------


@dataclass
class Packet:
    """
    One captured Ethernet frame, with the UDP/IPv4 fields tests look at.

    Only IPv4/UDP is decoded: that is all DHCP and TFTP need; everything else
    stays available as the raw ``frame``.
    """

    time: float
    frame: bytes
    src_mac: str = ""
    dst_mac: str = ""
    ethertype: int = 0
    src_ip: "str | None" = None
    dst_ip: "str | None" = None
    sport: "int | None" = None
    dport: "int | None" = None
    payload: "bytes | None" = None  # the UDP payload

    @property
    def dhcp_type(self):
        """Option 53 of a BOOTP/DHCP payload, or None."""
        if self.payload is None or self.sport not in (67, 68) or self.dport not in (67, 68):
            return None
        return dhcp_message_type(self.payload)

    @property
    def chaddr(self):
        if self.payload is None or len(self.payload) < 34:
            return None
        return _mac(self.payload[28:34])


def _mac(b):
    return ":".join("%02x" % x for x in b)


def dhcp_options(payload):
    """
    ``[(code, value)]`` in wire order, so tests can check option *order*.

    Stops at option 255 or the end of data; pad (0) is skipped.
    """
    out = []
    if len(payload) < 240 or payload[236:240] != b"\x63\x82\x53\x63":
        return out
    i = 240
    while i < len(payload):
        code = payload[i]
        if code == 0:
            i += 1
            continue
        if code == 255:
            break
        if i + 1 >= len(payload):
            break
        length = payload[i + 1]
        out.append((code, payload[i + 2:i + 2 + length]))
        i += 2 + length
    return out


def dhcp_message_type(payload):
    for code, value in dhcp_options(payload):
        if code == 53 and value:
            return value[0]
    return None


def decode_frame(ts, frame):
    p = Packet(time=ts, frame=frame)
    if len(frame) < 14:
        return p
    p.dst_mac, p.src_mac = _mac(frame[0:6]), _mac(frame[6:12])
    p.ethertype = struct.unpack("!H", frame[12:14])[0]
    if p.ethertype != 0x0800 or len(frame) < 34:
        return p
    ip = frame[14:]
    ihl = (ip[0] & 0x0F) * 4
    total = struct.unpack("!H", ip[2:4])[0]
    p.src_ip = str(ipaddress.IPv4Address(ip[12:16]))
    p.dst_ip = str(ipaddress.IPv4Address(ip[16:20]))
    if ip[9] != 17 or len(ip) < ihl + 8:
        return p
    udp = ip[ihl:min(total, len(ip))]
    p.sport, p.dport, ulen = struct.unpack("!HHH", udp[0:6])
    p.payload = bytes(udp[8:ulen])
    return p


class Capture:
    """
    Live packet capture on the bridge, decoded in this process.

    The capture tool writes pcap to a pipe (which it flushes per packet), so a
    test can wait for a packet while the guest still runs instead of stopping
    the capture and parsing a file.  Every frame is also written to ``pcap`` if
    given, for a person to open in Wireshark later.
    """

    def __init__(self, process, pcap=None):
        self.process = process
        self.pcap_path = pcap
        self.packets = []
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._pcap_file = open(pcap, "wb") if pcap else None
        self._thread = threading.Thread(target=self._reader, name="capture", daemon=True)
        self._thread.start()

    def _read(self, n):
        data = b""
        stream = self.process.popen.stdout
        while len(data) < n:
            chunk = stream.read(n - len(data))
            if not chunk:
                return None
            data += chunk
        return data

    def _reader(self):
        try:
            self._read_all()
        except (ValueError, OSError):
            pass  # pipe closed under us at tear-down
        finally:
            self._ready.set()
            if self._pcap_file:
                self._pcap_file.close()
                self._pcap_file = None

    def _read_all(self):
        header = self._read(24)
        if header is None:
            return
        magic = header[:4]
        if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
            endian = "<"
        elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
            endian = ">"
        else:
            raise VmnetError("capture did not write pcap (use dumpcap -P)")
        nano = magic in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d")
        if self._pcap_file:
            self._pcap_file.write(header)
            self._pcap_file.flush()
        self._ready.set()
        while True:
            rec = self._read(16)
            if rec is None:
                return
            sec, frac, caplen, _origlen = struct.unpack(endian + "IIII", rec)
            frame = self._read(caplen)
            if frame is None:
                return
            if self._pcap_file:
                self._pcap_file.write(rec + frame)
                self._pcap_file.flush()
            ts = sec + frac / (1e9 if nano else 1e6)
            pkt = decode_frame(ts, frame)
            with self._lock:
                self.packets.append(pkt)

    def wait_ready(self, timeout=10):
        """The tool has opened the interface once it wrote the pcap header."""
        if not self._ready.wait(timeout) or not self.process.running:
            raise VmnetError("capture did not start: %s" % self.process.read_log()[-500:])

    def snapshot(self):
        with self._lock:
            return list(self.packets)

    def udp(self, sport=None, dport=None, src_mac=None):
        """UDP packets seen so far, filtered; in capture order."""
        out = []
        for p in self.snapshot():
            if p.payload is None:
                continue
            if sport is not None and p.sport != sport:
                continue
            if dport is not None and p.dport != dport:
                continue
            if src_mac is not None and p.src_mac != src_mac.lower():
                continue
            out.append(p)
        return out

    def dhcp_from_client(self, mac=DEFAULT_MAC, msg_type=None):
        """Client-to-server DHCP packets of ``mac`` (optionally of one message type)."""
        return [p for p in self.udp(sport=68, dport=67)
                if p.chaddr == mac.lower() and (msg_type is None or p.dhcp_type == msg_type)]

    def stop(self):
        """Stop the tool (it flushes on SIGTERM) and let the reader drain the pipe."""
        self.process.stop()
        self._thread.join(5)
        if not self._thread.is_alive() and self.process.popen.stdout:
            self.process.popen.stdout.close()


# ---------------------------------------------------------------------------
# The namespace
# ---------------------------------------------------------------------------


def _run(argv, check=True):
    r = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True)
    if check and r.returncode != 0:
        raise VmnetError("%s failed (%d): %s" % (" ".join(argv), r.returncode, r.stderr.strip()))
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
            raise VmnetError("network namespaces need root")
        if self.name in self.list_namespaces():
            raise VmnetError("namespace %s already exists" % self.name)
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
        if not self.created:
            return
        # Anything else still in the namespace (a child a server forked) would
        # keep it alive: kill those by PID too.
        for _ in range(3):
            r = _run(["ip", "netns", "pids", self.name], check=False)
            pids = [int(x) for x in r.stdout.split() if x.isdigit()]
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.2)
        _run(["ip", "netns", "del", self.name], check=False)
        self.created = False

    @staticmethod
    def list_namespaces():
        r = _run(["ip", "netns", "list"], check=False)
        return [line.split()[0] for line in r.stdout.splitlines() if line.strip()]

    # -- running things inside -----------------------------------------------

    def exec_argv(self, argv):
        """``argv`` prefixed so that it runs inside this namespace."""
        return ["ip", "netns", "exec", self.name] + list(argv)

    def run(self, argv, check=True, timeout=30):
        """Run a short command inside the namespace and wait for it (e.g. ``ip addr``)."""
        r = subprocess.run(self.exec_argv(argv), stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise VmnetError("%s failed (%d): %s" % (" ".join(argv), r.returncode, r.stderr.strip()))
        return r

    def start(self, argv, *, name=None, log=None, stdout=None, cwd=None, env=None):
        """
        Start a long-running command (a server, a capture) inside the namespace.

        Output goes to ``log`` (stdout and stderr together) unless ``stdout`` is
        given (e.g. ``subprocess.PIPE``), in which case stderr goes to ``log``.
        The process is tracked and stopped when the namespace is destroyed; stop
        it earlier with :meth:`stop`.
        """
        if not self.created:
            raise VmnetError("namespace not created")
        logf = open(log, "ab") if log else subprocess.DEVNULL
        try:
            popen = subprocess.Popen(
                self.exec_argv(argv),
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
            raise VmnetError("no tap %s in namespace %s" % (tap, self.name))
        argv = spec.qemu_args(tap, mac=mac, serial_log=serial_log,
                              debugcon_log=debugcon_log, uuid=uuid, extra_args=extra_args)
        return self.start(argv, name="qemu-" + spec.name, log=log)

    def capture(self, bpf="", *, interface=None, pcap=None, log=None, ready_timeout=10):
        """
        Capture on the bridge (default) from now on; returns a :class:`Capture`.

        Waits until the tool has the interface open, so no packet of a guest
        started afterwards is missed.
        """
        interface = interface or self.bridge
        dumpcap = _which("dumpcap")
        if dumpcap:
            argv = [dumpcap, "-q", "-i", interface, "-P", "-w", "-"]
            if bpf:
                argv += ["-f", bpf]
        else:
            tcpdump = _which("tcpdump")
            if not tcpdump:
                raise VmnetError("need dumpcap (tshark) or tcpdump")
            argv = [tcpdump, "-i", interface, "-U", "-s", "0", "-w", "-"]
            if bpf:
                argv += [bpf]
        proc = self.start(argv, name="capture", log=log, stdout=subprocess.PIPE)
        cap = Capture(proc, pcap=pcap)
        cap.wait_ready(ready_timeout)
        return cap
