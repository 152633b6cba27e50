"""
Log lines that cannot be turned into a flood.

Malformed packets are chosen by whoever sends them; one line per packet would
let an attacker fill the disk and drown the lines that matter.
"""


class RateLimitedLog:
    """At most C{burst} lines per C{period} seconds; then one summary line."""

    def __init__(self, emit, clock, burst=10, period=10.0):
        self._emit = emit
        self._clock = clock
        self._burst = burst
        self._period = period
        self._window_start = None
        self._count = 0
        self._suppressed = 0

    def __call__(self, format, **kwargs):
        now = self._clock.seconds()
        if self._window_start is None or now - self._window_start >= self._period:
            if self._suppressed:
                self._emit("... {count} more like this suppressed in the last {period:.0f}s",
                           count=self._suppressed, period=self._period)
            self._window_start, self._count, self._suppressed = now, 0, 0
        if self._count < self._burst:
            self._count += 1
            self._emit(format, **kwargs)
        else:
            self._suppressed += 1
