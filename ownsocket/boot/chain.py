"""
An ordered chain of selectors that is itself a selector.

Like Twisted's ResolverChain: the DHCP server asks one IBootFileSelector and
does not care how many rules stand behind it.  The first decision wins; a
selector that raises, fails or is too slow is logged by name and skipped, so
one broken plugin never stops a fleet from booting.
"""

from __future__ import annotations

from dataclasses import replace

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from ownsocket.interfaces import IBootFileSelector


@implementer(IBootFileSelector)
class SelectorChain:
    name = "chain"
    log = Logger()

    def __init__(self, selectors, clock, timeout=2.0):
        """
        @param clock: an L{IReactorTime}; required, so a selector that
            answers with a Deferred is always cut off after C{timeout}
            seconds (a chain without one would wait for it forever).
        @param timeout: seconds; must be positive.
        """
        if clock is None:
            raise ValueError("SelectorChain needs a clock to enforce the selector timeout")
        if not timeout or timeout <= 0:
            raise ValueError(f"selector timeout must be positive, not {timeout!r}")
        self.selectors = tuple(selectors)
        self._clock = clock
        self._timeout = timeout

    def select(self, request):
        """Return a decision (or None) synchronously while every selector
        answers synchronously; switch to a Deferred at the first one that
        does not, so the common case costs no Deferred at all."""
        return self._continue(request, 0)

    def _continue(self, request, index):
        for position in range(index, len(self.selectors)):
            selector = self.selectors[position]
            try:
                result = selector.select(request)
            except Exception:
                self.log.failure("boot selector {name!r} raised for {mac}; skipping it",
                                 name=selector.name, mac=request.mac)
                continue
            if isinstance(result, defer.Deferred):
                return self._wait(result, selector, request, position)
            if result is not None:
                return self._stamp(result, selector)
        return None

    def _wait(self, deferred, selector, request, position):
        deferred.addTimeout(self._timeout, self._clock)

        def failed(failure):
            self.log.warn("boot selector {name!r} failed for {mac}: {error}; skipping it",
                          name=selector.name, mac=request.mac, error=failure.getErrorMessage())
            return None

        def answered(result):
            if result is not None:
                return self._stamp(result, selector)
            return self._continue(request, position + 1)

        deferred.addErrback(failed)
        deferred.addCallback(answered)
        return deferred

    @staticmethod
    def _stamp(decision, selector):
        if decision.selector is None:
            return replace(decision, selector=selector.name)
        return decision
