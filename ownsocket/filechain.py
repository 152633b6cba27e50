"""
One file backend made of several, with observers.

TFTP and HTTP both read through this: generated content from plugins first,
then the files under the root; and every successful open is reported to the
observers (the stateful iPXE selector learns from it that a machine fetched
its first stage).
"""

from __future__ import annotations

from typing import Optional

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ownsocket.files import ReadRequest
from ownsocket.interfaces import BackendError, FileNotFound, IFileBackend


@implementer(IFileBackend)
class BackendChain:
    log = Logger()

    def __init__(self, backends, observers=()):
        self.backends = tuple(backends)
        self.observers = tuple(observers)

    @defer.inlineCallbacks
    def get_reader(self, request):
        last_error = None
        for backend in self.backends:
            try:
                reader = yield defer.maybeDeferred(backend.get_reader, request)
            except FileNotFound as error:
                if getattr(error, "final", False):
                    # A generated file this client may not have: a file of
                    # the same name on disk was never meant for it either.
                    raise
                last_error = error
                continue
            self._notify(request)
            return reader
        raise last_error or FileNotFound(request.path)

    def _notify(self, request):
        for observer in self.observers:
            try:
                observer.file_opened(request)
            except Exception:
                self.log.failure("transfer observer {observer!r} failed", observer=observer)

    def size_of(self, request):
        """
        (size in bytes or None, whether the answer is the same for every
        client) of what L{get_reader} would serve: for DHCP option 13, so a
        generated file gets its size too.  A missing file is the same for
        everyone too: a boot storm for a name nobody serves must not resolve
        the path for every reply.

        Observers are not told (nothing was fetched: the stateful iPXE
        selector must not think the first stage was), and a backend that
        answers later is not waited for (a DHCP reply cannot wait).
        """
        # A backend that does not serve a name says so for every client
        # (FileNotFound), or says it is this client's and not to be found
        # elsewhere (final): only a reader or a final answer is personal.
        for backend in self.backends:
            sized = getattr(backend, "size", None)
            if sized is not None:
                try:
                    return sized(request), True
                except FileNotFound as error:
                    if getattr(error, "final", False):
                        return None, False
                    continue
                except BackendError:
                    return None, True  # refused by name (outside the root, say)
            outcome = []
            d = defer.maybeDeferred(backend.get_reader, request)
            d.addBoth(outcome.append)
            if not outcome:
                d.addCallback(_finish)  # it answers later: close what it opens then
                return None, False
            result = outcome[0]
            if isinstance(result, Failure):
                if result.check(FileNotFound) and not getattr(result.value, "final", False):
                    continue
                return None, False
            size = getattr(result, "size", None)
            _finish(result)
            return size, False
        return None, True  # nobody serves it: not now, for nobody


def _finish(reader):
    finish = getattr(reader, "finish", None)
    if finish is not None:
        try:
            finish()
        except Exception:
            BackendChain.log.failure("closing a reader opened for its size failed")


class FileSizes:
    """
    Option 13 for the DHCP and proxyDHCP replies: the size of the boot file
    as TFTP will serve it, asked of the same backend chain TFTP reads
    through (C{backend()} gives the one in force: a reload brings a new
    one).  A size that is the same for every client (a file under the root)
    is remembered for C{ttl} seconds: a boot storm asks for the same two or
    three files thousands of times a second, and resolving a path safely is
    not free.
    """

    def __init__(self, backend, clock, ttl=5.0):
        self.backend = backend
        self.clock = clock
        self.ttl = ttl
        self._chain = None
        self._remembered = {}
        self._personal = set()

    def __call__(self, name, boot_request=None) -> Optional[int]:
        chain = self.backend()
        if chain is None:
            return None
        if chain is not self._chain:
            self._chain, self._remembered, self._personal = chain, {}, set()
        now = self.clock.seconds()
        hit = self._remembered.get(name)
        if hit is not None and hit[0] > now:
            return hit[1]
        try:
            size, shared = chain.size_of(ReadRequest(name, ("0.0.0.0", 68), {}, boot_request))
        except Exception:
            BackendChain.log.failure("boot file size of {name!r} failed", name=name)
            return None
        if not shared:
            # Once a generated backend served this name to someone, a miss
            # for another client is not everyone's answer: ask every time.
            if len(self._personal) < 4096:
                self._personal.add(name)
        elif name not in self._personal:
            if len(self._remembered) > 4096:
                self._remembered.clear()
            self._remembered[name] = (now + self.ttl, size)
        return size
