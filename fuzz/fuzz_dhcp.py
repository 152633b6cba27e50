#!/usr/bin/env python3
"""
DHCP: the parser, then the policy's handling of whatever parsed.

Input: one selector byte, then the datagram.  The byte picks where the
datagram arrived: the DHCP server on eth0 or eth1, the DHCP server through
a relay-less interface with no address, proxyDHCP on port 67, or the boot
server on port 4011.  Each input gets a fresh server and an in-memory lease
store (a crash reproduces from the input alone).

What counts as a bug: any exception from parse() other than
MalformedPacket; any exception from handle(); a reply our own parser
rejects; an exception the code caught and logged as a failure.
Seeds: the firmware captures in tests/fixtures/*.hex under every selector.
"""

import ipaddress
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _harness  # noqa: E402

import atheris  # noqa: E402

with atheris.instrument_imports(include=["ownsocket"]):
    from ownsocket import config as configuration
    from ownsocket.dhcp import wire
    from ownsocket.dhcp.leases import SqliteLeaseStore
    from ownsocket.dhcp.proxy import ProxyArrival, ProxyServer
    from ownsocket.dhcp.server import Arrival, DhcpServer, make_boot_request
    try:
        from ownsocket.tap import build_selector
    except ImportError:   # merged elsewhere
        from ownsocket.boot.loader import build_chain as build_selector

from twisted.internet import defer  # noqa: E402
from twisted.internet.task import Clock  # noqa: E402

IP = ipaddress.IPv4Address

SERVER_CONFIG = """
[dhcp]
decline_time = 300
bootp_dynamic = true
[subnet:lab]
network = 10.0.0.0/24
interface = eth0
pool = 10.0.0.100-10.0.0.103
router = 10.0.0.1
dns = 10.0.0.2, 10.0.0.3
lease_time = 600
[subnet:far]
network = 10.9.0.0/24
pool = 10.9.0.10-10.9.0.20
router = 10.9.0.1
[host:pinned]
mac = 52:54:00:00:00:aa
address = 10.0.0.50
hostname = pinned
bootfile = special.efi
[http]
enabled = true
[boot]
default = undionly.kpxe
arch.0 = undionly.kpxe
arch.7 = snponly.efi
arch.16 = http://10.0.0.1/snponly.efi
[selector:ipxe]
script = boot.ipxe
"""

PROXY_CONFIG = """
[dhcp]
mode = proxy
[http]
enabled = true
[boot]
default = undionly.kpxe
arch.7 = snponly.efi
[selector:ipxe]
script = boot.ipxe
"""


def _selector(config, clock):
    return build_selector(config, clock)


SERVER = configuration.load(text=SERVER_CONFIG, known_interfaces={"eth0", "eth1"})
PROXY = configuration.load(text=PROXY_CONFIG, known_interfaces={"br0"})
SIZES = {"snponly.efi": 1_000_000, "undionly.kpxe": 70_000}.get

ARRIVALS = [
    ("dhcp", Arrival("eth0", IP("10.0.0.1"))),
    ("dhcp", Arrival("eth1", IP("10.9.0.1"))),
    ("dhcp", Arrival(None, None)),
    ("proxy", ProxyArrival("br0", IP("10.99.0.2"), 67)),
    ("proxy", ProxyArrival("br0", IP("10.99.0.2"), 4011)),
]

trap = _harness.FailureTrap().install()


def _check_reply(data: bytes) -> None:
    """A well-formed BOOTREPLY: cookie, options inside the packet, an End
    option, at least 300 bytes (Linux's in-kernel client ignores less)."""
    assert data[0] == 2, data[:1]
    assert len(data) >= 300, len(data)
    assert data[236:240] == b"\x63\x82\x53\x63", data[236:240]
    at = 240
    while True:
        assert at < len(data), "no End option"
        code = data[at]
        if code == 255:
            break
        if code == 0:
            at += 1
            continue
        assert at + 1 < len(data), "option length past the end"
        at += 2 + data[at + 1]
        assert at <= len(data), f"option {code} runs past the end"


def _check_replies(replies):
    for out in replies:
        _check_reply(out.data)
        assert 0 <= out.port <= 65535, out.port


def test_one_input(data: bytes) -> None:
    if not data:
        return
    kind, arrival = ARRIVALS[data[0] % len(ARRIVALS)]
    try:
        message = wire.parse(data[1:])
    except wire.MalformedPacket:
        trap.check()
        return
    clock = Clock()
    clock.advance(1_000_000)
    if kind == "dhcp":
        store = SqliteLeaseStore(":memory:")
        try:
            server = DhcpServer(SERVER, store, _selector(SERVER, clock), clock,
                                boot_file_size=SIZES)
            result = server.handle(message, arrival, ("10.0.0.200", 68))
            outcome = []
            defer.maybeDeferred(lambda: result).addBoth(outcome.append)
            clock.advance(60)   # selector timeouts, offer holds
            [replies] = outcome
            if isinstance(replies, Exception) or hasattr(replies, "raiseException"):
                replies.raiseException()
            _check_replies(replies)
        finally:
            store.close()
    else:
        server = ProxyServer(PROXY, _selector(PROXY, clock), make_boot_request,
                             boot_file_size=SIZES)
        result = server.handle(message, arrival, ("10.99.0.50", 68))
        outcome = []
        defer.maybeDeferred(lambda: result).addBoth(outcome.append)
        clock.advance(60)
        [replies] = outcome
        if hasattr(replies, "raiseException"):
            replies.raiseException()
        _check_replies(replies)
    trap.check()


def seeds():
    from tests.fixtures_loader import fixture_names, load_hex
    for name in fixture_names():
        if "tftp" in name:
            continue
        packet = load_hex(name)
        for selector in range(len(ARRIVALS)):
            yield bytes([selector]) + packet


if __name__ == "__main__":
    _harness.main("dhcp", test_one_input, seeds())
