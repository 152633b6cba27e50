#!/usr/bin/env python3
"""
DHCP: the parser, then the policy's handling of whatever parsed.

Input: a program of up to 8 datagrams, each preceded by three bytes: where
it arrived (the DHCP server on eth0 or eth1, on an interface with no
address, proxyDHCP on port 67, the boot server on port 4011), a clock step
(x 10 s), and its length in 2-byte units.  All datagrams of one input go to
one server and one in-memory lease store, so a REQUEST can follow its
OFFER and a RELEASE its ACK; each input starts afresh (a crash reproduces
from the input alone).

What counts as a bug: any exception from parse() other than
MalformedPacket; any exception from handle(); an exception the code
caught and logged as a failure; a reply that is not a well-formed
BOOTREPLY of at least 300 bytes; an address handed out outside the
configured subnets, or by proxyDHCP at all; a lease stored outside them.
Seeds: the firmware captures in tests/fixtures/*.hex under every arrival,
alone and as DISCOVER+REQUEST pairs.
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


# Plugin discovery (dropin cache, module scan) was 80% of each input's
# time: do it once.  The selectors themselves are built fresh per input.
from ownsocket.boot import loader  # noqa: E402
loader.check_plugin_modules("<fuzz>")
_PLUGINS = loader.available_plugins()
loader.available_plugins = lambda: _PLUGINS
loader.check_plugin_modules = lambda source: None


def _selector(config, clock):
    return build_selector(config, clock)


SERVER = configuration.load(text=SERVER_CONFIG, known_interfaces={"eth0", "eth1"})
PROXY = configuration.load(text=PROXY_CONFIG, known_interfaces={"br0"})
_SIZE_TABLE = {"snponly.efi": 1_000_000, "undionly.kpxe": 70_000}


def SIZES(name, boot_request=None):
    return _SIZE_TABLE.get(name)

ARRIVALS = [
    ("dhcp", Arrival("eth0", IP("10.0.0.1"))),
    ("dhcp", Arrival("eth1", IP("10.9.0.1"))),
    ("dhcp", Arrival(None, None)),
    ("proxy", ProxyArrival("br0", IP("10.99.0.2"), 67)),
    ("proxy", ProxyArrival("br0", IP("10.99.0.2"), 4011)),
]

trap = _harness.FailureTrap().install()


def _options(data: bytes) -> dict:
    """The reply's options (code -> value), checking the layout on the way:
    cookie, every option inside the packet, an End option."""
    assert data[236:240] == b"\x63\x82\x53\x63", data[236:240]
    options = {}
    at = 240
    while True:
        assert at < len(data), "no End option"
        code = data[at]
        if code == 255:
            return options
        if code == 0:
            at += 1
            continue
        assert at + 1 < len(data), "option length past the end"
        length = data[at + 1]
        assert at + 2 + length <= len(data), f"option {code} runs past the end"
        options.setdefault(code, data[at + 2:at + 2 + length])
        at += 2 + length


NETWORKS = [subnet.network for subnet in SERVER.subnets]


def _check_replies(kind, replies):
    """Well-formed BOOTREPLYs of at least 300 bytes (Linux's in-kernel
    client ignores less); addresses only from configured subnets; a
    proxyDHCP reply never hands out an address."""
    for out in replies:
        data = out.data
        assert data[0] == 2, data[:1]
        assert len(data) >= 300, len(data)
        assert 0 <= out.port <= 65535, out.port
        options = _options(data)
        yiaddr = IP(data[16:20])
        if kind == "proxy":
            assert yiaddr == IP(0), ("proxyDHCP handed out", yiaddr)
        elif yiaddr != IP(0) and options.get(53) != b"\x06":   # a NAK carries none
            assert any(yiaddr in network for network in NETWORKS), ("outside every subnet", yiaddr)


def _run(handle, message, arrival, source, clock, kind):
    outcome = []
    defer.maybeDeferred(handle, message, arrival, source).addBoth(outcome.append)
    clock.advance(60)   # selector timeouts
    [replies] = outcome
    if hasattr(replies, "raiseException"):
        replies.raiseException()
    _check_replies(kind, replies)


def _packets(data: bytes):
    """Split the input: [arrival][clock step][length][packet] repeated."""
    at = 0
    while at + 3 <= len(data):
        selector, step, length = data[at], data[at + 1], data[at + 2]
        yield selector, step, data[at + 3:at + 3 + length * 2]
        at += 3 + length * 2


def test_one_input(data: bytes) -> None:
    """Up to 8 datagrams, in order, to one server and one lease store (so
    a REQUEST can follow its OFFER, a RELEASE its ACK)."""
    clock = Clock()
    clock.advance(1_000_000)
    store = SqliteLeaseStore(":memory:")
    try:
        server = DhcpServer(SERVER, store, _selector(SERVER, clock), clock, boot_file_size=SIZES)
        proxy = ProxyServer(PROXY, _selector(PROXY, clock), make_boot_request, boot_file_size=SIZES)
        for count, (selector, step, packet) in enumerate(_packets(data)):
            if count == 8:
                break
            clock.advance(step * 10)
            try:
                message = wire.parse(packet)
            except wire.MalformedPacket:
                continue
            kind, arrival = ARRIVALS[selector % len(ARRIVALS)]
            if kind == "dhcp":
                with server.batch():
                    _run(server.handle, message, arrival, ("10.0.0.200", 68), clock, kind)
            else:
                _run(proxy.handle, message, arrival, ("10.99.0.50", 68), clock, kind)
            trap.check()
        # Whatever happened, the store holds one lease per address, each
        # inside a configured subnet.
        for lease in store.all_leases():
            assert any(lease.address in network for network in NETWORKS), lease
    finally:
        store.close()
    trap.check()


def _chunk(selector, step, packet):
    """One program step; packets are padded to an even length."""
    if len(packet) % 2:
        packet += b"\x00"
    assert len(packet) // 2 < 256
    return bytes([selector, step, len(packet) // 2]) + packet


def _as_request(discover: bytes, address: str, server: str) -> bytes:
    """The DISCOVER turned into the REQUEST for an offer of C{address}."""
    kept = []
    at = 240
    while at < len(discover) and discover[at] != 255:
        code = discover[at]
        if code == 0:
            at += 1
            continue
        length = discover[at + 1]
        if code not in (50, 53, 54):
            kept.append(discover[at:at + 2 + length])
        at += 2 + length
    return (discover[:240] + b"\x35\x01\x03" + b"\x32\x04" + IP(address).packed
            + b"\x36\x04" + IP(server).packed + b"".join(kept) + b"\xff")


def seeds():
    from tests.fixtures_loader import fixture_names, load_hex
    names = [name for name in fixture_names() if "tftp" not in name]
    # Whole exchanges on eth0 (pool 10.0.0.100-103): DISCOVER, REQUEST for
    # the first pool address, then a RELEASE or a renewal an hour later.
    for name in names:
        if name.endswith("_discover"):
            discover = load_hex(name)
            request = _as_request(discover, "10.0.0.100", "10.0.0.1")
            release = bytearray(request)
            release[242] = 7
            yield _chunk(0, 0, discover) + _chunk(0, 1, request) + _chunk(0, 0, bytes(release))
            yield _chunk(0, 0, discover) + _chunk(0, 1, request) + _chunk(0, 255, request)
    for name in names:
        for selector in range(len(ARRIVALS)):
            yield _chunk(selector, 0, load_hex(name))
    # Exchanges: each firmware's DISCOVER then its REQUEST, on each arrival.
    for name in names:
        if name.endswith("_discover") and name[:-9] + "_request" in names:
            for selector in range(len(ARRIVALS)):
                yield (_chunk(selector, 0, load_hex(name))
                       + _chunk(selector, 1, load_hex(name[:-9] + "_request")))


if __name__ == "__main__":
    _harness.main("dhcp", test_one_input, seeds())
