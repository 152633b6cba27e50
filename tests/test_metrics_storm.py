"""
A 5,000-MAC DISCOVER storm through the real DHCP policy (its own events, on
a task.Clock, no sockets): the exposition keeps the same, stated number of
series, and the trail keeps at most [admin] boots boots.
"""

import ipaddress
import time

from prometheus_client import generate_latest
from twisted.internet.task import Clock
from twisted.trial import unittest

from ownsocket import config as configuration
from ownsocket.admin.service import AdminService
from ownsocket.dhcp import wire
from ownsocket.dhcp.leases import SqliteLeaseStore
from ownsocket.dhcp.server import Arrival, DhcpServer
from ownsocket.tap import build_selector
from tests import packets
from tests.test_admin_fakes import FakeRuntime, FakeTransfers
from tests import test_metrics
from tests.test_metrics import series

CONFIG = """
[subnet:lab]
network = 10.0.0.0/16
pool = 10.0.1.0-10.0.40.255
router = 10.0.0.1
[boot]
default = undionly.kpxe
arch.0 = undionly.kpxe
arch.7 = snponly.efi
"""

ETH0 = Arrival("eth0", ipaddress.IPv4Address("10.0.0.1"))


class RealStormTests(unittest.TestCase):
    def setUp(self):
        if not hasattr(DhcpServer, "address_counts"):
            raise unittest.SkipTest("this checkout's DHCP policy publishes no events yet")
        self.clock = Clock()
        self.clock.advance(1_000_000)
        config = configuration.load(text=CONFIG, known_interfaces={"eth0"})
        store = SqliteLeaseStore(self.mktemp() + ".sqlite")
        self.addCleanup(store.close)
        self.server = DhcpServer(config, store, build_selector(config, self.clock), self.clock,
                                 boot_file_size=lambda name, request=None: 70_000)
        # (TFTP and HTTP present, as in the stated count; their in-flight gauges are two series)
        self.runtime = FakeRuntime(reactor=self.clock, dhcp=self.server, tftp=FakeTransfers(), http=FakeTransfers())
        self.runtime.events = self.server.events
        self.admin = AdminService(self.runtime)
        self.server.events.subscribe(self.admin.metrics)
        self.server.events.subscribe(self.admin.trail)

    def storm(self, first, count):
        offers = 0
        for n in range(first, first + count):
            mac = "02:00:00:%02x:%02x:%02x" % (n >> 16, (n >> 8) & 255, n & 255)
            for out in self.server.handle(wire.parse(packets.ovmf_pxe_discover(mac=mac, xid=n)), ETH0):
                offers += packets.parse_reply(out.data)["type"] == wire.OFFER
        return offers

    def test_5000_mac_storm_through_the_real_policy(self):
        self.assertEqual(self.storm(0, 10), 10)
        after_ten = series(self.admin.metrics.registry)
        started = time.perf_counter()
        self.assertEqual(self.storm(10, 5000), 5000)
        seconds = time.perf_counter() - started
        after = series(self.admin.metrics.registry)
        self.assertEqual(len(after), len(after_ten))
        self.assertEqual(len(after), test_metrics.StormTests.SERIES)
        key = ("ownsocket_dhcp_received_total", (("message", "discover"), ("service", "dhcp")))
        self.assertEqual(after[key], 5010)
        key = ("ownsocket_dhcp_sent_total", (("message", "offer"), ("service", "dhcp")))
        self.assertEqual(after[key], 5010)
        key = ("ownsocket_selector_decisions_total", (("arch", "efi-x64"), ("selector", "arch")))
        self.assertEqual(after[key], 5010)
        self.assertEqual(after[("ownsocket_dhcp_addresses", (("state", "offered"), ("subnet", "lab")))], 5010)
        self.assertEqual(len(self.admin.trail), 1000)
        boots, events, addresses = self.admin.trail.memory_bound()
        self.assertLessEqual(events, 1000 * 64)
        self.assertLessEqual(addresses, 4000)
        text = generate_latest(self.admin.metrics.registry).decode()
        self.assertNotIn("02:00:00", text)
        print("\n[storm] 5,000 DISCOVERs through the policy with metrics and trail: %.2f s; %d series"
              % (seconds, len(after)))
