"""
The DHCP/BOOTP policy: what to answer, with no sockets in sight.

L{DhcpServer.handle} takes a parsed L{Message} and where it arrived and
returns the datagrams to send (or a Deferred of them, when a boot selector
answers later).  It owns the address policy of RFC 2131 (offer, request in
its four states, decline, release, inform) and BOOTP (RFC 951/1542); the lease
store keeps the bindings and the selector chooses the boot file.
"""

from __future__ import annotations

import functools
import ipaddress
import struct
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Optional

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from ownsocket.boot.request import ARCH_NAMES, BootDecision, BootRequest
from ownsocket.dhcp import wire
from ownsocket.dhcp.bootfields import add_boot_fields, echo_options, with_decision
from ownsocket.dhcp.addresses import Addresses
from ownsocket.dhcp.wire import (ACK, DECLINE, DISCOVER, INFORM, NAK, OFFER, RELEASE, REQUEST,
                                 Message, Reply)

from ownsocket.events import EventBus

#: Option 175 (iPXE) carrying sub-option 176 "no-pxedhcp" = 1.
IPXE_NO_PXEDHCP = b"\xb0\x01\x01"

IPv4 = ipaddress.IPv4Address
BROADCAST = "255.255.255.255"

#: Short architecture labels for events and metrics (option 93 codes);
#: other codes become C{arch-N}, a request without option 93 C{unknown}.
ARCH_LABELS = {
    0: "bios", 6: "efi-ia32", 7: "efi-x64", 9: "efi-x64", 10: "efi-arm32", 11: "efi-arm64",
    15: "efi-ia32-http", 16: "efi-x64-http", 18: "efi-arm32-http", 19: "efi-arm64-http",
    20: "bios-http", 21: "uboot-arm32", 22: "uboot-arm64", 25: "efi-riscv32", 27: "efi-riscv64",
    28: "efi-riscv64-http", 39: "efi-loongarch64", 41: "rpiboot",
}


def arch_label(arches):
    """One short label for a client's first architecture (events, metrics)."""
    if not arches:
        return "unknown"
    return ARCH_LABELS.get(arches[0]) or f"arch-{arches[0]}"


def arch_text(arches):
    """The architectures as the log lines show them: C{7 EFI x64,0 x86 BIOS}."""
    text = _ARCH_TEXTS.get(arches)
    if text is None:
        text = ",".join(f"{a} {ARCH_NAMES.get(a, 'unknown')}" for a in arches) or "-"
        if len(_ARCH_TEXTS) > 1024:
            _ARCH_TEXTS.clear()
        _ARCH_TEXTS[arches] = text
    return text


_ARCH_TEXTS = {}


def message_name(message):
    """The lower-case message name events carry (C{bootp} for BOOTP)."""
    return wire.MESSAGE_NAMES.get(message.message_type, "?").lower()


def via(message, arrival):
    return f"relay {message.giaddr_text}" if message.relayed else arrival.interface or "?"


@dataclass(frozen=True)
class Arrival:
    """Where a request came in: the interface and our address on it."""

    interface: Optional[str]
    local_address: Optional[IPv4]


@dataclass(frozen=True)
class Outgoing:
    data: bytes
    host: str
    port: int


@dataclass
class Exchange:
    """One request on its way to a reply; the log line is made from it."""

    message: Message
    arrival: Arrival
    kind: str
    subnet: object = None
    server_id: Optional[IPv4] = None
    reply_type: Optional[int] = None
    address: Optional[IPv4] = None
    decision: Optional[BootDecision] = None
    #: what the selectors saw (a generated boot file's size depends on it)
    boot_request: Optional[BootRequest] = None
    reason: str = ""
    answered: bool = False  # a BOOTP reply has no reply_type
    #: why no reply went out, as an event reason (None: nothing to report)
    dropped: Optional[str] = None


def make_boot_request(message, arrival, server_address=None, phase="dhcp"):
    """What the selectors see of a request, in DHCP and proxyDHCP alike."""
    return BootRequest(
        mac=message.mac, xid=message.xid, message_type=message.message_type,
        arch=message.arch_types, nic_version=message.options.get(wire.OPT_NIC_VERSION),
        vendor_class=message.options.get(wire.OPT_VENDOR_CLASS),
        user_class=message.user_classes, client_uuid=message.options.get(wire.OPT_CLIENT_UUID),
        has_ipxe_options=wire.OPT_IPXE in message.options, relay_info=message.relay_info,
        giaddr=message.giaddr if message.relayed else None,
        interface=arrival.interface, phase=phase, server_address=server_address)


class DhcpServer:
    """
    @param config: the whole L{ownsocket.config.Config}.
    @param store: an L{ILeaseStore}.
    @param selector: an L{IBootFileSelector} (usually a chain).
    @param clock: anything with C{seconds()}; the reactor in production.
    @param boot_file_size: callable(name, boot_request) -> size in bytes or
        None, for option 13 (L{ownsocket.filechain.FileSizes}); None disables
        the option.
    @param recent: a L{RecentRequests} that TFTP/HTTP backends read.
    """

    log = Logger()

    service_name = "dhcp"

    def __init__(self, config, store, selector, clock, boot_file_size=None, recent=None, events=None):
        self.events = events if events is not None else EventBus(clock)
        self._committed = None  # (lease, started) bound in the open batch
        self.store = store
        self.clock = clock
        self.boot_file_size = boot_file_size
        self.recent = recent
        self.addresses = Addresses(config, store, clock)
        self._take(config, selector)
        self.last_activity = clock.seconds()
        self._handlers = {
            None: self._bootp, DISCOVER: self._discover, REQUEST: self._request,
            DECLINE: self._decline, RELEASE: self._release, INFORM: self._inform,
        }
        self.loaded = self.addresses.load()
        self.loaded.addErrback(lambda failure: self.log.error(
            "cannot read the leases at start-up ({error}); answering anyway, the store decides",
            error=failure.getErrorMessage()))

    def reconfigure(self, config, selector):
        """Take a new config and selector for the requests that come next;
        subnets are matched by name, leases stay in the store (those of a
        subnet that is gone lapse there)."""
        self._take(config, selector)
        self.addresses.configure(config)

    def _take(self, config, selector):
        self.config = config
        self.dhcp = config.dhcp
        self.selector = selector
        self.hosts = {host.mac: host for host in config.hosts}
        self.reserved_by_address = {host.address: host for host in config.hosts if host.address}
        # options 1, 3, 6 and 15 of each subnet, encoded once per config
        self._subnet_options = {subnet.name: _encode_subnet_options(subnet) for subnet in config.subnets}

    @property
    def pools(self):
        return self.addresses.pools

    # -- entry point -------------------------------------------------------

    @contextmanager
    def batch(self):
        """Group the lease writes of several requests into one commit, and
        tell observers about bindings once (and only if) it succeeded."""
        self.last_activity = self.clock.seconds()
        committed = self._committed = [] if self.events.active else None
        try:
            with self.store.batch():
                yield
        finally:
            self._committed = None
        if committed:
            now = time.perf_counter()
            for lease, started in committed:
                self._publish_commit(lease, now - started)

    def _publish_commit(self, lease, seconds):
        self.events.publish("dhcp", "committed", mac=lease.mac, peer=str(lease.address),
                            address=str(lease.address), seconds=seconds)

    def _bind(self, mac, subnet, address, seconds, hostname=None):
        """Ask the address owner for a binding; tell observers when it is
        durable (at once, or when the open batch has committed)."""
        if not self.events.active:
            return self.addresses.bind(mac, subnet, address, seconds, hostname)
        started = time.perf_counter()

        def bound(result):
            lease, _ = result
            if lease is not None:
                if self._committed is not None:
                    self._committed.append((lease, started))
                else:
                    self._publish_commit(lease, time.perf_counter() - started)
            return result

        return self.addresses.bind(mac, subnet, address, seconds, hostname).addCallback(bound)

    def handle(self, message: Message, arrival: Arrival, source=None):
        """Answer one request: a list of L{Outgoing} when the store and the
        selector answered at once (SQLite, a plain selector), else a
        Deferred of one.

        @param source: (host, port) the datagram came from, which proxyDHCP
            needs; RFC 2131 replies are addressed by the message's fields."""
        self.addresses.expire()
        kind = message.message_type
        exchange = Exchange(message, arrival, wire.MESSAGE_NAMES.get(kind, "?"))
        if self.events.active:
            self.events.publish("dhcp", "received", mac=message.mac,
                                peer=str(message.ciaddr) if message.has_ciaddr else None,
                                message=message_name(message), xid=message.xid,
                                interface=via(message, arrival))
        exchange.subnet = self._subnet_for(message, arrival)
        if exchange.subnet is None:
            exchange.reason = self._no_subnet_reason(message, arrival)
            exchange.dropped = "no-subnet"
            self._log(exchange)
            return []
        exchange.server_id = self._server_id(exchange.subnet, arrival)
        if exchange.server_id is None:
            exchange.reason = "no server address for this subnet (set server_address)"
            exchange.dropped = "no-subnet"
            self._log(exchange)
            return []
        return _settled(self._handlers[kind](exchange))

    # -- message types -----------------------------------------------------

    def _discover(self, exchange):
        message = exchange.message
        host = self.hosts.get(message.mac)
        reserved = None
        if host is not None and host.address is not None and host.address in exchange.subnet.network:
            reserved = host.address
        d = self.addresses.offer(message.mac, exchange.subnet, message.requested_address,
                                 self.dhcp.offer_hold, reserved=reserved)

        def chosen(result):
            address, why = result
            if address is None:
                return self._exhausted(exchange, why)
            if why is None:
                why = f"reserved for [host:{host.name}]"
            exchange.reply_type, exchange.address, exchange.reason = OFFER, address, why
            lease_time = exchange.subnet.lease_time

            def replies():
                offer = self._compose(exchange, lease_time)
                if not self.dhcp.bootp_compat_offer:
                    return [offer]
                # The original script answered each DISCOVER twice; some old
                # BOOTP-only ROMs on mixed networks still depend on that.
                return [self._compose(exchange, None, bootp=True), offer]

            return self._with_decision(exchange, replies)

        return d.addCallback(chosen)

    def _request(self, exchange):
        message = exchange.message
        subnet = exchange.subnet
        server_id = message.server_id
        if server_id is not None:
            state = "selecting"
            if server_id != exchange.server_id:
                # The client chose another server: our offer is void.
                exchange.reason = f"client chose server {server_id}"
                exchange.dropped = "not-for-us"
                self._log(exchange)
                return self.addresses.withdraw(message.mac, subnet).addCallback(lambda _: [])
            wanted = message.requested_address or (message.ciaddr if message.has_ciaddr else None)
        elif not message.has_ciaddr:
            state = "init-reboot"
            wanted = message.requested_address
        else:
            state = "renewing" if not message.broadcast else "rebinding"
            wanted = message.ciaddr
        if wanted is None:
            return self._nak(exchange, f"{state}: no requested address")
        refusal = self._refuse(message.mac, wanted, subnet)
        if refusal:
            return self._nak(exchange, f"{state} {wanted}: {refusal}")
        hostname = _text(message.options.get(wire.OPT_HOSTNAME))

        def bound(result):
            lease, refusal = result
            if lease is None:
                return self._nak(exchange, f"{state} {wanted}: {refusal}")
            exchange.reply_type, exchange.address = ACK, wanted
            exchange.reason = f"{state}: lease {subnet.lease_time}s committed"
            return self._with_decision(exchange, lambda: [self._compose(exchange, subnet.lease_time)])

        # durable before the ACK leaves
        return self._bind(message.mac, subnet, wanted, subnet.lease_time, hostname).addCallback(bound)

    def _decline(self, exchange):
        message = exchange.message
        address = message.requested_address
        if address is None:
            return self._ignored(exchange, "DECLINE without an address; ignored")

        def declined(done):
            if not done:
                return self._ignored(exchange, f"DECLINE of {address} by a client that does not hold it; ignored")
            exchange.address = address
            exchange.reason = f"address in use elsewhere; quarantined for {self.dhcp.decline_time}s"
            self._log(exchange)
            return []

        return self.addresses.decline(message.mac, address, self.dhcp.decline_time).addCallback(declined)

    def _release(self, exchange):
        message = exchange.message
        address = message.ciaddr

        def released(done):
            if not done:
                return self._ignored(exchange, f"RELEASE of {address} by a client that does not hold it; ignored")
            exchange.address, exchange.reason = address, "released by its owner"
            self._log(exchange)
            return []

        return self.addresses.release(message.mac, address).addCallback(released)

    def _ignored(self, exchange, reason):
        exchange.reason, exchange.dropped = reason, "ignored"
        self._log(exchange)
        return []

    def _inform(self, exchange):
        exchange.reply_type = ACK
        exchange.reason = "INFORM: configuration only, no lease"
        return self._with_decision(exchange, lambda: [self._compose(exchange, None)])

    def _bootp(self, exchange):
        message = exchange.message
        subnet = exchange.subnet
        host = self.hosts.get(message.mac)
        hostname = _text(message.options.get(wire.OPT_HOSTNAME))
        if host is not None and host.address is not None and host.address in subnet.network:
            d = defer.succeed((host.address, f"BOOTP: fixed address of [host:{host.name}]"))
        elif not self.dhcp.bootp_dynamic:
            # A BOOTP binding never expires, and a DHCP packet cut off before
            # option 53 looks like BOOTP: handing out pool addresses to any
            # such packet would let junk drain the pool for good.
            return self._ignored(exchange, "BOOTP client without a [host:...] address "
                                           "(set [dhcp] bootp_dynamic = true to lease it a pool address for good)")
        else:
            d = self.addresses.offer(message.mac, subnet, message.requested_address, self.dhcp.offer_hold)

        def chosen(result):
            address, why = result
            if address is None:
                return self._exhausted(exchange, why)
            return self._bind(message.mac, subnet, address, None, hostname).addCallback(bound, address, why)

        def bound(result, address, why):
            lease, refusal = result
            if lease is None:
                return self._ignored(exchange, f"BOOTP {address}: {refusal}")
            exchange.address, exchange.reason, exchange.answered = address, why, True
            return self._with_decision(exchange, lambda: [self._compose(exchange, None, bootp=True)])

        return d.addCallback(chosen)

    def _exhausted(self, exchange, why):
        exchange.reason, exchange.dropped = why, "pool-exhausted"
        if self.events.active:
            self.events.publish("dhcp", "allocation-failed", mac=exchange.message.mac,
                                subnet=exchange.subnet.name, reason=why)
        self._log(exchange)
        return []

    # -- address policy ----------------------------------------------------

    def _refuse(self, mac, address, subnet) -> str:
        """Why the config forbids C{mac} to have C{address} (empty when it
        may); whether someone else holds it is the store's to say."""
        if address not in subnet.network:
            return f"not on subnet {subnet.network} ([subnet:{subnet.name}])"
        host = self.hosts.get(mac)
        if host is not None and host.address is not None and host.address in subnet.network:
            if address != host.address:
                return f"[host:{host.name}] is reserved {host.address}"
            return ""
        reserved = self.reserved_by_address.get(address)
        if reserved is not None:
            return f"reserved for [host:{reserved.name}]"
        if not self.addresses.in_pool(subnet, address):
            return f"outside the pools of [subnet:{subnet.name}]"
        return ""

    def address_counts(self):
        """{(subnet name, state): count} for free, offered, bound and declined
        addresses, for metrics and the status page (not the hot path)."""
        return self.addresses.counts()

    # -- subnet and server identity ---------------------------------------

    def _subnet_for(self, message, arrival):
        """RFC 2131 §4.3.1 and §4.4.5: the relay's giaddr names the subnet;
        a client that already has an address and talks to us directly
        (renewing, INFORM; possibly routed from a relayed subnet) is on the
        subnet of its ciaddr; everyone else on the receiving interface's."""
        if message.relayed:
            return self._subnet_containing(message.giaddr)
        if message.has_ciaddr and message.message_type in (REQUEST, INFORM, RELEASE):
            subnet = self._subnet_containing(message.ciaddr)
            if subnet is not None:
                return subnet
        for subnet in self.config.subnets:
            if subnet.interface is not None and subnet.interface == arrival.interface:
                return subnet
        if arrival.local_address is not None:
            for subnet in self.config.subnets:
                if subnet.interface is None and arrival.local_address in subnet.network:
                    return subnet
        return None

    def _subnet_containing(self, address):
        for subnet in self.config.subnets:
            if address in subnet.network:
                return subnet
        return None

    def _no_subnet_reason(self, message, arrival):
        if message.relayed:
            return f"relay {message.giaddr} is on no configured subnet; not answering"
        return (f"no [subnet:...] configured for interface {arrival.interface or '?'} "
                f"(address {arrival.local_address or 'none'}); not answering")

    def _server_id(self, subnet, arrival):
        return subnet.server_address or self.dhcp.server_address or arrival.local_address

    # -- boot decision and reply building ---------------------------------

    boot_request = staticmethod(make_boot_request)

    def _with_decision(self, exchange, build):
        request = self.boot_request(exchange.message, exchange.arrival, exchange.server_id)

        def finish(decision):
            exchange.decision, exchange.boot_request = decision, request
            if exchange.address is not None and self.recent is not None:
                self.recent.remember(exchange.address, request)
            replies = build()
            self._log(exchange)
            return replies

        return with_decision(self.selector, request, finish)

    def _compose(self, exchange, lease_time, bootp=False):
        """One OFFER/ACK (or BOOTP reply) for the exchange's address and boot decision."""
        message = exchange.message
        subnet = exchange.subnet
        decision = exchange.decision
        host = self.hosts.get(message.mac)
        reply = Reply(request=message, message_type=None if bootp else exchange.reply_type)
        if exchange.kind == "INFORM":
            reply.ciaddr = message.ciaddr
        else:
            reply.yiaddr = exchange.address
        options = reply.options
        if not bootp:
            options.append((wire.OPT_MESSAGE_TYPE, bytes((reply.message_type,))))
            options.append((wire.OPT_SERVER_ID, exchange.server_id.packed))
            if lease_time is not None:
                options += _lease_options(lease_time)
        # (a subnet a reload removed while a selector was still deciding: encoded now)
        options += self._subnet_options.get(subnet.name) or _encode_subnet_options(subnet)
        if host is not None and host.hostname:
            reply.add(wire.OPT_HOSTNAME, host.hostname.encode("ascii", "replace"))
        if wire.OPT_IPXE in message.options and not bootp:
            # Every iPXE client, the first stage included (under QEMU the PXE
            # ROM is iPXE): 175.176 "no-pxedhcp" lets it REQUEST at once
            # instead of waiting ~2 s for proxyDHCP offers that never come.
            reply.add(wire.OPT_IPXE, IPXE_NO_PXEDHCP)
        next_server = ((decision.next_server if decision else None) or
                       (host.next_server if host else None) or subnet.next_server or
                       exchange.server_id)
        add_boot_fields(reply, message, decision, next_server, self.boot_file_size, exchange.boot_request)
        echo_options(message, reply)
        host_address, port = self._destination(message, reply)
        return Outgoing(wire.build(reply), host_address, port)

    def _nak(self, exchange, reason):
        message = exchange.message
        reply = Reply(request=message, message_type=NAK)
        reply.add(wire.OPT_MESSAGE_TYPE, bytes((NAK,)))
        reply.add(wire.OPT_SERVER_ID, exchange.server_id.packed)
        reply.add(wire.OPT_MESSAGE, reason.encode("ascii", "replace")[:200])
        echo_options(message, reply)
        if message.relayed:
            reply.flags = message.flags | wire.BROADCAST_FLAG  # RFC 2131 §4.3.2
        exchange.reply_type, exchange.reason = NAK, reason
        host, port = self._destination(message, reply)
        self._log(exchange)
        return [Outgoing(wire.build(reply), host, port)]

    def _destination(self, message, reply):
        """RFC 2131 §4.1: relay first, then a configured client, else broadcast.

        A client without an address (and no ARP entry for it on our side) is
        answered by broadcast even when it cleared the broadcast flag: every
        firmware in FIRMWARE-FACTS accepts that, and a unicast to an address
        nobody can resolve is lost."""
        if message.relayed:
            return message.giaddr_text, self.dhcp.port
        if reply.message_type != NAK and message.has_ciaddr:
            return str(message.ciaddr), self.dhcp.client_port
        return BROADCAST, self.dhcp.client_port

    # -- logging ----------------------------------------------------------

    def _log(self, exchange):
        message = exchange.message
        if exchange.reply_type is not None:
            answer = wire.MESSAGE_NAMES[exchange.reply_type]
        else:
            answer = "BOOTP reply" if exchange.answered else "no reply"
        decision = exchange.decision
        boot = (f" boot {decision.filename!r} by {decision.selector or '?'} ({decision.reason})"
                if decision and decision.filename else "")
        address = f" {exchange.address}" if exchange.address else ""
        # The line is built here with an f-string: twisted.logger's own
        # format-string expansion was a fifth of the per-packet time under
        # load.  The facts stay in the event as fields for other observers.
        self.log.info("{line}", line=(
            f"{exchange.kind} from {message.mac} via {via(message, exchange.arrival)} "
            f"xid {message.xid:#010x} arch [{arch_text(message.arch_types)}] "
            f"-> {answer}{address}{boot}: {exchange.reason}"),
            kind=exchange.kind, mac=message.mac, answer=answer, address=exchange.address)
        if self.events.active:
            self._publish(exchange)

    def _publish(self, exchange):
        message = exchange.message
        if exchange.reply_type is not None or exchange.answered:
            decision = exchange.decision
            name = wire.MESSAGE_NAMES[exchange.reply_type].lower() if exchange.reply_type else "bootp"
            address = str(exchange.address) if exchange.address else None
            self.events.publish(
                "dhcp", "sent", mac=message.mac, peer=address, message=name, xid=message.xid,
                address=address,
                file=decision.filename if decision else None,
                selector=decision.selector if decision and decision.filename else None,
                arch=arch_label(message.arch_types),
                # the selector's why when a file was chosen (the trail shows
                # it); the lease's why otherwise, e.g. a NAK's
                reason=decision.reason if decision and decision.filename else exchange.reason,
                lease=exchange.reason)
        elif exchange.dropped is not None:
            self.events.publish("dhcp", "dropped", mac=message.mac,
                                peer=str(message.ciaddr) if message.has_ciaddr else None,
                                reason=exchange.dropped, message=message_name(message),
                                xid=message.xid, detail=exchange.reason)
        elif exchange.address is not None:
            kind = "released" if message.message_type == RELEASE else "declined"
            self.events.publish("dhcp", kind, mac=message.mac, peer=str(exchange.address),
                                address=str(exchange.address))


def _settled(result):
    """The result of a Deferred that has fired already (raising its
    failure), else the Deferred: most requests are answered without waiting
    and need not pay for the callbacks of a Deferred at the caller."""
    if not isinstance(result, defer.Deferred) or not result.called or isinstance(result.result, defer.Deferred):
        return result
    value = result.result
    if isinstance(value, Failure):
        result.addErrback(lambda _: None)
        value.raiseException()
    return value


def _encode_subnet_options(subnet):
    options = [(wire.OPT_SUBNET_MASK, subnet.network.netmask.packed)]
    if subnet.routers:
        options.append((wire.OPT_ROUTER, wire.address_bytes(subnet.routers)))
    if subnet.dns:
        options.append((wire.OPT_DNS, wire.address_bytes(subnet.dns)))
    if subnet.domain:
        options.append((wire.OPT_DOMAIN, subnet.domain.encode("ascii", "replace")))
    return tuple(options)


@functools.lru_cache(maxsize=64)
def _lease_options(lease_time):
    """Options 51, 58 and 59 (RFC 2131 T1 = 1/2, T2 = 7/8 of the lease)."""
    return ((wire.OPT_LEASE_TIME, struct.pack("!I", lease_time)),
            (wire.OPT_RENEWAL, struct.pack("!I", lease_time // 2)),
            (wire.OPT_REBINDING, struct.pack("!I", lease_time * 7 // 8)))


def _text(value):
    if not value:
        return None
    return value.decode("ascii", "replace").strip("\x00") or None

