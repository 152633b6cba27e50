"""
Router Advertisements (RFC 4861) for the links a [subnet6:...] names.

Why a boot server sends them (FIRMWARE-FACTS §8d): iPXE starts DHCPv6 only
after an RA with M or O set, and OVMF waits 10 s for a route to the boot
server unless an RA gives it the on-link prefix.  So, per configured link:
M=1 O=1, the prefix with L=1 and A=0 (addresses come from DHCPv6, as
dnsmasq does with a stateful range), MTU and source link-layer address;
sent every 3-4 s and at once on a Router Solicitation.  The router lifetime
is 1800 s (as dnsmasq) unless [subnet6] router_lifetime says otherwise:
OVMF's PXEv6 looks for a route to the boot server before it uses its new
address, at a moment when it does not know the server's address yet, so
only a default route ends that look-up; with lifetime 0 every PXEv6 boot
waited the full 10 s (EDK2 PxeBcCheckRouteTable, seen in
tests/test_boot6_e2e.py).
Operators whose router already advertises set C{router_advertisements =
false}.  Nothing is sent on a link no [subnet6:...] names.

Two things make the firmware faster, both seen in bench/boot_bench.py's
pcaps and both from reading EDK2:
  - The RA's Retrans Timer is 500 ms, not "unspecified" (1 s).  EDK2's Ip6Dxe
    adopts it (Ip6ProcessRouterAdvertise) and times Duplicate Address
    Detection with it, so DAD of the address DHCPv6 just gave (PXE's and
    HTTP boot's, each before the first TFTP/TCP packet) takes ~0.5 s
    instead of ~1-1.7 s.  Not less: with 250 ms OVMF missed ownsocket's
    first OACK to its TFTP size probe in 2 of 5 PXEv6 boots (a 1 s
    retransmission each), with 500 ms in none of 4.  Other hosts on the
    link also retransmit Neighbor Solicitations every 500 ms, which on one
    Ethernet segment is harmless.
  - Right before a DHCPv6 Reply that carries a boot URL goes out, the client
    gets an RA unicast to its link-local address (and once more 0.5 s
    later: L{RouterAdvertiser.nudge}).  PXE and HTTP boot look for a default
    route right after the Reply, once a second (PxeBcCheckRouteTable,
    HttpBootCheckRouteTable), and HTTP boot after a PXEv6 attempt sends no
    Router Solicitation: without the nudge it waits for the next periodic
    RA (FIRMWARE-FACTS §8d: 2-11 s with dnsmasq).

When the advertiser stops (shutdown, or a reload that removes the link's
last [subnet6] or sets router_advertisements = false) it sends one final
multicast RA with Router Lifetime 0 (RFC 4861 §6.2.5, "Ceasing To Be an
Advertising Interface"), so hosts drop ownsocket as a default router at
once instead of after up to 1800 s.  That is all §6.2.5 asks for, and all
the final RA withdraws: it carries no prefix and no RDNSS option, so the
on-link prefix and DNS servers age out with the lifetimes already
advertised (the lease time), together with the addresses leased on the
link, which stay valid after the server is gone.  Only one, sent at once:
at shutdown no later call would run.  A reload that keeps the link only
replaces the RA (L{RouterAdvertiser.set_advertisement}): no zero-lifetime
RA, no flapping default route.

Wire code first (no I/O), then L{RouterAdvertiser}, which owns one raw
ICMPv6 socket and is driven by an injected reactor.
"""

from __future__ import annotations

import random
import socket
import struct
from dataclasses import dataclass, replace
from typing import Optional, Sequence, Tuple

from twisted.logger import Logger

from ownsocket.ratelimit import RateLimitedLog

ROUTER_SOLICITATION, ROUTER_ADVERTISEMENT = 133, 134
OPT_SOURCE_LLADDR, OPT_PREFIX_INFO, OPT_MTU, OPT_RDNSS = 1, 3, 5, 25
FLAG_MANAGED, FLAG_OTHER = 0x80, 0x40
PREFIX_ON_LINK, PREFIX_AUTONOMOUS = 0x80, 0x40
ALL_NODES = "ff02::1"
ALL_ROUTERS = "ff02::2"

#: RFC 4861 §6.2.1 allows MaxRtrAdvInterval down to 4 s (Min 3 s); the
#: firmware that waits for an RA waits for the next one, so stay at the floor.
INTERVAL = (3.0, 4.0)
#: Multicast answers to solicitations from "::" (OVMF) at most this often.
MULTICAST_ANSWER_GAP = 0.5
#: The Retrans Timer advertised (ms): EDK2 times DAD with it (module docstring).
RETRANS_TIMER_MS = 500
#: A booting client gets a second unicast RA this long after the first.
NUDGE_AGAIN = 0.5


class MalformedPacket(ValueError):
    """Not a Router Solicitation this advertiser may answer."""


@dataclass(frozen=True)
class Prefix:
    network: object  # ipaddress.IPv6Network
    valid: int
    preferred: int
    on_link: bool = True
    autonomous: bool = False


@dataclass(frozen=True)
class Advertisement:
    """Everything one link's RA says."""

    prefixes: Tuple[Prefix, ...]
    managed: bool = True
    other: bool = True
    router_lifetime: int = 0
    mtu: Optional[int] = None
    source_mac: Optional[str] = None
    dns: Tuple[object, ...] = ()
    dns_lifetime: int = 0
    retrans_timer: int = 0  # ms; 0 = unspecified


def build_ra(ad: Advertisement) -> bytes:
    """The ICMPv6 message (checksum 0: the kernel fills it in for raw
    ICMPv6 sockets, RFC 3542 §3.1)."""
    flags = (FLAG_MANAGED if ad.managed else 0) | (FLAG_OTHER if ad.other else 0)
    data = struct.pack("!BBHBBHII", ROUTER_ADVERTISEMENT, 0, 0, 64, flags, ad.router_lifetime, 0,
                       ad.retrans_timer)
    if ad.source_mac:
        data += struct.pack("!BB", OPT_SOURCE_LLADDR, 1) + bytes.fromhex(ad.source_mac.replace(":", ""))
    if ad.mtu:
        data += struct.pack("!BBHI", OPT_MTU, 1, 0, ad.mtu)
    for prefix in ad.prefixes:
        bits = (PREFIX_ON_LINK if prefix.on_link else 0) | (PREFIX_AUTONOMOUS if prefix.autonomous else 0)
        data += struct.pack("!BBBBIII", OPT_PREFIX_INFO, 4, prefix.network.prefixlen, bits,
                            prefix.valid, prefix.preferred, 0) + prefix.network.network_address.packed
    if ad.dns:
        data += struct.pack("!BBHI", OPT_RDNSS, 1 + 2 * len(ad.dns), 0, ad.dns_lifetime)
        data += b"".join(address.packed for address in ad.dns)
    return data


def final_advertisement(ad: Advertisement) -> Advertisement:
    """
    The RA a link gets when ownsocket stops advertising there (RFC 4861
    §6.2.5): Router Lifetime 0, so hosts stop using this host as a default
    router; no prefix or RDNSS option, so what hosts learnt of those ages
    out as advertised (module docstring).
    """
    return replace(ad, router_lifetime=0, prefixes=(), dns=(), dns_lifetime=0)


@dataclass(frozen=True)
class RouterSolicitation:
    source_mac: Optional[str] = None


def parse_rs(data: bytes, unspecified_source: bool = False) -> RouterSolicitation:
    """
    A Router Solicitation, validated as RFC 4861 §6.1.1 asks (the hop limit
    is checked by the socket layer: see L{open_ra_socket}).

    @raise MalformedPacket: anything else.
    """
    if len(data) < 8:
        raise MalformedPacket(f"{len(data)} bytes is shorter than a Router Solicitation")
    if data[0] != ROUTER_SOLICITATION:
        raise MalformedPacket(f"ICMPv6 type {data[0]} is not a Router Solicitation")
    if data[1] != 0:
        raise MalformedPacket(f"code {data[1]} is not 0")
    offset, mac = 8, None
    while offset < len(data):
        if offset + 2 > len(data):
            raise MalformedPacket("option header cut off")
        kind, units = data[offset], data[offset + 1]
        if units == 0:
            raise MalformedPacket(f"option {kind} with length 0")
        end = offset + units * 8
        if end > len(data):
            raise MalformedPacket(f"option {kind} runs past the end")
        if kind == OPT_SOURCE_LLADDR:
            if unspecified_source:
                raise MalformedPacket("source link-layer address from the unspecified address")
            if units == 1:
                mac = ":".join(f"{b:02x}" for b in data[offset + 2:offset + 8])
        offset = end
    return RouterSolicitation(mac)


def advertisement_for(subnets: Sequence, mac: Optional[str], mtu: Optional[int]) -> Optional[Advertisement]:
    """The RA for one link, or None when no subnet there wants RAs."""
    wanted = [subnet for subnet in subnets if subnet.router_advertisements]
    if not wanted:
        return None
    dns = tuple(address for subnet in wanted for address in subnet.dns)
    return Advertisement(
        prefixes=tuple(Prefix(subnet.network, subnet.lease_time, subnet.lease_time) for subnet in wanted),
        router_lifetime=max(subnet.router_lifetime for subnet in wanted),
        mtu=mtu, source_mac=mac, dns=dns, dns_lifetime=max(subnet.lease_time for subnet in wanted) if dns else 0,
        retrans_timer=RETRANS_TIMER_MS)


# ---------------------------------------------------------------------------
# Sockets and the advertiser

ICMP6_FILTER = getattr(socket, "ICMP6_FILTER", 1)
IPV6_RECVHOPLIMIT = getattr(socket, "IPV6_RECVHOPLIMIT", 51)
IPV6_HOPLIMIT = getattr(socket, "IPV6_HOPLIMIT", 52)


def open_ra_socket(interface: str) -> socket.socket:
    """A raw ICMPv6 socket on one interface: sends with hop limit 255 (the
    receivers drop anything else), hears only Router Solicitations, joined to
    all-routers, and does not loop its own RAs back to this host."""
    index = socket.if_nametoindex(interface)
    sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    try:
        sock.setsockopt(socket.SOL_SOCKET, getattr(socket, "SO_BINDTODEVICE", 25), interface.encode() + b"\0")
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, 255)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, index)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 0)
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVHOPLIMIT, 1)
        # ICMP6_FILTER: a bit set blocks that type; let only type 133 through.
        blocked = bytearray(b"\xff" * 32)
        blocked[ROUTER_SOLICITATION >> 5 << 2:(ROUTER_SOLICITATION >> 5 << 2) + 4] = struct.pack(
            "=I", 0xFFFFFFFF & ~(1 << (ROUTER_SOLICITATION & 31)))
        sock.setsockopt(socket.IPPROTO_ICMPV6, ICMP6_FILTER, bytes(blocked))
        group = socket.inet_pton(socket.AF_INET6, ALL_ROUTERS) + struct.pack("=I", index)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, group)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def _index_of(interface):
    try:
        return socket.if_nametoindex(interface)
    except OSError:
        return 0  # the socket is bound to the device anyway


class _Reader:
    """The reactor's view of the raw socket (IReadDescriptor)."""

    def __init__(self, advertiser):
        self.advertiser = advertiser

    def fileno(self):
        sock = self.advertiser.sock
        return sock.fileno() if sock is not None else -1

    def doRead(self):
        self.advertiser.read()

    def logPrefix(self):
        return f"RA {self.advertiser.interface}"

    def connectionLost(self, reason):
        pass


class RouterAdvertiser:
    """
    RAs on one interface: periodically, and at once when a host solicits.

    @param reactor: provides callLater, seconds, addReader/removeReader.
    @param sock: an open raw ICMPv6 socket (L{open_ra_socket}).
    """

    log = Logger()

    def __init__(self, interface: str, advertisement: Advertisement, reactor, sock,
                 interval=INTERVAL, rng=None, index=None):
        self.interface = interface
        self.reactor = reactor
        self.sock = sock
        self.interval = interval
        self.rng = rng or random.Random()
        self._index = index if index is not None else _index_of(interface)
        self._timer = None
        self._nudges = {}
        self._last_multicast = None
        self._reader = _Reader(self)
        self._drop_log = RateLimitedLog(self.log.warn, reactor)
        self._started = False
        self.sent = 0
        self.set_advertisement(advertisement)

    def set_advertisement(self, advertisement: Advertisement):
        self.advertisement = advertisement
        self._data = build_ra(advertisement)

    def start(self):
        self.reactor.addReader(self._reader)
        self._started = True
        self._multicast()
        self._schedule()

    def stop(self):
        """
        Stop advertising and close the socket (which also leaves
        all-routers).  If RAs went out, first one final multicast RA with
        Router Lifetime 0 (L{final_advertisement}), sent before this
        returns so that it also goes out during the reactor's shutdown.
        """
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        for call in self._nudges.values():
            if call.active():
                call.cancel()
        self._nudges = {}
        if self.sock is not None:
            if self._started:
                self._data = build_ra(final_advertisement(self.advertisement))
                self._send((ALL_NODES, 0, 0, self._index))
                self.log.info("Router Advertisements on {interface} stopped: sent a final one with router "
                              "lifetime 0", interface=self.interface)
                self.reactor.removeReader(self._reader)
            self.sock.close()
            self.sock = None

    def _schedule(self):
        low, high = self.interval
        self._timer = self.reactor.callLater(self.rng.uniform(low, high), self._periodic)

    def _periodic(self):
        self._multicast()
        self._schedule()

    def _multicast(self):
        self._last_multicast = self.reactor.seconds()
        self._send((ALL_NODES, 0, 0, self._index))

    def _send(self, address):
        if self.sock is None:
            return
        try:
            self.sock.sendto(self._data, address)
            self.sent += 1
        except OSError as error:
            self._drop_log("cannot send a Router Advertisement on {interface}: {error}",
                           interface=self.interface, error=error.strerror or error)

    def nudge(self, host: str):
        """
        An RA unicast to C{host} (a link-local address) now, and once more
        L{NUDGE_AGAIN} s later: called right before a boot Reply goes to it
        (module docstring).  At most one later RA is pending per host, so a
        client repeating its Request does not pile them up.
        """
        host = host.split("%", 1)[0]
        if not host.lower().startswith("fe80:") or self.sock is None:
            return
        self._send((host, 0, 0, self._index))
        if host not in self._nudges:
            def again():
                del self._nudges[host]
                self._send((host, 0, 0, self._index))
            self._nudges[host] = self.reactor.callLater(NUDGE_AGAIN, again)

    def read(self):
        for _ in range(64):  # bounded: a flood cannot hold the reactor
            try:
                data, ancillary, _, source = self.sock.recvmsg(1500, socket.CMSG_SPACE(4))
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                self._drop_log("RA socket on {interface}: {error}", interface=self.interface, error=error)
                return
            hop_limit = None
            for level, kind, value in ancillary:
                if level == socket.IPPROTO_IPV6 and kind == IPV6_HOPLIMIT and len(value) >= 4:
                    hop_limit = struct.unpack("=i", value[:4])[0]
            self.solicited(data, source[0], hop_limit)

    def solicited(self, data: bytes, source: str, hop_limit: Optional[int] = 255):
        """Answer one Router Solicitation: unicast to a host that has its
        link-local address, multicast (rate-limited) for one from "::"."""
        unspecified = source.split("%", 1)[0] == "::"
        try:
            if hop_limit is not None and hop_limit != 255:
                raise MalformedPacket(f"hop limit {hop_limit}, not 255 (not from this link)")
            rs = parse_rs(data, unspecified)
        except MalformedPacket as error:
            self._drop_log("dropped Router Solicitation from {source} on {interface}: {reason}",
                           source=source, interface=self.interface, reason=error)
            return
        if rs.source_mac is not None and rs.source_mac == self.advertisement.source_mac:
            return  # this host's own kernel soliciting on the link: not for us to answer
        if unspecified:
            now = self.reactor.seconds()
            if self._last_multicast is not None and now - self._last_multicast < MULTICAST_ANSWER_GAP:
                return
            self._multicast()
        else:
            self._send((source.split("%", 1)[0], 0, 0, self._index))
