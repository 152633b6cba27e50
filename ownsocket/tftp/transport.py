"""
The contract between a transfer's protocol
(L{ownsocket.tftp.protocol.SessionProtocol}) and the port it runs on.

Any C{IUDPTransport} will do (test fakes, Twisted's C{udp.Port}); a port
that knows more says so by providing L{ISessionTransport}, and the
protocol then sends without addresses and a window in one go.  In the
other direction, a port whose socket only ever delivers the peer's
datagrams (a connected socket) hands them to
L{IPeerDatagramReceiver.peerDatagramReceived}, skipping the address check.
"""

from zope.interface import Interface


class ISessionTransport(Interface):
    """A transfer port bound to one peer (L{ownsocket.tftp.fastport.SessionPort})."""

    def send_to_peer(datagram):
        """
        Send one datagram to the peer.  OSError propagates: the protocol
        counts it as a lost packet, which its timer recovers.
        """

    def send_window(packets):
        """
        Send a list of datagrams to the peer, all of the first one's size
        but the last (a window of DATA packets), in as few system calls as
        the kernel allows.  OSError propagates, as for L{send_to_peer}.
        """

    def write(datagram, addr=None):
        """Send to C{addr} (a stranger's TID: error 5), or to the peer when None."""

    def getHost():
        """The local C{IPv4Address} of the port."""

    def stopListening():
        """Close the port; the protocol's C{doStop} is called."""


class IPeerDatagramReceiver(Interface):
    """A transfer's protocol, as its port sees it."""

    def makeConnection(transport):
        """Attach the port (an C{IUDPTransport}, maybe an L{ISessionTransport})."""

    def datagramReceived(datagram, addr):
        """A datagram from anyone: the peer, or a stranger to answer with error 5."""

    def peerDatagramReceived(datagram):
        """A datagram the port knows came from the peer (the per-ACK hot path)."""
