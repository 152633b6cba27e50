#!/usr/bin/env python3
"""
Capture what OVMF and iPXE send over IPv6, as hex fixtures for the DHCPv6
and Router Advertisement tests.

Run by hand, as root, from the repository root:

    python3 tests/fixtures6/capture6.py [--keep DIR] [pxe6] [http6]

Why a script and not a test: it takes a minute of TCG emulation per scenario
and needs root, QEMU, OVMF, iPXE, dnsmasq and tcpdump; the fixtures it writes
are committed so that the unit tests run anywhere.

The reference server is dnsmasq 2.90 with the configuration of
FIRMWARE-FACTS §8f, inside a namespace made by tests/lab/ (bridge
10.99.0.1/24 and fd99::1/64, no DAD); nothing leaves that namespace.

  pxe6   OVMF PXEv6 (IPv4 PXE off by fw_cfg) -> TFTP snponly.efi -> iPXE's DHCPv6
  http6  OVMF HTTPv6 (IPv4 off; PXEv6 answered without option 59) -> its Solicit
"""

import argparse
import datetime
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))

from tests import lab  # noqa: E402

MESSAGES = {1: "Solicit", 2: "Advertise", 3: "Request", 5: "Renew", 7: "Reply", 8: "Release",
            11: "Information-Request"}


def read_pcap(path):
    """(seconds, frame) of a classic pcap file (tcpdump -w)."""
    with open(path, "rb") as handle:
        data = handle.read()
    magic = data[:4]
    endian = "<" if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    nano = magic in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d")
    offset = 24
    while offset + 16 <= len(data):
        sec, frac, caplen, _ = struct.unpack(endian + "IIII", data[offset:offset + 16])
        offset += 16
        yield sec + frac / (1e9 if nano else 1e6), data[offset:offset + caplen]
        offset += caplen


def ipv6_packets(path):
    """(time, src mac, src, dst, proto, sport, dport, payload) per IPv6 UDP/ICMPv6 frame."""
    for when, frame in read_pcap(path):
        if len(frame) < 54 or frame[12:14] != b"\x86\xdd":
            continue
        ip = frame[14:]
        nxt = ip[6]
        src, dst = ip[8:24], ip[24:40]
        body = ip[40:40 + struct.unpack("!H", ip[4:6])[0]]
        if nxt == 17 and len(body) >= 8:
            sport, dport = struct.unpack("!HH", body[:4])
            yield when, frame[6:12], src, dst, "udp", sport, dport, body[8:]
        elif nxt == 58:
            yield when, frame[6:12], src, dst, "icmp6", None, None, body


def write_fixture(directory, name, payload, lines):
    path = os.path.join(directory, name + ".hex")
    hexed = payload.hex()
    with open(path, "w", encoding="ascii") as handle:
        for line in lines:
            handle.write("# " + line + "\n")
        for start in range(0, len(hexed), 64):
            handle.write(hexed[start:start + 64] + "\n")
    print("wrote", path, len(payload), "bytes")


def pkg_version(pkg):
    r = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", pkg],
                       stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    return r.stdout.strip() or "?"


def run(scenario, workdir, seconds):
    root = os.path.join(workdir, "root")
    os.makedirs(root, exist_ok=True)
    shutil.copy(lab.ipxe_file("snponly.efi"), root)
    with open(os.path.join(root, "boot.ipxe"), "w") as handle:
        handle.write("#!ipxe\necho capture6 ${ip6}\nsleep 600\n")
    os.chmod(root, 0o755)
    os.chmod(workdir, 0o755)
    pcap = os.path.join(workdir, scenario + ".pcap")
    dnsmasq = lab.dnsmasq6_boot_argv(workdir, root, scenario)
    with lab.NetNamespace() as ns:
        ns.add_ipv6()
        tcpdump = ns.start(["tcpdump", "-i", "br0", "-U", "-s", "0", "-w", pcap, "ip6"],
                           name="tcpdump", log=os.path.join(workdir, "tcpdump.log"))
        time.sleep(1.5)
        ns.start(dnsmasq, name="dnsmasq", log=os.path.join(workdir, scenario + "-dnsmasq.log"))
        if scenario == "http6":
            ns.start([sys.executable, "-m", "http.server", "--bind", "fd99::1", "80"], cwd=root,
                     name="http", log=os.path.join(workdir, "http.log"))
        time.sleep(0.5)
        spec = lab.ovmf_ipv6_guest(scenario)
        serial = os.path.join(workdir, scenario + "-serial.log")
        vm = ns.start_guest(spec, serial_log=serial)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and vm.running:
            if "capture6" in lab.read_text(serial):
                time.sleep(1)
                break
            time.sleep(0.5)
        ns.stop(vm)
        time.sleep(1)
        ns.stop(tcpdump)
    return pcap


def extract(scenario, pcap, directory, seen):
    """The first of each client message per client kind, and the RS/RA; a
    name already written by an earlier scenario of this run is kept."""
    head = ["scenario %s, " % scenario + "captured %s with tcpdump on the namespace bridge by tests/fixtures6/capture6.py" %
            datetime.date.today().isoformat(),
            "QEMU %s TCG, OVMF %s (-bios OVMF.fd, virtio-net-pci romfile=), iPXE %s, server dnsmasq %s"
            % (pkg_version("qemu-system-x86"), pkg_version("ovmf"), pkg_version("ipxe"), pkg_version("dnsmasq"))]
    for when, mac, src, dst, proto, sport, dport, payload in ipv6_packets(pcap):
        if proto == "udp" and dport == 547 and payload:
            kind = payload[0]
            options = dhcp6_option_codes(payload)
            if 15 in options:
                who = "ipxe6"
            elif 61 in options:
                who = "ovmf_http6" if b"HTTPClient" in payload else "ovmf_pxe6"
            else:
                who = "ovmf_ip6config"
            name = "%s_%s" % (who, MESSAGES.get(kind, str(kind)).lower().replace("-", "_"))
            if name in seen:
                continue
            seen.add(name)
            write_fixture(directory, name, payload, [
                "%s: first DHCPv6 %s, UDP payload %d bytes, [%s]:%d -> [%s]:%d, option order %s" % (
                    who, MESSAGES.get(kind, kind), len(payload), fmt6(src), sport, fmt6(dst), dport,
                    " ".join(map(str, options)))] + head)
        elif proto == "udp" and sport == 547 and payload:
            name = "dnsmasq6_%s_%s" % (scenario, MESSAGES.get(payload[0], str(payload[0])).lower())
            if name in seen:
                continue
            seen.add(name)
            write_fixture(directory, name, payload, [
                "dnsmasq's %s (reference answer), %d bytes, to [%s]:%d, options %s" % (
                    MESSAGES.get(payload[0]), len(payload), fmt6(dst), dport,
                    " ".join(map(str, dhcp6_option_codes(payload))))] + head)
        elif proto == "udp" and dport == 69 and payload[:2] == b"\x00\x01":
            name = "%s_tftp6_rrq" % ("ovmf" if sport < 10000 else "ipxe6")
            if name in seen:
                continue
            seen.add(name)
            write_fixture(directory, name, payload, [
                "TFTP RRQ over IPv6 from [%s]:%d, %d bytes" % (fmt6(src), sport, len(payload))] + head)
        elif proto == "icmp6" and payload[:1] in (b"\x85", b"\x86"):
            name = ("ovmf_rs" if payload[0] == 133 else "dnsmasq_ra")
            if name in seen:
                continue
            seen.add(name)
            write_fixture(directory, name, payload, [
                "ICMPv6 %s (type %d), %d bytes, [%s] -> [%s]" % (
                    "Router Solicitation" if payload[0] == 133 else "Router Advertisement",
                    payload[0], len(payload), fmt6(src), fmt6(dst))] + head)


def dhcp6_option_codes(payload):
    codes, offset = [], 4
    while offset + 4 <= len(payload):
        code, length = struct.unpack("!HH", payload[offset:offset + 4])
        codes.append(code)
        offset += 4 + length
    return codes


def fmt6(raw):
    import ipaddress
    return str(ipaddress.IPv6Address(raw))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("scenarios", nargs="*", default=["pxe6"])
    parser.add_argument("--keep", help="keep pcaps and logs here")
    parser.add_argument("--seconds", type=float, default=90)
    args = parser.parse_args()
    workdir = args.keep or tempfile.mkdtemp(prefix="capture6-")
    os.makedirs(workdir, exist_ok=True)
    seen = set()
    for scenario in args.scenarios:
        pcap = run(scenario, workdir, args.seconds)
        extract(scenario, pcap, HERE, seen)
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
