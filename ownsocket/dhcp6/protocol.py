"""
The thin Twisted end of DHCPv6: datagrams in, datagrams out.

A malformed datagram is dropped with a rate-limited line, a failing policy
is logged and the datagram dropped, and a send error costs one reply,
never the server.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from ownsocket.dhcp6 import wire
from ownsocket.ratelimit import RateLimitedLog


class Dhcp6Protocol(DatagramProtocol):
    """
    @param server: a L{ownsocket.dhcp6.server.Dhcp6Server}.
    @param link: a callable returning the L{ownsocket.dhcp6.server.Link} of
        this socket's interface (addresses may change while we run).
    @param before_boot_reply: called with the client's address right before
        a Reply carrying a boot URL is sent to it (the link's Router
        Advertisement nudge, see L{ownsocket.dhcp6.ra}); None: nothing.
    """

    log = Logger()
    noisy = False

    def __init__(self, server, link, clock, events=None, before_boot_reply=None):
        self.server = server
        self.before_boot_reply = before_boot_reply
        self.link = link
        self.clock = clock
        self.events = events
        self._drop_log = RateLimitedLog(self.log.warn, clock)
        self._send_log = RateLimitedLog(self.log.warn, clock)

    def datagramReceived(self, data, addr):
        link = self.link()
        try:
            message = wire.parse(data)
        except wire.MalformedPacket as error:
            self._drop_log("dropped {size}-byte DHCPv6 datagram from [{host}]:{port} on {interface}: {reason}",
                           size=len(data), host=addr[0], port=addr[1], interface=link.interface or "?",
                           reason=error)
            if self.events is not None and self.events.active:
                self.events.publish("dhcp6", "dropped", peer=addr[0], reason="parse")
            return
        try:
            result = self.server.handle(message, link, addr)
        except Exception:
            self.log.failure("DHCPv6 policy failed for a {kind} from {host}; dropped",
                             kind=message.name, host=addr[0])
            return
        if isinstance(result, defer.Deferred):
            result.addCallback(self._send)
            result.addErrback(lambda failure: self.log.failure(
                "DHCPv6 reply to {host} failed; dropped", failure, host=addr[0]))
        else:
            self._send(result)

    def _send(self, replies):
        for outgoing in replies:
            if outgoing.boot and self.before_boot_reply is not None:
                self.before_boot_reply(outgoing.host)
            try:
                self.transport.write(outgoing.data, (outgoing.host, outgoing.port))
            except OSError as error:
                self._send_log("cannot send to [{host}]:{port}: {error}", host=outgoing.host,
                               port=outgoing.port, error=error.strerror or error)
