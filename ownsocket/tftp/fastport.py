"""
Transfer ports for a real POSIX reactor, built for the packet rate.

Profiling a 100-client boot storm on Twisted's generic C{udp.Port} showed
most of the server's time outside TFTP: C{write} validates the address with
two C{inet_pton} calls per datagram, C{doRead} reads until C{EWOULDBLOCK} so
every event ends in a raised exception, the reactor wraps every readiness
event in a logging context, and an unconnected C{sendto} pays a route lookup
per datagram.  So, on Linux:

  - all transfer sockets sit in one inner epoll set (L{SessionMux}) whose
    descriptor is the only thing the reactor watches: one reactor event
    serves every transfer that has an ACK waiting;
  - each transfer has a socket connected to its peer (C{send}, no per-packet
    address handling; the kernel filters strangers), plus an unconnected
    socket on the same port (SO_REUSEADDR; Linux prefers the connected
    socket for the peer's datagrams) that only receives packets from
    foreign TIDs, so they still get RFC 1350's error 5;
  - one datagram is read per readiness (epoll is level-triggered, so
    anything left is reported again on the next round);
  - a window of DATA packets leaves in one C{sendmsg} with UDP
    segmentation offload (L{SessionPort.send_window}).

The reactor is asked only for C{IReactorFDSet.addReader}/C{removeReader}
of one descriptor, which every reactor that watches file descriptors
provides (epoll, poll, select, asyncio).  On Twisted's epoll reactor the
mux also holds the reactor's wait while ACKs flow; that needs two private
details of the reactor, kept in L{ownsocket.tftp.reactorhold} behind a
probe that falls back to the plain way when they are not there.

The protocol objects are unchanged C{DatagramProtocol}s, with the
L{ISessionTransport} extras; anywhere else (test fakes, reactors without
C{IReactorFDSet}, no epoll) the reactor's own C{listenUDP} is used.
"""

from __future__ import annotations

import errno
import select
import socket
import struct
import sys
from typing import Optional

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IReactorFDSet, IReadDescriptor
from twisted.logger import Logger
from zope.interface import implementer

from ownsocket.tftp.reactorhold import ReactorHold
from ownsocket.tftp.transport import IPeerDatagramReceiver, ISessionTransport

_AGAIN = (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR)
#: ICMP port unreachable on a connected socket, and transient buffer
#: shortages: the session's timer deals with all of them.
_TRANSIENT = _AGAIN + (errno.ECONNREFUSED, errno.ENOBUFS, errno.EHOSTUNREACH, errno.ENETUNREACH)
_MAX_DATAGRAM = 2048  # ACKs are 4 bytes, ERRORs a short text

#: UDP segmentation offload (Linux 4.18+): the UDP_SEGMENT control message
#: (the constants are from <netinet/udp.h>; Python does not name them).
_GSO = sys.platform.startswith("linux")
_SOL_UDP = getattr(socket, "SOL_UDP", 17)
_UDP_SEGMENT = getattr(socket, "UDP_SEGMENT", 103)
_U16 = struct.Struct("=H").pack
#: The kernel's UDP_MAX_SEGMENTS (64 before Linux 6.x, 128 since), and the
#: most a UDP datagram can carry.
_GSO_SEGMENTS = 64
_GSO_BYTES = 65507
#: What a kernel or route that cannot segment answers: the segment is over
#: the path MTU (EINVAL), the device has no checksum offload (EIO), or the
#: option is unknown.
_GSO_REFUSED = (errno.EINVAL, errno.EIO, errno.EOPNOTSUPP, errno.ENOPROTOOPT)
#: What is read from the peer's socket.  A transfer's peer sends 4-byte
#: ACKs and at most an ERROR, whose text is only logged: a buffer this size
#: stays in Python's small-object allocator (2048 costs a malloc and a
#: realloc per ACK, measurable in a storm); a longer ERROR is cut short.
_PEER_DATAGRAM = 256


@implementer(IReadDescriptor)
class SessionMux:
    """
    An inner epoll set of transfer sockets, read as one reactor reader.

    The reactor sees only the inner set's descriptor, through the public
    C{IReactorFDSet.addReader}: an epoll descriptor is readable while any
    socket in it has a datagram, so this works on every reactor that
    watches descriptors (epoll, poll, select, asyncio).

    Where L{ReactorHold.probe} allows (Twisted's epoll reactor), the mux
    also takes the wait over while transfers run (L{slice}): each reactor
    iteration costs a few microseconds of Python (timed calls, the logging
    context around every event), as much as serving the ACK itself, and in
    lock-step there is one iteration per block.  So when the inner set is ready, the mux
    leaves the reactor's set and puts the reactor's own epoll descriptor
    into its inner set instead, then serves ACKs and blocks on the inner
    set alone until the reactor has something else to do: another
    descriptor is ready (then the reactor's descriptor is), its next timed
    call is due, a transfer starts or ends, or the slice is over.  Then it
    rejoins the reactor's set, and the reactor sees everything as before.
    """

    log = Logger()

    #: The longest the mux keeps the wait (seconds).
    slice = 0.05
    #: When a hold ends in its first round because the reactor has work
    #: (a busy HTTP download keeps its socket writable), holding only adds
    #: four epoll_ctl calls per event: the next this many events are
    #: served the plain way.
    busy_backoff = 16

    def __init__(self, reactor, hold: Optional[ReactorHold] = None):
        """
        @param hold: how to hold the reactor's wait; None serves every
            event the plain way.  L{session_factory} probes for one.
        """
        self._reactor = reactor
        self._epoll = select.epoll()
        self._readers = {}
        self._peer_readers = {}
        self._solo = None
        self._registered = False
        self._holding = False
        self._changed = False
        self._plain_events = 0
        self._hold_with = hold

    # IReadDescriptor
    def fileno(self):
        return self._epoll.fileno()

    def logPrefix(self):
        return "tftp-sessions"

    #: Rounds of the inner set served per reactor event (without L{slice}).
    #: In a storm, ACKs that arrive while a round is being served are
    #: picked up by the next round instead of a whole reactor iteration;
    #: the bound keeps the listener and the timers from waiting behind a
    #: busy storm.
    rounds = 16

    def doRead(self):
        if self._hold_with is not None and self._readers:
            if not self._plain_events:
                try:
                    self._hold()
                    return
                except Exception:
                    # The reactor's insides changed under us: serve the
                    # plain way from now on (starting now), and say so once.
                    self._hold_with = None
                    self.log.failure("TFTP: holding the reactor's wait failed; "
                                     "transfers continue without it")
            else:
                self._plain_events -= 1
        solo = self._solo
        if solo is not None:
            # One transfer running (the usual single-client boot): its ACK
            # is read without asking the inner set first.  If its socket
            # was empty, something else (a stranger) is ready: poll below.
            try:
                if solo():
                    return
            except Exception:
                self.log.failure("TFTP session socket failed")
                return
        poll = self._epoll.poll
        for _ in range(self.rounds):
            ready = poll(0)
            if not ready:
                return
            self._serve(ready)
            if len(ready) < 2:
                # One transfer in lock-step: its next ACK is a round trip
                # away, so another poll now would only cost a syscall.
                return

    def _serve(self, ready, reactor_fd=None):
        """Run the reader of each ready transfer socket; True when the
        reactor's own descriptor was among them (it has work of its own)."""
        readers = self._readers
        reactor_ready = False
        for fd, _ in ready:
            reader = readers.get(fd)
            if reader is not None:
                try:
                    reader()
                except Exception:
                    self.log.failure("TFTP session socket failed")
            elif fd == reactor_fd:
                reactor_ready = True
        return reactor_ready

    def _hold(self):
        """Serve the inner set, waiting on it, until the reactor is needed."""
        reactor = self._reactor
        seconds = reactor.seconds
        hold = self._hold_with
        end = seconds() + hold.until_next_call(self.slice)
        reactor_fd = hold.reactor_fd()
        poll = self._epoll.poll
        epoll = self._epoll
        self._holding = True
        self._changed = False
        watching = False
        try:
            # Leave the reactor's set before its descriptor joins ours (the
            # kernel refuses a loop of epoll sets with ELOOP).
            if self._registered:
                self._registered = False
                reactor.removeReader(self)
            epoll.register(reactor_fd, select.EPOLLIN)
            watching = True
            timeout = 0
            first = True
            while True:
                ready = poll(timeout)
                if not ready:
                    return   # the next timed call is due
                if self._serve(ready, reactor_fd):
                    if first:
                        self._plain_events = self.busy_backoff
                    return
                if self._changed:
                    return
                first = False
                timeout = end - seconds()
                if timeout <= 0:
                    return
        finally:
            self._holding = False
            if watching:
                epoll.unregister(reactor_fd)
            if self._readers and not self._registered:
                self._registered = True
                reactor.addReader(self)

    def connectionLost(self, reason):
        self._registered = False

    # ports
    def add(self, sock, reader, peer_reader=None):
        """
        @param peer_reader: for a transfer's peer socket, a variant of
            C{reader} that returns whether it read anything.
        """
        fd = sock.fileno()
        self._readers[fd] = reader
        if peer_reader is not None:
            self._peer_readers[fd] = peer_reader
        self._epoll.register(fd, select.EPOLLIN)
        self._update_solo()
        self._changed = True
        if not self._registered and not self._holding:
            self._registered = True
            self._reactor.addReader(self)

    def remove(self, sock):
        fd = sock.fileno()
        if self._readers.pop(fd, None) is not None:
            self._epoll.unregister(fd)
        self._peer_readers.pop(fd, None)
        self._update_solo()
        self._changed = True
        if not self._readers and self._registered:
            self._registered = False
            self._reactor.removeReader(self)

    def _update_solo(self):
        if len(self._peer_readers) == 1:
            self._solo = next(iter(self._peer_readers.values()))
        else:
            self._solo = None


@implementer(ISessionTransport)
class SessionPort:
    """
    The transport of one L{ownsocket.tftp.protocol.SessionProtocol}: a
    connected socket for the peer, an unconnected one for strangers.
    """

    def __init__(self, mux, protocol, interface, peer):
        self._mux = mux
        self.protocol = protocol
        self.peer = peer
        family = socket.AF_INET6 if ":" in peer[0] else socket.AF_INET
        catcher = socket.socket(family, socket.SOCK_DGRAM)
        connected = None
        try:
            catcher.setblocking(False)
            # Bind first, allow sharing afterwards: a socket that asks for
            # port 0 with SO_REUSEADDR already set may be given a port some
            # other reusable socket holds (Linux counts that as no conflict).
            catcher.bind((interface, 0))
            catcher.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            connected = socket.socket(family, socket.SOCK_DGRAM)
            connected.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            connected.setblocking(False)
            connected.bind((interface, catcher.getsockname()[1]))
            connected.connect(peer)
        except BaseException:
            catcher.close()
            if connected is not None:
                connected.close()
            raise
        self._catcher = catcher
        self._socket = connected
        self._send = connected.send
        self._recv = connected.recv
        #: For the protocol: a datagram to the peer, no address handling
        #: (OSError propagates: the protocol treats it as a lost packet).
        self.send_to_peer = connected.send
        self._sendmsg = connected.sendmsg
        self._gso = _GSO
        self.connected = True

    def startListening(self):
        self._mux.add(self._catcher, self._read_stranger)
        self._mux.add(self._socket, self._read_peer, self._read_peer)
        self.protocol.makeConnection(self)
        # The connected socket only ever delivers the peer's datagrams.
        if IPeerDatagramReceiver.providedBy(self.protocol):
            received = self.protocol.peerDatagramReceived
        else:
            protocol, peer = self.protocol, self.peer
            received = lambda data: protocol.datagramReceived(data, peer)  # noqa: E731
        self._peer_received = received

    def _read_peer(self):
        try:
            data = self._recv(_PEER_DATAGRAM)
        except OSError as error:
            if error.errno in _TRANSIENT:
                return False
            raise
        self._peer_received(data)
        return True

    def send_window(self, packets):
        """
        Datagrams of one size (the last may be shorter: a window of DATA
        packets) to the peer, with UDP segmentation offload: one
        C{sendmsg} per up to 64 datagrams, which the kernel (or the NIC)
        cuts into datagrams of the first one's size, instead of one system
        call and one trip down the stack each.  Where the kernel refuses
        (a segment larger than the path MTU allows, no checksum offload),
        this transfer sends one datagram per call from then on.

        OSError other than those propagates, like C{send_to_peer}'s.
        """
        if self._gso:
            size = len(packets[0])
            per = min(_GSO_SEGMENTS, _GSO_BYTES // size)
            if per > 1:
                option = [(_SOL_UDP, _UDP_SEGMENT, _U16(size))]
                sendmsg = self._sendmsg
                start = 0
                try:
                    while start < len(packets):
                        group = packets[start:start + per]
                        if len(group) == 1:
                            self._send(group[0])
                        else:
                            sendmsg([b"".join(group)], option)
                        start += per
                    return
                except OSError as error:
                    if error.errno not in _GSO_REFUSED:
                        raise
                    self._gso = False
                packets = packets[start:]
        send = self._send
        for packet in packets:
            send(packet)

    def _read_stranger(self):
        try:
            data, addr = self._catcher.recvfrom(_MAX_DATAGRAM)
        except OSError as error:
            if error.errno in _TRANSIENT:
                return
            raise
        self.protocol.datagramReceived(data, addr)

    def write(self, datagram, addr=None):
        try:
            if addr is None or addr == self.peer:
                self._send(datagram)
            else:
                self._catcher.sendto(datagram, addr)
        except OSError as error:
            if error.errno not in _TRANSIENT:
                raise

    def getHost(self):
        host, port = self._socket.getsockname()[:2]
        return (IPv6Address if ":" in host else IPv4Address)("UDP", host, port)

    def stopListening(self):
        if not self.connected:
            return None
        self.connected = False
        for sock in (self._socket, self._catcher):
            self._mux.remove(sock)
            sock.close()
        self.protocol.doStop()
        return None

    loseConnection = stopListening


def session_factory(reactor):
    """
    A function (protocol, interface, peer) -> started port: the lean ports
    on a real POSIX reactor with epoll, the reactor's listenUDP elsewhere.
    """
    if IReactorFDSet.providedBy(reactor) and hasattr(select, "epoll"):
        mux = SessionMux(reactor, ReactorHold.probe(reactor))

        def listen(protocol, interface, peer):
            port = SessionPort(mux, protocol, interface, peer)
            port.startListening()
            return port
        listen.mux = mux
        return listen

    def listen(protocol, interface, peer):
        return reactor.listenUDP(0, protocol, interface=interface, maxPacketSize=_MAX_DATAGRAM)
    return listen
