"""
The one place that looks inside Twisted's epoll reactor.

Why it exists: serving a TFTP transfer costs a few microseconds per ACK,
and a reactor iteration (timed calls, the wait, the logging context around
every event) costs as much again.  So while ACKs flow, the transfer ports
(L{ownsocket.tftp.fastport.SessionMux}) wait on their own epoll set and
put the reactor's epoll descriptor into it, so they still wake the moment
the reactor has anything else to do.  Measured in one run of
bench/tftp_bench.py (--quick, 10 runs each, shared 2-core machine): window
16 x 1468 B at 133 MB/s and 3.6 s CPU/GiB with the hold, 118 MB/s and
4.5 s CPU/GiB without it; lock-step 30 vs 19 MB/s.  A hold that needs no
private API (wait on the transfer sockets alone for a fixed 2 ms, blind to
the reactor's other work) did no better: 0.86x the speed and 1.29x the CPU
of this one.

What it needs, none of it a published interface:
  - C{EPollReactor._poller}: the reactor's C{select.epoll} object (for its
    descriptor);
  - C{reactor.timeout()}: seconds until the reactor's next timed call
    (defined on C{ReactorBase}, but in no interface).

L{ReactorHold.probe} checks all of that and returns None when anything is
missing or of another type (another reactor, a Twisted that changed), and
the mux then serves each reactor event the plain way.  If the hold fails at
run time (an exception from the reactor's side), the mux drops it for good
and logs once: a Twisted upgrade costs speed, never correctness.  The TFTP
tests run on both paths (tests/test_tftp_reactors.py).
"""

from __future__ import annotations

import select
from typing import Optional


class ReactorHold:
    """What the mux needs of the reactor to hold the wait; see the module."""

    def __init__(self, poller, timeout):
        self._poller = poller
        self._timeout = timeout

    @classmethod
    def probe(cls, reactor) -> Optional["ReactorHold"]:
        """A hold for C{reactor}, or None where it cannot be had safely."""
        epoll = getattr(select, "epoll", None)
        if epoll is None:
            return None
        try:
            from twisted.internet.epollreactor import EPollReactor
        except ImportError:
            return None
        if not isinstance(reactor, EPollReactor):
            return None
        poller = getattr(reactor, "_poller", None)
        timeout = getattr(reactor, "timeout", None)
        if not isinstance(poller, epoll) or not callable(timeout):
            return None
        return cls(poller, timeout)

    def reactor_fd(self) -> int:
        """The reactor's own epoll descriptor: readable when it has work."""
        return self._poller.fileno()

    def until_next_call(self, longest: float) -> float:
        """Seconds until the reactor's next timed call, at most C{longest}."""
        wait = self._timeout()
        if wait is None or wait > longest:
            return longest
        return max(0.0, float(wait))
