"""The address owner: choices, the hint, and a store that someone else also writes."""

import dataclasses
import ipaddress

from twisted.internet.task import Clock
from twisted.trial import unittest

from ownsocket import config as configuration
from ownsocket.dhcp.addresses import Addresses
from ownsocket.dhcp.leases import BOUND, OFFERED, SqliteLeaseStore
from ownsocket.dhcp.pool import AddressPool

IP = ipaddress.IPv4Address

CONFIG = """
[subnet:lab]
network = 10.0.0.0/24
pool = 10.0.0.100-10.0.0.103
[host:pinned]
mac = 52:54:00:00:00:aa
address = 10.0.0.101
"""


def mac(n):
    return f"52:54:00:00:01:{n:02x}"


class AddressesTests(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.config = configuration.load(text=CONFIG, known_interfaces={"eth0"})
        self.subnet = self.config.subnets[0]
        self.path = self.mktemp()
        self.store = SqliteLeaseStore(self.path, clock=self.clock)
        self.addCleanup(self.store.close)
        self.addresses = Addresses(self.config, self.store, self.clock)
        self.successResultOf(self.addresses.load())

    def offer(self, client, requested=None):
        return self.successResultOf(self.addresses.offer(client, self.subnet, requested, 30))

    def bind(self, client, address):
        return self.successResultOf(self.addresses.bind(client, self.subnet, address, 600))

    def test_reservation_is_never_in_the_pool(self):
        offered = [self.offer(mac(i))[0] for i in range(3)]
        self.assertEqual(set(offered), {IP("10.0.0.100"), IP("10.0.0.102"), IP("10.0.0.103")})
        self.assertEqual(self.offer("52:54:00:00:00:aa")[0], offered[0])  # the oldest offer, reused

    def test_candidate_order_depends_on_the_client(self):
        firsts = {self.addresses.pool("lab").candidates(mac(i), 1)[0] for i in range(40)}
        self.assertGreater(len(firsts), 1)

    def test_candidates_spread_when_the_start_of_the_pool_is_taken(self):
        """A pool filled from its start (leases imported from a lowest-first
        server): clients whose hashed neighbours are all taken still get
        different candidates, so claims in flight together do not fight
        over the same few addresses."""
        subnet = dataclasses.replace(self.subnet, network=ipaddress.IPv4Network("10.1.0.0/16"),
                                     pools=(configuration.AddressRange(IP("10.1.0.0"), IP("10.1.39.255")),))
        pool = AddressPool(subnet)
        pool.reset([int(IP("10.1.0.0")) + i for i in range(5000)], [], [])
        firsts = [pool.candidates(mac(i % 256) + f":{i // 256:02x}", 4) for i in range(1000)]
        self.assertTrue(all(len(found) == 4 for found in firsts))
        taken = [IP("10.1.0.0") + i for i in range(5000)]
        self.assertFalse(set(taken) & {a for found in firsts for a in found})
        self.assertGreater(len({found[0] for found in firsts}), 700)

    def test_another_writer_is_settled_by_the_store(self):
        """A second writer took an address the hint thinks is free: the
        claim loses, the next candidate wins, the hint learns."""
        wanted = self.addresses.pool("lab").candidates(mac(1), 1)[0]
        self.successResultOf(self.store.claim(mac(50), "lab", [wanted], BOUND, 600))
        address, why = self.offer(mac(1))
        self.assertNotEqual(address, wanted)
        self.assertEqual(why, "new address from the pool")
        self.assertNotIn(wanted, self.addresses.pool("lab").candidates(mac(1), 4))
        lease, refusal = self.bind(mac(2), wanted)
        self.assertIsNone(lease)
        self.assertEqual(refusal, f"held by {mac(50)}")

    def test_exhausted_pool_reuses_oldest_offer(self):
        first, _ = self.offer(mac(1))
        self.offer(mac(2))
        self.offer(mac(3))
        address, why = self.offer(mac(4))
        self.assertEqual(address, first)
        self.assertIn(f"reused the oldest outstanding offer ({mac(1)})", why)
        self.assertIsNone(self.successResultOf(self.store.lookup(mac(1), "lab")))

    def test_counts(self):
        address, _ = self.offer(mac(1))
        self.bind(mac(1), address)
        self.offer(mac(2))
        self.assertEqual(self.addresses.counts(), {("lab", "free"): 1, ("lab", "offered"): 1,
                                                   ("lab", "bound"): 1, ("lab", "declined"): 0})
        self.clock.advance(31)
        self.addresses.expire()
        self.assertEqual(self.addresses.counts()[("lab", "free")], 2)

    def test_lapsed_binding_returns_to_its_client(self):
        address, _ = self.offer(mac(1))
        self.bind(mac(1), address)
        self.clock.advance(601)
        self.addresses.expire()
        others = {self.offer(mac(10 + i))[0] for i in range(2)}
        self.assertNotIn(address, others)
        self.assertEqual(self.offer(mac(1)), (address, "the client's current lease"))

    def test_reconfigure_keeps_leases_of_a_subnet_that_is_gone(self):
        address, _ = self.offer(mac(1))
        self.bind(mac(1), address)
        other = configuration.load(text="[subnet:new]\nnetwork = 10.5.0.0/24\npool = 10.5.0.10-10.5.0.20\n",
                                   known_interfaces={"eth0"})
        self.addresses.configure(other)
        self.assertEqual(set(self.addresses.pools), {"new"})
        self.assertEqual(self.successResultOf(self.store.lookup(mac(1), "lab")).address, address)
        self.addresses.configure(self.config)
        self.assertEqual(self.addresses.counts()[("lab", "bound")], 1)
        self.assertNotIn(address, self.addresses.pool("lab").candidates(mac(2), 4))

    def test_reconfigure_with_the_same_pool_keeps_its_hint(self):
        """A reload that leaves a pool alone must not rebuild it (that held
        the reactor long enough to drop packets); new settings still apply."""
        address, _ = self.offer(mac(1))
        self.bind(mac(1), address)
        pool = self.addresses.pool("lab")
        changed = dataclasses.replace(self.config, subnets=tuple(
            dataclasses.replace(subnet, lease_time=99) for subnet in self.config.subnets))
        self.addresses.configure(changed)
        self.assertIs(self.addresses.pool("lab"), pool)
        self.assertEqual(self.addresses.pool("lab").subnet.lease_time, 99)
        self.assertEqual(self.addresses.counts()[("lab", "bound")], 1)
        wider = configuration.load(text=CONFIG.replace("10.0.0.103", "10.0.0.110"),
                                   known_interfaces={"eth0"})
        self.addresses.configure(wider)
        self.assertIsNot(self.addresses.pool("lab"), pool)
        self.assertEqual(self.addresses.counts()[("lab", "bound")], 1)

    def test_resync_from_shared_store(self):
        self.successResultOf(self.store.claim(mac(50), "lab", [IP("10.0.0.100")], OFFERED, 60))
        self.successResultOf(self.addresses.load())
        self.assertEqual(self.addresses.counts()[("lab", "offered")], 1)

    def test_changes_of_a_shared_store_between_full_refreshes(self):
        """A shared store that can list its recent changes: the hint and
        the counts learn another server's bindings at the next reclaim
        round, without a full read of every row."""
        from twisted.internet import defer
        other = []  # rows "another server" wrote, as changed_since returns them
        calls = []

        class Shared:
            shared = True

            def __init__(self, inner):
                self.inner = inner

            def __getattr__(self, name):
                return getattr(self.inner, name)

            def changed_since(self, mark):
                calls.append(mark)
                rows, other[:] = (list(other) if mark is not None else []), []
                return defer.succeed((rows, (mark or 0) + 1))

            def all_leases(self):
                calls.append("all")
                return self.inner.all_leases()

        addresses = Addresses(self.config, Shared(self.store), self.clock)
        self.successResultOf(addresses.load())
        self.successResultOf(addresses.reclaim(refresh=False))  # first look: a mark, no rows
        self.assertEqual(addresses.counts()[("lab", "bound")], 0)
        elsewhere = self.successResultOf(self.store.claim(mac(60), "lab", [IP("10.0.0.102")], BOUND, 600))
        other.append(elsewhere)
        self.successResultOf(addresses.reclaim(refresh=False))
        self.assertEqual(addresses.counts()[("lab", "bound")], 1)
        self.assertNotIn(IP("10.0.0.102"), addresses.pool("lab").candidates(mac(61), 4))
        self.assertEqual(calls, ["all", None, 1])
