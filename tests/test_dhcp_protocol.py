"""The DatagramProtocol on a fake transport: garbage in, nothing breaks."""

import errno
import ipaddress
import random

from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.trial import unittest

from ownsocket import config as configuration
from ownsocket.dhcp.leases import SqliteLeaseStore
from ownsocket.dhcp.protocol import DhcpProtocol
from ownsocket.dhcp.server import Arrival, DhcpServer
from ownsocket.dhcp.service import DhcpService
from ownsocket.events import EventList
from ownsocket.tap import build_selector
from tests import packets
from tests.fakes import FakeDatagramTransport, FakeUDPReactor

CONFIG = """
[subnet:lab]
network = 10.0.0.0/24
pool = 10.0.0.100-10.0.0.199
[boot]
default = undionly.kpxe
"""


class ProtocolTestCase(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        config = configuration.load(text=CONFIG, known_interfaces={"eth0"})
        store = SqliteLeaseStore(":memory:", clock=self.clock)
        self.addCleanup(store.close)
        server = DhcpServer(config, store, build_selector(config, self.clock), self.clock)
        self.protocol = DhcpProtocol(server, Arrival("eth0", ipaddress.IPv4Address("10.0.0.1")), self.clock)
        self.transport = FakeDatagramTransport("0.0.0.0", 67)
        self.protocol.makeConnection(self.transport)
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def test_broadcast_enabled(self):
        self.assertTrue(self.transport.broadcast_allowed)

    def receive(self, data, addr=("0.0.0.0", 68)):
        self.protocol.datagramReceived(data, addr)
        self.clock.advance(0)


class ProtocolTests(ProtocolTestCase):
    def test_discover_answered(self):
        self.receive(packets.ovmf_pxe_discover())
        [(data, addr)] = self.transport.written
        self.assertEqual(addr, ("255.255.255.255", 68))
        self.assertEqual(packets.parse_reply(data)["type"], 2)
        from twisted.logger import formatEvent
        lines = [formatEvent(e) for e in self.events if e.get("kind") == "DISCOVER"]
        self.assertEqual(len(lines), 1)
        self.assertIn("DISCOVER from 52:54:00:99:00:10 via eth0", lines[0])
        self.assertIn("-> OFFER 10.0.0.", lines[0])
        self.assertIn("boot 'undionly.kpxe' by arch", lines[0])

    def test_garbage_dropped_with_rate_limited_log(self):
        rng = random.Random(7)
        for _ in range(500):
            self.receive(rng.randbytes(rng.randint(0, 600)), ("10.0.0.9", 68))
        self.assertEqual(self.transport.written, [])
        drops = [e for e in self.events if e.get("log_format", "").startswith("dropped")]
        self.assertEqual(len(drops), 10)
        self.clock.advance(11)
        self.receive(b"x", ("10.0.0.9", 68))
        summary = [e for e in self.events if "suppressed" in e.get("log_format", "")]
        self.assertEqual(summary[0]["count"], 490)
        # ... and it still serves a real client afterwards.
        self.receive(packets.ovmf_pxe_discover())
        self.assertEqual(len(self.transport.written), 1)

    def test_send_errors_do_not_escape(self):
        self.transport.fail_with = OSError(errno.ENETUNREACH, "Network is unreachable")
        self.receive(packets.ovmf_pxe_discover())
        warnings = [e for e in self.events if "cannot send" in e.get("log_format", "")]
        self.assertEqual(len(warnings), 1)

    def test_flood_of_random_macs(self):
        """Thousands of DISCOVERs from random MACs: every one is answered
        while addresses last, the server never raises, and a real client
        still gets an offer at the end."""
        rng = random.Random(99)
        for i in range(3000):
            mac = ":".join(f"{rng.randrange(256):02x}" for _ in range(6))
            self.receive(packets.ovmf_pxe_discover(mac=mac, xid=i))
        self.assertEqual(len(self.transport.written), 3000)
        self.transport.written.clear()
        self.receive(packets.ipxe_bios_discover(mac="52:54:00:99:99:99"))
        [(data, _)] = self.transport.written
        self.assertEqual(packets.parse_reply(data)["type"], 2)


class BatchTests(ProtocolTestCase):
    """Several datagrams read in one reactor turn are one batch."""

    def discover_then_request(self, client):
        self.receive(packets.ovmf_pxe_discover(mac=client))
        offer = packets.parse_reply(self.transport.written[-1][0])
        return packets.ovmf_pxe_discover(mac=client, message_type=3, extra=[
            (54, ipaddress.IPv4Address("10.0.0.1").packed),
            (50, ipaddress.IPv4Address(offer["yiaddr"]).packed)])

    def test_requests_before_discovers_and_one_commit(self):
        requests = [self.discover_then_request(f"52:54:00:00:02:{i:02x}") for i in range(3)]
        self.transport.written.clear()
        store = self.protocol.server.store
        commits = []
        original = store.batch

        def counting_batch():
            commits.append(1)
            return original()

        store.batch = counting_batch
        self.protocol.datagramReceived(packets.ovmf_pxe_discover(mac="52:54:00:00:03:01"), ("0.0.0.0", 68))
        for request in requests:
            self.protocol.datagramReceived(request, ("0.0.0.0", 68))
        self.assertEqual(self.transport.written, [])  # nothing before the batch runs
        self.clock.advance(0)
        kinds = [packets.parse_reply(data)["type"] for data, _ in self.transport.written]
        self.assertEqual(kinds, [5, 5, 5, 2])
        self.assertEqual(commits, [1])

    def test_discovers_shed_beyond_budget(self):
        self.protocol.discover_budget = 10
        for i in range(30):
            self.protocol.datagramReceived(packets.ovmf_pxe_discover(mac=f"52:54:00:00:04:{i:02x}"),
                                           ("0.0.0.0", 68))
        self.clock.advance(0)
        self.assertEqual(len(self.transport.written), 10)
        shed = [e for e in self.events if "overloaded" in e.get("log_format", "")]
        self.assertEqual(shed[0]["count"], 20)

    def test_discovers_shed_while_the_store_is_behind(self):
        """A shared store that lags (pgstore.behind()) gets no offers to
        refuse: DISCOVERs go before any work, REQUESTs are still answered."""
        request = self.discover_then_request("52:54:00:00:06:01")
        self.transport.written.clear()
        self.protocol.server.store.behind = lambda: True
        for i in range(5):
            self.protocol.datagramReceived(packets.ovmf_pxe_discover(mac=f"52:54:00:00:06:{i + 2:02x}"),
                                           ("0.0.0.0", 68))
        self.protocol.datagramReceived(request, ("0.0.0.0", 68))
        self.clock.advance(0)
        self.assertEqual([packets.parse_reply(data)["type"] for data, _ in self.transport.written], [5])
        shed = [e for e in self.events if "overloaded" in e.get("log_format", "")]
        self.assertEqual(shed[0]["count"], 5)
        self.protocol.server.store.behind = lambda: False
        self.receive(packets.ovmf_pxe_discover(mac="52:54:00:00:06:09"))
        self.assertEqual(packets.parse_reply(self.transport.written[-1][0])["type"], 2)

    def test_kernel_drops_discovers_until_the_store_catches_up(self):
        """While the store is behind, the socket's DISCOVER filter is on, so
        REQUESTs find room in its queue; it comes off within shed_check
        seconds of the store catching up, with no datagram needed to notice."""
        from ownsocket.dhcp import shedding
        calls = []

        class Socket:
            def setsockopt(self, level, option, value):
                calls.append(option)

            def fileno(self):
                return 5
        self.transport.getHandle = Socket
        self.patch(shedding.DiscoverFilter, "supported", True)
        self.protocol._filter = shedding.DiscoverFilter(self.protocol.log)
        behind = [True]
        self.protocol.server.store.behind = lambda: behind[0]
        self.receive(packets.ovmf_pxe_discover(mac="52:54:00:00:07:01"))
        self.assertEqual(self.transport.written, [])
        self.assertEqual(calls, [shedding.SO_ATTACH_FILTER])
        shed = [e for e in self.events if "overloaded" in e.get("log_format", "")]
        self.assertIn("dropped in the kernel", shed[0]["why"])
        self.receive(packets.ovmf_pxe_discover(mac="52:54:00:00:07:02"))
        self.clock.advance(self.protocol.shed_check * 3)
        self.assertEqual(calls, [shedding.SO_ATTACH_FILTER])  # still behind: still on
        behind[0] = False
        self.clock.advance(self.protocol.shed_check)
        self.assertEqual(calls, [shedding.SO_ATTACH_FILTER, shedding.SO_DETACH_FILTER])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.receive(packets.ovmf_pxe_discover(mac="52:54:00:00:07:03"))
        self.assertEqual(packets.parse_reply(self.transport.written[-1][0])["type"], 2)
        # A batch whose own offers put the store behind turns it on at once.
        store = self.protocol.server.store
        claim = store.claim

        def claim_then_behind(*args, **kwargs):
            behind[0] = True
            return claim(*args, **kwargs)
        self.patch(store, "claim", claim_then_behind)
        self.receive(packets.ovmf_pxe_discover(mac="52:54:00:00:07:04"))
        self.assertEqual(packets.parse_reply(self.transport.written[-1][0])["type"], 2)
        self.assertEqual(calls[-1], shedding.SO_ATTACH_FILTER)

    def test_no_reply_when_commit_fails(self):
        request = self.discover_then_request("52:54:00:00:05:01")
        self.transport.written.clear()
        store = self.protocol.server.store
        store._db.execute("CREATE TRIGGER refuse BEFORE INSERT ON leases BEGIN SELECT RAISE(ABORT, 'disk full'); END")
        self.receive(request)
        self.assertEqual(self.transport.written, [])
        self.flushLoggedErrors()


class ProtocolEventTests(ProtocolTestCase):
    def setUp(self):
        super().setUp()
        self.seen = EventList()
        self.protocol.server.events.subscribe(self.seen)

    def test_parse_drop(self):
        self.receive(b"\x01garbage", ("10.0.0.9", 68))
        [event] = self.seen.events
        self.assertEqual((event.service, event.kind, event.mac, event.peer, dict(event.fields)),
                         ("dhcp", "dropped", None, "10.0.0.9", {"reason": "parse"}))

    def test_overload_shed_one_event_per_discover(self):
        self.protocol.discover_budget = 2
        for i in range(5):
            self.protocol.datagramReceived(packets.ovmf_pxe_discover(mac=f"52:54:00:00:04:{i:02x}"),
                                           ("0.0.0.0", 68))
        self.clock.advance(0)
        shed = [(e.mac, e.fields["reason"]) for e in self.seen.events if e.kind == "dropped"]
        self.assertEqual(shed, [(f"52:54:00:00:04:{i:02x}", "overload") for i in (2, 3, 4)])
        self.assertEqual([e.kind for e in self.seen.events if e.kind != "dropped"],
                         ["received", "sent"] * 2)

    def test_batch_commit_published_after_commit(self):
        client = "52:54:00:00:02:01"
        self.receive(packets.ovmf_pxe_discover(mac=client))
        offer = packets.parse_reply(self.transport.written[-1][0])
        self.seen.events.clear()
        self.receive(packets.ovmf_pxe_discover(mac=client, message_type=3, extra=[
            (54, ipaddress.IPv4Address("10.0.0.1").packed),
            (50, ipaddress.IPv4Address(offer["yiaddr"]).packed)]))
        self.assertEqual(self.seen.kinds(), [("dhcp", "received"), ("dhcp", "sent"), ("dhcp", "committed")])
        self.assertEqual(self.seen.events[2].fields["address"], offer["yiaddr"])
        self.assertGreaterEqual(self.seen.events[2].fields["seconds"], 0)

    def test_store_error_drops_and_no_commit_event(self):
        client = "52:54:00:00:05:01"
        self.receive(packets.ovmf_pxe_discover(mac=client))
        offer = packets.parse_reply(self.transport.written[-1][0])
        self.seen.events.clear()
        store = self.protocol.server.store
        store._db.execute("CREATE TRIGGER refuse BEFORE INSERT ON leases BEGIN SELECT RAISE(ABORT, 'disk full'); END")
        self.receive(packets.ovmf_pxe_discover(mac=client, message_type=3, extra=[
            (54, ipaddress.IPv4Address("10.0.0.1").packed),
            (50, ipaddress.IPv4Address(offer["yiaddr"]).packed)]))
        self.assertNotIn(("dhcp", "committed"), self.seen.kinds())
        self.assertEqual([e.fields["reason"] for e in self.seen.events if e.kind == "dropped"], ["store-error"])
        self.flushLoggedErrors()


class ServiceTests(unittest.TestCase):
    def test_one_port_per_interface_with_address(self):
        reactor = FakeUDPReactor()
        config = configuration.load(text=CONFIG + "[dhcp]\nleases = :memory:\n",
                                    known_interfaces={"eth0"})
        opened = []

        class FakeSocket:
            def __init__(self, name):
                self.name = name
                self.closed = False

            def fileno(self):
                return 99

            def close(self):
                self.closed = True

        def open_socket(name, port, address=None, shared=False):
            sock = FakeSocket(name)
            opened.append((sock, port))
            return sock

        interfaces = lambda names: [("lo", ipaddress.IPv4Address("127.0.0.1")),
                                    ("eth0", ipaddress.IPv4Address("10.0.0.1")),
                                    ("eth1", None)]
        service = DhcpService(config, build_selector(config, reactor), reactor,
                              interfaces=interfaces, open_socket=open_socket)
        service.privilegedStartService()
        service.startService()
        self.assertEqual([(sock.name, port) for sock, port in opened], [("eth0", 67)])
        self.assertTrue(opened[0][0].closed)
        [(_, protocol, _, transport)] = reactor.ports
        protocol.datagramReceived(packets.ovmf_pxe_discover(), ("0.0.0.0", 68))
        reactor.advance(0)
        self.assertEqual(len(transport.written), 1)
        service.stopService()
        self.assertFalse(transport.connected)


class ReloadTests(unittest.TestCase):
    """SIGHUP: the new config answers the next request; sockets stay open
    unless their settings changed; leases stay in the store."""

    def setUp(self):
        self.reactor = FakeUDPReactor()
        self.db = self.mktemp()
        self.opened = []
        self.interfaces = [("eth0", ipaddress.IPv4Address("10.0.0.1")),
                           ("eth1", ipaddress.IPv4Address("10.5.0.1"))]

        def open_socket(name, port, address=None, shared=False):
            self.opened.append((name, port))
            return _FakeSocket()

        self.service = DhcpService(self.load(CONFIG), build_selector(self.load(CONFIG), self.reactor),
                                   self.reactor, interfaces=lambda names: [i for i in self.interfaces if not names or i[0] in names],
                                   open_socket=open_socket)
        self.service.privilegedStartService()
        self.service.startService()
        self.addCleanup(self.service.stopService)

    def load(self, text, dhcp=""):
        return configuration.load(text=text + f"[dhcp]\nleases = {self.db}\n{dhcp}",
                                  known_interfaces={"eth0", "eth1"})

    def offer_via(self, index=0, mac="52:54:00:00:07:01"):
        _, protocol, _, transport = self.reactor.ports[index]
        protocol.datagramReceived(packets.ovmf_pxe_discover(mac=mac), ("0.0.0.0", 68))
        self.reactor.advance(0)
        return packets.parse_reply(transport.written[-1][0])

    def test_new_pool_without_reopening_sockets(self):
        first = self.offer_via()
        self.assertTrue(first["yiaddr"].startswith("10.0.0.1"))
        text = CONFIG.replace("10.0.0.100-10.0.0.199", "10.0.0.50-10.0.0.60")
        self.assertIsNone(self.service.reconfigure(self.load(text), build_selector(self.load(text), self.reactor)))
        self.assertEqual(len(self.opened), 2)
        second = self.offer_via(mac="52:54:00:00:07:02")
        self.assertIn(int(ipaddress.IPv4Address(second["yiaddr"])) - int(ipaddress.IPv4Address("10.0.0.50")),
                      range(11))

    def test_changed_interfaces_reopen_sockets_and_keep_leases(self):
        self.offer_via()
        server = self.service.server
        config = self.load(CONFIG, "interfaces = eth0\n")
        result = self.service.reconfigure(config, build_selector(config, self.reactor))
        self.successResultOf(result)
        self.assertEqual(self.opened, [("eth0", 67), ("eth1", 67), ("eth0", 67)])
        self.assertIs(self.service.server, server)  # same store, same address owner
        self.assertEqual(self.service.address_counts()[("lab", "offered")], 1)

    def test_subnet_removed_keeps_its_leases(self):
        self.offer_via()
        text = "[subnet:other]\nnetwork = 10.5.0.0/24\npool = 10.5.0.10-10.5.0.20\n"
        self.service.reconfigure(self.load(text), build_selector(self.load(text), self.reactor))
        self.assertEqual(set(k[0] for k in self.service.address_counts()), {"other"})
        self.service.reconfigure(self.load(CONFIG), build_selector(self.load(CONFIG), self.reactor))
        self.assertEqual(self.service.address_counts()[("lab", "offered")], 1)


class CheckpointTests(unittest.TestCase):
    """The lease log is checkpointed when the network is quiet, and at the
    latest every few minutes, never in the middle of a storm's batches."""

    def test_checkpoint_waits_for_quiet(self):
        reactor = FakeUDPReactor()
        config = configuration.load(text=CONFIG, known_interfaces={"eth0"})
        checkpoints = []

        class Store(SqliteLeaseStore):
            def checkpoint(self):
                checkpoints.append(reactor.seconds())

        service = DhcpService(config, build_selector(config, reactor), reactor,
                              store_factory=lambda path, clock: Store(":memory:", clock=clock),
                              interfaces=lambda names: [("eth0", ipaddress.IPv4Address("10.0.0.1"))],
                              open_socket=lambda name, port, address=None, shared=False: _FakeSocket())
        service.privilegedStartService()
        service.startService()
        self.addCleanup(service.stopService)
        [(_, protocol, _, _)] = reactor.ports
        # A steady stream of requests: no checkpoint for the first 300 s ...
        for second in range(299):
            protocol.datagramReceived(packets.ovmf_pxe_discover(mac=f"52:54:00:00:{second // 256:02x}:{second % 256:02x}"),
                                      ("0.0.0.0", 68))
            reactor.advance(0.5)
            reactor.advance(0.5)
        self.assertEqual(checkpoints, [])
        # ... then one forced checkpoint, and one as soon as it is quiet.
        for _ in range(3):
            protocol.datagramReceived(packets.ovmf_pxe_discover(), ("0.0.0.0", 68))
            reactor.advance(1)
        self.assertEqual(len(checkpoints), 1)
        reactor.advance(2)
        self.assertEqual(len(checkpoints), 2)


class _FakeSocket:
    def fileno(self):
        return 99

    def close(self):
        pass


class SocketTests(unittest.TestCase):
    """Real sockets on the loopback device, on an unprivileged port."""

    def setUp(self):
        import os
        if os.geteuid() != 0:
            raise unittest.SkipTest("SO_BINDTODEVICE needs root (CAP_NET_RAW) on older kernels")

    def test_second_server_on_same_interface_is_refused(self):
        from ownsocket.dhcp.sockets import SocketError, open_interface_socket
        first = open_interface_socket("lo", 16767)
        self.addCleanup(first.close)
        error = self.assertRaises(SocketError, open_interface_socket, "lo", 16767)
        self.assertIn("cannot bind UDP port 16767 on interface lo: address in use", str(error))
        self.assertIn("another DHCP server", str(error))

    def test_proxy_sockets_may_share(self):
        from ownsocket.dhcp.sockets import open_interface_socket
        first = open_interface_socket("lo", 16768, shared=True)
        self.addCleanup(first.close)
        second = open_interface_socket("lo", 16768, shared=True)
        second.close()
