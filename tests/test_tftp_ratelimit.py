"""The one rate limiter (ownsocket.ratelimit) and the one log-text cleaner
(ownsocket.text) that TFTP, DHCP and HTTP share."""

from twisted.internet.task import Clock
from twisted.trial import unittest

from ownsocket.ratelimit import RateLimit, RateLimitedLog
from ownsocket.text import printable


class RateLimitTests(unittest.TestCase):

    def test_burst_then_rate(self):
        clock = Clock()
        limit = RateLimit(clock, rate=2.0, burst=3)
        self.assertEqual([limit.allow() for _ in range(5)], [True, True, True, False, False])
        self.assertEqual(limit.take_suppressed(), 2)
        self.assertEqual(limit.take_suppressed(), 0)
        clock.advance(0.5)   # one token back
        self.assertEqual([limit.allow() for _ in range(2)], [True, False])
        clock.advance(100)   # never more than the burst
        self.assertEqual(sum(limit.allow() for _ in range(10)), 3)


class RateLimitedLogTests(unittest.TestCase):

    def test_summary_precedes_the_next_line(self):
        clock = Clock()
        lines = []
        log = RateLimitedLog(lambda format, **kw: lines.append((format, kw)), clock, burst=2, period=10)
        for index in range(7):
            log("line {n}", n=index)
        self.assertEqual([kw["n"] for _, kw in lines], [0, 1])
        clock.advance(5)     # one line's worth of budget
        log("line {n}", n=7)
        self.assertEqual(lines[2], ("... {count} more like this suppressed", {"count": 5}))
        self.assertEqual(lines[3], ("line {n}", {"n": 7}))


class PrintableTests(unittest.TestCase):

    def test_control_characters_and_bad_utf8_escaped(self):
        self.assertEqual(printable(b"a\nb\x00c\xffd\xc3\xa9"), "a\\x0ab\\x00c\\xffd\u00e9")

    def test_bounded(self):
        self.assertEqual(printable(b"x" * 1000), "x" * 300)
        self.assertEqual(printable(b"abcdef", 3), "abc")
