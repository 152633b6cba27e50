"""
Keeping CPython's cyclic garbage collector out of the packets' way.

A full (generation 2) collection walks every object the process holds.
With a lease hint of tens of thousands of leases, plus twisted and the
standard library, that is hundreds of thousands of objects: measured at
60-560 ms under a perfdhcp load on the shared 2-core machine, during which
the reactor reads nothing and the DHCP socket's receive buffer (about 200
requests) overflows.  Nearly everything it walks is long-lived (modules,
the config, the selectors, the lease hint) and never garbage.

So the long-lived heap is frozen (C{gc.freeze()}: moved out of the
collector's sight, an O(1) splice) after start-up and after each reload's
swap; the automatic collections then only walk what was made since.  What
is cyclic garbage at the moment of a freeze would stay in the frozen set,
so a freeze first collects the young generations (a few ms), and a full
sweep of everything, frozen or not, runs only when the network has been
quiet (L{sweep}, from the DHCP service's idle check) and no TFTP or HTTP
transfer is in flight, at most every L{SWEEP_EVERY} seconds.  A storm
without a quiet second settles every L{SETTLE_EVERY} seconds instead
(L{tick}); that also freezes what a reload built.  A reload itself does
no collector work: a young collection costs a few ms (5 typical, up to 28
measured under load), which its own turns must not add to the reading of a
busy DHCP socket.

Why transfers count: a full sweep of a big heap on a loaded machine once
took 2.4 s, with DHCP idle but TFTP transfers running; a lock-step TFTP
client whose server goes silent for that long retransmits or gives up.
"""

from __future__ import annotations

import gc as _gc

#: The least time between two full sweeps, in seconds.
SWEEP_EVERY = 60.0
#: During a storm that never leaves a quiet second, how often what survived
#: since the last freeze is frozen too, so that the lease hint a storm
#: builds never makes a full collection long either.
SETTLE_EVERY = 30.0


class Heap:
    """
    The collector policy of one server process.

    @param collector: the C{gc} module (a fake in tests: a test process
        must not freeze the test runner's heap).
    @param clock: for L{SWEEP_EVERY}.
    @param busy: a callable, true while something that a long pause would
        hurt is running (TFTP or HTTP transfers in flight): no full sweep
        then.  L{ownsocket.reload.ReloadOnSignal} sets it to
        L{ownsocket.runtime.Runtime.transfers_busy}.
    """

    def __init__(self, clock, collector=_gc, busy=None):
        self._gc = collector
        self._clock = clock
        self.busy = busy
        self._quiet_ticks = 0
        # PyPy's collector is incremental and has no freeze: nothing to do there
        self.active = all(hasattr(collector, name) for name in ("freeze", "unfreeze", "collect"))
        self._last_sweep = None
        self._last_settle = None

    def start(self):
        """At start-up, before the first request: one full collection (no
        traffic yet, so it costs nothing), then freeze what is left."""
        if not self.active:
            return
        self._gc.collect()
        self._gc.freeze()
        self._last_sweep = self._last_settle = self._clock.seconds()

    def tick(self, quiet):
        """
        Once a second from the DHCP service: L{sweep} when the network was
        C{quiet} at this tick and the one before (and no transfer runs);
        otherwise L{settle} every L{SETTLE_EVERY} seconds.

        Two ticks, because one can lie: a reactor that was itself stalled
        (a process starved of CPU on a loaded machine) runs its timers
        before it reads its sockets, so its first tick after the stall sees
        no recent request while the socket is full of them.  Measured: a
        5.8 s sweep in the middle of a 1,000/s storm that way.  By the next
        tick the reactor has read the socket.
        """
        if not self.active:
            return
        self._quiet_ticks = self._quiet_ticks + 1 if quiet else 0
        if self._quiet_ticks >= 2 and self.sweep():
            return
        if self._last_settle is not None and self._clock.seconds() - self._last_settle >= SETTLE_EVERY:
            self.settle()

    def settle(self):
        """Collect the young generations only, then freeze; never a full
        collection here, that is the stall a storm must not see."""
        if not self.active:
            return
        self._gc.collect(1)
        self._gc.freeze()
        self._last_settle = self._clock.seconds()

    def sweep(self):
        """
        When the network is quiet: unfreeze, collect everything (the old
        config's cyclic leftovers among it), freeze again.  At most every
        L{SWEEP_EVERY} seconds, and not while C{busy()} says transfers are
        in flight (the next quiet tick tries again).

        @return: True if it swept.
        """
        now = self._clock.seconds()
        if not self.active or (self._last_sweep is not None and now - self._last_sweep < SWEEP_EVERY):
            return False
        if self.busy is not None and self.busy():
            return False
        self._last_sweep = self._last_settle = now
        self._gc.unfreeze()
        self._gc.collect()
        self._gc.freeze()
        return True
