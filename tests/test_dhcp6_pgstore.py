"""
DHCPv6 leases in the DHCPv4 store's place: the same contract on the
memory, SQLite and PostgreSQL stores, and on PostgreSQL the several-servers
rules (one address one client, compare-and-set claims, the database's
clock, an outage that answers nothing new and heals by itself).

PostgreSQL is a throw-away cluster (tests/pgcluster.py, shared with
tests/test_postgres_store.py); without it those tests skip with the reason.
"""

import ipaddress
import itertools

from twisted.internet import defer, reactor
from twisted.trial import unittest

from ownsocket import config as configuration
from ownsocket.dhcp.leases import LeaseStoreUnavailable
from ownsocket.dhcp6 import wire
from ownsocket.dhcp6.leases import BOUND, DECLINED, OFFERED, MemoryLeaseStore6, SqliteLeaseStore6
from tests.fixtures_loader import load_hex6

IPv6 = ipaddress.IPv6Address
NOW = 1000.0
ZERO_DUID = b"\x00\x04" + bytes(16)  # iPXE's DUID on every VM without an SMBIOS UUID
#: Two VMs with the same DUID and IAID: only the MAC tells them apart.
ONE = (ZERO_DUID, 5, "52:54:00:99:00:10")
TWO = (ZERO_DUID, 5, "52:54:00:99:00:11")
THREE = (wire.duid_ll("52:54:00:99:00:12"), 1, "52:54:00:99:00:12")
POOL = [IPv6("fd99::100") + i for i in range(8)]
OWN = ((POOL[0], POOL[-1]),)

_names = itertools.count()


class StoreContract6:
    """What the DHCPv6 policy relies on, whatever the store.  Answers may
    be plain values or Deferreds (the tests yield both)."""

    def claim(self, key, candidates, state=BOUND, seconds=600, own=None):
        return defer.maybeDeferred(self.store.claim, key, "lab", candidates, state, seconds, NOW, own=own)

    def got(self, claimed):
        return None if claimed is None else claimed[0].address

    @defer.inlineCallbacks
    def test_first_free_candidate_and_the_next_client_gets_another(self):
        first = yield self.claim(ONE, POOL)
        second = yield self.claim(TWO, POOL)
        self.assertEqual((self.got(first), self.got(second)), (POOL[0], POOL[1]))
        lease, own = first
        self.assertEqual((lease.key, lease.state, own), (ONE, BOUND, False))
        held = yield defer.maybeDeferred(self.store.holder, POOL[1])
        self.assertEqual(held.key, TWO)

    @defer.inlineCallbacks
    def test_own_binding_first_when_within_the_pool(self):
        yield self.claim(ONE, [POOL[3]])
        again = yield self.claim(ONE, POOL, own=OWN)
        self.assertEqual((self.got(again), again[1]), (POOL[3], True))
        elsewhere = yield self.claim(ONE, POOL, own=((POOL[0], POOL[2]),))  # no longer in the pool
        self.assertEqual((self.got(elsewhere), elsewhere[1]), (POOL[0], False))

    @defer.inlineCallbacks
    def test_one_row_per_ia(self):
        yield self.claim(ONE, [POOL[0]])
        yield self.claim(ONE, [POOL[1]])  # a Request for another address
        leases = yield defer.maybeDeferred(self.store.all_leases)
        self.assertEqual([(lease.key, lease.address) for lease in leases], [(ONE, POOL[1])])
        current = yield defer.maybeDeferred(self.store.lookup, ONE)
        self.assertEqual(current.address, POOL[1])

    @defer.inlineCallbacks
    def test_the_clients_own_address_is_free_for_it_not_for_others(self):
        yield self.claim(ONE, [POOL[0]], OFFERED, 60)
        self.assertIsNone((yield self.claim(TWO, [POOL[0]])))
        renewed = yield self.claim(ONE, [POOL[0]])  # a Renew: no pool ranges
        self.assertEqual(self.got(renewed), POOL[0])

    @defer.inlineCallbacks
    def test_lapsed_is_free(self):
        yield self.claim(ONE, [POOL[0]], OFFERED, -1)
        taken = yield self.claim(TWO, [POOL[0]])
        self.assertEqual(taken[0].key, TWO)
        self.assertIsNone((yield defer.maybeDeferred(self.store.lookup, ONE)))

    @defer.inlineCallbacks
    def test_nothing_free(self):
        yield self.claim(ONE, POOL[:2])
        yield self.claim(TWO, POOL[:2])
        self.assertIsNone((yield self.claim(THREE, POOL[:2])))

    @defer.inlineCallbacks
    def test_candidates_are_read_as_far_as_needed_past_a_crowded_start(self):
        """Forty holders at the client's spot: the claim goes on past them
        (the PostgreSQL store sends candidates in chunks)."""
        many = [IPv6("fd99::1000") + i for i in range(50)]
        for n, address in enumerate(many[:40]):
            yield self.claim((ZERO_DUID, n, f"52:54:00:00:01:{n:02x}"), [address])
        read = []

        def candidates():
            for address in many:
                read.append(address)
                yield address

        claimed = yield self.claim(ONE, candidates())
        self.assertEqual(self.got(claimed), many[40])
        self.assertLess(len(read), 50 + 1)

    @defer.inlineCallbacks
    def test_forget_drops_an_offer_not_a_binding(self):
        yield self.claim(ONE, [POOL[0]], OFFERED, 60)
        yield self.claim(TWO, [POOL[1]], BOUND, 600)
        self.assertTrue((yield defer.maybeDeferred(self.store.forget, ONE)))
        self.assertFalse((yield defer.maybeDeferred(self.store.forget, TWO)))
        self.assertIsNone((yield defer.maybeDeferred(self.store.holder, POOL[0])))
        self.assertEqual((yield defer.maybeDeferred(self.store.holder, POOL[1])).key, TWO)

    @defer.inlineCallbacks
    def test_release_only_by_its_holder(self):
        yield self.claim(ONE, [POOL[0]])
        self.assertFalse((yield defer.maybeDeferred(self.store.release, TWO, POOL[0])))
        self.assertTrue((yield defer.maybeDeferred(self.store.release, ONE, POOL[0])))
        self.assertIsNone((yield defer.maybeDeferred(self.store.holder, POOL[0])))
        self.assertFalse((yield defer.maybeDeferred(self.store.release, ONE, POOL[0])))

    @defer.inlineCallbacks
    def test_decline_quarantines_for_everyone(self):
        yield self.claim(ONE, [POOL[0]])
        self.assertFalse((yield defer.maybeDeferred(self.store.decline, TWO, POOL[0], 600, NOW)))
        self.assertTrue((yield defer.maybeDeferred(self.store.decline, ONE, POOL[0], 600, NOW)))
        held = yield defer.maybeDeferred(self.store.holder, POOL[0])
        self.assertEqual((held.state, held.duid), (DECLINED, b"declined"))
        self.assertIsNone((yield self.claim(ONE, [POOL[0]])))
        self.assertIsNone((yield self.claim(TWO, [POOL[0]])))
        self.assertEqual(self.got((yield self.claim(ONE, POOL, own=OWN))), POOL[1])


class MemoryContract(StoreContract6, unittest.TestCase):
    def setUp(self):
        self.store = MemoryLeaseStore6()


class SqliteContract(StoreContract6, unittest.TestCase):
    def setUp(self):
        self.store = SqliteLeaseStore6(self.mktemp() + ".sqlite", legacy="")
        self.addCleanup(self.store.close)


# -- PostgreSQL ----------------------------------------------------------------

def cluster():
    from tests.test_postgres_store import cluster as shared
    return shared()


class PostgresTestCase(unittest.TestCase):
    timeout = 120

    def setUp(self):
        self.cluster = cluster()
        self.dbname = f"leases6_{next(_names)}"
        self.dsn = self.cluster.create_database(self.dbname, owner=f"role6_{self.dbname}")
        self.store = self.open()

    def open(self, **kwargs):
        from ownsocket.dhcp6.pgstore import PostgresLeaseStore6
        store = PostgresLeaseStore6(self.dsn, reactor, **kwargs)
        self.addCleanup(store.close)
        return store

    def sql(self, statement):
        return self.cluster.sql(statement, dbname=self.dbname)


class PostgresContract(StoreContract6, PostgresTestCase):
    """The same suite on PostgreSQL."""


class SeveralServers(PostgresTestCase):

    @defer.inlineCallbacks
    def test_schema_is_versioned_apart_and_constrained(self):
        import psycopg
        from psycopg import errors
        yield self.store.all_leases()
        self.assertEqual(self.sql("SELECT version FROM ownsocket_schema6"), [(1,)])
        # a second server starting on it migrates nothing again
        yield self.open(server_name="b").all_leases()
        self.assertEqual(self.sql("SELECT version FROM ownsocket_schema6"), [(1,)])
        insert = ("INSERT INTO ownsocket_leases6 (address, duid, iaid, mac, subnet, state, expires)"
                  " VALUES (%s, '\\x00', 1, 'm', 'lab', 'bound', now())")
        with psycopg.connect(self.cluster.dsn(self.dbname), autocommit=True) as connection:
            connection.execute(insert, ("fd99::1",))
            with self.assertRaises(errors.UniqueViolation):  # one address, one row
                connection.execute(insert.replace("1, 'm'", "2, 'n'"), ("fd99::1",))
            with self.assertRaises(errors.UniqueViolation):  # one IA, one row
                connection.execute(insert, ("fd99::2",))

    @defer.inlineCallbacks
    def test_a_newer_schema_is_refused_in_one_line(self):
        from ownsocket.dhcp.leases import LeaseStoreError
        yield self.store.all_leases()
        self.sql("INSERT INTO ownsocket_schema6 VALUES (99)")
        newer = self.open()
        failure = yield self.assertFailure(newer.all_leases(), LeaseStoreError)
        self.assertIn("schema version 99", str(failure))
        self.assertNotIn("\n", str(failure))
        self.flushLoggedErrors()

    @defer.inlineCallbacks
    def test_two_servers_race_for_the_same_addresses(self):
        """Three servers, thirty clients asking each at once, a pool of
        twenty: every address ends with one client, every IA with one
        address, and the losers got another candidate or nothing."""
        stores = [self.store, self.open(server_name="b"), self.open(server_name="c")]
        pool = [IPv6("fd99::100") + i for i in range(20)]
        claims = []
        for i in range(30):
            key = (ZERO_DUID, 7, f"52:54:00:00:09:{i:02x}")  # same DUID and IAID for all
            for n, store in enumerate(stores):
                order = pool[n * 7:] + pool[:n * 7]
                claims.append(store.claim(key, "lab", order, BOUND, 600, own=((pool[0], pool[-1]),)))
        results = yield defer.gatherResults(claims)
        rows = self.sql("SELECT address, count(*) FROM ownsocket_leases6 GROUP BY address HAVING count(*) > 1")
        self.assertEqual(rows, [])
        leases = yield self.store.all_leases()
        self.assertEqual(len(leases), 20)
        self.assertEqual(len({lease.key for lease in leases}), 20)
        self.assertEqual(len({lease.address for lease in leases}), 20)
        # what each server was told is what the database holds
        told = {}
        for claimed in results:
            if claimed is not None:
                lease, _ = claimed
                self.assertEqual(told.setdefault(lease.key, lease.address), lease.address)
        self.assertEqual(told, {lease.key: lease.address for lease in leases})
        self.assertIn(None, results)

    @defer.inlineCallbacks
    def test_offer_is_seen_by_the_other_server_and_never_downgrades_a_binding(self):
        other = self.open(server_name="b")
        yield self.store.claim(ONE, "lab", [POOL[0]], OFFERED, 60)
        self.assertIsNone((yield other.claim(TWO, "lab", [POOL[0]], OFFERED, 60)))
        yield other.claim(ONE, "lab", [POOL[0]], BOUND, 600)  # bound on B
        again, own = yield self.store.claim(ONE, "lab", POOL, OFFERED, 60, own=OWN)  # a new Solicit on A
        self.assertEqual((again.address, again.state, own), (POOL[0], BOUND, True))
        self.assertEqual(self.sql("SELECT state, server FROM ownsocket_leases6"), [("bound", "b")])

    @defer.inlineCallbacks
    def test_a_binding_made_elsewhere_between_round_trips_is_kept(self):
        """The first FIRST_CHUNK candidates are all taken; before the next
        round trip another server binds this client: the claim keeps that
        binding instead of moving the client to a candidate."""
        from ownsocket.dhcp6.pgstore import FIRST_CHUNK
        taken = POOL[:FIRST_CHUNK]
        for n, address in enumerate(taken):
            yield self.store.claim((ZERO_DUID, 100 + n, "52:54:00:00:02:01"), "lab", [address], BOUND, 600)
        other = self.open(server_name="b")

        def candidates():
            yield from taken
            # (drawn only once the first round trip came back empty)
            self.sql("INSERT INTO ownsocket_leases6 (address, duid, iaid, mac, subnet, state, expires, server)"
                     f" VALUES ('{POOL[-1]}', '\\x{ONE[0].hex()}', {ONE[1]}, '{ONE[2]}', 'lab', 'bound',"
                     " now() + interval '10 minutes', 'c')")
            yield from POOL[FIRST_CHUNK:]

        lease, own = yield other.claim(ONE, "lab", candidates(), BOUND, 600, own=OWN)
        self.assertEqual((lease.address, own), (POOL[-1], True))
        self.assertEqual(self.sql("SELECT count(*) FROM ownsocket_leases6 WHERE mac = '52:54:00:99:00:10'"), [(1,)])

    @defer.inlineCallbacks
    def test_expiry_is_on_the_database_clock(self):
        claimed, _ = yield self.store.claim(ONE, "lab", [POOL[0]], BOUND, 600, now=0.0)  # server clock ignored
        [(seconds,)] = self.sql("SELECT extract(epoch FROM expires - now()) FROM ownsocket_leases6")
        self.assertTrue(590 < seconds <= 600, seconds)
        [(db_now,)] = self.sql("SELECT extract(epoch FROM now())::float8")
        self.assertLess(abs(claimed.expires - (db_now + 600)), 60)  # not the server's 0 + 600
        self.sql("UPDATE ownsocket_leases6 SET expires = now() - interval '1 second'")
        self.assertIsNone((yield self.store.holder(POOL[0])))
        self.assertEqual((yield self.store.claim(TWO, "lab", [POOL[0]], BOUND, 600))[0].key, TWO)

    @defer.inlineCallbacks
    def test_reclaim_one_server_at_a_time(self):
        import psycopg
        from ownsocket.dhcp6.pgstore import RECLAIM_LOCK
        yield self.store.claim(ONE, "lab", [POOL[0]], OFFERED, -1)
        with psycopg.connect(self.cluster.dsn(self.dbname)) as holder:
            holder.execute("SELECT pg_advisory_lock(%s)", (RECLAIM_LOCK,))
            self.assertEqual((yield self.store.reclaim()), 0)  # another server is at it
            holder.execute("SELECT pg_advisory_unlock(%s)", (RECLAIM_LOCK,))
        self.assertEqual((yield self.store.reclaim()), 1)

    @defer.inlineCallbacks
    def test_database_down_fails_fast_then_recovers(self):
        from twisted.logger import formatEvent, globalLogPublisher
        lines = []
        observer = lambda event: lines.append(formatEvent(event))
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        yield self.store.claim(ONE, "lab", [POOL[0]], BOUND, 600)
        starting = self.open(server_name="b")  # a server that starts during the outage
        self.cluster.stop()
        try:
            yield self.assertFailure(self.store.claim(TWO, "lab", [POOL[1]], BOUND, 600), LeaseStoreUnavailable)
            yield self.assertFailure(self.store.release(ONE, POOL[0]), LeaseStoreUnavailable)
            yield self.assertFailure(starting.claim(THREE, "lab", [POOL[2]], BOUND, 600), LeaseStoreUnavailable)
        finally:
            self.cluster.start()
        self.store.db._retry_at = starting.db._retry_at = 0  # skip the backoff's wait (the DHCPv4 store's)
        self.assertEqual((yield starting.claim(THREE, "lab", [POOL[2]], BOUND, 600))[0].address, POOL[2])
        self.assertEqual((yield self.store.lookup(ONE)).address, POOL[0])  # nothing committed was lost
        self.assertEqual((yield self.store.claim(TWO, "lab", [POOL[1]], BOUND, 600))[0].address, POOL[1])
        down = [line for line in lines if "unreachable" in line]
        self.assertEqual(len(down), 2, lines)  # one per server
        self.assertIn("(DHCPv6)", down[0])
        self.assertEqual(len([line for line in lines if "reachable again" in line]), 2, lines)
        self.flushLoggedErrors()


CONFIG = """
[dhcp]
leases = {dsn}
offer_hold = 60

[subnet6:lab]
network = fd99::/64
pool = fd99::100-fd99::1ff
interface = br0
lease_time = 600

[boot]
default = undionly.kpxe
arch.7 = snponly.efi
"""


class TwoServersOneSegment(PostgresTestCase):
    """The DHCPv6 policy on PostgreSQL, two servers on one link: the
    replies wait for the commit (Deferreds), and the database decides."""

    def setUp(self):
        super().setUp()
        from ownsocket.dhcp6.server import Dhcp6Server, Link
        from ownsocket.events import EventBus, EventList
        from ownsocket.tap import build_selector
        config = configuration.load(text=CONFIG.format(dsn=self.dsn), known_interfaces={"br0"})
        self.links, self.servers = [], []
        for n in range(2):
            store = self.store if n == 0 else self.open(server_name="b")
            duid = wire.duid_ll(f"02:00:00:00:00:0{n + 1}")
            self.links.append(Link("br0", (IPv6(f"fd99::{n + 1}"), IPv6(f"fe80::{n + 1}")), duid))
            self.servers.append(Dhcp6Server(config, store, build_selector(config, reactor), reactor,
                                            events=EventBus(reactor)))
        self.seen = EventList()
        self.servers[0].events.subscribe(self.seen)

    @defer.inlineCallbacks
    def ask(self, n, data, source=("fe80::5054:ff:fe99:10", 546)):
        result = self.servers[n].handle(wire.parse(data), self.links[n], source)
        replies = yield result
        return [wire.parse_server_message(out.data) for out in replies]

    def aimed(self, data, n, address):
        """A captured Request/Renew aimed at server C{n} and C{address}."""
        from tests.test_dhcp6_server import retarget
        return retarget(data, server_duid=self.links[n].server_duid, address=address)

    @defer.inlineCallbacks
    def test_client_picks_one_the_other_frees_its_offer(self):
        solicit = load_hex6("ovmf_pxe6_solicit")
        self.assertIsInstance(self.servers[0].handle(wire.parse(solicit), self.links[0],
                                                     ("fe80::5054:ff:fe99:10", 546)), defer.Deferred)
        [from_a] = yield self.ask(0, solicit)
        [from_b] = yield self.ask(1, solicit)
        offered = from_a.ia_na()[0].addresses[0].address
        self.assertEqual(from_b.ia_na()[0].addresses[0].address, offered)  # its own live offer, seen by B
        request = self.aimed(load_hex6("ovmf_pxe6_request"), 0, offered)
        self.assertEqual((yield self.ask(1, request)), [])  # names A: B stays quiet, drops the offer
        [reply] = yield self.ask(0, request)
        self.assertEqual((reply.message_type, reply.ia_na()[0].addresses[0].address), (wire.REPLY, offered))
        self.assertEqual(reply.option(wire.OPT_BOOTFILE_URL), b"tftp://[fd99::1]/snponly.efi")
        leases = yield self.store.all_leases()
        self.assertEqual([(str(lease.address), lease.mac, lease.state) for lease in leases],
                         [(str(offered), "52:54:00:99:00:10", BOUND)])

    @defer.inlineCallbacks
    def test_two_vms_with_one_zero_duid_never_share_an_address(self):
        solicit = load_hex6("ipxe6_solicit")
        [a] = yield self.ask(0, solicit, ("fe80::5054:ff:fe99:10", 546))
        [b] = yield self.ask(1, solicit, ("fe80::5054:ff:fe99:11", 546))
        self.assertNotEqual(a.ia_na()[0].addresses[0].address, b.ia_na()[0].addresses[0].address)

    @defer.inlineCallbacks
    def test_binding_made_on_a_renews_on_b_and_not_for_another_client(self):
        [advertise] = yield self.ask(0, load_hex6("ovmf_pxe6_solicit"))
        offered = advertise.ia_na()[0].addresses[0].address
        yield self.ask(0, self.aimed(load_hex6("ovmf_pxe6_request"), 0, offered))
        iaid = wire.parse(load_hex6("ovmf_pxe6_solicit")).ia_na[0].iaid
        client = wire.parse(load_hex6("ovmf_pxe6_solicit")).client_id
        rebind = wire.build(wire.REBIND, 0x42, [wire.option(wire.OPT_CLIENTID, client),
                                                wire.ia_na(iaid, 0, 0, [wire.iaaddr(offered, 0, 0)])])
        [renewed] = yield self.ask(1, rebind)
        self.assertEqual(renewed.ia_na()[0].addresses[0], wire.IAAddress(offered, 600, 600))
        [refused] = yield self.ask(1, rebind, ("fe80::5054:ff:fe99:11", 546))  # another VM, same DUID
        self.assertEqual(refused.ia_na()[0].addresses[0], wire.IAAddress(offered, 0, 0))
        self.assertEqual(self.sql("SELECT server FROM ownsocket_leases6"), [("b",)])

    @defer.inlineCallbacks
    def test_database_down_means_no_answer_then_service_resumes(self):
        solicit = load_hex6("ipxe6_solicit")
        [advertise] = yield self.ask(0, solicit)
        self.cluster.stop()
        try:
            for _ in range(2):
                self.assertEqual((yield self.ask(0, solicit)), [])  # no offer without a commit
            self.assertEqual([event.fields.get("reason") for event in self.seen.events[-2:]],
                             ["store-error", "store-error"])
            # what needs no lease is still answered
            info = wire.build(wire.INFORMATION_REQUEST, 9, [wire.option(wire.OPT_ORO, b"\x00\x3b"),
                                                            wire.option(wire.OPT_CLIENT_ARCH, b"\x00\x07")])
            [reply] = yield self.ask(0, info)
            self.assertEqual(reply.message_type, wire.REPLY)
        finally:
            self.cluster.start()
        self.store.db._retry_at = 0  # the backoff's wait is not what this test is about
        [again] = yield self.ask(0, solicit)
        self.assertEqual(again.ia_na()[0].addresses, advertise.ia_na()[0].addresses)
        self.flushLoggedErrors()


class ServiceOnPostgres(PostgresTestCase):
    """The DHCPv6 service opens the store C{[dhcp] leases} names; a Solicit
    through its protocol is answered once the offer has committed; stopping
    the service closes the store's connections."""

    @defer.inlineCallbacks
    def test_solicit_answered_after_commit_and_store_closed_on_stop(self):
        from ownsocket.dhcp6.pgstore import PostgresLeaseStore6
        from ownsocket.dhcp6.service import Dhcp6Service
        from ownsocket.tap import build_selector
        from tests.test_dhcp6_service import FakePort, FakeSocket
        from tests.test_postgres_store import wait_until

        class Reactor:
            """The real reactor (the store's threads answer through it), with
            fake UDP ports."""

            def __getattr__(self, name):
                return getattr(reactor, name)

            def adoptDatagramPort(self, fd, family, protocol):
                self.port = FakePort(protocol)
                return self.port

        fake = Reactor()
        text = CONFIG.format(dsn=self.dsn).replace("lease_time = 600", "lease_time = 600\nrouter_advertisements = false")
        config = configuration.load(text=text, known_interfaces={"br0"})
        service = Dhcp6Service(config, build_selector(config, reactor), fake,
                               addresses=lambda: {"br0": [IPv6("fd99::1"), IPv6("fe80::1")]},
                               open_socket=lambda name: FakeSocket(name, "udp"),
                               mac_of=lambda name: "02:00:00:00:00:01", mtu_of=lambda name: 1500)
        service.privilegedStartService()
        service.startService()
        store = service.store
        self.assertIsInstance(store, PostgresLeaseStore6)
        fake.port.protocol.datagramReceived(load_hex6("ovmf_pxe6_solicit"), ("fe80::5054:ff:fe99:10", 546))
        self.assertEqual(fake.port.written, [])  # not before the commit
        yield wait_until(lambda: fake.port.written)
        (data, to), = fake.port.written
        advertise = wire.parse_server_message(data)
        offered = advertise.ia_na()[0].addresses[0].address
        self.assertEqual(self.sql("SELECT host(address), state FROM ownsocket_leases6"), [(str(offered), "offered")])
        yield service.stopService()
        self.assertIsNone(service.store)
        self.assertEqual(list(store.db._idle), [])  # its connections are closed


class Config(unittest.TestCase):

    def test_subnet6_with_a_postgresql_store_is_accepted(self):
        config = configuration.load(text=CONFIG.format(dsn="postgresql://ownsocket@db.example/leases"),
                                    known_interfaces={"br0"})
        self.assertEqual([subnet.name for subnet in config.subnets6], ["lab"])
        self.assertTrue(config.dhcp.leases.startswith("postgresql://"))

    def test_the_service_opens_the_store_the_dhcpv4_leases_name(self):
        from ownsocket.dhcp6.pgstore import PostgresLeaseStore6, open_store6
        sqlite = open_store6(self.mktemp() + ".sqlite", reactor)
        self.addCleanup(sqlite.close)
        self.assertIsInstance(sqlite, SqliteLeaseStore6)
        try:
            import psycopg  # noqa: F401
        except ImportError:
            raise unittest.SkipTest("psycopg (3) is not installed")
        store = open_store6("postgresql://ownsocket:s3cret@/leases?host=/nonexistent", reactor)
        self.addCleanup(store.close)
        self.assertIsInstance(store, PostgresLeaseStore6)
        self.assertIn("user=ownsocket", store.description)  # what its log lines name
        self.assertNotIn("s3cret", store.description)


# -- a real client, a real server, one PostgreSQL ------------------------------

# (the module, not its class: a TestCase imported here would run twice)
from tests import test_dhcp6_integration as integration  # noqa: E402
from tests.lab.waits import wait_until  # noqa: E402


class RealClientOnPostgres(unittest.TestCase):
    """ownsocket in a namespace with C{[dhcp] leases = postgresql://...}
    (the cluster's Unix socket is reachable from every namespace), ISC
    dhclient -6 in another: the binding it gets is the database's row."""

    skip = integration.RealClients.skip
    timeout = 180
    setUp = integration.RealClients.setUp  # two namespaces, one veth link, DAD waited out
    read_log = integration.RealClients.read_log

    def test_dhclient_binding_is_a_row_in_the_shared_database(self):
        import re
        import os
        import subprocess
        from tests import netns
        from tests.lab import ownsocket_argv, ownsocket_env
        pg = cluster()
        dbname = f"leases6_{next(_names)}"
        dsn = pg.create_database(dbname, owner=f"role6_{dbname}")
        config = os.path.join(self.work, "ownsocket.ini")
        with open(config, "w") as handle:
            handle.write("\n".join([
                "[dhcp]", f"leases = {dsn}", "interfaces = srv0", "",
                "[tftp]", f"root = {self.root}", "", "[boot]", "default = snponly.efi", "",
                "[subnet6:lab]", f"network = {integration.NETWORK6}", "pool = fd77::100-fd77::1ff",
                "interface = srv0", "lease_time = 600", ""]))
        self.log = os.path.join(self.work, "ownsocket.log")
        process = self.server.spawn(ownsocket_argv(config, self.log), env=ownsocket_env(),
                                    stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        self.addCleanup(netns.stop, process)
        self.assertTrue(wait_until(lambda: "DHCPv6 listening" in self.read_log()
                                 and "ownsocket 0" in self.read_log(), 30), self.read_log())
        leases = os.path.join(self.work, "dhclient6.leases")
        dhclient = self.client.spawn(
            ["dhclient", "-6", "-d", "-v", "-1", "-lf", leases, "-sf", "/bin/true",
             "-pf", os.path.join(self.work, "dhclient6.pid"), "cli0"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.assertTrue(wait_until(lambda: os.path.exists(leases) and "iaaddr" in open(leases).read(), 45),
                        self.read_log())
        netns.stop(dhclient)
        address = re.search(r"iaaddr (fd77::[0-9a-f:]+)", open(leases).read()).group(1)
        rows = pg.sql("SELECT host(address), state, mac, extract(epoch FROM expires - now())::int"
                      " FROM ownsocket_leases6", dbname=dbname)
        mac = self.client.run(["cat", "/sys/class/net/cli0/address"]).stdout.strip()
        self.assertEqual([row[:3] for row in rows], [(address, "bound", mac)])
        self.assertTrue(500 < rows[0][3] <= 600, rows)
        self.assertNotIn("Traceback", self.read_log())


class TwoServersOneLinkRealClients(unittest.TestCase):
    """Two ownsocket servers on one bridged link with one PostgreSQL, three
    dhclient -6 clients at once: both servers answer each Solicit, each
    client binds through one of them, and the database holds one distinct
    address per client, the one the client got."""

    skip = integration.RealClients.skip
    timeout = 240
    read_log = integration.RealClients.read_log

    def test_three_clients_two_servers_one_database(self):
        import os
        import re
        import subprocess
        from tests import netns
        from tests.lab import ownsocket_argv, ownsocket_env
        pg = cluster()
        dbname = f"leases6_{next(_names)}"
        dsn = pg.create_database(dbname, owner=f"role6_{dbname}")
        work = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(work, "root"))
        lab = netns.Lab()
        self.addCleanup(lab.close)
        segment = lab.namespace("segment")
        segment.ip("link", "add", "br0", "type", "bridge")
        segment.ip("link", "set", "br0", "up")
        spaces, ports = [], []
        for n, role in enumerate(("srva", "srvb", "cli1", "cli2", "cli3")):
            space = lab.namespace(role)
            interface = "lan0" if role.startswith("srv") else "cli0"
            lab.link(space, interface, segment, f"p{n}")
            space.run(["sysctl", "-qw", f"net.ipv6.conf.{interface}.accept_dad=0"])
            if role.startswith("srv"):
                space.ip("addr", "add", f"fd77::{n + 1}/64", "dev", interface, "nodad")
            segment.ip("link", "set", f"p{n}", "master", "br0")
            spaces.append(space)
        servers, clients = spaces[:2], spaces[2:]
        processes, logs = [], []
        for n, space in enumerate(servers):
            config = os.path.join(work, f"ownsocket{n}.ini")
            with open(config, "w") as handle:
                handle.write("\n".join([
                    "[dhcp]", f"leases = {dsn}", "interfaces = lan0", "",
                    "[tftp]", f"root = {os.path.join(work, 'root')}", "", "[boot]", "default = snponly.efi", "",
                    "[subnet6:lab]", "network = fd77::/64", "pool = fd77::100-fd77::107", "interface = lan0",
                    "lease_time = 600", "router_advertisements = false", ""]))
            logs.append(os.path.join(work, f"ownsocket{n}.log"))
            process = space.spawn(ownsocket_argv(config, logs[-1]), env=ownsocket_env(),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
            self.addCleanup(netns.stop, process)
            processes.append(process)

        def text(path):
            try:
                with open(path) as handle:
                    return handle.read()
            except OSError:
                return ""

        for log in logs:
            self.assertTrue(wait_until(lambda: "DHCPv6 listening" in text(log), 30), text(log))
        for client in clients:  # link-local addresses out of DAD
            self.assertTrue(wait_until(
                lambda: "fe80::" in client.ip("-6", "addr", "show", "dev", "cli0")
                and "tentative" not in client.ip("-6", "addr", "show", "dev", "cli0"), 10))
        leases, dhclients = [], []
        for n, client in enumerate(clients):
            leases.append(os.path.join(work, f"dhclient{n}.leases"))
            dhclients.append(client.spawn(
                ["dhclient", "-6", "-d", "-1", "-lf", leases[-1], "-sf", "/bin/true",
                 "-pf", os.path.join(work, f"dhclient{n}.pid"), "cli0"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for path in leases:
            self.assertTrue(wait_until(lambda: "iaaddr" in text(path), 60),
                            "\n".join(text(log) for log in logs))
        for process in dhclients:
            netns.stop(process)
        got = {}
        for client, path in zip(clients, leases):
            # (the MAC the server learns from the client's EUI-64 link-local address)
            mac = client.run(["cat", "/sys/class/net/cli0/address"]).stdout.strip()
            got[mac] = re.search(r"iaaddr (fd77::[0-9a-f:]+)", text(path)).group(1)
        rows = pg.sql("SELECT mac, host(address) FROM ownsocket_leases6 WHERE state = 'bound'", dbname=dbname)
        self.assertEqual(dict(rows), got)
        self.assertEqual(len(set(got.values())), 3)
        answered = [text(log).count("-> Advertise") for log in logs]
        self.assertTrue(all(answered), answered)  # both servers offered on the shared link
        for log in logs:
            self.assertNotIn("Traceback", text(log))
