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
import sys
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
    "uefi_secure_boot",
    "arm64_uefi",
    "signed_boot_file",
    "write_grub_root",
    "fleet_config",
    "FleetHost",
    "ipxe_rom",
    "ovmf_firmware",
    "Process",
    "Capture",
    "Packet",
    "NetNamespace",
    "Leg",
    "wait_until",
    "dhcp_options",
    "dhcp_message_type",
    "VmnetError",
    "FIRST_STAGES",
    "PLATFORM_OF",
    "ipxe_file",
    "marker_text",
    "write_boot_root",
    "ownsocket_config",
    "ownsocket_argv",
    "ownsocket_env",
    "dnsmasq_base_argv",
    "dnsmasq_boot_argv",
    "listening",
    "read_text",
    "console_text",
    "wait_for_boot",
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
    qemu: str = QEMU

    def qemu_args(self, tap, mac=DEFAULT_MAC, serial_log=None, debugcon_log=None,
                  uuid=None, extra_args=()):
        """The full QEMU argv for this guest on ``tap``."""
        device = "%s,netdev=n0,mac=%s" % (self.nic, mac)
        if self.romfile is not None:
            device += ",romfile=%s" % self.romfile
        argv = [
            self.qemu,
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


def bios_ipxe(nic="e1000", rom="pxe-e1000.rom", serial_console=True):
    """
    Legacy BIOS PXE as QEMU has it: SeaBIOS runs the iPXE option ROM of the NIC.

    SeaBIOS has no network stack, so the DHCP client here is iPXE
    (FIRMWARE-FACTS.md 0): user class ``iPXE``, option 175, arch 0.

    The BIOS builds of iPXE print only through the BIOS video services, which
    go nowhere without a display.  ``serial_console`` adds ``-machine
    graphics=off``: QEMU then hands SeaBIOS ``etc/sercon-port`` and SeaBIOS
    copies text-mode output (its own, the ROM's, undionly.kpxe's) to the
    serial port, so ``serial_log`` shows what iPXE printed.
    """
    machine = ("-machine", "graphics=off") if serial_console else ()
    return GuestSpec(name="bios-ipxe-" + nic, nic=nic, romfile=ipxe_rom(rom),
                     machine_args=machine, boot_args=("-boot", "order=n"))


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


#: Secure Boot OVMF: the SMM build and a varstore with Microsoft's keys
#: enrolled (PK set: Secure Boot is on from the first boot, FIRMWARE-FACTS 6a).
OVMF_SB_CODE = "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd"
OVMF_SB_VARS = "/usr/share/OVMF/OVMF_VARS_4M.ms.fd"
#: ArmVirtQemu (Debian qemu-efi-aarch64); the empty varstore: no keys, SB off.
AAVMF_CODE = "/usr/share/AAVMF/AAVMF_CODE.fd"
AAVMF_VARS = "/usr/share/AAVMF/AAVMF_VARS.fd"
QEMU_ARM64 = "qemu-system-aarch64"


def _pflash(code, vars_copy, template):
    """A read-only CODE flash and a private writable copy of a VARS template
    (the firmware writes to it: shim sets SbatLevel, OVMF its boot options)."""
    for path in (code, template):
        if not os.path.exists(path):
            raise VmnetError("%s not found (install %s)" % (
                path, "ovmf" if "OVMF" in path else "qemu-efi-aarch64"))
    shutil.copyfile(template, vars_copy)
    return ("-drive", "if=pflash,format=raw,unit=0,readonly=on,file=%s" % code,
            "-drive", "if=pflash,format=raw,unit=1,file=%s" % vars_copy)


def uefi_secure_boot(vars_copy, nic="virtio-net-pci", vars_template=OVMF_SB_VARS):
    """
    OVMF with Secure Boot on (FIRMWARE-FACTS 6a): the SMM build, Microsoft's
    keys in a private copy of the varstore at ``vars_copy``, ``q35,smm=on``
    (the SMM build prints nothing without SMM).  The PXE client is EDK2's, as
    in :func:`uefi_pxe`, and byte-identical on the wire (6b).
    ``vars_template=OVMF_VARS_4M.fd`` (no keys) gives the same firmware with
    Secure Boot off, for controls.
    """
    return GuestSpec(name="uefi-sb", nic=nic, romfile="", memory="512M",
                     machine_args=("-machine", "q35,smm=on",
                                   "-global", "driver=cfi.pflash01,property=secure,value=on",
                                   "-global", "ICH9-LPC.disable_s3=1")
                     + _pflash(OVMF_SB_CODE, vars_copy, vars_template))


def arm64_uefi(vars_copy, nic="virtio-net-pci"):
    """
    AAVMF on ``qemu-system-aarch64 -M virt`` under TCG (FIRMWARE-FACTS 7):
    EDK2's PXE client with option 93 = 11.  The NIC's default ROM is x86
    code, so it is removed.
    """
    return GuestSpec(name="arm64", nic=nic, romfile="", memory="512M", qemu=QEMU_ARM64,
                     machine_args=("-machine", "virt", "-cpu", "cortex-a57")
                     + _pflash(AAVMF_CODE, vars_copy, AAVMF_VARS))


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

    def stop(self, settle=1.0):
        """
        Stop the tool and let the reader drain the pipe.

        ``settle`` seconds pass first: packets the kernel still holds for the
        tool when SIGTERM arrives are lost (seen: the last ~1 s of a guest's
        packets while QEMU kept both cores busy).
        """
        if settle and self.process.running:
            time.sleep(settle)
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
            raise VmnetError("namespace not created")
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
            raise VmnetError("%s failed (%d): %s" % (" ".join(argv), r.returncode, r.stderr.strip()))
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
            raise VmnetError("namespace not created")
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
            raise VmnetError("no tap %s in namespace %s" % (tap, self.name))
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


# ---------------------------------------------------------------------------
# Boot flows: a TFTP root with iPXE, server command lines, "did it boot?"
# ---------------------------------------------------------------------------
#
# Shared by tests/test_boot_e2e.py and bench/boot_bench.py.  The flow is the
# usual iPXE chain: firmware -> first stage (undionly.kpxe / snponly.efi) ->
# iPXE -> boot.ipxe -> marker-${platform}.ipxe, whose only job is to print a
# line nobody else prints.  The guest proves it ran the file meant for its
# own platform by printing that line on its serial console.

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_IPXE_FILE_DIRS = ("/usr/lib/ipxe", "/usr/share/ipxe")
FIRST_STAGES = ("undionly.kpxe", "snponly.efi")

#: iPXE's ${platform} for each guest kind.
PLATFORM_OF = {"bios": "pcbios", "uefi-pxe": "efi", "uefi-http": "efi"}

_ANSI = None


def ipxe_file(name):
    """Path of an iPXE boot file from Debian's ``ipxe`` package."""
    for d in _IPXE_FILE_DIRS:
        path = os.path.join(d, name)
        if os.path.exists(path):
            return path
    raise VmnetError("%s not found in %s (install ipxe)" % (name, ", ".join(_IPXE_FILE_DIRS)))


def marker_text(platform, token):
    """The line ``marker-<platform>.ipxe`` echoes (short: SeaBIOS's serial console wraps at 80)."""
    return "OWNSOCKET-MARKER %s %s" % (platform, token)


def write_boot_root(root, token):
    """
    Fill ``root`` with the first stages, ``boot.ipxe`` and one marker script
    per platform; return ``{platform: marker text}``.

    ``root`` is made world-readable (dnsmasq's TFTP reads it too); its parent
    directories must be traversable (``chmod 755`` a ``mkdtemp`` directory).
    """
    os.makedirs(root, exist_ok=True)
    for name in FIRST_STAGES:
        shutil.copy(ipxe_file(name), os.path.join(root, name))
    with open(os.path.join(root, "boot.ipxe"), "w") as f:
        f.write("#!ipxe\n"
                "echo boot.ipxe: platform ${platform} next-server ${next-server}\n"
                # Relative to this script's own URL: under proxyDHCP
                # ${next-server} is the *address* server's siaddr (dnsmasq
                # puts its own address there), not the proxy's.
                "chain marker-${platform}.ipxe\n")
    markers = {}
    for platform in ("pcbios", "efi"):
        markers[platform] = marker_text(platform, token)
        with open(os.path.join(root, "marker-%s.ipxe" % platform), "w") as f:
            # Debian's iPXE 1.0.0 has no poweroff: sleep until the test stops QEMU.
            f.write("#!ipxe\necho %s\nsleep 600\n" % markers[platform])
    os.chmod(root, 0o755)
    return markers


# -- shim and GRUB (Secure Boot, arm64) ---------------------------------------
#
# The chain is firmware -> shim -> GRUB -> /grub/grub.cfg (one per machine)
# -> /marker-<host>[-sb], a GRUB script that echoes a line and halts.  The
# grub.cfg asks for the "-sb" marker only when GRUB sees shim_lock, i.e.
# when Secure Boot really was on (FIRMWARE-FACTS 6a).

#: Where .ci/setup.d/50-arm64-grub.sh unpacks grub-efi-arm64-signed.
ARM64_GRUB_DIR = os.environ.get("OWNSOCKET_ARM64_GRUB_DIR", "/var/lib/ownsocket-ci/grub-efi-arm64-signed")

SIGNED_FILES = {
    "shimx64.efi": ("/usr/lib/shim/shimx64.efi.signed", "shim-signed"),
    "grubnetx64.efi": ("/usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed", "grub-efi-amd64-signed"),
    "grubnetaa64.efi": (os.path.join(ARM64_GRUB_DIR, "usr/lib/grub/arm64-efi-signed/grubnetaa64.efi.signed"),
                        "grub-efi-arm64-signed (bash .ci/setup.d/50-arm64-grub.sh)"),
}

#: The per-machine GRUB config, as an ownsocket template.
GRUB_TEMPLATE = """\
echo "grub.cfg for @hostname@ @mac@ @ip@ arch @arch@ shim_lock=$shim_lock"
set sb=
if [ "$shim_lock" = "y" ]; then set sb=-sb; fi
source /marker-@hostname@$sb
"""

#: The per-machine iPXE script, as an ownsocket template.
IPXE_TEMPLATE = """\
#!ipxe
echo boot.ipxe for @hostname@ @mac@ platform ${platform}
chain marker-@hostname@.ipxe
"""


def signed_boot_file(name):
    """Path of a signed shim/GRUB image (see :data:`SIGNED_FILES`)."""
    path, package = SIGNED_FILES[name]
    if not os.path.exists(path):
        raise VmnetError("%s not found (install %s)" % (path, package))
    return path


def grub_marker_text(host, secure_boot, token):
    return "OWNSOCKET-MARKER %s sb=%s %s" % (host, "yes" if secure_boot else "no", token)


def ipxe_marker_text(host, token):
    return "OWNSOCKET-MARKER %s ipxe %s" % (host, token)


def write_grub_root(root, token, hosts, arm64=True):
    """
    Fill ``root`` for shim/GRUB and iPXE machines named ``hosts``: the first
    stages, ``efi/shimx64.efi`` with ``efi/grubx64.efi`` next to it (shim
    takes the directory from the BOOTP file field, FIRMWARE-FACTS 6d),
    ``grubaa64.efi``, and for each host a GRUB marker with and without
    "-sb" and an iPXE marker.  Templates go to ``<root>/../templates``.
    Returns ``{(host, kind): marker text}`` with kind ``sb``, ``grub``, ``ipxe``.
    """
    os.makedirs(os.path.join(root, "efi"), exist_ok=True)
    for name in FIRST_STAGES:
        shutil.copy(ipxe_file(name), os.path.join(root, name))
    shutil.copy(signed_boot_file("shimx64.efi"), os.path.join(root, "efi", "shimx64.efi"))
    shutil.copy(signed_boot_file("grubnetx64.efi"), os.path.join(root, "efi", "grubx64.efi"))
    if arm64:
        shutil.copy(signed_boot_file("grubnetaa64.efi"), os.path.join(root, "grubaa64.efi"))
    markers = {}
    for host in hosts:
        for secure in (True, False):
            text = grub_marker_text(host, secure, token)
            markers[(host, "sb" if secure else "grub")] = text
            with open(os.path.join(root, "marker-%s%s" % (host, "-sb" if secure else "")), "w") as f:
                # halt powers QEMU off under lockdown too (FIRMWARE-FACTS 6e);
                # the pause lets GRUB's last TFTP ACK leave first (without
                # it the arm64 guest sometimes powered off before the server
                # saw the ACK, and the server logged a timeout).
                f.write('echo "%s"\nsleep 2\nhalt\n' % text)
        markers[(host, "ipxe")] = ipxe_marker_text(host, token)
        with open(os.path.join(root, "marker-%s.ipxe" % host), "w") as f:
            f.write("#!ipxe\necho %s\nsleep 600\n" % markers[(host, "ipxe")])
    templates = os.path.join(os.path.dirname(root), "templates")
    os.makedirs(templates, exist_ok=True)
    with open(os.path.join(templates, "grub.cfg.in"), "w") as f:
        f.write(GRUB_TEMPLATE)
    with open(os.path.join(templates, "boot.ipxe.in"), "w") as f:
        f.write(IPXE_TEMPLATE)
    for directory in (root, os.path.join(root, "efi"), templates):
        os.chmod(directory, 0o755)
    return markers


@dataclass(frozen=True)
class FleetHost:
    """One machine of the fleet config: its [host:NAME] section."""

    name: str
    mac: str
    address: str
    bootfile: "str | None" = None


def fleet_config(path, workdir, tftp_root, hosts, interface="br0", tftp_settings=(), ipxe_mode="stateful"):
    """
    One ownsocket config for every kind of machine: iPXE chain-loading for
    BIOS and plain UEFI (per-host ``bootfile = snponly.efi``: OVMF with and
    without Secure Boot send identical DHCP, FIRMWARE-FACTS 6b), shim for
    arch 7, GRUB for arch 11, and ``grub/grub.cfg`` and ``boot.ipxe``
    rendered per machine by the ``template`` selector for the ``hosts``
    only.  ``ipxe`` comes before ``host`` so that a host's first stage is
    not handed to its chained iPXE again.
    """
    templates = os.path.join(os.path.dirname(tftp_root), "templates")
    lines = ["[dhcp]", "interfaces = %s" % interface,
             "leases = %s" % os.path.join(workdir, "leases.sqlite"),
             "", "[subnet:lab]", "network = %s" % SERVER_NETWORK,
             "pool = 10.99.0.100-10.99.0.200", "router = %s" % SERVER_ADDRESS,
             "", "[tftp]", "root = %s" % tftp_root] + ["%s = %s" % item for item in tftp_settings] + [
             "", "[http]", "enabled = false",
             "", "[boot]", "selectors = template, ipxe, host, arch",
             "default = undionly.kpxe", "arch.0 = undionly.kpxe",
             "arch.7 = efi/shimx64.efi", "arch.11 = grubaa64.efi",
             "", "[selector:ipxe]", "script = boot.ipxe", "mode = %s" % ipxe_mode,
             "", "[selector:template]",
             "grub/grub.cfg = %s" % os.path.join(templates, "grub.cfg.in"),
             "boot.ipxe = %s" % os.path.join(templates, "boot.ipxe.in"),
             "clients = hosts"]
    for host in hosts:
        lines += ["", "[host:%s]" % host.name, "mac = %s" % host.mac, "address = %s" % host.address,
                  "hostname = %s" % host.name]
        if host.bootfile:
            lines.append("bootfile = %s" % host.bootfile)
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def ownsocket_config(path, workdir, tftp_root, *, mode="server", interface="br0", http=True,
                     ipxe_mode="stateful", script="boot.ipxe"):
    """
    Write an ownsocket config for the iPXE flow on ``interface``; return ``path``.

    ``mode="proxy"``: proxyDHCP, no subnet (another server owns the addresses).
    """
    lines = ["[dhcp]", "interfaces = %s" % interface,
             "leases = %s" % os.path.join(workdir, "leases.sqlite")]
    if mode == "proxy":
        lines += ["mode = proxy"]
    else:
        lines += ["", "[subnet:lab]", "network = %s" % SERVER_NETWORK,
                  "pool = 10.99.0.100-10.99.0.200", "router = %s" % SERVER_ADDRESS]
    lines += ["", "[tftp]", "root = %s" % tftp_root,
              "", "[http]", "enabled = %s" % ("true" if http else "false"), "port = 80",
              "", "[boot]", "default = undionly.kpxe", "arch.0 = undionly.kpxe", "arch.7 = snponly.efi",
              "", "[selector:ipxe]", "script = %s" % script, "mode = %s" % ipxe_mode, ""]
    with open(path, "w") as f:
        f.write("\n".join(lines))
    return path


def ownsocket_argv(config, logfile):
    """twistd running the checkout's ownsocket with this interpreter, in the foreground."""
    return [sys.executable, "-c", "import sys; from twisted.scripts.twistd import run; "
            "sys.argv[0] = 'twistd'; run()",
            "-n", "--pidfile=", "--logfile=%s" % logfile, "ownsocket", "--config", config]


def ownsocket_env():
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO_ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def dnsmasq_base_argv(interface, workdir, *, dhcp_range="10.99.0.100,10.99.0.200,255.255.255.0"):
    """dnsmasq as a DHCP server only (no DNS), logging every exchange to stderr."""
    return ["dnsmasq", "-d", "--conf-file=/dev/null", "--port=0",
            "--log-facility=-", "--log-dhcp",
            "--dhcp-leasefile=%s" % os.path.join(workdir, "dnsmasq.leases"),
            "--interface=%s" % interface, "--bind-interfaces",
            "--dhcp-range=%s" % dhcp_range,
            "--dhcp-option=3,%s" % SERVER_ADDRESS]


def dnsmasq_boot_argv(interface, workdir, tftp_root, http_url=None):
    """
    dnsmasq set up for the same iPXE flow as ownsocket, the way it is usually
    done: option 175 tags iPXE (``dhcp-match=set:ipxe,175``), iPXE gets the
    script, everyone else a first stage by architecture (``tag:!ipxe``), and
    no-pxedhcp (175.176) for iPXE as in dnsmasq's example config.

    dnsmasq cannot tell the iPXE *ROM* from the chained iPXE (FIRMWARE-FACTS
    1b), so a BIOS guest whose ROM is iPXE gets ``boot.ipxe`` straight away
    and never fetches undionly.kpxe (no loop: the script is not a first stage).
    ``http_url``: the first stage for UEFI HTTP boot (dnsmasq serves no HTTP;
    run ``python3 -m http.server`` next to it).
    """
    argv = dnsmasq_base_argv(interface, workdir) + [
        "--enable-tftp", "--tftp-root=%s" % tftp_root,
        "--dhcp-match=set:ipxe,175",
        "--dhcp-match=set:efi64,option:client-arch,7",
        "--dhcp-match=set:efihttp,option:client-arch,16",
        "--dhcp-option=tag:ipxe,encap:175,176,1b",
        "--dhcp-boot=tag:ipxe,boot.ipxe",
        "--dhcp-boot=tag:!ipxe,tag:efi64,snponly.efi",
        "--dhcp-boot=tag:!ipxe,tag:!efi64,tag:!efihttp,undionly.kpxe",
    ]
    if http_url:
        argv += ["--dhcp-option-force=tag:efihttp,60,HTTPClient",
                 "--dhcp-boot=tag:!ipxe,tag:efihttp,%s" % http_url]
    return argv


def listening(ns, udp=(), tcp=(), netns=None):
    """Whether every port in ``udp``/``tcp`` has a listening socket in the namespace."""
    argv = ns.exec_argv(["ss", "-H", "-ln", "-u", "-t"], netns)
    r = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.DEVNULL, text=True, timeout=10)
    udp_ports, tcp_ports = set(), set()
    for line in r.stdout.splitlines():
        fields = line.split()
        if len(fields) < 5:
            continue
        port = fields[4].rsplit(":", 1)[-1]
        if port.isdigit():
            (udp_ports if fields[0] == "udp" else tcp_ports).add(int(port))
    return set(udp) <= udp_ports and set(tcp) <= tcp_ports


def read_text(path):
    if not path or not os.path.exists(path):
        return ""
    with open(path, "r", errors="replace") as f:
        return f.read()


def console_text(raw):
    """Serial console bytes as plain lines: ANSI/VT escapes and CRs removed."""
    import re
    global _ANSI
    if _ANSI is None:
        _ANSI = re.compile(r"\x1b(\[[0-9;=?]*[A-Za-z]|[()][0-9A-Za-z])")
    text = _ANSI.sub("", raw).replace("\r", "")
    return "\n".join(line.rstrip() for line in text.split("\n") if line.strip())


def wait_for_boot(vm, serial_log, marker, server_done, timeout, watch=(), interval=0.1):
    """
    Wait (at most ``timeout`` s) until the guest printed ``marker`` on its
    serial console and ``server_done()`` is true (the server logged the fetch).

    Returns ``(marker_seconds, server_ok)``: the seconds from QEMU's start to
    the first poll that saw the marker (``None`` if it never came), and whether
    the server side was seen.  Stops early if a process in ``watch`` (or the
    guest) exits.
    """
    seen = {}

    def check():
        if "marker" not in seen and marker in read_text(serial_log):
            seen["marker"] = vm.elapsed()
        if "server" not in seen and server_done():
            seen["server"] = vm.elapsed()
        return "marker" in seen and "server" in seen

    wait_until(check, timeout, interval=interval, watch=list(watch) + [vm])
    check()
    return seen.get("marker"), "server" in seen
