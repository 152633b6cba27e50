"""
The DHCPv6 service: one UDP 547 socket and one Router Advertiser per link
that a [subnet6:...] names, the lease store and the policy wired together.

Sockets are opened in privilegedStartService (port 547 and raw ICMPv6 need
root) so that twistd --uid/--gid can drop privileges afterwards.  Each UDP
socket is bound to its device (SO_BINDTODEVICE) and joined to
All_DHCP_Relay_Agents_and_Servers (ff02::1:2) there, so a reply to a
client's link-local address leaves through the interface the Solicit came
in on, as with the per-interface DHCPv4 sockets.
"""

from __future__ import annotations

import errno
import hashlib
import ipaddress
import os
import socket
import struct

from twisted.application.service import Service
from twisted.internet import defer
from twisted.logger import Logger

from ownsocket.dhcp.sockets import SocketError
from ownsocket.dhcp6 import ra, wire
from ownsocket.dhcp6.pgstore import open_store6
from ownsocket.dhcp6.protocol import Dhcp6Protocol
from ownsocket.dhcp6.server import SERVER_PORT, Dhcp6Server, Link
from ownsocket.events import EventBus

ALL_DHCP_SERVERS = "ff02::1:2"
SO_BINDTODEVICE = getattr(socket, "SO_BINDTODEVICE", 25)
#: How long a link's address list is trusted before /proc is read again.
ADDRESS_TTL = 5.0


def interface_addresses6(path="/proc/net/if_inet6"):
    """name -> [IPv6Address, ...] of every interface (Linux); {} elsewhere."""
    table = {}
    try:
        with open(path, encoding="ascii") as handle:
            for line in handle:
                fields = line.split()
                if len(fields) >= 6 and len(fields[0]) == 32:
                    table.setdefault(fields[5], []).append(ipaddress.IPv6Address(bytes.fromhex(fields[0])))
    except (OSError, ValueError):
        pass
    return table


def _sys(name, what):
    try:
        with open(os.path.join("/sys/class/net", name, what), encoding="ascii") as handle:
            return handle.read().strip()
    except OSError:
        return None


def interface_mac(name):
    mac = _sys(name, "address")
    return mac if mac and len(mac) == 17 and mac != "00:00:00:00:00:00" else None


def interface_mtu(name):
    mtu = _sys(name, "mtu")
    return int(mtu) if mtu and mtu.isdigit() else None


def server_duid(name, mac):
    """DUID-LL of the interface's MAC; a name-derived DUID-UUID without one."""
    if mac:
        return wire.duid_ll(mac)
    return b"\x00\x04" + hashlib.sha256(f"{socket.gethostname()}/{name}".encode()).digest()[:16]


def open_dhcp6_socket(name, port=SERVER_PORT):
    """A non-blocking UDP socket on [::]:port that sees only interface C{name}
    and has joined ff02::1:2 there."""
    sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    try:
        index = socket.if_nametoindex(name)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, name.encode() + b"\0")
        sock.bind(("::", port))
        group = socket.inet_pton(socket.AF_INET6, ALL_DHCP_SERVERS) + struct.pack("=I", index)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, group)
        sock.setblocking(False)
    except OSError as error:
        sock.close()
        raise SocketError(_explain(error, f"DHCPv6 UDP port {port} on interface {name}")) from None
    return sock


def _explain(error, what):
    if error.errno in (errno.EACCES, errno.EPERM):
        return f"cannot open {what}: permission denied (run as root or grant CAP_NET_BIND_SERVICE and CAP_NET_RAW)"
    if error.errno == errno.EADDRINUSE:
        return f"cannot open {what}: address in use (is another DHCPv6 server such as dnsmasq running?)"
    if error.errno in (errno.ENODEV, errno.ENXIO):
        return f"cannot open {what}: no such interface"
    return f"cannot open {what}: {error.strerror or error}"


class LinkView:
    """The L{Link} of one interface, its address list re-read every few
    seconds (addresses finish DAD, or are added, after start-up)."""

    def __init__(self, name, duid, addresses, clock):
        self.name = name
        self.duid = duid
        self._addresses = addresses
        self._clock = clock
        self._link = None
        self._until = None

    def __call__(self):
        now = self._clock.seconds()
        if self._link is None or now >= self._until:
            found = tuple(self._addresses().get(self.name, ()))
            self._link = Link(self.name, found, self.duid)
            self._until = now + ADDRESS_TTL
        return self._link


class Dhcp6Service(Service):
    log = Logger()
    name = "dhcp6"

    def __init__(self, config, selector, reactor, recent=None, events=None, store_factory=None,
                 addresses=interface_addresses6, open_socket=open_dhcp6_socket,
                 open_ra=ra.open_ra_socket, mac_of=interface_mac, mtu_of=interface_mtu):
        self.config = config
        self.selector = selector
        self.reactor = reactor
        self.recent = recent
        self.events = events if events is not None else EventBus(reactor)
        # The DHCPv4 store's place: its SQLite file, or its PostgreSQL database.
        self._store_factory = store_factory or (lambda: open_store6(self.config.dhcp.leases, reactor))
        self._addresses = addresses
        self._open_socket = open_socket
        self._open_ra = open_ra
        self._mac_of = mac_of
        self._mtu_of = mtu_of
        self.ports = {}
        self.advertisers = {}
        self.store = None
        self.server = None

    # -- which links ---------------------------------------------------------

    def links(self, config=None):
        """name -> the [subnet6:...] sections served there: named by
        C{interface}, or (unnamed) containing one of the interface's addresses."""
        config = config or self.config
        table = {}
        found = self._addresses()
        for subnet in config.subnets6:
            if subnet.interface:
                table.setdefault(subnet.interface, []).append(subnet)
                continue
            for name, addresses in sorted(found.items()):
                if name != "lo" and any(address in subnet.network for address in addresses):
                    table.setdefault(name, []).append(subnet)
        return table

    # -- start and stop ------------------------------------------------------

    def privilegedStartService(self):
        Service.privilegedStartService(self)
        if not self.config.subnets6:
            return
        self.store = self._store_factory()
        self.server = Dhcp6Server(self.config, self.store, self.selector, self.reactor,
                                  recent=self.recent, events=self.events)
        links = self.links()
        if not links:
            self.log.warn("no interface carries a [subnet6:...] network: DHCPv6 answers nobody "
                          "(set interface = NAME in the [subnet6:...] section)")
        try:
            for name, subnets in sorted(links.items()):
                self._open_link(name, subnets)
        except Exception:
            self._close_all()
            raise

    def _open_link(self, name, subnets):
        mac = self._mac_of(name)
        view = LinkView(name, server_duid(name, mac), self._addresses, self.reactor)
        sock = self._open_socket(name)
        try:
            protocol = Dhcp6Protocol(self.server, view, self.reactor, self.events,
                                     before_boot_reply=lambda host: self._nudge(name, host))
            self.ports[name] = self.reactor.adoptDatagramPort(sock.fileno(), socket.AF_INET6, protocol)
        finally:
            sock.close()  # the port holds its own duplicate
        advertisement = ra.advertisement_for(subnets, mac, self._mtu_of(name))
        names = ", ".join(subnet.name for subnet in subnets)
        if advertisement is not None:
            try:
                ra_sock = self._open_ra(name)
            except OSError as error:
                raise SocketError(_explain(error, f"Router Advertisements (raw ICMPv6) on interface {name}")) from None
            self.advertisers[name] = ra.RouterAdvertiser(name, advertisement, self.reactor, ra_sock)
        self.log.info("DHCPv6 listening on {interface} port {port} for [subnet6:{names}]; "
                      "Router Advertisements {ra}", interface=name, port=SERVER_PORT, names=names,
                      ra="M=1 O=1 every 3-4 s and on solicitation" if advertisement
                      else "off (router_advertisements = false)")

    def _nudge(self, name, host):
        """A booting client's Router Advertisement (if this link sends RAs)."""
        advertiser = self.advertisers.get(name)
        if advertiser is not None and self.running:
            advertiser.nudge(host)

    def startService(self):
        Service.startService(self)
        for advertiser in self.advertisers.values():
            advertiser.start()

    def stopService(self):
        Service.stopService(self)
        return self._close_all()

    def _close_all(self):
        for advertiser in self.advertisers.values():
            advertiser.stop()
        self.advertisers = {}
        ports, self.ports = list(self.ports.values()), {}
        closing = [defer.maybeDeferred(port.stopListening) for port in ports]
        if self.store is not None:
            # (PostgreSQL: finishes what was asked, then closes its connections)
            closing.append(defer.maybeDeferred(self.store.close))
            self.store = None
        return defer.gatherResults(closing, consumeErrors=True)

    # -- reload --------------------------------------------------------------

    def reconfigure(self, config, selector, backend=None):
        """Issue 9's contract: new subnets and selector at once; sockets and
        advertisers only change on links whose set of subnets changed."""
        self.config, self.selector = config, selector
        if self.server is None:
            return None
        self.server.config = config
        self.server.selector = selector
        links = self.links(config)
        for name in list(self.ports):
            if name not in links:
                self.ports.pop(name).stopListening()
                advertiser = self.advertisers.pop(name, None)
                if advertiser is not None:
                    advertiser.stop()
        for name, subnets in sorted(links.items()):
            if name not in self.ports:
                try:
                    self._open_link(name, subnets)
                except SocketError as error:
                    self.log.warn("reload: {error}", error=error)
                    continue
                if self.running and name in self.advertisers:
                    self.advertisers[name].start()
                continue
            advertisement = ra.advertisement_for(subnets, self._mac_of(name), self._mtu_of(name))
            current = self.advertisers.get(name)
            if advertisement is None and current is not None:
                self.advertisers.pop(name).stop()
            elif advertisement is not None and current is not None:
                current.set_advertisement(advertisement)
            elif advertisement is not None:
                try:
                    self.advertisers[name] = ra.RouterAdvertiser(name, advertisement, self.reactor,
                                                                 self._open_ra(name))
                    self.advertisers[name].start()
                except OSError as error:
                    self.log.warn("reload: Router Advertisements on {name}: {error}", name=name, error=error)
        return None
