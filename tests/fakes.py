"""
Tiny fakes for protocol tests.

Twisted's own FakeDatagramTransport lacks setBroadcastAllowed and MemoryReactor
lacks listenUDP, so the protocol tests use these instead of real sockets.
"""

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock


class FakeDatagramTransport:
    """Records every datagram written; can be told to fail like a real port."""

    def __init__(self, host="0.0.0.0", port=0):
        self.written = []
        self.broadcast_allowed = False
        self.host = IPv4Address("UDP", host, port)
        self.fail_with = None
        self.connected = True

    def write(self, data, addr=None):
        if self.fail_with is not None:
            raise self.fail_with
        self.written.append((bytes(data), addr))

    def setBroadcastAllowed(self, enabled):
        self.broadcast_allowed = enabled

    def getBroadcastAllowed(self):
        return self.broadcast_allowed

    def getHost(self):
        return self.host

    def stopListening(self):
        self.connected = False
        return None

    loseConnection = stopListening


class FakeUDPReactor(Clock):
    """A Clock that also hands out fake UDP ports."""

    def __init__(self):
        super().__init__()
        self.ports = []
        self._next_port = 40000

    def listenUDP(self, port, protocol, interface="", maxPacketSize=8192):
        if port == 0:
            self._next_port += 1
            port = self._next_port
        transport = FakeDatagramTransport(interface or "0.0.0.0", port)
        self.ports.append((port, protocol, interface, transport))
        protocol.makeConnection(transport)
        return transport

    def adoptDatagramPort(self, fileDescriptor, addressFamily, protocol, maxPacketSize=8192):
        transport = FakeDatagramTransport()
        self.ports.append((None, protocol, fileDescriptor, transport))
        protocol.makeConnection(transport)
        return transport
