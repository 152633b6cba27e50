"""
Live packet capture on a lab bridge (dumpcap or tcpdump), decoded in this
process so that a test can wait for a packet while the guest still runs.
"""

import ipaddress
import shutil
import struct
import subprocess
import threading
import time
from dataclasses import dataclass

from tests.lab.errors import LabError
from tests.lab.vm import DEFAULT_MAC
from tests.packets import dhcp_message_type


def _which(*names):
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    return None


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
            raise LabError("capture did not write pcap (use dumpcap -P)")
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
            raise LabError("capture did not start: %s" % self.process.read_log()[-500:])

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


def start_capture(ns, bpf="", *, interface=None, pcap=None, log=None, ready_timeout=10):
    """
    Capture on ``interface`` of namespace ``ns`` from now on; returns a :class:`Capture`.

    Waits until the tool has the interface open, so no packet of a guest
    started afterwards is missed.
    """
    dumpcap = _which("dumpcap")
    if dumpcap:
        argv = [dumpcap, "-q", "-i", interface, "-P", "-w", "-"]
        if bpf:
            argv += ["-f", bpf]
    else:
        tcpdump = _which("tcpdump")
        if not tcpdump:
            raise LabError("need dumpcap (tshark) or tcpdump")
        argv = [tcpdump, "-i", interface, "-U", "-s", "0", "-w", "-"]
        if bpf:
            argv += [bpf]
    proc = ns.start(argv, name="capture", log=log, stdout=subprocess.PIPE)
    cap = Capture(proc, pcap=pcap)
    cap.wait_ready(ready_timeout)
    return cap
