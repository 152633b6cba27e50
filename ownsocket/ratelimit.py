"""
One rate limiter for everything a stranger can make us do again and again:
log lines about malformed packets, answers to garbage, refusals.

Malformed packets are chosen by whoever sends them; one line (or one
answer) per packet would let an attacker fill the disk, drown the lines
that matter, or use us as a reflector.
"""


class RateLimit:
    """
    A token bucket on an injected clock: C{rate} per second on average,
    bursts of up to C{burst}.  It counts what it refused, so the next line
    that gets through can say how many were left out.
    """

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
        """How many were refused since the last call (and reset the count)."""
        count, self.suppressed = self.suppressed, 0
        return count


class RateLimitedLog:
    """
    A log call that lets C{burst} lines through at once and C{burst} per
    C{period} seconds after that; the first line through after some were
    left out is preceded by one line saying how many.
    """

    def __init__(self, emit, clock, burst=10, period=10.0):
        self._emit = emit
        self._limit = RateLimit(clock, rate=burst / period, burst=burst)

    def __call__(self, format, **kwargs):
        if not self._limit.allow():
            return
        suppressed = self._limit.take_suppressed()
        if suppressed:
            self._emit("... {count} more like this suppressed", count=suppressed)
        self._emit(format, **kwargs)
