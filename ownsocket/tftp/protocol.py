"""
The thin Twisted layer: the well-known-port listener and the per-transfer
port.  Both only move bytes between sockets and the sans-I/O parts
(L{ownsocket.tftp.wire}, L{ownsocket.tftp.session}); policy lives in
L{ownsocket.tftp.server}.  The reactor is always injected.
"""

from __future__ import annotations

from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger
from zope.interface import implementer

from ownsocket.tftp import wire
from ownsocket.tftp.session import DONE
from ownsocket.tftp.transport import IPeerDatagramReceiver, ISessionTransport

#: Error 5 replies one transfer sends to foreign TIDs, at most.
MAX_STRANGER_ANSWERS = 8
_NEVER = float("inf")

_ERROR_UNKNOWN_TID = wire.build_error(wire.ERR_UNKNOWN_TID, "Unknown transfer ID")
_ERROR_ILLEGAL = wire.build_error(wire.ERR_ILLEGAL, "Illegal TFTP operation")
_ERROR_READ_ONLY = wire.build_error(wire.ERR_ACCESS, "Read-only server: writes are refused")


class ListenerProtocol(DatagramProtocol):
    """
    Port 69: only requests belong here.  Anything else is answered with
    error 4 (DATA/ACK from a confused client) or dropped (ERROR packets,
    never answered to avoid error ping-pong; unknown opcodes, which are
    usually scans), and logged at a bounded rate by the server.
    """

    noisy = False  # the start-up summary names the TFTP port already

    def __init__(self, server, local_host: str = ""):
        self.server = server
        self.local_host = local_host

    def datagramReceived(self, datagram, addr):
        opcode = wire.opcode_of(datagram)
        if opcode == wire.RRQ:
            try:
                request = wire.parse_request(datagram)
            except wire.MalformedPacket as error:
                self.server.garbage(addr, f"malformed RRQ: {error}")
                self.reply_limited(_ERROR_ILLEGAL, addr)
                return
            self.server.handle_request(request, addr, self)
        elif opcode == wire.WRQ:
            self.server.refused_write(addr, datagram)
            self.reply(_ERROR_READ_ONLY, addr)
        elif opcode in (wire.DATA, wire.ACK, wire.OACK):
            self.server.garbage(addr, f"opcode {opcode} sent to the request port")
            self.reply_limited(_ERROR_ILLEGAL, addr)
        elif opcode == wire.ERROR:
            self.server.garbage(addr, "ERROR packet sent to the request port")
        else:
            self.server.garbage(addr, f"unknown opcode {opcode} ({len(datagram)} bytes)")

    def reply(self, datagram, addr) -> None:
        transport = self.transport
        if transport is None:
            return  # closed by a reload; a transfer it started outlived it
        try:
            transport.write(datagram, addr)
        except OSError:
            pass  # ENOBUFS/EAGAIN/ENETUNREACH: the client will retry

    def reply_limited(self, datagram, addr) -> None:
        """Answers to garbage are rate-limited: they cost us and help scanners."""
        if self.server.may_answer_garbage():
            self.reply(datagram, addr)


@implementer(IPeerDatagramReceiver)
class SessionProtocol(DatagramProtocol):
    """
    Drives one L{Session} on its own ephemeral port.

    The timer is one DelayedCall that is only moved earlier, never
    cancelled per packet: each ACK just pushes the session's deadline, and
    an early firing re-arms itself for the remainder.  That keeps the
    per-packet cost to a float comparison instead of heap operations.
    """

    log = Logger()
    #: Twisted would log two lines per port opened and closed: one per
    #: transfer is the rule, and the server writes it.
    noisy = False

    def __init__(self, session, peer, reactor, on_done):
        self.session = session
        self.peer = peer
        self._reactor = reactor
        self._seconds = reactor.seconds
        self._on_done = on_done
        self._call = None
        #: When the pending DelayedCall fires (infinity when none is
        #: pending): the per-ACK check is one comparison with it.
        self._call_at = _NEVER
        self._closed = False
        self._strangers_answered = 0
        self._send_peer = None
        self._send_window = None

    def makeConnection(self, transport):
        # An ISessionTransport (a socket connected to the peer: the fast
        # ports) sends without an address, and a window in one go; any
        # other IUDPTransport gets an address and one call per datagram.
        if ISessionTransport.providedBy(transport):
            self._send_peer = transport.send_to_peer
            self._send_window = transport.send_window
        else:
            write, peer = transport.write, self.peer
            send = lambda datagram: write(datagram, peer)  # noqa: E731

            def window(packets):
                for packet in packets:
                    send(packet)
            self._send_peer = send
            self._send_window = window
        DatagramProtocol.makeConnection(self, transport)

    def begin(self) -> None:
        self._run(self.session.start, self._seconds())

    def datagramReceived(self, datagram, addr):
        if addr != self.peer:
            # RFC 1350: answer the stranger, leave the transfer alone.  A
            # few answers per transfer: more would make us a reflector.
            if self._strangers_answered < MAX_STRANGER_ANSWERS:
                self._strangers_answered += 1
                try:
                    self.transport.write(_ERROR_UNKNOWN_TID, addr)
                except OSError:
                    pass
            return
        self.peerDatagramReceived(datagram)

    def peerDatagramReceived(self, datagram):
        """
        A datagram from the peer: the hot path, one call per ACK (_run,
        _send and _arm inlined).  Transports that know the sender is the
        peer (a connected socket) call this directly.
        """
        if self._closed:
            return
        session = self.session
        try:
            out = session.receive(datagram, self._seconds())
        except Exception:
            self._crashed()
            return
        if out:
            try:
                if len(out) == 1:
                    self._send_peer(out[0])
                else:
                    self._send_window(out)
            except OSError:
                pass  # a full socket buffer is a lost packet: the timer recovers it
        deadline = session.deadline
        if deadline is None:
            if session.state is DONE:
                self._close()
            return
        if deadline < self._call_at:
            self._arm()

    def _crashed(self) -> None:
        self.log.failure("TFTP session to {peer} failed", peer=self.peer)
        self._send([wire.build_error(wire.ERR_UNDEFINED, "Server error")])
        self.session.abort("server error", self._seconds(), "internal error")
        self._close()

    def _run(self, event, *args) -> None:
        if self._closed:
            return
        try:
            out = event(*args)
        except Exception:
            self._crashed()
            return
        if out:
            self._send(out)
        if self.session.state is DONE:
            self._close()
        else:
            self._arm()

    def _send(self, packets) -> None:
        try:
            if len(packets) == 1:
                self._send_peer(packets[0])
            else:
                self._send_window(packets)
        except OSError:
            # A full socket buffer is a lost packet: the timer recovers it.
            pass

    def _arm(self) -> None:
        """Have the timer fire at the session's deadline or earlier."""
        deadline = self.session.deadline
        if deadline is None:
            return
        call = self._call
        if call is None or not call.active():
            self._call = self._reactor.callLater(max(0.0, deadline - self._seconds()), self._fire)
        elif call.getTime() > deadline:
            call.reset(max(0.0, deadline - self._seconds()))
        else:
            self._call_at = call.getTime()
            return
        self._call_at = self._call.getTime()

    def _fire(self) -> None:
        self._call = None
        self._call_at = _NEVER
        deadline = self.session.deadline
        if deadline is None or self._closed:
            return
        now = self._seconds()
        if now < deadline:
            # Pushed back by ACKs since it was set: sleep the remainder.
            self._arm()
            return
        self._run(self.session.timer_expired, now)

    def abort(self, result: str, detail: str = "") -> None:
        """End the transfer now (eviction, shutdown); nothing is sent."""
        self.session.abort(result, self._seconds(), detail)
        self._close()

    def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        self._call_at = _NEVER
        if self.transport is not None:
            self.transport.stopListening()
        self._on_done(self)
