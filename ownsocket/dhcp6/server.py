"""
The DHCPv6 policy: what to answer, with no sockets in sight.

L{Dhcp6Server.handle} takes a parsed L{wire.Message}, the link it arrived
on and its source, and returns the datagrams to send (or a Deferred of
them, when a boot selector answers later).

What the firmware decides (FIRMWARE-FACTS §8): OVMF needs a real IA_NA
address (it ignores stateless answers); the boot file is an option-59 URL
with the server's IPv6 literal; preference 255 in the Advertise saves
OVMF's wait for other offers; UEFI HTTP boot needs option 16 with
C{HTTPClient}, and PXE must not get C{PXEClient} in 16 (that sends it to a
boot server on port 4011).  iPXE's DUID is the same zero DUID-UUID on every
VM and xids repeat across boots, so a client is its DUID + IAID + MAC.
"""

from __future__ import annotations

import hashlib
import ipaddress
import struct
import types
from dataclasses import dataclass, field
from typing import Optional, Tuple

from twisted.internet import defer
from twisted.logger import Logger

from ownsocket.boot.request import ARCH_NAMES, HTTP_ARCHES, BootDecision, BootRequest
from ownsocket.dhcp.bootfields import with_decision
from ownsocket.dhcp6 import steps, wire
from ownsocket.dhcp6.leases import BOUND, OFFERED, LeaseStoreError, LeaseStoreUnavailable
from ownsocket.ratelimit import RateLimitedLog

IPv6 = ipaddress.IPv6Address

CLIENT_PORT, SERVER_PORT = 546, 547
PREFERENCE_MAX = b"\xff"
HTTP_CLIENT = b"HTTPClient"

#: The DHCPv4 message type of the same step, for BootRequest.message_type.
V4_STEP = {wire.SOLICIT: 1, wire.REQUEST: 3, wire.RENEW: 3, wire.REBIND: 3, wire.CONFIRM: 3,
           wire.RELEASE: 7, wire.DECLINE: 4, wire.INFORMATION_REQUEST: 8}

#: Pools up to this size are searched completely for a free address; larger
#: ones (a /64) are probed at this many places from the client's own spot.
SCAN_LIMIT = 4096


@dataclass(frozen=True)
class Link:
    """Where a message arrived: the interface, our addresses on it, and the
    DUID this server answers with there."""

    interface: Optional[str]
    addresses: Tuple[IPv6, ...]
    server_duid: bytes


@dataclass(frozen=True)
class Outgoing6:
    data: bytes
    host: str
    port: int
    #: a Reply with a boot URL sent straight to the client: the protocol
    #: sends it a Router Advertisement first (ra.RouterAdvertiser.nudge)
    boot: bool = False


@dataclass
class Exchange:
    message: wire.Message
    link: Link
    mac: str
    subnet: object = None
    server_address: Optional[IPv6] = None
    reply_type: Optional[int] = None
    addresses: list = field(default_factory=list)
    decision: Optional[BootDecision] = None
    url: Optional[str] = None
    reason: str = ""


def client_mac(message: wire.Message, source_host: Optional[str]) -> str:
    """The client's MAC: from its EUI-64 link-local source (the interface it
    really uses), a relay's option 79, or a DUID that holds one; "" if none."""
    if not message.relays and source_host:
        mac = wire.mac_from_link_local(source_host)
        if mac:
            return mac
    if message.relays:
        inner = message.relays[-1]
        for code, value in inner.options:
            if code == wire.OPT_CLIENT_LINKLAYER_ADDR and len(value) == 8 and value[:2] == b"\x00\x01":
                return ":".join(f"{b:02x}" for b in value[2:])
        mac = wire.mac_from_link_local(inner.peer_address)
        if mac:
            return mac
    return wire.mac_from_duid(message.client_id) or ""


def make_boot_request6(message: wire.Message, mac: str, link: Link, server_address) -> BootRequest:
    """What the selectors see of a DHCPv6 request: the DHCPv4 fields they
    know, filled from the DHCPv6 options that carry the same facts."""
    uuid = wire.uuid_from_duid(message.client_id)
    return BootRequest(
        mac=mac, xid=message.xid, message_type=V4_STEP.get(message.message_type),
        arch=tuple(message.client_arch), nic_version=message.nii,
        vendor_class=message.vendor_class, user_class=tuple(message.user_classes),
        client_uuid=(b"\x00" + uuid) if uuid is not None else None,
        interface=link.interface, phase="dhcp", server_address=server_address,
        family=6, duid=message.client_id, iaid=message.ia_na[0].iaid if message.ia_na else None)


def is_http_client(request: BootRequest, decision: Optional[BootDecision]) -> bool:
    if (request.vendor_class or b"").startswith(HTTP_CLIENT):
        return True
    if request.arch and request.arch[0] in HTTP_ARCHES:
        return True
    return bool(decision and (60, HTTP_CLIENT) in decision.extra_options)


def boot_url(filename: str, server_address: Optional[IPv6], http: bool, http_port: int = 80) -> Optional[str]:
    """
    A selector's file name as an option-59 URL.

    A plain name becomes C{tftp://[addr]/name} (C{http://} for UEFI HTTP
    boot clients); a URL is kept, except that an IPv6 host written without
    brackets (C{http://@server@/x} expands to C{http://fd99::1/x}) gets them.
    """
    if "://" in filename:
        scheme, _, rest = filename.partition("://")
        host, slash, path = rest.partition("/")
        if ":" in host and not host.startswith("["):
            try:
                host = f"[{IPv6(host)}]"
            except ValueError:
                pass
        return f"{scheme}://{host}{slash}{path}"
    if server_address is None:
        return None
    path = filename.lstrip("/")
    if http:
        port = "" if http_port == 80 else f":{http_port}"
        return f"http://[{server_address}]{port}/{path}"
    return f"tftp://[{server_address}]/{path}"


class Dhcp6Server:
    """
    @param config: the whole L{ownsocket.config.Config} (C{subnets6} used).
    @param store: a L{ownsocket.dhcp6.leases.MemoryLeaseStore6} or alike
        (its answers plain values or, from L{ownsocket.dhcp6.pgstore},
        Deferreds: then the reply waits for the commit, see L{steps}).
    @param selector: an L{IBootFileSelector} (usually the chain).
    @param clock: anything with C{seconds()}.
    @param recent: a L{RecentRequests} that TFTP/HTTP read (by address).
    """

    log = Logger()

    def __init__(self, config, store, selector, clock, recent=None, events=None):
        self.config = config
        self.store = store
        self.selector = selector
        self.clock = clock
        self.recent = recent
        self.events = events
        self._store_log = RateLimitedLog(self.log.warn, clock)
        self._handlers = {
            wire.SOLICIT: self._solicit, wire.REQUEST: self._request, wire.RENEW: self._renew,
            wire.REBIND: self._renew, wire.RELEASE: self._release, wire.DECLINE: self._decline,
            wire.CONFIRM: self._confirm, wire.INFORMATION_REQUEST: self._information,
        }

    # Read from the config on use: a reload swaps C{config}.
    offer_hold = property(lambda self: self.config.dhcp.offer_hold)
    decline_time = property(lambda self: self.config.dhcp.decline_time)
    http_port = property(lambda self: self.config.http.port)

    # -- entry point -------------------------------------------------------

    def handle(self, message: wire.Message, link: Link, source=None):
        """Answer one message: a list of L{Outgoing6}, or a Deferred of one."""
        self.store.sweep(self.clock.seconds())
        source_host = source[0] if source else None
        exchange = Exchange(message, link, client_mac(message, source_host))
        exchange.subnet = self._subnet_for(message, link)
        if exchange.subnet is None:
            exchange.reason = self._no_subnet_reason(message, link)
            self._log(exchange, "no-subnet")
            return []
        if (message.server_id is not None and message.server_id != link.server_duid):
            # RFC 8415 §16: meant for another server.  Our offer, if any, is void.
            exchange.reason = "addressed to another server (Server Identifier)"
            self._log(exchange, "not-for-us")
            if message.message_type == wire.REQUEST:
                return self._settle(exchange, steps.run(self._forget(exchange)))
            return []
        exchange.server_address = self._server_address(exchange.subnet, link)
        result = self._handlers[message.message_type](exchange, source)
        if isinstance(result, types.GeneratorType):
            result = self._settle(exchange, steps.run(result))
        return result

    def _forget(self, exchange):
        for ia in exchange.message.ia_na:
            yield self.store.forget(self._key(exchange, ia))
        return []

    def _settle(self, exchange, result):
        """A store that failed (only a Deferred one can fail here without
        raising): no reply, since nothing new may be answered without a
        commit.  The client retries; an unreachable database is said once
        by the store itself."""
        if isinstance(result, defer.Deferred):
            result.addErrback(self._store_failed, exchange)
        return result

    def _store_failed(self, failure, exchange):
        failure.trap(LeaseStoreError)
        if not failure.check(LeaseStoreUnavailable):
            self._store_log("DHCPv6 lease database failed for {mac}; {kind} dropped: {error}",
                            mac=exchange.mac or "?", kind=exchange.message.name,
                            error=failure.getErrorMessage())
        exchange.reason = "lease database unavailable: no answer without a commit"
        exchange.reply_type = None
        self._log(exchange, "store-error")
        return []

    # -- message types -----------------------------------------------------

    def _grant(self, exchange, now, bind):
        """An address for each IA_NA the client asks for: bound for the
        lease time (Request, rapid commit) or held while an offer is out
        (Solicit).  Returns the IA_NA options of the answer."""
        message = exchange.message
        ias = []
        for ia in message.ia_na:
            if bind:
                state, seconds = BOUND, exchange.subnet.lease_time
            else:
                state, seconds = OFFERED, self.offer_hold
            address, why = yield from self._choose(exchange, ia, now, state, seconds)
            if address is None:
                ias.append(wire.ia_na(ia.iaid, 0, 0, status=(wire.NO_ADDRS_AVAIL, why)))
                exchange.reason = why
                continue
            if bind:
                why = f"{why}; bound for {exchange.subnet.lease_time}s"
            exchange.addresses.append(address)
            exchange.reason = why
            ias.append(self._ia(exchange.subnet, ia.iaid, address))
        if not message.ia_na:
            exchange.reason = "no IA_NA asked for"
        return ias

    def _solicit(self, exchange, source):
        commit = exchange.message.rapid_commit
        ias = yield from self._grant(exchange, self.clock.seconds(), bind=commit)
        if commit:
            exchange.reply_type = wire.REPLY
            exchange.reason += "; rapid commit"
            extra = [wire.option(wire.OPT_RAPID_COMMIT, b"")]
        else:
            exchange.reply_type = wire.ADVERTISE
            extra = [wire.option(wire.OPT_PREFERENCE, PREFERENCE_MAX)]
        if not exchange.addresses:
            extra.append(wire.status_code(wire.NO_ADDRS_AVAIL, exchange.reason[:200]))
        return self._answer(exchange, source, ias + extra)

    def _request(self, exchange, source):
        ias = yield from self._grant(exchange, self.clock.seconds(), bind=True)
        exchange.reply_type = wire.REPLY
        extra = [] if exchange.addresses else [wire.status_code(wire.NO_ADDRS_AVAIL, exchange.reason[:200])]
        return self._answer(exchange, source, ias + extra)

    def _renew(self, exchange, source):
        """Renew and Rebind: extend what the client holds; addresses it may
        not keep come back with lifetimes 0 (RFC 8415 §18.3.4/5)."""
        message = exchange.message
        subnet = exchange.subnet
        now = self.clock.seconds()
        ias = []
        for ia in message.ia_na:
            key = self._key(exchange, ia)
            if not ia.addresses:
                address, why = yield from self._choose(exchange, ia, now, BOUND, subnet.lease_time)
                if address is None:
                    ias.append(wire.ia_na(ia.iaid, 0, 0, status=(wire.NO_ADDRS_AVAIL, why)))
                    continue
                exchange.addresses.append(address)
                ias.append(self._ia(subnet, ia.iaid, address))
                continue
            parts = []
            for address in [entry.address for entry in ia.addresses]:
                # Its own (not declined) or free: the store's compare-and-set.
                kept = subnet.in_pool(address) and (
                    yield self.store.claim(key, subnet.name, (address,), BOUND, subnet.lease_time, now))
                if kept:
                    exchange.addresses.append(address)
                    parts.append(wire.iaaddr(address, subnet.lease_time, subnet.lease_time))
                else:
                    parts.append(wire.iaaddr(address, 0, 0))
            if exchange.addresses:
                ias.append(wire.ia_na(ia.iaid, *self._t1_t2(subnet), parts))
            else:
                ias.append(wire.ia_na(ia.iaid, 0, 0, parts))
        exchange.reply_type = wire.REPLY
        exchange.reason = (f"extended for {subnet.lease_time}s" if exchange.addresses
                           else "nothing to extend: lifetimes 0")
        return self._answer(exchange, source, ias)

    def _release(self, exchange, source):
        message = exchange.message
        ias = []
        released = []
        for ia in message.ia_na:
            key = self._key(exchange, ia)
            held = []
            for entry in ia.addresses:
                if (yield self.store.release(key, entry.address)):
                    held.append(entry.address)
            released += held
            if not held:
                ias.append(wire.ia_na(ia.iaid, 0, 0, status=(wire.NO_BINDING, "no such binding")))
        exchange.addresses = released
        exchange.reply_type = wire.REPLY
        exchange.reason = "released by its owner" if released else "Release of nothing it holds"
        return self._reply_only(exchange, source, ias + [wire.status_code(wire.SUCCESS, "released")])

    def _decline(self, exchange, source):
        message = exchange.message
        now = self.clock.seconds()
        declined = []
        for ia in message.ia_na:
            key = self._key(exchange, ia)
            for entry in ia.addresses:
                # Held under a key of its own: the quarantine must outlive
                # the client's next binding.
                if (yield self.store.decline(key, entry.address, self.decline_time, now)):
                    declined.append(entry.address)
        exchange.addresses = declined
        exchange.reply_type = wire.REPLY
        exchange.reason = (f"in use elsewhere: quarantined for {self.decline_time}s" if declined
                           else "Decline of nothing it holds")
        return self._reply_only(exchange, source, [wire.status_code(wire.SUCCESS, "declined")])

    def _confirm(self, exchange, source):
        addresses = [entry.address for ia in exchange.message.ia_na for entry in ia.addresses]
        if not addresses:
            exchange.reason = "Confirm without addresses: no answer (RFC 8415 §18.3.3)"
            self._log(exchange, "ignored")
            return []
        on_link = all(address in exchange.subnet.network for address in addresses)
        exchange.reply_type = wire.REPLY
        exchange.reason = "addresses on link" if on_link else "addresses not on this link"
        status = wire.status_code(wire.SUCCESS if on_link else wire.NOT_ON_LINK, exchange.reason)
        return self._reply_only(exchange, source, [status])

    def _information(self, exchange, source):
        exchange.reply_type = wire.REPLY
        exchange.reason = "configuration only, no address"
        return self._answer(exchange, source, [])

    # -- addresses ---------------------------------------------------------

    def _key(self, exchange, ia):
        return (exchange.message.client_id or b"", ia.iaid, exchange.mac)

    def _choose(self, exchange, ia, now, state, seconds):
        """Claim the address for one IA (a step, see L{steps}): its binding,
        the one it asks for, or a free one found from the client's own spot
        in the pool.  The store decides which is free."""
        subnet = exchange.subnet
        key = self._key(exchange, ia)
        asked = [entry.address for entry in ia.addresses if subnet.in_pool(entry.address)]
        claimed = yield self.store.claim(key, subnet.name, self._candidates(exchange, ia, key, asked),
                                         state, seconds, now,
                                         own=tuple((pool.first, pool.last) for pool in subnet.pools))
        if claimed is not None:
            lease, own = claimed
            if own:
                return lease.address, "the client's current binding"
            if lease.address in asked:
                return lease.address, "asked for by the client"
            return lease.address, "new address from the pool"
        if not subnet.pools:
            return None, f"[subnet6:{subnet.name}] has no pool"
        return None, f"pool of [subnet6:{subnet.name}] exhausted"

    @staticmethod
    def _candidates(exchange, ia, key, asked):
        """What the client asks for, then the pool from the client's own
        spot (hashed, so servers sharing a store do not all contend for the
        lowest free address); generated only as far as the store reads."""
        yield from asked
        subnet = exchange.subnet
        seed = hashlib.sha256(exchange.mac.encode() or (key[0] + struct.pack("!I", ia.iaid))).digest()
        spot = int.from_bytes(seed[:8], "big")
        for pool in subnet.pools:
            size = int(pool.last) - int(pool.first) + 1
            first = int(pool.first)
            start = spot % size
            step = 1 if size <= SCAN_LIMIT else (int.from_bytes(seed[8:16], "big") % size) | 1
            for probe in range(min(size, SCAN_LIMIT)):
                yield IPv6(first + (start + probe * step) % size)

    @staticmethod
    def _t1_t2(subnet):
        return subnet.lease_time // 2, subnet.lease_time * 4 // 5

    def _ia(self, subnet, iaid, address):
        return wire.ia_na(iaid, *self._t1_t2(subnet), [wire.iaaddr(address, subnet.lease_time, subnet.lease_time)])

    # -- subnet and server identity ---------------------------------------

    def _subnet_for(self, message, link):
        if message.relays:
            link_address = message.relays[-1].link_address
            for subnet in self.config.subnets6:
                if link_address in subnet.network:
                    return subnet
            return None
        for subnet in self.config.subnets6:
            if subnet.interface is not None and subnet.interface == link.interface:
                return subnet
        for subnet in self.config.subnets6:
            if subnet.interface is None and any(address in subnet.network for address in link.addresses):
                return subnet
        return None

    @staticmethod
    def _no_subnet_reason(message, link):
        if message.relays:
            return f"relay link {message.relays[-1].link_address} is on no [subnet6:...]; not answering"
        return (f"no [subnet6:...] for interface {link.interface or '?'} "
                f"(addresses {', '.join(map(str, link.addresses)) or 'none'}); not answering")

    @staticmethod
    def _server_address(subnet, link):
        if subnet.server_address is not None:
            return subnet.server_address
        for address in link.addresses:
            if address in subnet.network:
                return address
        for address in link.addresses:
            if not address.is_link_local:
                return address
        return None

    # -- replies -----------------------------------------------------------

    def _base(self, exchange):
        message = exchange.message
        options = []
        if message.client_id is not None:
            options.append(wire.option(wire.OPT_CLIENTID, message.client_id))
        options.append(wire.option(wire.OPT_SERVERID, exchange.link.server_duid))
        return options

    def _reply_only(self, exchange, source, body):
        data = wire.build(exchange.reply_type, exchange.message.xid, self._base(exchange) + body)
        self._log(exchange)
        return [self._outgoing(exchange, data, source)]

    def _answer(self, exchange, source, body):
        """A reply with configuration and, for boot clients, the boot URL."""
        message = exchange.message
        subnet = exchange.subnet
        oro = set(message.oro)
        config = []
        if subnet.dns and wire.OPT_DNS_SERVERS in oro:
            config.append(wire.addresses(wire.OPT_DNS_SERVERS, subnet.dns))
        if subnet.domain and wire.OPT_DOMAIN_LIST in oro:
            config.append(wire.domain_list(subnet.domain))
        wants_boot = wire.OPT_BOOTFILE_URL in oro or bool(message.client_arch)
        if not wants_boot:
            data = wire.build(exchange.reply_type, message.xid, self._base(exchange) + body + config)
            self._log(exchange)
            return [self._outgoing(exchange, data, source)]
        request = make_boot_request6(message, exchange.mac, exchange.link, exchange.server_address)

        def finish(decision):
            exchange.decision = decision
            options = self._base(exchange) + body + config
            http = is_http_client(request, decision)
            if decision is not None and decision.filename:
                exchange.url = boot_url(decision.filename, exchange.server_address, http, self.http_port)
                if exchange.url is None:
                    exchange.reason += "; no IPv6 server address for the boot URL (set server_address)"
            if exchange.url:
                options.append(wire.option(wire.OPT_BOOTFILE_URL, exchange.url.encode("ascii", "replace")))
                if http:
                    # OVMF's HTTP boot needs it; PXEClient here would send
                    # PXE to a boot server on port 4011 instead.
                    options.append(wire.vendor_class(wire.ENTERPRISE_PXE, [HTTP_CLIENT]))
            if self.recent is not None:
                for address in exchange.addresses:
                    self.recent.remember(address, request)
            data = wire.build(exchange.reply_type, message.xid, options)
            self._log(exchange)
            outgoing = self._outgoing(exchange, data, source)
            if exchange.url and exchange.reply_type == wire.REPLY and not message.relays:
                outgoing = Outgoing6(outgoing.data, outgoing.host, outgoing.port, boot=True)
            return [outgoing]

        return with_decision(self.selector, request, finish)

    @staticmethod
    def _outgoing(exchange, data, source):
        message = exchange.message
        if message.relays:
            return Outgoing6(wire.wrap_relay_reply(data, message.relays), source[0], SERVER_PORT)
        return Outgoing6(data, source[0] if source else "", CLIENT_PORT)

    # -- logging -----------------------------------------------------------

    def _log(self, exchange, dropped=None):
        message = exchange.message
        arch = ",".join(f"{a} {ARCH_NAMES.get(a, 'unknown')}" for a in message.client_arch) or "-"
        answer = wire.MESSAGE_NAMES.get(exchange.reply_type, "no reply")
        addresses = "".join(f" {address}" for address in exchange.addresses)
        decision = exchange.decision
        boot = (f" boot {exchange.url!r} by {decision.selector or '?'} ({decision.reason})"
                if decision and exchange.url else "")
        via = (f"relay {message.relays[-1].link_address}" if message.relays
               else exchange.link.interface or "?")
        duid = (message.client_id or b"").hex()
        self.log.info("{line}", line=(
            f"DHCPv6 {message.name} from {exchange.mac or '?'} duid {duid} via {via} xid {message.xid:#08x} "
            f"arch [{arch}] -> {answer}{addresses}{boot}: {exchange.reason}"),
            kind=message.name, mac=exchange.mac, answer=answer)
        events = self.events
        if events is not None and events.active:
            peer = str(exchange.addresses[0]) if exchange.addresses else None
            if dropped is not None:
                events.publish("dhcp6", "dropped", mac=exchange.mac or None, reason=dropped)
            elif exchange.reply_type is not None:
                events.publish("dhcp6", "sent", mac=exchange.mac or None, peer=peer,
                               message=answer.lower(), xid=message.xid, address=peer,
                               file=exchange.url, selector=decision.selector if decision else None,
                               arch=arch, reason=exchange.reason)
