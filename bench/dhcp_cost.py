#!/usr/bin/env python3
"""
CPU cost of one DHCP exchange inside the server, with no network.

perfdhcp (bench/dhcp_bench.py) shows what a client sees, but on a 2-core
machine it shares the CPU with the server and its figures move with the
machine's load.  This script drives the real DHCP service as twistd builds it
(config file, selector chain, SQLite lease file with group commits, the log
observer writing a file, and the admin metrics and trail when enabled)
through a fake transport: batches of DISCOVERs, then batches of the matching
REQUESTs, as a socket read would hand them over.  It prints microseconds of
CPU per exchange (DISCOVER+OFFER+REQUEST+ACK), so a change to the hot path
can be measured in seconds, and optionally a cProfile table.

    python3 bench/dhcp_cost.py [--exchanges 20000] [--batch 32] [--admin on|off] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import os
import platform
import pstats
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from twisted.internet import task  # noqa: E402
from twisted.logger import globalLogBeginner  # noqa: E402

from ownsocket import tap  # noqa: E402
from ownsocket.logformat import TextObserver  # noqa: E402
from ownsocket.dhcp.protocol import DhcpProtocol  # noqa: E402
from ownsocket.dhcp.server import Arrival  # noqa: E402
import ipaddress  # noqa: E402

from tests.packets import request as packet  # noqa: E402

SERVER = "10.80.0.1"

CONFIG = """\
[dhcp]
interfaces = lo
leases = {directory}/leases.sqlite

[tftp]
root = {directory}

[admin]
enabled = {admin}

[subnet:bench]
network = 10.80.0.0/16
pool = 10.80.1.0-10.80.250.255
router = 10.80.0.1
lease_time = 3600

[boot]
default = undionly.kpxe
arch.7 = snponly.efi
"""


class Transport:
    def __init__(self):
        self.sent = 0

    def write(self, data, address):
        self.sent += 1

    def setBroadcastAllowed(self, allowed):
        pass


def build(directory, admin):
    path = os.path.join(directory, "ownsocket.ini")
    with open(path, "w") as handle:
        handle.write(CONFIG.format(directory=directory, admin="true" if admin else "false"))
    for name in ("undionly.kpxe", "snponly.efi"):
        with open(os.path.join(directory, name), "wb") as handle:
            handle.write(b"\0" * 1000)
    clock = task.Clock()
    clock.advance(time.time())
    top = tap.makeService({"config": path}, reactor=clock)
    runtime = top.runtime
    dhcp = runtime.dhcp
    dhcp.store = dhcp._store_factory(dhcp.config.dhcp.leases, clock)
    from ownsocket.dhcp.server import DhcpServer
    dhcp.server = DhcpServer(dhcp.config, dhcp.store, dhcp.selector, clock,
                             boot_file_size=dhcp.boot_file_size, recent=dhcp.recent, events=dhcp.events)
    if runtime.admin is not None:
        runtime.events.subscribe(runtime.admin.metrics)
        runtime.events.subscribe(runtime.admin.trail)
    protocol = DhcpProtocol(dhcp.server, Arrival("lo", __import__("ipaddress").IPv4Address(SERVER)), clock)
    protocol.transport = Transport()
    return clock, protocol


#: what bench/dhcp_bench.py has perfdhcp send: UEFI PXE options
PXE = [(55, bytes([1, 28, 2, 3, 15, 6, 12])), (60, b"PXEClient:Arch:00007:UNDI:003000"),
       (93, b"\x00\x07"), (94, b"\x01\x03\x00"), (97, bytes(17))]


_DISCOVER = packet(message_type=1, options=PXE)
_REQUEST = packet(message_type=3, options=[(50, bytes(4)), (54, ipaddress.IPv4Address(SERVER).packed)] + PXE)


def _stamp(template, mac, xid):
    """The template with this client's xid and chaddr: built once, patched
    per client, so that building test packets costs next to nothing."""
    data = bytearray(template)
    data[4:8] = xid.to_bytes(4, "big")
    data[28:34] = bytes.fromhex(mac.replace(":", ""))
    return data


def discover(mac, xid):
    return bytes(_stamp(_DISCOVER, mac, xid))


def request(mac, xid, requested):
    data = _stamp(_REQUEST, mac, xid)
    data[245:249] = requested.packed  # option 50's value: cookie(240) 53(3) 50 hdr(2)
    return bytes(data)


def packets(count):
    """count distinct client MACs."""
    return [f"52:54:{(i >> 24) & 255:02x}:{(i >> 16) & 255:02x}:{(i >> 8) & 255:02x}:{i & 255:02x}"
            for i in range(1, count + 1)]


def run(protocol, clock, macs, batch, offered):
    sent = protocol.transport
    for start in range(0, len(macs), batch):
        chunk = macs[start:start + batch]
        for index, mac in enumerate(chunk):
            protocol.datagramReceived(discover(mac, start + index), ("10.80.0.2", 67))
        clock.advance(0)
        for index, mac in enumerate(chunk):
            address = offered.get(mac)
            protocol.datagramReceived(request(mac, start + index, address), ("10.80.0.2", 67))
        clock.advance(0)
        clock.advance(0.001)
    return sent.sent


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--exchanges", type=int, default=20000)
    parser.add_argument("--batch", type=int, default=32, help="datagrams per socket read")
    parser.add_argument("--admin", choices=("on", "off"), default="on")
    parser.add_argument("--warmup", type=int, default=0,
                        help="exchanges run before the timed ones (PyPy's JIT needs ~20,000)")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ownsocket-cost-") as directory:
        log = open(os.path.join(directory, "ownsocket.log"), "w")
        clock, protocol = build(directory, args.admin == "on")
        # the observer twistd gets from ownsocket (ownsocket.logformat)
        globalLogBeginner.beginLoggingTo([TextObserver(log, clock.callLater)], discardBuffer=True,
                                         redirectStandardIO=False)
        macs = packets(args.warmup + args.exchanges)
        offered = _offers(protocol, macs)
        if args.warmup:
            run(protocol, clock, macs[:args.warmup], args.batch, offered)
            protocol.transport.sent = 0
            macs = macs[args.warmup:]
        profiler = cProfile.Profile() if args.profile else None
        started = time.process_time()
        if profiler:
            profiler.enable()
        sent = run(protocol, clock, macs, args.batch, offered)
        if profiler:
            profiler.disable()
        cpu = time.process_time() - started
        log.close()
        print(f"{args.exchanges} exchanges ({platform.python_implementation()}, {args.warmup} before), "
              f"batch {args.batch}, admin {args.admin}: "
              f"{sent} replies, {cpu:.2f} s CPU, {1e6 * cpu / args.exchanges:.0f} us per exchange "
              f"({args.exchanges / cpu:.0f} exchanges per CPU-second)")
        if sent != 2 * args.exchanges:
            print(f"warning: expected {2 * args.exchanges} replies", file=sys.stderr)
        if profiler:
            pstats.Stats(profiler).sort_stats("tottime").print_stats(30)


def _offers(protocol, macs):
    """The address each client will be offered: the pool hands them out in a
    hashed order, so ask a scratch copy of the policy is not possible; instead
    the REQUEST names no option 50 and the server's offer is looked up."""
    return _OfferLookup(protocol)


class _OfferLookup:
    def __init__(self, protocol):
        self.store = protocol.server.store

    def get(self, mac):
        leases = self.store._by_mac.get(mac)
        return leases[-1].address if leases else None


if __name__ == "__main__":
    main()
