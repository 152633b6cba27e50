"""
The ILeaseStore contract, one suite for every store.

Each rule here is what keeps several servers (or one) from giving an address
to two clients: the same tests run against SQLite and, when a throw-away
PostgreSQL can be started, against PostgreSQL (tests/test_postgres_store.py).
Lapsed rows are made with negative durations, so the suite needs no clock
control and runs unchanged on a database's own clock.
"""

import ipaddress

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from ownsocket.dhcp.leases import BOUND, DECLINED, FOREVER, OFFERED, SqliteLeaseStore
from ownsocket.interfaces import ILeaseStore

IP = ipaddress.IPv4Address
A, B, C = IP("10.0.0.10"), IP("10.0.0.11"), IP("10.0.0.12")
ONE, TWO = "52:54:00:00:00:01", "52:54:00:00:00:02"


class StoreContract:
    """Mixed into a TestCase that provides C{make_store()} (a fresh, empty
    store) and C{reopen()} (a second store on the same data)."""

    def test_provides_interface(self):
        verifyObject(ILeaseStore, self.store)

    @defer.inlineCallbacks
    def test_claim_free_address(self):
        lease = yield self.store.claim(ONE, "lab", [A], BOUND, 600, "pc1")
        self.assertEqual((lease.mac, lease.address, lease.state, lease.hostname), (ONE, A, BOUND, "pc1"))
        self.assertEqual((yield self.store.lookup(ONE, "lab")), lease)
        self.assertEqual((yield self.store.holder(A)), lease)

    @defer.inlineCallbacks
    def test_held_address_is_skipped(self):
        yield self.store.claim(ONE, "lab", [A], OFFERED, 60)
        self.assertIsNone((yield self.store.claim(TWO, "lab", [A], BOUND, 600)))
        lease = yield self.store.claim(TWO, "lab", [A, B], OFFERED, 60)
        self.assertEqual(lease.address, B)
        self.assertEqual((yield self.store.holder(A)).mac, ONE)

    @defer.inlineCallbacks
    def test_lapsed_address_can_be_taken(self):
        yield self.store.claim(ONE, "lab", [A], BOUND, -5)
        lease = yield self.store.claim(TWO, "lab", [A], BOUND, 600)
        self.assertEqual(lease.mac, TWO)
        self.assertIsNone((yield self.store.lookup(ONE, "lab")))

    @defer.inlineCallbacks
    def test_lapsed_binding_still_found_for_its_client(self):
        yield self.store.claim(ONE, "lab", [A], BOUND, -5)
        lease = yield self.store.lookup(ONE, "lab")
        self.assertEqual((lease.address, lease.state), (A, BOUND))
        lapsed_offer = yield self.store.claim(TWO, "lab", [B], OFFERED, -5)
        self.assertIsNotNone(lapsed_offer)
        self.assertIsNone((yield self.store.lookup(TWO, "lab")))

    @defer.inlineCallbacks
    def test_offer_never_downgrades_own_binding(self):
        bound = yield self.store.claim(ONE, "lab", [A], BOUND, 600)
        again = yield self.store.claim(ONE, "lab", [A], OFFERED, 60)
        self.assertEqual((again.state, again.expires), (BOUND, bound.expires))

    @defer.inlineCallbacks
    def test_one_address_per_client_and_subnet(self):
        yield self.store.claim(ONE, "lab", [A], BOUND, 600)
        yield self.store.claim(ONE, "far", [IP("10.9.0.5")], BOUND, 600)
        yield self.store.claim(ONE, "lab", [B], BOUND, 600)
        self.assertIsNone((yield self.store.holder(A)))
        self.assertEqual((yield self.store.lookup(ONE, "lab")).address, B)
        self.assertEqual((yield self.store.lookup(ONE, "far")).address, IP("10.9.0.5"))
        leases = yield self.store.all_leases()
        self.assertEqual(sorted(str(lease.address) for lease in leases), ["10.0.0.11", "10.9.0.5"])

    @defer.inlineCallbacks
    def test_bootp_binding_is_forever(self):
        lease = yield self.store.claim(ONE, "lab", [A], BOUND, None)
        self.assertEqual(lease.expires, FOREVER)
        self.assertIsNone((yield self.store.claim(TWO, "lab", [A], BOUND, 600)))

    @defer.inlineCallbacks
    def test_release_only_by_owner(self):
        yield self.store.claim(ONE, "lab", [A], BOUND, 600)
        self.assertFalse((yield self.store.release(TWO, A)))
        self.assertTrue((yield self.store.release(ONE, A)))
        self.assertIsNone((yield self.store.holder(A)))
        self.assertIsNone((yield self.store.lookup(ONE, "lab")))

    @defer.inlineCallbacks
    def test_forget_drops_offers_only(self):
        yield self.store.claim(ONE, "lab", [A], OFFERED, 60)
        yield self.store.claim(TWO, "lab", [B], BOUND, 600)
        self.assertFalse((yield self.store.forget(TWO, B)))
        self.assertFalse((yield self.store.forget(TWO, A)))
        self.assertTrue((yield self.store.forget(ONE, A)))
        self.assertIsNone((yield self.store.holder(A)))
        self.assertEqual((yield self.store.holder(B)).mac, TWO)

    @defer.inlineCallbacks
    def test_decline_quarantines(self):
        yield self.store.claim(ONE, "lab", [A], BOUND, 600)
        self.assertIsNone((yield self.store.decline(TWO, A, 300)))
        quarantine = yield self.store.decline(ONE, A, 300)
        self.assertEqual((quarantine.mac, quarantine.state), (None, DECLINED))
        self.assertIsNone((yield self.store.lookup(ONE, "lab")))
        self.assertIsNone((yield self.store.claim(TWO, "lab", [A], OFFERED, 60)))
        self.assertIsNone((yield self.store.claim(ONE, "lab", [A], OFFERED, 60)))

    @defer.inlineCallbacks
    def test_reclaim_keeps_lapsed_bindings(self):
        yield self.store.claim(ONE, "lab", [A], BOUND, -5)
        yield self.store.claim(TWO, "lab", [B], OFFERED, -5)
        yield self.store.claim(TWO, "far", [C], BOUND, 600)
        yield self.store.decline(TWO, C, -5)
        yield self.store.reclaim()
        leases = yield self.store.all_leases()
        self.assertEqual([(lease.address, lease.state) for lease in leases], [(A, BOUND)])

    @defer.inlineCallbacks
    def test_bindings_survive_reopening(self):
        yield self.store.claim(ONE, "lab", [A], BOUND, 600, "pc1")
        yield self.store.claim(TWO, "lab", [B], BOUND, None)
        other = yield self.reopen()
        lease = yield other.lookup(ONE, "lab")
        self.assertEqual((lease.address, lease.state, lease.hostname, lease.subnet), (A, BOUND, "pc1", "lab"))
        self.assertEqual((yield other.lookup(TWO, "lab")).expires, FOREVER)

    @defer.inlineCallbacks
    def test_batch_commits_together(self):
        with self.store.batch():
            first = self.store.claim(ONE, "lab", [A], BOUND, 600)
            second = self.store.claim(TWO, "lab", [A, B], BOUND, 600)
        self.assertEqual((yield first).address, A)
        self.assertEqual((yield second).address, B)
        other = yield self.reopen()
        self.assertEqual((yield other.holder(B)).mac, TWO)


class SqliteStoreTests(StoreContract, unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.path = self.mktemp()
        self.store = SqliteLeaseStore(self.path, clock=self.clock)
        self.addCleanup(self.store.close)

    def reopen(self):
        other = SqliteLeaseStore(self.path, clock=self.clock)
        self.addCleanup(other.close)
        return defer.succeed(other)

    def test_old_database_without_subnet_column_is_migrated(self):
        import sqlite3
        path = self.mktemp()
        db = sqlite3.connect(path)
        db.executescript("CREATE TABLE leases (address TEXT PRIMARY KEY, mac TEXT, state TEXT NOT NULL,"
                         " expires REAL NOT NULL, hostname TEXT);"
                         f"INSERT INTO leases VALUES ('10.0.0.10', '{ONE}', 'bound', 2000000, 'old');")
        db.commit()
        db.close()
        store = SqliteLeaseStore(path, clock=self.clock)
        self.addCleanup(store.close)
        lease = self.successResultOf(store.lookup(ONE, "lab"))
        self.assertEqual((lease.address, lease.hostname, lease.subnet), (A, "old", None))
        self.assertIsNone(self.successResultOf(store.claim(TWO, "lab", [A], BOUND, 600)))
