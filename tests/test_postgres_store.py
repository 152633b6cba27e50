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


@defer.inlineCallbacks
def wait_until(condition, timeout=60.0, interval=0.05):
    """Poll C{condition} without blocking the reactor; fail after C{timeout}
    seconds (generous: a loaded machine is slow, never wrong)."""
    from twisted.internet import task
    deadline = reactor.seconds() + timeout
    while not condition():
        if reactor.seconds() >= deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        yield task.deferLater(reactor, interval, lambda: None)


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
        # A loaded test machine may take longer than OFFER_LAG for any
        # transaction; refusing offers for it is tested on its own.
        store.offer_lag = None
        self.addCleanup(store.close)
        return store

    def reopen(self):
        return defer.succeed(self.open())


class PostgresContractTests(StoreContract, PostgresTestCase):
    """The same suite as SQLite's (tests/test_lease_store.py)."""


class ThreadPathContractTests(StoreContract, PostgresTestCase):
    """The same suite with every transaction on a pool thread, as the
    first one (which connects) and every retried one run."""

    def open(self, **kwargs):
        store = PostgresTestCase.open(self, **kwargs)
        store._on_reactor = False
        return store


class ReactorPathTests(PostgresTestCase):
    """Transactions on an open connection are sent and read by the reactor
    (ownsocket/dhcp/pgreactor.py); what goes wrong there goes the way a
    pool thread's transaction would."""

    def count_thread_trips(self):
        trips = []
        transact = self.store._transact

        def counted(work):
            trips.append(len(work))
            return transact(work)
        self.store._transact = counted
        return trips

    @defer.inlineCallbacks
    def test_open_connections_skip_the_thread(self):
        self.assertTrue(self.store._on_reactor)
        yield self.store.claim(ONE, "lab", [A], BOUND, 600)  # connects on a thread
        trips = self.count_thread_trips()
        for n in range(10):
            with self.store.batch():
                offers = [self.store.claim(f"02:00:00:00:{n:02x}:{m:02x}", "lab",
                                           [IP("10.0.0.100") + 10 * n + m], OFFERED, 30) for m in range(3)]
                found = self.store.lookup(ONE, "lab")
            leases = yield defer.gatherResults(offers)
            self.assertEqual([lease.address for lease in leases],
                             [IP("10.0.0.100") + 10 * n + m for m in range(3)])
            self.assertEqual((yield found).address, A)
        self.assertEqual(trips, [])
        from ownsocket.dhcp.pgreactor import ReactorTransaction
        self.assertEqual([r for r in reactor.getReaders() if isinstance(r, ReactorTransaction)], [])

    @defer.inlineCallbacks
    def test_statement_error_is_run_again_on_a_thread_and_reported(self):
        from ownsocket.dhcp.leases import LeaseStoreError
        yield self.store.claim(ONE, "lab", [A], BOUND, 600)
        trips = self.count_thread_trips()
        with self.store.batch():
            bad = self.store._submit("SELECT 1 / 0", (), lambda cursor: cursor.fetchone())
            claim = self.store.claim(TWO, "lab", [B], BOUND, 600)
        failure = yield self.assertFailure(bad, LeaseStoreError)
        self.assertIn("division by zero", str(failure))
        yield self.assertFailure(claim, LeaseStoreError)  # one transaction: undone together
        self.assertEqual(trips, [2])
        self.assertIsNone((yield self.store.lookup(TWO, "lab")))
        self.assertEqual((yield self.store.claim(TWO, "lab", [B], BOUND, 600)).address, B)
        self.flushLoggedErrors()

    @defer.inlineCallbacks
    def test_connection_killed_in_flight_is_an_outage_then_service_resumes(self):
        from twisted.internet import task
        yield self.store.claim(ONE, "lab", [A], BOUND, 600)
        slow = self.store._submit("SELECT pg_sleep(5)", (), lambda cursor: cursor.fetchone())
        yield task.deferLater(reactor, 0.3, lambda: None)
        killed = self.cluster.sql("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                                  f" WHERE datname = '{self.dbname}' AND application_name = 'ownsocket'")
        self.assertGreaterEqual(killed[0][0], 1)
        yield self.assertFailure(slow, LeaseStoreUnavailable)
        self.assertTrue(self.store._down)
        self.store._retry_at = 0  # skip the backoff
        self.assertEqual((yield self.store.lookup(ONE, "lab")).address, A)
        self.assertEqual((yield self.store.claim(TWO, "lab", [B], BOUND, 600)).address, B)
        self.assertFalse(self.store._down)
        self.flushLoggedErrors()


class SeveralServersTests(PostgresTestCase):
    @defer.inlineCallbacks
    def test_schema_has_a_version_and_constraints(self):
        yield self.store.all_leases()
        rows = self.cluster.sql("SELECT version FROM ownsocket_schema", dbname=self.dbname)
        self.assertEqual(sorted(rows), [(1,), (2,), (3,)])
        # version 3: room on each page for in-place (HOT) updates, and no
        # index on a column a binding changes
        self.assertEqual(self.cluster.sql("SELECT reloptions FROM pg_class WHERE relname = 'ownsocket_leases'",
                                          dbname=self.dbname), [(["fillfactor=80"],)])
        self.assertEqual(self.cluster.sql("SELECT count(*) FROM pg_indexes WHERE tablename = 'ownsocket_leases'",
                                          dbname=self.dbname), [(2,)])
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
    def test_older_schema_is_upgraded_and_keeps_its_leases(self):
        """A database an older ownsocket made (schema version 2, a binding
        in it) is upgraded in place by the first server that opens it."""
        from ownsocket.dhcp.pgstore import _MIGRATIONS
        import psycopg
        self.dbname, self.dsn = "old_schema", self.cluster.create_database("old_schema", owner="role_old")
        with psycopg.connect(self.dsn, autocommit=True) as connection:
            connection.execute("CREATE TABLE ownsocket_schema (version integer NOT NULL)")
            for step in (1, 2):
                connection.execute(_MIGRATIONS[step])
                connection.execute("INSERT INTO ownsocket_schema VALUES (%s)", (step,))
            connection.execute("INSERT INTO ownsocket_leases (address, mac, subnet, state, expires)"
                               " VALUES ('10.0.0.10', %s, 'lab', 'bound', now() + interval '1 hour')", (ONE,))
        store = self.open()
        self.assertEqual([lease.mac for lease in (yield store.all_leases())], [ONE])
        rows = self.cluster.sql("SELECT version FROM ownsocket_schema", dbname=self.dbname)
        self.assertEqual(sorted(rows), [(1,), (2,), (3,)])
        renewed = yield store.claim(ONE, "lab", [IP("10.0.0.10")], BOUND, 600)
        self.assertEqual((renewed.mac, renewed.address), (ONE, IP("10.0.0.10")))

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
    def test_changes_made_by_another_server_are_seen_soon(self):
        """changed_since() brings what other servers claimed, renewed or
        declined after the mark (on the database's clock), not older rows."""
        other = self.open(server_name="b")
        yield other.claim(TWO, "lab", [B], BOUND, 600)
        nothing, mark = yield self.store.changed_since()
        self.assertEqual(nothing, [])
        self.cluster.sql("UPDATE ownsocket_leases SET changed = now() - interval '1 hour'", dbname=self.dbname)
        yield other.claim(ONE, "lab", [A], OFFERED, 30)
        leases, later = yield self.store.changed_since(mark)
        self.assertEqual([(lease.mac, lease.address, lease.state) for lease in leases], [(ONE, A, OFFERED)])
        self.assertGreaterEqual(later, mark)
        yield other.decline(ONE, A, 60)
        leases, _ = yield self.store.changed_since(later)
        self.assertEqual([(lease.mac, lease.address, lease.state) for lease in leases], [(None, A, "declined")])

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

    @defer.inlineCallbacks
    def test_behind_refuses_offers_not_bindings(self):
        """Every connection busy: an offer that waited too long is dropped
        unsent; with the window of offers out full a new one is refused at
        once; a binding always waits for its turn."""
        from twisted.internet import task
        from ownsocket.dhcp import pgstore
        from ownsocket.dhcp.leases import LeaseStoreBusy
        store = self.store
        yield store.all_leases()
        store._in_flight = store._connections  # as if every connection were busy
        late = store.claim(ONE, "lab", [A], OFFERED, 30)
        yield task.deferLater(reactor, 0, lambda: None)  # flushed: it waits for a connection
        self.assertEqual((len(store._waiting), store._offers_out), (1, 1))
        self.patch(pgstore, "OFFERS_OUT_MAX", 1)  # the window is full
        self.assertTrue(store.behind())
        yield self.assertFailure(store.claim(TWO, "lab", [B], OFFERED, 30), LeaseStoreBusy)
        bound = store.claim(TWO, "lab", [B], BOUND, 600)
        yield task.deferLater(reactor, 0, lambda: None)
        self.patch(pgstore, "OFFER_WAIT", -1.0)  # the offer has waited too long now
        store._in_flight = 0
        store._dispatch()
        yield self.assertFailure(late, LeaseStoreBusy)
        self.assertEqual((yield bound).address, B)
        self.assertEqual(store._offers_out, 0)
        self.assertFalse(store.behind())
        self.assertIsNone((yield store.lookup(ONE, "lab")))  # the late offer never reached the database

    @defer.inlineCallbacks
    def test_window_of_offers_grows_with_what_was_answered(self):
        """The window of offers out is OFFERS_OUT_MAX, or OFFER_WINDOW
        (0.15 s) worth of the offers answered in the last second: a server
        whose store keeps up is not capped by a fixed count."""
        from ownsocket.dhcp import pgstore
        store = self.store
        self.patch(pgstore, "OFFERS_OUT_MAX", 4)
        yield store.claim(ONE, "lab", [A], OFFERED, 30)
        self.assertEqual(len(store._answered), 1)  # an answered offer counts
        store._offers_out = 10
        self.assertTrue(store.behind())
        now = reactor.seconds()
        store._answered.extend([now] * 99)  # 100 answered in the last second
        self.assertEqual(store.offer_window(), 15)
        self.assertFalse(store.behind())
        store._offers_out = 15
        self.assertTrue(store.behind())
        store._answered.clear()
        store._answered.extend([now - 2] * 100)  # long ago: the floor again
        self.assertEqual(store.offer_window(), 4)
        store._offers_out = 0

    @defer.inlineCallbacks
    def test_slow_answers_refuse_offers_for_a_while(self):
        """The last transaction took too long from send to answer (the
        database or this server is behind): offers are refused, bindings
        are not; once that is past, offers are taken again."""
        from ownsocket.dhcp import pgstore
        from ownsocket.dhcp.leases import LeaseStoreBusy
        store = self.store
        store.offer_lag = pgstore.OFFER_LAG
        yield store.all_leases()
        store._lag, store._landed_at = pgstore.OFFER_LAG * 2, reactor.seconds()
        yield self.assertFailure(store.claim(ONE, "lab", [A], OFFERED, 30), LeaseStoreBusy)
        self.assertEqual((yield store.claim(TWO, "lab", [B], BOUND, 600)).address, B)
        store._lag, store._landed_at = pgstore.OFFER_LAG * 2, reactor.seconds() - 10
        self.assertEqual((yield store.claim(ONE, "lab", [A], OFFERED, 30)).address, A)

    @defer.inlineCallbacks
    def test_one_outage_one_line_however_many_connections(self):
        """Four pooled connections die with the database: one line says it
        went, one says it is back, and no dead pooled connection fails a
        transaction after that."""
        import psycopg
        from twisted.logger import formatEvent, globalLogPublisher
        lines = []
        observer = lambda event: lines.append(formatEvent(event))
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        self.store = self.open(pool_size=4)
        yield self.store.all_leases()  # the schema exists
        # Fill the pool: four transactions held at once by a lock this test
        # holds, so each needs a connection of its own.
        key = 4242
        with psycopg.connect(self.cluster.dsn(self.dbname), autocommit=True) as holder:
            holder.execute("SELECT pg_advisory_lock(%s)", (key,))
            held = []
            for _ in range(4):
                with self.store.batch():
                    held.append(self.store._submit("SELECT pg_advisory_xact_lock_shared(%s)", (key,),
                                                   lambda cursor: None))
            waiting = lambda: holder.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted").fetchone()[0]
            yield wait_until(lambda: waiting() == 4)
            holder.execute("SELECT pg_advisory_unlock(%s)", (key,))
        yield defer.gatherResults(held)
        self.assertEqual(len(self.store._idle), 4)
        self.cluster.stop()
        try:
            # one transaction notices; then others, while it is down
            yield self.assertFailure(self.store.lookup(ONE, "lab"), LeaseStoreUnavailable)
            for _ in range(3):
                with self.store.batch():
                    d = self.store.lookup(ONE, "lab")
                yield self.assertFailure(d, LeaseStoreUnavailable)
        finally:
            self.cluster.start()
        self.store._retry_at = 0  # skip the backoff's wait
        answers = []
        for _ in range(4):  # at once, on as many connections as the pool gives
            with self.store.batch():
                answers.append(self.store.lookup(ONE, "lab"))
        self.assertEqual((yield defer.gatherResults(answers)), [None] * 4)
        self.assertEqual(len([line for line in lines if "unreachable" in line]), 1, lines)
        self.assertEqual(len([line for line in lines if "reachable again" in line]), 1, lines)
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
        """No binding without a commit; one log line when it goes, one when
        it is back; no restart."""
        from twisted.logger import formatEvent, globalLogPublisher
        from ownsocket.dhcp import wire
        from ownsocket.events import EventList
        from tests import packets
        lines = []
        observer = lambda event: lines.append(formatEvent(event))
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        seen = EventList()
        self.servers[0].events.subscribe(seen)
        # Both servers' start-up reads must be over before the database
        # goes: one still in flight would see the outage on its own store
        # (each store says so once).  Bounded by the test's timeout.
        yield defer.gatherResults([server.loaded for server in self.servers])
        [offer] = yield self.ask(0, packets.ovmf_pxe_discover(mac=ONE))
        self.cluster.stop()
        try:
            # each REQUEST waits for its own failure: the first one is
            # where the store notices the outage, the others come after
            for _ in range(3):
                failed = yield self.assertFailure(
                    defer.maybeDeferred(self.servers[0].handle, wire.parse(
                        self.request(ONE, offer["yiaddr"], self.ids[0])), self.arrivals[0]),
                    LeaseStoreUnavailable)
                self.assertIn("unreachable", str(failed))
        finally:
            self.cluster.start()
        down = [line for line in lines if "unreachable" in line]
        self.assertEqual(len(down), 1, down)
        self.assertNotIn("password", down[0])
        self.servers[0].store._retry_at = 0  # the backoff's wait is not what this test is about
        [ack] = yield self.ask(0, self.request(ONE, offer["yiaddr"], self.ids[0]))
        self.assertEqual(ack["type"], 5)
        self.assertEqual(len([line for line in lines if "reachable again" in line]), 1)
        self.assertEqual([e.kind for e in seen.events if e.kind in ("committed",)], ["committed"])
        self.flushLoggedErrors()


class OutageBookkeepingTests(unittest.TestCase):
    """Transactions that were in flight when the database went, or came
    back, land after the change: they must not log it a second time.
    (No database needed: the store's bookkeeping is driven directly.)"""

    def setUp(self):
        reason = pgcluster.available()
        if reason and "psycopg" in reason:
            raise unittest.SkipTest(reason)
        from twisted.internet import task
        from twisted.logger import formatEvent, globalLogPublisher
        from ownsocket.dhcp.pgstore import PostgresLeaseStore
        self.clock = task.Clock()
        self.store = PostgresLeaseStore("host=/nonexistent dbname=x", self.clock)
        self.addCleanup(self.store._threads.stop)
        self.lines = []
        observer = lambda event: self.lines.append(formatEvent(event))
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)

    def send(self):
        """As _flush does: number the transaction."""
        self.store._sent += 1
        return self.store._sent

    def lost(self, number):
        from twisted.python.failure import Failure
        d = defer.Deferred()
        d.addErrback(lambda _: None)
        self.store._failed(Failure(LeaseStoreUnavailable("gone")), [(None, d)], number)

    def answered(self, number):
        self.store._done([None], [(None, defer.Deferred())], number)

    def count(self, word):
        return len([line for line in self.lines if word in line])

    def test_in_flight_across_the_outage(self):
        before = [self.send() for _ in range(3)]
        self.lost(before[0])            # the outage is noticed
        self.answered(before[1])         # finished just before it: not "back"
        self.lost(before[2])            # same outage
        self.assertEqual((self.count("unreachable"), self.count("reachable again")), (1, 0))
        self.assertTrue(self.store._down)
        self.assertEqual(self.store._backoff, 1.0)  # in-flight failures are not retries
        retry = self.send()
        self.lost(retry)                # a retry failed: back off further
        self.assertEqual(self.store._backoff, 2.0)
        probes = [self.send() for _ in range(2)]
        self.answered(probes[0])         # back
        self.lost(probes[1])            # sent while it was down: same outage
        self.assertEqual((self.count("unreachable"), self.count("reachable again")), (1, 1))
        self.assertFalse(self.store._down)
        self.lost(self.send())          # sent after it came back: a new outage
        self.assertEqual(self.count("unreachable"), 2)
        self.flushLoggedErrors()
