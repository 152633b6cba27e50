"""
TFTP policy: which requests become transfers, how many may run, what is
logged.

Capacity is shared fairly under attack: RRQs are trivially spoofed, and a
spoofed request creates a transfer that will never see an ACK.  When the
server (or one client address) is full, the oldest transfer that has not
seen a single ACK is evicted to make room, so a flood of spoofed requests
only ever displaces other never-answered transfers, and a real client that
answers its first packet within the flood's turnover time is never locked
out.  Transfers that are moving data are never evicted.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Optional

from twisted.internet import defer
from twisted.internet.error import CannotListenError
from twisted.logger import Logger

from ownsocket.files import ReadRequest, normalise
from ownsocket.interfaces import AccessViolation, BackendError
from ownsocket.probes import expected_probe
from ownsocket.tftp import wire
from ownsocket.tftp.fastport import session_factory
from ownsocket.tftp.netascii import NetasciiReader
from ownsocket.tftp.options import Limits, negotiate
from ownsocket.tftp.protocol import SessionProtocol
from ownsocket.tftp.session import Session


class RateLimit:
    """A token bucket; counts what it refused so the next line can say so."""

    def __init__(self, clock, rate: float, burst: int):
        self._clock = clock
        self._rate = rate
        self._burst = burst
        self._tokens = float(burst)
        self._stamp = clock.seconds()
        self.suppressed = 0

    def allow(self) -> bool:
        now = self._clock.seconds()
        self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        self.suppressed += 1
        return False

    def take_suppressed(self) -> int:
        count, self.suppressed = self.suppressed, 0
        return count


def _printable(name: bytes) -> str:
    """File names go into log lines: no control characters, bounded."""
    text = name[:300].decode("utf-8", "backslashreplace")
    return "".join(ch if ch.isprintable() else f"\\x{ord(ch):02x}" for ch in text)


class Transfer:
    """Bookkeeping for one request, from RRQ to the last log line."""

    __slots__ = ("peer", "name", "listener", "request", "protocol", "closed", "started",
                 "next_request")

    def __init__(self, peer, name, listener, request, started):
        self.peer = peer
        self.name = name
        self.listener = listener
        self.request = request
        self.protocol: Optional[SessionProtocol] = None
        self.closed = False
        self.started = started
        self.next_request = None

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
                 max_sessions: int = 256, max_sessions_per_client: int = 4,
                 recent=None):
        self.backend = backend
        self.reactor = reactor
        self.limits = limits
        self.timeout = timeout
        self.retries = retries
        self.max_sessions = max_sessions
        self.max_sessions_per_client = max_sessions_per_client
        self.recent = recent
        self.transfers: "OrderedDict[tuple, Transfer]" = OrderedDict()
        self._listen_session = session_factory(reactor)
        self._per_host = {}
        self._garbage_log = RateLimit(reactor, rate=1.0, burst=10)
        self._garbage_answers = RateLimit(reactor, rate=50.0, burst=100)
        self._evict_log = RateLimit(reactor, rate=1.0, burst=10)
        # Refusals and missing files: PXELINUX alone probes ~10 names per
        # boot, so the bound is generous, but a scanner cannot fill the log.
        self._refusal_log = RateLimit(reactor, rate=20.0, burst=50)

    # -- requests ----------------------------------------------------------

    def handle_request(self, request: wire.Request, peer, listener) -> None:
        name = _printable(request.filename)
        if request.mode not in wire.MODES:
            listener.reply(wire.build_error(wire.ERR_ILLEGAL, "Unsupported mode"), peer)
            self._log_refusal(peer, name, "refused", f"mode {request.mode!r}")
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
            return
        if not self._make_room(peer[0]):
            listener.reply(wire.build_error(wire.ERR_UNDEFINED, "Server busy, try again"), peer)
            if self._evict_log.allow():
                self._log_line(peer, name, "busy", detail="session limit reached")
            return
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
                          now=self.reactor.seconds())
        protocol = SessionProtocol(session, transfer.peer, self.reactor,
                                   lambda proto: self._ended(transfer, proto))
        try:
            self._listen_session(protocol, transfer.listener.local_host, transfer.peer)
        except (CannotListenError, OSError) as error:
            session.abort("server error", self.reactor.seconds(), f"no session port: {error}")
            transfer.listener.reply(wire.build_error(wire.ERR_UNDEFINED, "Server error"), transfer.peer)
            self._forget(transfer)
            self._log_session(transfer, session)
            return
        transfer.protocol = protocol
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

    def _ended(self, transfer: Transfer, protocol: SessionProtocol) -> None:
        self._forget(transfer)
        session = protocol.session
        if session.result != "evicted" or self._evict_log.allow():
            self._log_session(transfer, session)
        if transfer.next_request is not None and session.result in ("size probe", "client error"):
            # The client ended this transfer and had already asked again.
            request, listener = transfer.next_request
            self.handle_request(request, transfer.peer, listener)

    # -- capacity ----------------------------------------------------------

    def _make_room(self, host: str) -> bool:
        if self._per_host.get(host, 0) >= self.max_sessions_per_client:
            if not self._evict_one(lambda t: t.peer[0] == host):
                return False
        if len(self.transfers) >= self.max_sessions:
            if not self._evict_one(lambda t: True):
                return False
        return True

    def _evict_one(self, eligible) -> bool:
        for transfer in self.transfers.values():
            if eligible(transfer) and not transfer.acked_any:
                self.evict(transfer, "evicted", "room for a newer request")
                return True
        return False

    def evict(self, transfer: Transfer, result: str, detail: str = "") -> None:
        if transfer.closed:
            return
        if transfer.protocol is not None:
            transfer.protocol.abort(result, detail)  # calls _ended
        else:
            self._forget(transfer)

    def stop(self) -> None:
        """Abort every transfer and finish its reader."""
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
