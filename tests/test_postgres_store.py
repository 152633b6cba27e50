"""
The lease-store contract and the several-servers rules on a real PostgreSQL.

A throw-away cluster (tests/pgcluster.py) is started once for this module,
listens on a Unix socket in a temporary directory, and is stopped by PID at
exit.  Skips with the reason when PostgreSQL or psycopg is not installed.
"""

import atexit
import ipaddress
import itertools

from twisted.internet import defer, reactor
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from ownsocket.dhcp.leases import BOUND, OFFERED, LeaseStoreUnavailable
from ownsocket.interfaces import ILeaseStore
from tests import pgcluster
from tests.test_lease_store import A, B, ONE, TWO, StoreContract

IP = ipaddress.IPv4Address

_cluster = None
_names = itertools.count()


def cluster():
    """The module's cluster, started on first use (about 5-20 s)."""
    global _cluster
    reason = pgcluster.available()
    if reason:
        raise unittest.SkipTest(reason)
    if _cluster is None:
        _cluster = pgcluster.Cluster()
        atexit.register(_cluster.close)
        _cluster.start()
    return _cluster


class PostgresTestCase(unittest.TestCase):
    def setUp(self):
        from ownsocket.dhcp.pgstore import PostgresLeaseStore
        self.cluster = cluster()
        name = f"leases{next(_names)}"
        self.dbname = name
        self.dsn = self.cluster.create_database(name, owner=f"role_{name}")
        self.store = self.open()

    def open(self, **kwargs):
        from ownsocket.dhcp.pgstore import PostgresLeaseStore
        store = PostgresLeaseStore(self.dsn, reactor, **kwargs)
        self.addCleanup(store.close)
        return store

    def reopen(self):
        return defer.succeed(self.open())


class PostgresContractTests(StoreContract, PostgresTestCase):
    """The same suite as SQLite's (tests/test_lease_store.py)."""


class SeveralServersTests(PostgresTestCase):
    @defer.inlineCallbacks
    def test_schema_has_a_version_and_constraints(self):
        yield self.store.all_leases()
        rows = self.cluster.sql("SELECT version FROM ownsocket_schema", dbname=self.dbname)
        self.assertEqual(rows, [(1,)])
        db = self.dbname
        from psycopg import errors
        import psycopg
        with psycopg.connect(self.cluster.dsn(db), autocommit=True) as connection:
            connection.execute("INSERT INTO ownsocket_leases (address, mac, subnet, state, expires)"
                               " VALUES ('10.0.0.1', 'm', 'lab', 'bound', now())")
            with self.assertRaises(errors.UniqueViolation):
                connection.execute("INSERT INTO ownsocket_leases (address, mac, subnet, state, expires)"
                                   " VALUES ('10.0.0.2', 'm', 'lab', 'bound', now())")

    @defer.inlineCallbacks
    def test_race_between_servers_never_doubles(self):
        """Three servers claim from the same small pool for many clients at
        once: each address ends up with one client, each client with one
        address, and losers got other candidates or nothing."""
        stores = [self.store, self.open(), self.open()]
        pool = [IP("10.0.0.100") + i for i in range(20)]
        claims = []
        for i in range(30):
            mac = f"52:54:00:00:09:{i:02x}"
            for n, store in enumerate(stores):
                order = pool[n * 5:] + pool[:n * 5]
                claims.append(store.claim(mac, "lab", order, BOUND, 600))
        results = yield defer.gatherResults(claims)
        leases = yield self.store.all_leases()
        self.assertEqual(len({lease.address for lease in leases}), len(leases))
        self.assertEqual(len({lease.mac for lease in leases}), len(leases))
        self.assertEqual(len(leases), 20)
        self.assertTrue(any(result is None for result in results))

    @defer.inlineCallbacks
    def test_lease_made_on_one_server_renews_on_another(self):
        other = self.open(server_name="b")
        yield self.store.claim(ONE, "lab", [A], BOUND, 60)
        renewed = yield other.claim(ONE, "lab", [A], BOUND, 600)
        self.assertEqual((renewed.mac, renewed.address), (ONE, A))
        self.assertIsNone((yield other.claim(TWO, "lab", [A], BOUND, 600)))

    @defer.inlineCallbacks
    def test_offer_is_seen_by_the_other_server(self):
        other = self.open(server_name="b")
        yield self.store.claim(ONE, "lab", [A], OFFERED, 30)
        self.assertIsNone((yield other.claim(TWO, "lab", [A], OFFERED, 30)))
        self.assertEqual((yield other.lookup(ONE, "lab")).address, A)

    @defer.inlineCallbacks
    def test_reclaim_one_server_at_a_time(self):
        import psycopg
        yield self.store.claim(ONE, "lab", [A], OFFERED, -1)
        db = self.dbname
        with psycopg.connect(self.cluster.dsn(db)) as holder:
            holder.execute("SELECT pg_advisory_lock(%s)", (0x6F776E736F636B74,))
            self.assertEqual((yield self.store.reclaim()), 0)  # someone else is reclaiming
            holder.execute("SELECT pg_advisory_unlock(%s)", (0x6F776E736F636B74,))
        self.assertEqual((yield self.store.reclaim()), 1)

    @defer.inlineCallbacks
    def test_database_down_fails_fast_then_recovers(self):
        from ownsocket.dhcp import pgstore
        yield self.store.claim(ONE, "lab", [A], BOUND, 600)
        self.cluster.stop()
        try:
            yield self.assertFailure(self.store.claim(TWO, "lab", [B], BOUND, 600), LeaseStoreUnavailable)
            # within the backoff: refused at once, without a connection attempt
            yield self.assertFailure(self.store.lookup(ONE, "lab"), LeaseStoreUnavailable)
        finally:
            self.cluster.start()
        self.store._retry_at = 0  # skip the wait; the backoff itself is the store's business
        lease = yield self.store.lookup(ONE, "lab")
        self.assertEqual(lease.address, A)  # nothing committed was lost
        self.assertEqual((yield self.store.claim(TWO, "lab", [B], BOUND, 600)).address, B)
        self.flushLoggedErrors()

    def test_password_never_logged(self):
        from ownsocket.dhcp.pgstore import describe
        text = describe("postgresql://u:s3cret@/db?host=/tmp/x")
        self.assertNotIn("s3cret", text)
        self.assertIn("user=u", text)
        self.assertNotIn("s3cret", describe("host=/tmp/x user=u password=s3cret dbname=db"))


POLICY_CONFIG = """
[dhcp]
offer_hold = 30
[subnet:lab]
network = 10.0.0.0/24
pool = 10.0.0.100-10.0.0.109
lease_time = 600
[boot]
default = undionly.kpxe
"""


class TwoServersOneSegmentTests(PostgresTestCase):
    """Two DHCP servers on one segment, one database: the policy end to end."""

    def setUp(self):
        super().setUp()
        from ownsocket import config as configuration
        from ownsocket.dhcp.server import Arrival, DhcpServer
        from ownsocket.tap import build_selector
        config = configuration.load(text=POLICY_CONFIG, known_interfaces={"eth0"})
        self.ids = [IP("10.0.0.1"), IP("10.0.0.2")]
        self.servers = []
        for n, server_id in enumerate(self.ids):
            store = self.store if n == 0 else self.open(server_name=f"s{n}")
            self.servers.append(DhcpServer(config, store, build_selector(config, reactor), reactor))
        self.arrivals = [Arrival("eth0", server_id) for server_id in self.ids]

    @defer.inlineCallbacks
    def ask(self, n, data):
        from ownsocket.dhcp import wire
        from tests import packets
        result = yield defer.maybeDeferred(self.servers[n].handle, wire.parse(data), self.arrivals[n])
        return [packets.parse_reply(out.data) for out in result]

    def request(self, client, address, server_id):
        from tests import packets
        extra = [(50, IP(address).packed)]
        if server_id is not None:
            extra.append((54, IP(server_id).packed))
        return packets.ovmf_pxe_discover(mac=client, message_type=3, extra=extra)

    @defer.inlineCallbacks
    def test_client_picks_one_the_other_frees_its_offer(self):
        from tests import packets
        discover = packets.ovmf_pxe_discover(mac=ONE)
        [offer_a] = yield self.ask(0, discover)
        [offer_b] = yield self.ask(1, discover)
        # B sees the client's live offer from A and offers the same address
        self.assertEqual(offer_a["yiaddr"], offer_b["yiaddr"])
        request = self.request(ONE, offer_a["yiaddr"], self.ids[0])
        self.assertEqual((yield self.ask(1, request)), [])  # names A: B stays quiet
        [ack] = yield self.ask(0, request)
        self.assertEqual((ack["type"], ack["yiaddr"]), (5, offer_a["yiaddr"]))
        leases = yield self.store.all_leases()
        self.assertEqual([(lease.mac, str(lease.address), lease.state) for lease in leases],
                         [(ONE, offer_a["yiaddr"], BOUND)])

    @defer.inlineCallbacks
    def test_two_clients_never_share_an_address(self):
        from tests import packets
        [first] = yield self.ask(0, packets.ovmf_pxe_discover(mac=ONE))
        [second] = yield self.ask(1, packets.ovmf_pxe_discover(mac=TWO))
        self.assertNotEqual(first["yiaddr"], second["yiaddr"])
        # TWO asks B for ONE's offered address (init-reboot): NAK
        [nak] = yield self.ask(1, self.request(TWO, first["yiaddr"], None))
        self.assertEqual(nak["type"], 6)
        self.assertIn(b"held by " + ONE.encode(), nak["options"][56])

    @defer.inlineCallbacks
    def test_lease_made_on_a_renews_on_b(self):
        from tests import packets
        [offer] = yield self.ask(0, packets.ovmf_pxe_discover(mac=ONE))
        [ack] = yield self.ask(0, self.request(ONE, offer["yiaddr"], self.ids[0]))
        renew = packets.request(mac=ONE, message_type=3, ciaddr=offer["yiaddr"])
        [renewed] = yield self.ask(1, renew)
        self.assertEqual((renewed["type"], renewed["yiaddr"]), (5, offer["yiaddr"]))
        self.assertEqual(renewed["options"][54], self.ids[1].packed)

    @defer.inlineCallbacks
    def test_database_down_means_no_answer_then_service_resumes(self):
        from ownsocket.events import EventList
        from tests import packets
        seen = EventList()
        self.servers[0].events.subscribe(seen)
        [offer] = yield self.ask(0, packets.ovmf_pxe_discover(mac=ONE))
        self.cluster.stop()
        try:
            failed = yield self.assertFailure(
                defer.maybeDeferred(self.servers[0].handle, __import__("ownsocket.dhcp.wire", fromlist=["x"]).parse(
                    self.request(ONE, offer["yiaddr"], self.ids[0])), self.arrivals[0]),
                LeaseStoreUnavailable)
            self.assertIn("unreachable", str(failed))
        finally:
            self.cluster.start()
        self.servers[0].store._retry_at = 0
        [ack] = yield self.ask(0, self.request(ONE, offer["yiaddr"], self.ids[0]))
        self.assertEqual(ack["type"], 5)
        self.assertEqual([e.kind for e in seen.events if e.kind in ("committed",)], ["committed"])
        self.flushLoggedErrors()
