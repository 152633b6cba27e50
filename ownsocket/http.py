"""
Boot files over HTTP: UEFI HTTP boot (OVMF asks C{HEAD} then C{GET
/snponly.efi}) and iPXE scripts, kernels and initrds, from the same
L{IFileBackend} as TFTP.

Every path goes through the backend, never C{static.File}, because a backend
may render content per client (an iPXE script per MAC) and must see the
client's last DHCP request, exactly as it does over TFTP.  The URL path is
percent-decoded once (HTTP's rule) and then handed to
L{ownsocket.files.normalise}, the one place that decides which names may be
served; symlinks out of the root are the backend's business (L{resolve}).
"""

from __future__ import annotations

import socket

from urllib.parse import unquote_to_bytes

from twisted.internet import defer
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.web import server
from twisted.web.resource import Resource
from zope.interface import implementer

from ownsocket import listening
from ownsocket.text import printable
from ownsocket.events import EventBus
from ownsocket.files import ReadRequest, normalise
from ownsocket.interfaces import AccessViolation, BackendError, FileNotFound
from ownsocket.probes import expected_probe

#: Bytes read from the backend per write; the transport's buffer decides pace.
CHUNK = 64 * 1024

#: Most bytes discarded per reactor turn when a reader cannot seek to a
#: range's start, so a C{Range: bytes=900000000-} does not stall the reactor.
SKIP_PER_TURN = 4 * 1024 * 1024

#: A connection idle this long is closed; firmware that stalls should not
#: hold a file open for Twisted's default of 12 hours.
IDLE_TIMEOUT = 60

TEXT_SUFFIXES = (".ipxe", ".cfg", ".txt")

#: One namespace for every line this module writes, so it can be filtered.
_log = Logger(namespace="ownsocket.http")

# One class for every listening service, so start-up code catches one type.
BindError = listening.BindError


class Unsatisfiable(Exception):
    """The Range names no byte of the file: answer 416."""


def parse_range(header, size):
    """
    The inclusive C{(first, last)} byte positions a single-range C{Range}
    header asks for, or None to send the whole file.

    Anything we do not handle (other units, several ranges, syntax errors,
    unknown size) means "whole file": RFC 9110 lets a server ignore Range,
    and a full answer is always correct where a wrong partial one is not.

    @raise Unsatisfiable: the range starts past the end (or the file is empty).
    """
    if header is None or size is None:
        return None
    unit, sep, spec = header.partition(b"=")
    if not sep or unit.strip().lower() != b"bytes" or b"," in spec:
        return None
    first, dash, last = spec.strip().partition(b"-")
    first, last = first.strip(), last.strip()
    if not dash or (first and not first.isdigit()) or (last and not last.isdigit()):
        return None
    if not first:
        if not last:
            return None
        count = int(last)
        if count == 0 or size == 0:
            raise Unsatisfiable()
        return max(0, size - count), size - 1
    start = int(first)
    if last and int(last) < start:
        return None
    if start >= size:
        raise Unsatisfiable()
    end = int(last) if last else size - 1
    return start, min(end, size - 1)


def content_type(path: str) -> bytes:
    lowered = path.lower()
    if lowered.endswith(TEXT_SUFFIXES):
        return b"text/plain; charset=utf-8"
    if lowered.endswith(".efi"):
        # The UEFI spec's type for HTTP boot images; EDK2 also accepts
        # octet-stream and falls back to the extension.
        return b"application/efi"
    return b"application/octet-stream"


@implementer(IPushProducer)
class ReaderProducer:
    """
    Streams C{count} bytes (or, when C{count} is None, everything) of one
    reader into one request, one chunk per reactor turn while the transport
    wants data, so memory stays at one chunk whatever the file size.

    A push producer driven by the injected reactor rather than a pull
    producer: skipping to a range's start writes nothing for a while, and a
    push producer keeps going without relying on the consumer to poll it.

    The reader is finished exactly once: at the end, on a read error, or when
    the client goes away.
    """

    def __init__(self, request, reader, skip, count, reactor, done):
        self.request = request
        self.reader = reader
        self.skip = skip
        self.remaining = count
        self.reactor = reactor
        self.sent = 0
        self.paused = False
        self.stopped = False
        self._done = done
        self._pending = None

    def start(self):
        seek = getattr(self.reader, "seek", None)
        if self.skip and callable(seek):
            seek(self.skip)
            self.skip = 0
        self.request.registerProducer(self, True)
        self._schedule()

    def _schedule(self):
        if self._pending is None and not self.paused and not self.stopped:
            self._pending = self.reactor.callLater(0, self._step)

    def _step(self):
        self._pending = None
        if self.stopped or self.paused:
            return
        try:
            if self.skip:
                self._discard()
            else:
                self._send_chunk()
        except Exception as error:
            self._end(error)
            return
        self._schedule()

    def _discard(self):
        amount = min(self.skip, SKIP_PER_TURN)
        while amount:
            data = self.reader.read(min(CHUNK, amount))
            if not data:
                raise BackendError("file ended before the requested range")
            amount -= len(data)
            self.skip -= len(data)

    def _send_chunk(self):
        want = CHUNK if self.remaining is None else min(CHUNK, self.remaining)
        data = self.reader.read(want) if want else b""
        if len(data) > want:
            data = data[:want]
        if data:
            self.sent += len(data)
            if self.remaining is not None:
                self.remaining -= len(data)
            self.request.write(data)
        if self.remaining == 0 or (self.remaining is None and len(data) < want):
            self._end(None)
        elif len(data) < want:
            raise BackendError(
                f"file ended {self.remaining} bytes early (size changed while serving?)")

    def pauseProducing(self):
        self.paused = True
        self._cancel()

    def resumeProducing(self):
        self.paused = False
        self._schedule()

    def stopProducing(self):
        self.stop()

    def stop(self):
        """The client went away: release the reader, write nothing more."""
        if self.stopped:
            return
        self.stopped = True
        self._cancel()
        self.reader.finish()

    def _cancel(self):
        if self._pending is not None and self._pending.active():
            self._pending.cancel()
        self._pending = None

    def _end(self, error):
        if self.stopped:
            return
        self.stopped = True
        self._cancel()
        try:
            self.reader.finish()
        finally:
            self.request.unregisterProducer()
            self._done(error)


class _Exchange:
    """One request from arrival to its log line and its one C{finished} event."""

    def __init__(self, request, started):
        self.request = request
        self.started = started
        self.producer = None
        self.path = None  # the normalised name, once the request names a file
        self.peer = None
        self.mac = None
        self.detail = ""
        self.closed = False  # finished or the client went away
        self.error_bytes = 0
        self.cut = False  # we closed the connection early on purpose
        self.failed = False  # the file could not be read to the end
        self.status = None  # the error status we answered, if any

    @property
    def sent(self):
        return self.producer.sent if self.producer is not None else self.error_bytes


class BootFileResource(Resource):
    """Serves every path of the site through the file backend."""

    isLeaf = True

    def __init__(self, backend, reactor, recent=None, events=None):
        super().__init__()
        self.backend = backend
        self.reactor = reactor
        self.recent = recent
        self.events = events if events is not None else EventBus(reactor)
        #: Requests whose file is open, for the status page; a dict keeps
        #: arrival order.
        self.open = {}

    def render(self, request):
        exchange = _Exchange(request, self.reactor.seconds())
        address = request.getClientAddress()
        exchange.peer = getattr(address, "host", None)
        request.notifyFinish().addBoth(self._finished, exchange)
        request.setHeader(b"Accept-Ranges", b"bytes")
        request.setHeader(b"Server", b"ownsocket")
        if request.method not in (b"GET", b"HEAD"):
            request.setHeader(b"Allow", b"GET, HEAD")
            self._error(exchange, 405, "Method Not Allowed")
            return server.NOT_DONE_YET
        try:
            path = self._path(request)
        except FileNotFound as error:
            self._error(exchange, 404, "Not Found", str(error))
            return server.NOT_DONE_YET
        except AccessViolation as error:
            self._error(exchange, 403, "Forbidden", str(error))
            return server.NOT_DONE_YET
        exchange.path = path
        address = request.getClientAddress()
        peer = (getattr(address, "host", "?"), getattr(address, "port", 0))
        boot_request = self.recent.get(peer[0]) if self.recent is not None else None
        exchange.mac = getattr(boot_request, "mac", None)
        # The backend is read once per request: a reload that swaps it lets
        # this request finish on the files it started with.
        d = defer.maybeDeferred(
            self.backend.get_reader, ReadRequest(path, peer, {}, boot_request))
        d.addCallbacks(self._opened, self._not_opened,
                       callbackArgs=(exchange, path), errbackArgs=(exchange,))
        d.addErrback(self._bug, exchange)
        return server.NOT_DONE_YET

    @staticmethod
    def _path(request) -> str:
        """
        Percent-decode once, then let L{normalise} judge.  C{request.path}
        carries no query string (twisted.web splits it off), and queries
        are ignored.
        """
        path = request.path
        if path[:8].lower().startswith((b"http://", b"https://")):
            # absolute-form (RFC 9112 3.2.2), which servers must accept:
            # only the path after the authority names the file.
            path = b"/" + (path.split(b"/", 3)[3:] or [b""])[0]
        decoded = unquote_to_bytes(path)
        if not decoded.strip(b"/"):
            raise FileNotFound("no file named")
        return normalise(decoded)

    def _opened(self, reader, exchange, path):
        if exchange.closed:
            reader.finish()
            return
        self.open[exchange] = None
        if self.events.active:
            self.events.publish("http", "started", mac=exchange.mac, peer=exchange.peer,
                                file=path, size=reader.size,
                                method=printable(exchange.request.method, 16))
        try:
            self._respond(reader, exchange, path)
        except BaseException:
            if exchange.producer is None:
                reader.finish()
            raise

    def _respond(self, reader, exchange, path):
        request = exchange.request
        size = reader.size
        if request.getHeader(b"If-Range") is not None:
            # We have no validators, so an If-Range can never match: RFC
            # 9110 then says send the whole file.
            wanted = None
        else:
            try:
                wanted = parse_range(request.getHeader(b"Range"), size)
            except Unsatisfiable:
                reader.finish()
                request.setHeader(b"Content-Range", b"bytes */%d" % (size,))
                self._error(exchange, 416, "Range Not Satisfiable")
                return
        request.setHeader(b"Content-Type", content_type(path))
        if wanted is None:
            skip, count = 0, size
            request.setResponseCode(200)
        else:
            skip, count = wanted[0], wanted[1] - wanted[0] + 1
            request.setResponseCode(206)
            request.setHeader(b"Content-Range", b"bytes %d-%d/%d" % (wanted[0], wanted[1], size))
        if count is not None:
            request.setHeader(b"Content-Length", b"%d" % (count,))
        if request.method == b"HEAD":
            reader.finish()
            request.write(b"")
            request.finish()
            return
        exchange.producer = ReaderProducer(
            request, reader, skip, count, self.reactor,
            lambda error: self._streamed(exchange, error))
        exchange.producer.start()

    def _streamed(self, exchange, error):
        request = exchange.request
        if error is None:
            if not exchange.closed:
                request.finish()
            return
        # Headers (and a Content-Length) are gone already: the only honest
        # signal left is closing the connection before the promised end
        # (or, when chunked, before the last chunk).  loseConnection still
        # delivers what was read, so the client can see how far it got.
        exchange.detail = f"read error: {error}"
        exchange.cut = True
        exchange.failed = True
        transport = getattr(request.channel, "transport", None)
        if transport is not None:
            transport.loseConnection()

    def _not_opened(self, failure, exchange):
        error = failure.value
        if isinstance(error, FileNotFound):
            probe = expected_probe(exchange.request.path)
            self._error(exchange, 404, "Not Found", f"expected probe: {probe}" if probe else str(error))
        elif isinstance(error, AccessViolation):
            self._error(exchange, 403, "Forbidden", str(error))
        elif isinstance(error, BackendError):
            self._error(exchange, 500, "Internal Server Error", str(error))
        else:
            _log.failure("http backend raised an unexpected error", failure)
            self._error(exchange, 500, "Internal Server Error",
                        f"unexpected {type(error).__name__}")

    def _bug(self, failure, exchange):
        _log.failure("http request failed", failure)
        request = exchange.request
        if not exchange.closed:
            if not request.startedWriting:
                self._error(exchange, 500, "Internal Server Error", "server bug")
            elif request.channel is not None:
                exchange.cut = True
                exchange.failed = True
                request.channel.transport.abortConnection()

    def _error(self, exchange, code, message, detail=""):
        """A short plain-text body, never a traceback or the request echoed."""
        request = exchange.request
        if detail:
            exchange.detail = detail
        exchange.status = code
        if exchange.closed or request.finished:
            return
        body = f"{code} {message}\n".encode("ascii")
        request.setResponseCode(code)
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        request.setHeader(b"Content-Length", b"%d" % (len(body),))
        if request.method != b"HEAD":
            exchange.error_bytes = len(body)
        request.write(body)
        request.finish()

    def _finished(self, result, exchange):
        """Called once per request, whether it completed or the client left."""
        request = exchange.request
        exchange.closed = True
        aborted = result is not None
        if exchange.producer is not None:
            exchange.producer.stop()
        address = request.getClientAddress()
        agent = request.getHeader(b"User-Agent")
        detail = exchange.detail
        if aborted and not exchange.cut:
            detail = "client disconnected" + (f"; {detail}" if detail else "")
        self.open.pop(exchange, None)
        duration = self.reactor.seconds() - exchange.started
        if self.events.active:
            self.events.publish("http", "finished", mac=exchange.mac, peer=exchange.peer,
                                file=exchange.path if exchange.path is not None
                                else printable(request.path),
                                result=_result(exchange, aborted), bytes=exchange.sent,
                                seconds=duration, status=request.code,
                                method=printable(request.method, 16))
        _log.info(
            "http peer={peer} method={method} path={path} status={status} bytes={nbytes} "
            "duration={duration} agent={agent}{detail}",
            peer=f"{getattr(address, 'host', '?')}:{getattr(address, 'port', 0)}",
            method=printable(request.method, 16), path=printable(request.uri),
            status=request.code, nbytes=exchange.sent, duration=f"{duration:.3f}s",
            agent='"' + printable(agent or b"-", 120).replace('"', '\\"') + '"',
            detail=f" ({detail})" if detail else "",
            http_status=request.code, http_aborted=aborted)
        return None


    def in_flight(self):
        """The requests whose file is open, oldest first."""
        return [{"peer": exchange.peer, "file": exchange.path, "bytes": exchange.sent,
                 "started": exchange.started} for exchange in self.open]


#: Error statuses we answer, by the result the events contract names.
_RESULTS = {404: "not-found", 403: "denied", 405: "denied"}


def _result(exchange, aborted):
    """ok, not-found, denied, aborted or error (events.KINDS["http"])."""
    if exchange.failed:
        return "error"
    if exchange.status is not None:
        return _RESULTS.get(exchange.status, "error")
    if aborted:
        return "aborted"
    return "ok"


class BootSite(server.Site):
    """A Site that logs each request once (our line, not the access log) and
    never shows a traceback to a client."""

    noisy = False
    displayTracebacks = False

    def __init__(self, resource, reactor=None):
        super().__init__(resource, logPath=None, timeout=IDLE_TIMEOUT, reactor=reactor)
        self.connections = {}  # channel -> transport, while connected

    def log(self, request):
        """The resource already wrote this request's line."""

    def buildProtocol(self, addr):
        channel = super().buildProtocol(addr)
        if channel is None:
            return None
        # The channel Site builds is a proxy without a public transport:
        # note the transport as the connection is made.  twisted.web has no
        # hook for "connection made/lost" on a Site; the supported general
        # tool, policies.WrappingFactory, would put one more protocol layer
        # under every write of every file being streamed, while these two
        # wrappers on the channel object run once per connection.
        made, lost = channel.makeConnection, channel.connectionLost

        def make_connection(transport):
            self.connections[channel] = transport
            return made(transport)

        def connection_lost(reason):
            self.connections.pop(channel, None)
            return lost(reason)

        channel.makeConnection = make_connection
        channel.connectionLost = connection_lost
        return channel

    def close_connections(self):
        """Stopping the service ends transfers too: closing the ports alone
        would leave a 1 GiB download (and its open file) running."""
        for transport in list(self.connections.values()):
            transport.abortConnection()


class HTTPService(listening.ListeningService):
    """
    @param config: an L{ownsocket.config.HttpConfig}.
    @param backend: an L{ownsocket.interfaces.IFileBackend}; the caller picks
        it because C{config.root} None means "the TFTP root", which only the
        caller knows.
    @param reactor: injected for tests; the global reactor otherwise.
    @param recent: L{ownsocket.boot.recent.RecentRequests} shared with DHCP.
    @param events: the L{ownsocket.events.EventBus} requests are published on.
    """

    name = "http"
    transport = "TCP"
    in_use_hint = "address already in use (is another web server running?)"

    def __init__(self, config, backend, reactor=None, recent=None, events=None):
        listening.ListeningService.__init__(self)
        if reactor is None:
            from twisted.internet import reactor
        self.events = events if events is not None else EventBus(reactor)
        self.config = config
        self.reactor = reactor
        self.backend = backend
        self.resource = BootFileResource(backend, reactor, recent, self.events)
        self.site = BootSite(self.resource, reactor)

    def _listen(self, host):
        if ":" in host:  # IPv6: see ListeningService._ipv6_socket
            sock = self._ipv6_socket(host, socket.SOCK_STREAM)
            try:
                return self.reactor.adoptStreamPort(sock.fileno(), socket.AF_INET6, self.site)
            finally:
                sock.close()
        return self.reactor.listenTCP(self.config.port, self.site, interface=host)

    def transfers_in_flight(self):
        """
        Each request whose file is open: C{peer}, C{file}, C{bytes} sent so
        far and C{started} (reactor seconds), oldest first; the same shape
        as the TFTP service's, for the status page.
        """
        return self.resource.in_flight()

    def reconfigure(self, config, selector, backend):
        """
        Take a reloaded configuration (the reload contract in
        L{ownsocket.reload}): new requests are served from C{backend},
        requests in flight finish on the reader they opened, and the
        listening ports are re-opened only when C{[http] port} or
        C{addresses} changed, or L{listen_ipv6} did (the reload sets it
        when the first C{[subnet6:...]} comes or the last one goes: then
        only the "::" port opens or closes).

        @param config: the new L{ownsocket.config.Config}.
        @param selector: the new selector chain (HTTP does not ask it).
        @param backend: the new file backend for HTTP.
        @return: a Deferred that fires when the ports are settled; it fails
            with L{BindError} (and the old ports stay open) when a new port
            cannot be opened.
        """
        self.backend = backend
        self.resource.backend = backend
        return self.rebind(config.http)

    def stopService(self):
        closed = listening.ListeningService.stopService(self)
        self.site.close_connections()
        return closed
