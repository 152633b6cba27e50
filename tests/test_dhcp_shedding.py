"""
The kernel's DISCOVER filter (ownsocket/dhcp/shedding.py) on real UDP
sockets over loopback: what it drops, what it lets through, and that it
comes off again.
"""

import socket

from twisted.trial import unittest

from ownsocket.dhcp.shedding import DiscoverFilter
from tests import packets


class Log:
    def __init__(self):
        self.lines = []

    def warn(self, text, **fields):
        self.lines.append(("warn", text.format(**fields)))

    def error(self, text, **fields):
        self.lines.append(("error", text.format(**fields)))


class DiscoverFilterTests(unittest.TestCase):
    def setUp(self):
        if not DiscoverFilter.supported:
            raise unittest.SkipTest("socket filters (SO_ATTACH_FILTER) are Linux only")
        self.receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(self.receiver.close)
        self.receiver.bind(("127.0.0.1", 0))
        self.receiver.settimeout(0.5)
        self.sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(self.sender.close)
        self.log = Log()
        self.filter = DiscoverFilter(self.log)

    def through(self, datagrams):
        """Which of C{datagrams} reach the receiver (by index, in order)."""
        for n, data in enumerate(datagrams):
            self.sender.sendto(data, self.receiver.getsockname())
        marker = b"end of this round"
        self.sender.sendto(marker, self.receiver.getsockname())
        seen = []
        while True:
            data = self.receiver.recv(4096)
            if data == marker:
                return seen
            seen.append(datagrams.index(data))

    def test_drops_discovers_only_while_on(self):
        datagrams = [
            packets.ovmf_pxe_discover(),                                  # 0 DISCOVER: dropped
            packets.ovmf_pxe_discover(message_type=3),                    # 1 REQUEST
            packets.request(message_type=8),                              # 2 INFORM
            packets.request(message_type=None, pad_to=300),               # 3 BOOTP (no 53)
            packets.request(message_type=None, options=[(12, b"pc"), (53, b"\x01")]),  # 4 53 not first
            packets.request(op=2, message_type=1, mac="52:54:00:00:00:05"),  # 5 a BOOTREPLY
            packets.request(cookie=False, mac="52:54:00:00:00:06"),       # 6 no cookie
            b"\x01" * 10,                                                 # 7 short
            packets.ipxe_bios_discover(),                                 # 8 DISCOVER: dropped
        ]
        self.assertEqual(self.through(datagrams), list(range(9)))
        self.assertTrue(self.filter.start(self.receiver))
        self.assertTrue(self.filter.on)
        self.assertEqual(self.through(datagrams), [1, 2, 3, 4, 5, 6, 7])
        self.filter.stop(self.receiver)
        self.assertFalse(self.filter.on)
        self.assertEqual(self.through(datagrams), list(range(9)))
        self.assertEqual(self.log.lines, [])

    def test_a_socket_that_refuses_leaves_it_off_with_one_line(self):
        self.receiver.close()
        self.assertFalse(self.filter.start(self.receiver))
        self.assertFalse(self.filter.start(self.receiver))
        self.assertEqual([level for level, _ in self.log.lines], ["warn"])
        self.assertIn("dropping them after reading instead", self.log.lines[0][1])
