"""
One file backend made of several, with observers.

TFTP and HTTP both read through this: generated content from plugins first,
then the files under the root; and every successful open is reported to the
observers (the stateful iPXE selector learns from it that a machine fetched
its first stage).
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from ownsocket.interfaces import FileNotFound, IFileBackend


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
