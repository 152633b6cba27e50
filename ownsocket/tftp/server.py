"""
TFTP policy: which requests become transfers, how many may run, what is
logged.

Admission.  Many transfers from one address are normal (a proxy or cache,
a NAT, an installer fetching in parallel, a test rig), so the defaults
admit hundreds, and a new request never pushes out a transfer that simply
has not been answered yet: a client needs a round trip to answer its first
packet, and in a burst of requests from one host the newer ones must not
evict the older ones before that round trip is over.  Only a transfer that
has stayed silent through at least one retransmission may be evicted to
make room: first one that never answered at all (oldest first), then one
that stopped answering.  Transfers that are moving data are never evicted.
When nothing may be evicted the request waits (without a port or a file)
for at most C{timeout} plus a little: by then every transfer in the table
has either answered, and the server is really full, or turned silent, and
the waiting request takes its place.  If no slot came free it is refused
with an ERROR ("Server busy"), so the client hears within about a second
rather than after its own retries.

Spoofed requests.  RRQs are trivially spoofed, and a spoofed request
creates a transfer that never sees an ACK.  Such a transfer becomes
evictable at its first retransmission.  Under pressure (half full, or
requests waiting) that comes one round trip estimate after its first
packet: the server learns the round trip from the transfers it finished
(clamped to [MIN_RTO, timeout]), so on a LAN a spoofed transfer holds its
slot for about MIN_RTO (0.2 s); otherwise after C{timeout}.  A flood slower
than C{max_sessions / MIN_RTO} requests per second (2,560/s with the
defaults) therefore always leaves room for a real client; a faster one
makes real clients see "Server busy" for as long as it lasts, and never
disturbs transfers that are already moving data.  Before the server has
learned a round trip (no transfer has finished yet), the first timer is
C{timeout}, and a burst of spoofed requests holds its slots that long:
a real client right behind it waits, then takes a slot.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Optional

from twisted.internet import defer
from twisted.internet.error import CannotListenError
from twisted.logger import Logger

from ownsocket.events import EventBus
from ownsocket.files import ReadRequest, normalise
from ownsocket.interfaces import AccessViolation, BackendError, FileNotFound
from ownsocket.probes import expected_probe
from ownsocket.ratelimit import RateLimit
from ownsocket.text import printable
from ownsocket.tftp import wire
from ownsocket.tftp.fastport import session_factory
from ownsocket.tftp.netascii import NetasciiReader
from ownsocket.tftp.options import Limits, negotiate
from ownsocket.tftp.protocol import SessionProtocol
from ownsocket.tftp.session import MIN_RTO, Session

#: After a scan of the transfers found none that may be evicted, the next
#: scan waits this long (seconds): under a flood above capacity every RRQ
#: would otherwise walk the whole table.  A transfer that turns silent
#: meanwhile is found this much later, which only matters when full.
RESCAN_AFTER = 0.01
#: Requests that wait for a slot, at most; more are refused at once.
MAX_WAITING = 1024
#: How often waiting requests look for a slot (seconds).
WAITING_POLL = 0.05

_ERROR_BUSY = wire.build_error(wire.ERR_UNDEFINED, "Server busy, try again")


#: Session results as the "finished" event names them (see events.KINDS).
_EVENT_RESULTS = {
    "ok": "ok",
    "size probe": "size-probe",
    "timeout": "timeout",
    "client error": "aborted",
    "evicted": "aborted",
    "shutdown": "aborted",
    "protocol error": "error",
    "server error": "error",
}


class Transfer:
    """Bookkeeping for one request, from RRQ to the last log line."""

    __slots__ = ("peer", "name", "listener", "request", "protocol", "closed", "started",
                 "next_request", "published")

    def __init__(self, peer, name, listener, request, started):
        self.peer = peer
        self.name = name
        self.listener = listener
        self.request = request
        self.protocol: Optional[SessionProtocol] = None
        self.closed = False
        self.started = started
        self.next_request = None
        #: The "finished" event went out (exactly one per transfer).
        self.published = False

    @property
    def acked_any(self) -> bool:
        return self.protocol is not None and self.protocol.session.acked_any


class TFTPServer:
    """
    Turns requests into transfers.

    @param backend: an L{ownsocket.interfaces.IFileBackend}.
    @param recent: an L{ownsocket.boot.recent.RecentRequests} or None; its
        entry for the peer is handed to the backend.
    """

    log = Logger()

    def __init__(self, backend, reactor, *, limits: Limits = Limits(),
                 timeout: float = 1.0, retries: int = 6,
                 max_sessions: int = 512, max_sessions_per_client: int = 256,
                 recent=None, events=None):
        self.backend = backend
        self.reactor = reactor
        self.limits = limits
        self.timeout = timeout
        self.retries = retries
        self.max_sessions = max_sessions
        self.max_sessions_per_client = max_sessions_per_client
        self.recent = recent
        self.events = events if events is not None else EventBus(reactor)
        self.transfers: "OrderedDict[tuple, Transfer]" = OrderedDict()
        self._listen_session = session_factory(reactor)
        # The round trip learned from finished transfers (RFC 6298
        # smoothing of their smoothed RTTs): a new transfer's first timer.
        self._srtt = None
        self._rttvar = 0.0
        # host (None: any) -> time before which a scan for a silent
        # transfer is known to find none (see RESCAN_AFTER).
        self._no_silent_until = {}
        # Requests that found no room, oldest first: peer -> (request,
        # listener, name, path, since); polled while not empty.
        self._waiting: "OrderedDict[tuple, tuple]" = OrderedDict()
        self._waiting_call = None
        self._per_host = {}
        self._garbage_log = RateLimit(reactor, rate=1.0, burst=10)
        self._garbage_answers = RateLimit(reactor, rate=50.0, burst=100)
        self._evict_log = RateLimit(reactor, rate=1.0, burst=10)
        # Refusals and missing files: PXELINUX alone probes ~10 names per
        # boot, so the bound is generous, but a scanner cannot fill the log.
        self._refusal_log = RateLimit(reactor, rate=20.0, burst=50)

    def configure(self, backend, *, limits: Limits, timeout: float, retries: int,
                  max_sessions: int, max_sessions_per_client: int) -> None:
        """New settings for transfers that start from now on (a reload);
        running transfers keep their reader, limits and timers."""
        self.backend = backend
        self.limits = limits
        self.timeout = timeout
        self.retries = retries
        self.max_sessions = max_sessions
        self.max_sessions_per_client = max_sessions_per_client

    # -- requests ----------------------------------------------------------

    def handle_request(self, request: wire.Request, peer, listener) -> None:
        name = printable(request.filename)
        if request.mode not in wire.MODES:
            listener.reply(wire.build_error(wire.ERR_ILLEGAL, "Unsupported mode"), peer)
            self._log_refusal(peer, name, "refused", f"mode {request.mode!r}")
            self._publish_refusal(peer, name, "error", f"unsupported mode {request.mode!r}")
            return
        existing = self.transfers.get(peer)
        if existing is not None:
            # Usually a retransmitted RRQ, which the running transfer
            # answers.  But OVMF aborts its size probe with error 8 and asks
            # again from the same port at once, and the new RRQ may be read
            # before the abort: keep it until we know which case this is.
            existing.next_request = (request, listener)
            return
        try:
            path = normalise(request.filename)
        except AccessViolation as error:
            listener.reply(wire.build_error(wire.ERR_ACCESS, "Access violation"), peer)
            self._log_refusal(peer, name, "refused", str(error))
            self._publish_refusal(peer, name, "denied", str(error))
            return
        if peer in self._waiting:
            return   # a retransmitted RRQ: it keeps its place
        if not self._make_room(peer[0]):
            self._wait(request, peer, listener, name, path)
            return
        self._admit(request, peer, listener, name, path)

    def _admit(self, request, peer, listener, name, path) -> None:
        transfer = Transfer(peer, name, listener, request, self.reactor.seconds())
        self.transfers[peer] = transfer
        self._per_host[peer[0]] = self._per_host.get(peer[0], 0) + 1
        boot_request = self.recent.get(peer[0]) if self.recent is not None else None
        read_request = ReadRequest(path, peer, dict(request.options), boot_request)
        d = defer.maybeDeferred(self.backend.get_reader, read_request)
        d.addCallbacks(self._opened, self._not_opened,
                       callbackArgs=(transfer,), errbackArgs=(transfer,))
        d.addErrback(lambda failure: self.log.failure(
            "TFTP request from {peer} failed", failure, peer=peer))

    def refused_write(self, peer, datagram) -> None:
        if self._garbage_log.allow():
            self.log.info("tftp peer={peer} refused write request (read-only server)",
                          peer=f"{peer[0]}:{peer[1]}")

    def garbage(self, peer, why: str) -> None:
        if self._garbage_log.allow():
            suppressed = self._garbage_log.take_suppressed()
            more = f" ({suppressed} more not logged)" if suppressed else ""
            self.log.info("tftp peer={peer} dropped: {why}{more}",
                          peer=f"{peer[0]}:{peer[1]}", why=why, more=more)

    def may_answer_garbage(self) -> bool:
        return self._garbage_answers.allow()

    # -- opening -----------------------------------------------------------

    def _opened(self, reader, transfer: Transfer) -> None:
        if transfer.closed:
            reader.finish()
            return
        try:
            self._start(reader, transfer)
        except BaseException:
            self._forget(transfer)
            self._publish_finished(transfer, "error", "internal error")
            reader.finish()
            raise

    def _start(self, reader, transfer: Transfer) -> None:
        request = transfer.request
        if request.mode == "netascii":
            reader = NetasciiReader(reader)
        negotiated = negotiate(request.options, reader.size, self.limits)
        timeout = float(negotiated.timeout) if negotiated.timeout else self.timeout
        oack = wire.build_oack(negotiated.accepted) if negotiated.accepted else None
        session = Session(reader, blksize=negotiated.blksize, windowsize=negotiated.windowsize,
                          timeout=timeout, retries=self.retries, oack=oack,
                          tsize_offered=negotiated.tsize is not None,
                          now=self.reactor.seconds(), initial_rto=self.initial_rto(transfer.peer[0]))
        protocol = SessionProtocol(session, transfer.peer, self.reactor,
                                   lambda proto: self._ended(transfer, proto))
        try:
            self._listen_session(protocol, transfer.listener.local_host, transfer.peer)
        except (CannotListenError, OSError) as error:
            session.abort("server error", self.reactor.seconds(), f"no session port: {error}")
            transfer.listener.reply(wire.build_error(wire.ERR_UNDEFINED, "Server error"), transfer.peer)
            self._forget(transfer)
            self._log_session(transfer, session)
            self._publish_session(transfer, session)
            return
        transfer.protocol = protocol
        if self.events.active:
            self.events.publish("tftp", "started", peer=transfer.peer[0], file=transfer.name,
                                blksize=session.blksize, windowsize=session.windowsize,
                                size=reader.size, port=transfer.peer[1])
        protocol.begin()

    def _not_opened(self, failure, transfer: Transfer) -> None:
        if transfer.closed:
            return
        self._forget(transfer)
        code, message = wire.error_for(failure.value)
        if not isinstance(failure.value, BackendError):
            self.log.failure("TFTP backend failed for {name}", failure, name=transfer.name)
        transfer.listener.reply(wire.build_error(code, message), transfer.peer)
        probe = expected_probe(transfer.name) if code == wire.ERR_NOT_FOUND else None
        self._log_refusal(transfer.peer, transfer.name, "expected probe" if probe else "error",
                          f"{code} {message}" + (f": {probe}" if probe else ""))
        if isinstance(failure.value, FileNotFound):
            result = "not-found"
        elif isinstance(failure.value, AccessViolation):
            result = "denied"
        else:
            result = "error"
        self._publish_finished(transfer, result, f"{code} {message}")

    def _ended(self, transfer: Transfer, protocol: SessionProtocol) -> None:
        self._forget(transfer)
        session = protocol.session
        if session.srtt is not None:
            self._learn_rtt(session.srtt)
        if session.result != "evicted" or self._evict_log.allow():
            self._log_session(transfer, session)
        self._publish_session(transfer, session)
        if transfer.next_request is not None and session.result in ("size probe", "client error"):
            # The client ended this transfer and had already asked again.
            request, listener = transfer.next_request
            self.handle_request(request, transfer.peer, listener)

    # -- capacity ----------------------------------------------------------

    def initial_rto(self, host: str) -> float:
        """
        A new transfer's first retransmission timeout.  Normally the
        configured timeout: a client's first answer can take much longer
        than its later ones (in a boot storm, 100 clients starting at once
        saw their first ACK later than 0.2 s), and a spurious resend makes
        a transfer look silent.  Under pressure (the server or this client
        address half full, or requests waiting) the round trip learned from
        finished transfers (RFC 6298: srtt + 4 rttvar, at least MIN_RTO)
        instead, so spoofed requests turn evictable quickly.
        """
        if self._srtt is None or not self._under_pressure(host):
            return self.timeout
        return min(max(self._srtt + 4 * self._rttvar, MIN_RTO), self.timeout)

    def _under_pressure(self, host: str) -> bool:
        return bool(self._waiting) or 2 * len(self.transfers) >= self.max_sessions \
            or 2 * self._per_host.get(host, 0) >= self.max_sessions_per_client

    def _learn_rtt(self, rtt: float) -> None:
        if self._srtt is None:
            self._srtt, self._rttvar = rtt, rtt / 2
        else:
            self._rttvar = 0.75 * self._rttvar + 0.25 * abs(self._srtt - rtt)
            self._srtt = 0.875 * self._srtt + 0.125 * rtt

    def _wait(self, request, peer, listener, name, path) -> None:
        """
        No room now: wait for a slot for at most L{max_wait}, then refuse.
        Every transfer in the table either answers (then the server is
        really full, and the client hears so within that time) or turns
        silent within its first timer, at most C{timeout} after it started
        (then the waiter takes its place).  So a burst of spoofed requests
        cannot lock out a real client that arrives right behind it.
        """
        if len(self._waiting) >= MAX_WAITING:
            self._refuse_busy(peer, listener, name)
            return
        self._waiting[peer] = (request, listener, name, path, self.reactor.seconds())
        if self._waiting_call is None:
            self._waiting_call = self.reactor.callLater(WAITING_POLL, self._serve_waiting)

    @property
    def max_wait(self) -> float:
        return self.timeout + 2 * WAITING_POLL

    def _serve_waiting(self) -> None:
        self._waiting_call = None
        now = self.reactor.seconds()
        give_up = now - self.max_wait
        for peer, (request, listener, name, path, since) in list(self._waiting.items()):
            if self._make_room(peer[0]):
                del self._waiting[peer]
                self._admit(request, peer, listener, name, path)
            elif since <= give_up:
                del self._waiting[peer]
                self._refuse_busy(peer, listener, name)
        if self._waiting:
            self._waiting_call = self.reactor.callLater(WAITING_POLL, self._serve_waiting)

    def _refuse_busy(self, peer, listener, name) -> None:
        listener.reply(_ERROR_BUSY, peer)
        if self._evict_log.allow():
            self._log_line(peer, name, "busy", detail="session limit reached")
        self._publish_refusal(peer, name, "refused", "session limit reached")

    def _make_room(self, host: str) -> bool:
        if self._per_host.get(host, 0) >= self.max_sessions_per_client:
            if not self._evict_silent(host):
                return False
        if len(self.transfers) >= self.max_sessions:
            if not self._evict_silent(None):
                return False
        return True

    def _evict_silent(self, host) -> bool:
        """Evict the transfer (of C{host}, or any) that best deserves it:
        the oldest silent one that never answered, else the oldest silent
        one.  False when none is silent."""
        now = self.reactor.seconds()
        if now < self._no_silent_until.get(host, now):
            return False
        stalled = None
        for transfer in self.transfers.values():
            protocol = transfer.protocol
            if protocol is None or (host is not None and transfer.peer[0] != host):
                continue
            session = protocol.session
            if not session.silent:
                continue
            if not session.acked_any:
                stalled = transfer
                break
            if stalled is None:
                stalled = transfer
        if stalled is None:
            if len(self._no_silent_until) > 1024:
                self._no_silent_until.clear()
            self._no_silent_until[host] = now + RESCAN_AFTER
            return False
        self.evict(stalled, "evicted", "silent through a retransmission; room for a newer request")
        return True

    def evict(self, transfer: Transfer, result: str, detail: str = "") -> None:
        if transfer.closed:
            return
        if transfer.protocol is not None:
            transfer.protocol.abort(result, detail)  # calls _ended
        else:
            self._forget(transfer)
            self._publish_finished(transfer, "aborted", f"{result}: {detail}" if detail else result)

    def stop(self) -> None:
        """Abort every transfer and finish its reader."""
        if self._waiting_call is not None:
            self._waiting_call.cancel()
            self._waiting_call = None
        self._waiting.clear()
        for transfer in list(self.transfers.values()):
            self.evict(transfer, "shutdown")

    def _forget(self, transfer: Transfer) -> None:
        if transfer.closed:
            return
        transfer.closed = True
        if self.transfers.get(transfer.peer) is transfer:
            del self.transfers[transfer.peer]
            host = transfer.peer[0]
            left = self._per_host.get(host, 1) - 1
            if left:
                self._per_host[host] = left
            else:
                self._per_host.pop(host, None)

    # -- status --------------------------------------------------------------

    def in_flight(self):
        """What each running transfer has done so far, then the requests
        waiting for a slot (for the status page)."""
        rows = []
        for transfer in self.transfers.values():
            protocol = transfer.protocol
            session = protocol.session if protocol is not None else None
            rows.append({
                "peer": transfer.peer[0],
                "port": transfer.peer[1],
                "file": transfer.name,
                "bytes": session.bytes_sent if session is not None else 0,
                "acked": session.bytes_acked if session is not None else 0,
                "block": session.acked_block if session is not None else 0,
                "blksize": session.blksize if session is not None else None,
                "windowsize": session.windowsize if session is not None else None,
                "started": transfer.started,
                "state": session.state if session is not None else "opening",
            })
        for peer, (_, _, name, _, since) in self._waiting.items():
            rows.append({"peer": peer[0], "port": peer[1], "file": name, "bytes": 0, "acked": 0,
                         "block": 0, "blksize": None, "windowsize": None, "started": since,
                         "state": "waiting"})
        return rows

    # -- events --------------------------------------------------------------

    def _publish_refusal(self, peer, name, result, error) -> None:
        """An RRQ answered with an ERROR before any transfer existed."""
        if self.events.active:
            self.events.publish("tftp", "finished", peer=peer[0], file=name, result=result,
                                bytes=0, seconds=0.0, retransmits=0, block=0, blksize=0,
                                windowsize=0, error=error, port=peer[1])

    def _publish_session(self, transfer: Transfer, session: Session) -> None:
        result = _EVENT_RESULTS.get(session.result, "error")
        self._publish_finished(transfer, result, session.detail, session)

    def _publish_finished(self, transfer: Transfer, result: str, error: str,
                          session: Optional[Session] = None) -> None:
        if transfer.published:
            return
        transfer.published = True
        if not self.events.active:
            return
        if session is not None:
            ended = session.ended if session.ended is not None else self.reactor.seconds()
            nbytes, retransmits, block = session.bytes_acked, session.retransmits, session.acked_block
            blksize, windowsize = session.blksize, session.windowsize
            if result == "aborted" and session.result not in ("client error",):
                error = f"{session.result}: {error}" if error else session.result
        else:
            ended = self.reactor.seconds()
            nbytes = retransmits = block = blksize = windowsize = 0
        self.events.publish("tftp", "finished", peer=transfer.peer[0], file=transfer.name,
                            result=result, bytes=nbytes, seconds=ended - transfer.started,
                            retransmits=retransmits, block=block, blksize=blksize,
                            windowsize=windowsize, error=error, port=transfer.peer[1])

    # -- logging -----------------------------------------------------------

    def _log_refusal(self, peer, name, result, detail) -> None:
        if self._refusal_log.allow():
            suppressed = self._refusal_log.take_suppressed()
            if suppressed:
                detail += f"; {suppressed} more refusals not logged"
            self._log_line(peer, name, result, detail=detail)

    def _log_session(self, transfer: Transfer, session: Session) -> None:
        ended = session.ended if session.ended is not None else self.reactor.seconds()
        self._log_line(transfer.peer, transfer.name, session.result, detail=session.detail,
                       nbytes=session.bytes_acked, blksize=session.blksize,
                       windowsize=session.windowsize, duration=ended - transfer.started,
                       retransmits=session.retransmits)

    def _log_line(self, peer, name, result, detail="", nbytes=0, blksize=0, windowsize=0,
                  duration=0.0, retransmits=0) -> None:
        self.log.info(
            "tftp peer={peer} file={file} result={result} bytes={nbytes} blksize={blksize} "
            "windowsize={windowsize} duration={duration} retransmits={retransmits}{detail}",
            peer=f"{peer[0]}:{peer[1]}", file=name, result=result.replace(" ", "-"),
            nbytes=nbytes, blksize=blksize, windowsize=windowsize,
            duration=f"{duration:.3f}s", retransmits=retransmits,
            detail=f" ({detail})" if detail else "",
            tftp_result=result)
