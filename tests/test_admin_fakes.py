"""
A small stand-in for the runtime the admin listener is given, and helpers
that publish the events a real boot would, so the admin tests do not need
the DHCP/TFTP services (their events are tested where they are published).
"""

from dataclasses import dataclass, field
from typing import Tuple

from twisted.internet.task import Clock

from ownsocket.events import EventBus

MAC = "52:54:00:12:34:56"


@dataclass(frozen=True)
class FakeAdminConfig:
    enabled: bool = True
    addresses: Tuple[str, ...] = ("127.0.0.1",)
    port: int = 0
    boots: int = 1000
    events_per_boot: int = 64
    stall_after: float = 30.0


@dataclass(frozen=True)
class FakeSubnet:
    name: str


@dataclass(frozen=True)
class FakeConfig:
    source: str = "/etc/ownsocket/site.ini"
    admin: FakeAdminConfig = field(default_factory=FakeAdminConfig)
    subnets: Tuple[FakeSubnet, ...] = (FakeSubnet("lab"),)


class FakeDhcp:
    def __init__(self, counts=None):
        self.counts = counts if counts is not None else {
            ("lab", "free"): 90, ("lab", "offered"): 2, ("lab", "bound"): 7, ("lab", "declined"): 1}

    def address_counts(self):
        return dict(self.counts)


class FakeTransfers:
    def __init__(self, transfers=()):
        self.transfers = list(transfers)

    def transfers_in_flight(self):
        return [dict(t) for t in self.transfers]


class FakeRuntime:
    def __init__(self, config=None, reactor=None, dhcp=None, tftp=None, http=None,
                 selectors=("host", "ipxe", "arch")):
        self.config = config if config is not None else FakeConfig()
        self.config_hash = "sha256:0123456789abcdef"
        self.reactor = reactor if reactor is not None else Clock()
        self.started_at = self.reactor.seconds()
        self.events = EventBus(self.reactor)
        self.dhcp = dhcp
        self.tftp = tftp
        self.http = http
        self.selectors = tuple(selectors)


def dhcp_exchange(bus, mac=MAC, address="10.0.0.100", file="undionly.kpxe", selector="arch",
                  arch="bios", reason="arch.0 = undionly.kpxe", service="dhcp", interface="br0",
                  clock=None, step=0.0):
    """DISCOVER, OFFER, REQUEST, ACK (and the lease commit) as the DHCP service publishes them."""
    def tick():
        if clock is not None and step:
            clock.advance(step)
    bus.publish(service, "received", mac=mac, message="discover", xid=1, interface=interface)
    tick()
    bus.publish(service, "sent", mac=mac, message="offer", xid=1, address=address, file=file,
                selector=selector, arch=arch, reason=reason)
    tick()
    bus.publish(service, "received", mac=mac, message="request", xid=1, interface=interface)
    tick()
    bus.publish(service, "sent", mac=mac, message="ack", xid=1, address=address, file=file,
                selector=selector, arch=arch, reason=reason)
    if service == "dhcp" and address:
        bus.publish(service, "committed", mac=mac, address=address, seconds=0.002)


def tftp_transfer(bus, peer="10.0.0.100", file="undionly.kpxe", result="ok", size=70000,
                  clock=None, seconds=0.5, block=None, error=None, service="tftp"):
    """An RRQ accepted and finished."""
    if service == "tftp":
        bus.publish("tftp", "started", peer=peer, file=file, blksize=1432, windowsize=4, size=size)
    else:
        bus.publish("http", "started", peer=peer, file=file, size=size)
    if clock is not None:
        clock.advance(seconds)
    sent = size if result == "ok" else 0
    if service == "tftp":
        bus.publish("tftp", "finished", peer=peer, file=file, result=result, bytes=sent, seconds=seconds,
                    retransmits=0, block=block if block is not None else (size // 1432 + 1),
                    blksize=1432, windowsize=4, error=error)
    else:
        bus.publish("http", "finished", peer=peer, file=file, result=result, bytes=sent, seconds=seconds,
                    status=200 if result == "ok" else 404)
