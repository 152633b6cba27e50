"""
The DHCP/BOOTP policy: what to answer, with no sockets in sight.

L{DhcpServer.handle} takes a parsed L{Message} and where it arrived and
returns the datagrams to send (or a Deferred of them, when a boot selector
answers later).  It owns the address policy of RFC 2131 (offer, request in
its four states, decline, release, inform) and BOOTP (RFC 951/1542); the lease
store keeps the bindings and the selector chooses the boot file.
"""

from __future__ import annotations

import ipaddress
import heapq
import struct
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from twisted.logger import Logger

from ownsocket.boot.request import ARCH_NAMES, BootDecision, BootRequest
from ownsocket.dhcp import wire
from ownsocket.dhcp.bootfields import add_boot_fields, echo_options, with_decision
from ownsocket.dhcp.leases import BOUND, DECLINED, FOREVER, OFFERED, Lease
from ownsocket.dhcp.pool import AddressPool
from ownsocket.dhcp.wire import (ACK, DECLINE, DISCOVER, INFORM, NAK, OFFER, RELEASE, REQUEST,
                                 Message, Reply)

from ownsocket.events import EventBus

#: Option 175 (iPXE) carrying sub-option 176 "no-pxedhcp" = 1.
IPXE_NO_PXEDHCP = b"\xb0\x01\x01"

IPv4 = ipaddress.IPv4Address
ZERO = IPv4(0)
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
    return ",".join(f"{a} {ARCH_NAMES.get(a, 'unknown')}" for a in arches) or "-"


def message_name(message):
    """The lower-case message name events carry (C{bootp} for BOOTP)."""
    return wire.MESSAGE_NAMES.get(message.message_type, "?").lower()


def via(message, arrival):
    return f"relay {message.giaddr}" if message.relayed else arrival.interface or "?"


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
    @param boot_file_size: callable(name) -> size in bytes or None, for
        option 13; None disables the option.
    @param recent: a L{RecentRequests} that TFTP/HTTP backends read.
    """

    log = Logger()

    service_name = "dhcp"

    def __init__(self, config, store, selector, clock, boot_file_size=None, recent=None, events=None):
        self.config = config
        self.events = events if events is not None else EventBus(clock)
        self._committed = None  # leases written in the open batch
        self.dhcp = config.dhcp
        self.store = store
        self.selector = selector
        self.clock = clock
        self.boot_file_size = boot_file_size
        self.recent = recent
        self.hosts = {host.mac: host for host in config.hosts}
        self.reserved_by_address = {host.address: host for host in config.hosts if host.address}
        self.pools: Dict[str, AddressPool] = {
            subnet.name: AddressPool(subnet, self.reserved_by_address) for subnet in config.subnets}
        self._expiries: List[Tuple[float, int, IPv4]] = []
        self.last_activity = clock.seconds()
        self._handlers = {
            None: self._bootp, DISCOVER: self._discover, REQUEST: self._request,
            DECLINE: self._decline, RELEASE: self._release, INFORM: self._inform,
        }
        for lease in store.all_leases():
            pool = self._pool_of(lease.address)
            if pool is not None:
                # Lapsed entries go back to the pool at the first sweep; an
                # expired binding keeps its record so the same client gets
                # the same address back if nobody took it meanwhile.
                pool.claim(lease.address)
            self._schedule(lease)

    # -- entry point -------------------------------------------------------

    @contextmanager
    def batch(self):
        """Group the lease writes of several requests into one commit, and
        tell observers about those leases once (and only if) it succeeded."""
        self.last_activity = self.clock.seconds()
        committed = self._committed = [] if self.events.active else None
        started = None
        try:
            with self.store.batch():
                yield
                started = time.perf_counter()
        finally:
            self._committed = None
        if committed:
            seconds = time.perf_counter() - started
            for lease in committed:
                self._publish_commit(lease, seconds)

    def _store_commit(self, lease):
        """Write a binding; outside a batch it is durable on return."""
        if self._committed is not None:
            self.store.commit(lease)
            self._committed.append(lease)
            return
        if not self.events.active:
            self.store.commit(lease)
            return
        started = time.perf_counter()
        self.store.commit(lease)
        self._publish_commit(lease, time.perf_counter() - started)

    def _publish_commit(self, lease, seconds):
        self.events.publish("dhcp", "committed", mac=lease.mac, peer=str(lease.address),
                            address=str(lease.address), seconds=seconds)

    def handle(self, message: Message, arrival: Arrival, source=None):
        """Answer one request: a list of L{Outgoing}, or a Deferred of one.

        @param source: (host, port) the datagram came from; RFC 2131 replies
            are addressed by the message's fields, so it is not needed here."""
        self.expire()
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
        return self._handlers[kind](exchange)

    # -- message types -----------------------------------------------------

    def _discover(self, exchange):
        message = exchange.message
        address, why = self._choose_address(message, exchange.subnet)
        if address is None:
            return self._exhausted(exchange, why)
        now = self.clock.seconds()
        holder = self.store.holder(address)
        if not (holder is not None and holder.mac == message.mac and holder.state == BOUND
                and holder.active(now)):
            lease = Lease(message.mac, address, OFFERED, now + self.dhcp.offer_hold)
            self.store.offer(lease)
            pool = self._pool_of(address)
            if pool is not None:
                pool.note_offer(address, message.mac)
            self._schedule(lease)
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

    def _request(self, exchange):
        message = exchange.message
        subnet = exchange.subnet
        now = self.clock.seconds()
        server_id = message.server_id
        if server_id is not None:
            state = "selecting"
            if server_id != exchange.server_id:
                # The client chose another server: our offer is void.
                held = self.store.lookup(message.mac)
                if held is not None and held.state == OFFERED:
                    self._free(held)
                exchange.reason = f"client chose server {server_id}"
                exchange.dropped = "not-for-us"
                self._log(exchange)
                return []
            wanted = message.requested_address or (message.ciaddr if message.has_ciaddr else None)
        elif not message.has_ciaddr:
            state = "init-reboot"
            wanted = message.requested_address
        else:
            state = "renewing" if not message.broadcast else "rebinding"
            wanted = message.ciaddr
        if wanted is None:
            return self._nak(exchange, f"{state}: no requested address")
        refusal = self._refuse(message.mac, wanted, subnet, now)
        if refusal:
            return self._nak(exchange, f"{state} {wanted}: {refusal}")
        pool = self._pool_of(wanted)
        if pool is not None:
            pool.take(wanted)
            pool.settle_offer(wanted)
        hostname = _text(message.options.get(wire.OPT_HOSTNAME))
        lease = Lease(message.mac, wanted, BOUND, now + subnet.lease_time, hostname)
        self._store_commit(lease)  # durable before the ACK leaves
        self._schedule(lease)
        exchange.reply_type, exchange.address = ACK, wanted
        exchange.reason = f"{state}: lease {subnet.lease_time}s committed"
        return self._with_decision(exchange, lambda: [self._compose(exchange, subnet.lease_time)])

    def _decline(self, exchange):
        message = exchange.message
        address = message.requested_address
        lease = self.store.lookup(message.mac)
        if address is None or lease is None or lease.address != address:
            exchange.reason = f"DECLINE of {address} by a client that does not hold it; ignored"
            exchange.dropped = "ignored"
        else:
            until = self.clock.seconds() + self.dhcp.decline_time
            self.store.decline(address, until)
            self._schedule(Lease(None, address, DECLINED, until))
            exchange.address = address
            exchange.reason = f"address in use elsewhere; quarantined for {self.dhcp.decline_time}s"
        self._log(exchange)
        return []

    def _release(self, exchange):
        message = exchange.message
        address = message.ciaddr
        if self.store.release(message.mac, address):
            pool = self._pool_of(address)
            if pool is not None:
                pool.give_back(address)
            exchange.address, exchange.reason = address, "released by its owner"
        else:
            exchange.reason = f"RELEASE of {address} by a client that does not hold it; ignored"
            exchange.dropped = "ignored"
        self._log(exchange)
        return []

    def _inform(self, exchange):
        exchange.reply_type = ACK
        exchange.reason = "INFORM: configuration only, no lease"
        return self._with_decision(exchange, lambda: [self._compose(exchange, None)])

    def _bootp(self, exchange):
        message = exchange.message
        host = self.hosts.get(message.mac)
        if host is not None and host.address is not None and host.address in exchange.subnet.network:
            address, why = host.address, f"BOOTP: fixed address of [host:{host.name}]"
        elif not self.dhcp.bootp_dynamic:
            # A BOOTP binding never expires, and a DHCP packet cut off before
            # option 53 looks like BOOTP: handing out pool addresses to any
            # such packet would let junk drain the pool for good.
            exchange.reason = ("BOOTP client without a [host:...] address "
                               "(set [dhcp] bootp_dynamic = true to lease it a pool address for good)")
            exchange.dropped = "ignored"
            self._log(exchange)
            return []
        else:
            address, why = self._choose_address(message, exchange.subnet, bootp=True)
            if address is None:
                return self._exhausted(exchange, why)
        lease = Lease(message.mac, address, BOUND, FOREVER, _text(message.options.get(wire.OPT_HOSTNAME)))
        self._store_commit(lease)
        exchange.address, exchange.reason, exchange.answered = address, why, True
        return self._with_decision(exchange, lambda: [self._compose(exchange, None, bootp=True)])

    def _exhausted(self, exchange, why):
        exchange.reason, exchange.dropped = why, "pool-exhausted"
        if self.events.active:
            self.events.publish("dhcp", "allocation-failed", mac=exchange.message.mac,
                                subnet=exchange.subnet.name, reason=why)
        self._log(exchange)
        return []

    # -- address policy ----------------------------------------------------

    def _choose_address(self, message, subnet, bootp=False):
        """The address to offer: reservation, current lease, requested, new."""
        now = self.clock.seconds()
        mac = message.mac
        host = self.hosts.get(mac)
        if host is not None and host.address is not None:
            if host.address in subnet.network:
                return host.address, f"reserved for [host:{host.name}]"
        pool = self.pools[subnet.name]
        current = self.store.lookup(mac)
        if current is not None and current.state != DECLINED and current.address in pool:
            holder = self.store.holder(current.address)
            if holder is current:
                pool.take(current.address)
                return current.address, "the client's current lease"
        requested = message.requested_address
        if requested is not None and requested in pool and self._available(requested, mac, now):
            if pool.take(requested) is not None or self._holds(mac, requested):
                return requested, "requested by the client (option 50)"
        while True:
            address = pool.take()
            if address is None:
                break
            if self._available(address, mac, now):
                return address, "new address from the pool"
        victim = pool.oldest_offer()
        if victim is not None:
            stale = self.store.holder(victim)
            if stale is not None and stale.state == OFFERED:
                self.store.forget(stale)
            pool.settle_offer(victim)
            return victim, f"pool exhausted: reused the oldest outstanding offer ({stale.mac if stale else '?'})"
        return None, f"pool of [subnet:{subnet.name}] exhausted ({pool.size} addresses); no offer"

    def _available(self, address, mac, now):
        holder = self.store.holder(address)
        return holder is None or holder.mac == mac or not holder.active(now)

    def _holds(self, mac, address):
        holder = self.store.holder(address)
        return holder is not None and holder.mac == mac

    def _refuse(self, mac, address, subnet, now) -> str:
        """Why C{mac} may not have C{address} (empty when it may)."""
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
        holder = self.store.holder(address)
        if holder is not None and holder.mac != mac and holder.active(now):
            if holder.state == DECLINED:
                return "declined by a client, quarantined"
            return f"held by {holder.mac}"
        if address not in self.pools[subnet.name]:
            return f"outside the pools of [subnet:{subnet.name}]"
        return ""

    def _free(self, lease):
        self.store.forget(lease)
        pool = self._pool_of(lease.address)
        if pool is not None:
            pool.give_back(lease.address)

    def address_counts(self):
        """{(subnet name, state): count} for free, offered, bound and declined
        addresses, for metrics and the status page (not the hot path)."""
        now = self.clock.seconds()
        counts = {}
        for subnet in self.config.subnets:
            counts[(subnet.name, "free")] = self.pools[subnet.name].free_count
            for state in (OFFERED, BOUND, DECLINED):
                counts[(subnet.name, state)] = 0
        for lease in self.store.all_leases():
            if not lease.active(now):
                continue
            subnet = self._subnet_containing(lease.address)
            if subnet is not None:
                counts[(subnet.name, lease.state)] += 1
        return counts

    # -- expiry ------------------------------------------------------------

    def _schedule(self, lease):
        if lease.expires != FOREVER:
            heapq.heappush(self._expiries, (lease.expires, int(lease.address), lease.address))

    def expire(self):
        """Hand lapsed offers and quarantines back to their pools.  An expired
        binding is handed back too, but its record stays so the same client
        gets the same address if nobody took it meanwhile."""
        now = self.clock.seconds()
        expiries = self._expiries
        while expiries and expiries[0][0] <= now:
            _, _, address = heapq.heappop(expiries)
            holder = self.store.holder(address)
            if holder is None or holder.active(now):
                continue
            if holder.state in (OFFERED, DECLINED):
                self.store.forget(holder)
            pool = self._pool_of(address)
            if pool is not None:
                pool.give_back(address)

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

    def _pool_of(self, address):
        for pool in self.pools.values():
            if address in pool.subnet.network:
                return pool
        return None

    # -- boot decision and reply building ---------------------------------

    boot_request = staticmethod(make_boot_request)

    def _with_decision(self, exchange, build):
        request = self.boot_request(exchange.message, exchange.arrival, exchange.server_id)

        def finish(decision):
            exchange.decision = decision
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
        if not bootp:
            reply.add(wire.OPT_MESSAGE_TYPE, bytes((reply.message_type,)))
            reply.add(wire.OPT_SERVER_ID, exchange.server_id.packed)
            if lease_time is not None:
                reply.add(wire.OPT_LEASE_TIME, struct.pack("!I", lease_time))
                reply.add(wire.OPT_RENEWAL, struct.pack("!I", lease_time // 2))
                reply.add(wire.OPT_REBINDING, struct.pack("!I", lease_time * 7 // 8))
        reply.add(wire.OPT_SUBNET_MASK, subnet.network.netmask.packed)
        if subnet.routers:
            reply.add(wire.OPT_ROUTER, wire.address_bytes(subnet.routers))
        if subnet.dns:
            reply.add(wire.OPT_DNS, wire.address_bytes(subnet.dns))
        if subnet.domain:
            reply.add(wire.OPT_DOMAIN, subnet.domain.encode("ascii", "replace"))
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
        add_boot_fields(reply, message, decision, next_server, self.boot_file_size)
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
            return str(message.giaddr), self.dhcp.port
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
            self.events.publish(
                "dhcp", "sent", mac=message.mac,
                peer=str(exchange.address) if exchange.address else None,
                message=name, xid=message.xid,
                address=str(exchange.address) if exchange.address else None,
                file=decision.filename if decision else None,
                selector=decision.selector if decision and decision.filename else None,
                arch=arch_label(message.arch_types), reason=exchange.reason)
        elif exchange.dropped is not None:
            self.events.publish("dhcp", "dropped", mac=message.mac,
                                peer=str(message.ciaddr) if message.has_ciaddr else None,
                                reason=exchange.dropped, message=message_name(message),
                                xid=message.xid, detail=exchange.reason)
        elif exchange.address is not None:
            kind = "released" if message.message_type == RELEASE else "declined"
            self.events.publish("dhcp", kind, mac=message.mac, peer=str(exchange.address),
                                address=str(exchange.address))


def _text(value):
    if not value:
        return None
    return value.decode("ascii", "replace").strip("\x00") or None

