"""
proxyDHCP: boot information for networks that already have a DHCP server.

The existing server hands out addresses; ownsocket answers only PXE and HTTP
boot clients (option 60 starting with PXEClient or HTTPClient), never with an
address (yiaddr stays 0.0.0.0), on port 67 (DISCOVER -> proxy OFFER) and on
port 4011 (REQUEST -> ACK, the PXE "boot server" step).  The client merges
the two offers: address from one, boot file from the other.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Optional

from twisted.logger import Logger

from ownsocket.dhcp import wire
from ownsocket.dhcp.bootfields import add_boot_fields, echo_options, with_decision
from ownsocket.dhcp.server import BROADCAST, Outgoing, arch_label, arch_text, message_name
from ownsocket.events import EventBus
from ownsocket.dhcp.wire import ACK, DISCOVER, INFORM, OFFER, REQUEST, Reply

#: Option 43 for a proxy offer: PXE_DISCOVERY_CONTROL (sub-option 6) = 8,
#: "boot file name present: download it, no boot-server discovery or menu".
PXE_DISCOVERY_CONTROL = b"\x06\x01\x08\xff"

PXE_VENDOR_PREFIXES = (b"PXEClient", b"HTTPClient")


@dataclass(frozen=True)
class ProxyArrival:
    interface: Optional[str]
    local_address: Optional[ipaddress.IPv4Address]
    port: int  # 67 (proxy offers) or 4011 (boot server requests)


class ProxyServer:
    log = Logger()
    service_name = "proxy"

    def __init__(self, config, selector, boot_request, boot_file_size=None, recent=None,
                 events=None, clock=None):
        """
        @param boot_request: callable(message, arrival, server_address, phase)
            -> BootRequest; the DHCP server's own, so both modes describe a
            client to the selectors the same way.
        """
        self.config = config
        self.selector = selector
        self.boot_request = boot_request
        self.boot_file_size = boot_file_size
        self.recent = recent
        self.events = events if events is not None else EventBus(clock)

    def reconfigure(self, config, selector):
        """Answer the next requests with a new config and selector."""
        self.config, self.selector = config, selector

    def handle(self, message, arrival, source=None):
        vendor = message.options.get(wire.OPT_VENDOR_CLASS, b"")
        kind = message.message_type
        if self.events.active:
            self.events.publish("proxy", "received", mac=message.mac,
                                peer=str(message.ciaddr) if message.has_ciaddr else None,
                                message=message_name(message), xid=message.xid,
                                interface=f"{arrival.interface or '?'}:{arrival.port}")
        if not vendor.startswith(PXE_VENDOR_PREFIXES):
            return self._skip(message, arrival, "not a PXE/HTTP boot client (option 60); left to the DHCP server",
                              "not-for-us")
        if arrival.port == 4011:
            if kind not in (REQUEST, INFORM):
                return self._skip(message, arrival, "only REQUEST/INFORM are answered on port 4011")
            reply_type, phase = ACK, "4011"
        else:
            if kind != DISCOVER:
                return self._skip(message, arrival, "proxyDHCP answers DISCOVER on port 67; "
                                                    "the address is the DHCP server's business", "not-for-us")
            reply_type, phase = OFFER, "proxy"
        server_id = self.config.dhcp.server_address or arrival.local_address
        if server_id is None:
            return self._skip(message, arrival, "no address on this interface (set [dhcp] server_address)",
                              "no-subnet")
        request = self.boot_request(message, arrival, server_id, phase)
        if self.recent is not None:
            self.recent.remember_mac(request)
        def answer(decision):
            if decision is None or not (decision.filename or decision.extra_options):
                return self._skip(message, arrival, "no selector chose a boot file")
            reply = Reply(request=message, message_type=reply_type)
            reply.add(wire.OPT_MESSAGE_TYPE, bytes((reply_type,)))
            reply.add(wire.OPT_SERVER_ID, server_id.packed)
            reply.add(wire.OPT_VENDOR_CLASS, b"HTTPClient" if vendor.startswith(b"HTTPClient") else b"PXEClient")
            reply.add(wire.OPT_VENDOR_SPECIFIC, PXE_DISCOVERY_CONTROL)
            next_server = decision.next_server or self.config.boot.next_server or server_id
            add_boot_fields(reply, message, decision, next_server, self.boot_file_size, request)
            echo_options(message, reply)
            host, port = self._destination(message, arrival, source)
            if self.recent is not None and message.has_ciaddr:
                self.recent.remember(message.ciaddr, request)
            self._log(message, arrival, wire.MESSAGE_NAMES[reply_type],
                      f"boot {decision.filename!r} by {decision.selector or '?'} ({decision.reason})")
            if self.events.active:
                self.events.publish("proxy", "sent", mac=message.mac,
                                    peer=str(message.ciaddr) if message.has_ciaddr else None,
                                    message=wire.MESSAGE_NAMES[reply_type].lower(), xid=message.xid,
                                    address=None, file=decision.filename, selector=decision.selector,
                                    arch=arch_label(message.arch_types), reason=decision.reason)
            return [Outgoing(wire.build(reply), host, port)]

        return with_decision(self.selector, request, answer)

    def _destination(self, message, arrival, source):
        if message.relayed:
            return str(message.giaddr), self.config.dhcp.port
        if arrival.port == 4011 and source is not None:
            # The boot-server step is unicast; answer where it came from.
            host = str(message.ciaddr) if message.has_ciaddr else source[0]
            return host, source[1]
        return BROADCAST, self.config.dhcp.client_port

    def _skip(self, message, arrival, reason, dropped="ignored"):
        self._log(message, arrival, "no reply", reason)
        if self.events.active:
            self.events.publish("proxy", "dropped", mac=message.mac,
                                peer=str(message.ciaddr) if message.has_ciaddr else None,
                                reason=dropped, message=message_name(message), xid=message.xid,
                                detail=reason)
        return []

    def _log(self, message, arrival, answer, reason):
        arches = arch_text(message.arch_types)
        self.log.info("proxy {kind} from {mac} via {interface}:{port} arch [{arch}] -> {answer}: {reason}",
                      kind=wire.MESSAGE_NAMES.get(message.message_type, "?"), mac=message.mac,
                      interface=arrival.interface or "?", port=arrival.port, arch=arches,
                      answer=answer, reason=reason)
