"""
tests.lab.usage, which bench/boot_bench.py uses to tell the firmware's own
CPU from the server's and everyone else's: the window arithmetic on fixed
samples, and that the /proc readers read this process and this machine.
"""

import os

from twisted.trial import unittest

from tests.lab import usage


class Window(unittest.TestCase):

    def setUp(self):
        self.usage = usage.Usage(interval=3600)
        self.usage.stop()
        # (wall time, machine busy CPU s, {process: CPU s or None})
        self.usage.samples = [
            (100.0, 50.0, {"guest": 0.0}),
            (101.0, 51.5, {"guest": 0.8, "server": 0.5}),
            (102.0, 53.5, {"guest": 1.7, "server": 0.6}),
            (103.0, 55.5, {"guest": 2.5, "server": None}),  # the server has exited
        ]

    def test_between_counts_each_process_and_the_rest(self):
        used = self.usage.between(100.5, 102.5)
        # from the sample at 100.0 to the one at 102.0
        self.assertEqual(used["wall"], 2.0)
        self.assertEqual(used["machine"], 3.5)
        self.assertAlmostEqual(used["guest"], 1.7)
        self.assertAlmostEqual(used["server"], 0.6)  # not sampled at 100.0: counted from 0
        self.assertAlmostEqual(used["others"], 3.5 - 1.7 - 0.6)

    def test_a_process_that_is_gone_is_left_out(self):
        used = self.usage.between(101.0, 103.0)
        self.assertNotIn("server", used)
        self.assertAlmostEqual(used["guest"], 1.7)

    def test_before_the_first_sample(self):
        self.assertEqual(self.usage.at(10.0)[0], 100.0)


class ProcReaders(unittest.TestCase):

    skip = None if os.path.exists("/proc/self/stat") else "needs /proc"

    def test_this_process(self):
        before = usage.process_cpu(os.getpid())
        sum(i * i for i in range(300000))
        self.assertGreaterEqual(usage.process_cpu(os.getpid()), before)
        self.assertGreater(usage.machine_busy(), 0)

    def test_no_such_process(self):
        self.assertIsNone(usage.process_cpu(2 ** 22 + 12345))  # above Linux's largest pid_max
