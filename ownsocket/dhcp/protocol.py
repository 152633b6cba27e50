"""
The thin Twisted end of DHCP: datagrams in, datagrams out.

Everything that can go wrong with a datagram is caught here: a malformed
packet is dropped with a rate-limited line, a failing policy is logged and the
packet dropped, and a send error (ENETUNREACH, ENOBUFS, EAGAIN escape from
Port.write) costs one reply, never the server.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from ownsocket.dhcp import wire
from ownsocket.dhcp.server import Arrival
from ownsocket.ratelimit import RateLimitedLog


class DhcpProtocol(DatagramProtocol):
    log = Logger()
    noisy = False  # the service logs one line per interface itself

    def __init__(self, server, arrival: Arrival, clock):
        self.server = server
        self.arrival = arrival
        self._drop_log = RateLimitedLog(self.log.warn, clock)
        self._send_log = RateLimitedLog(self.log.warn, clock)

    def startProtocol(self):
        self.transport.setBroadcastAllowed(True)

    def datagramReceived(self, data, addr):
        try:
            message = wire.parse(data)
        except wire.MalformedPacket as error:
            self._drop_log("dropped {size}-byte packet from {host}:{port} on {interface}: {reason}",
                           size=len(data), host=addr[0], port=addr[1],
                           interface=self.arrival.interface or "?", reason=error)
            return
        except Exception:
            self.log.failure("parser failed on a {size}-byte packet from {host}; dropped",
                             size=len(data), host=addr[0])
            return
        try:
            result = self.server.handle(message, self.arrival, addr)
        except Exception:
            self.log.failure("DHCP policy failed for {mac}; request dropped", mac=message.mac)
            return
        if isinstance(result, defer.Deferred):
            result.addCallback(self._send)
            result.addErrback(lambda failure: self.log.failure(
                "DHCP reply for {mac} failed; request dropped", failure, mac=message.mac))
        else:
            self._send(result)

    def _send(self, replies):
        for outgoing in replies:
            try:
                self.transport.write(outgoing.data, (outgoing.host, outgoing.port))
            except OSError as error:
                self._send_log("cannot send to {host}:{port} on {interface}: {error}",
                               host=outgoing.host, port=outgoing.port,
                               interface=self.arrival.interface or "?", error=error.strerror or error)
