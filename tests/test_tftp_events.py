"""
What the TFTP service tells the event stream, what it reports as in flight,
and how it takes a reloaded config: fake ports and a Clock, no sockets.
"""

import ipaddress
import os

from twisted.internet import defer
from twisted.internet.error import CannotListenError
from twisted.trial import unittest

from ownsocket.config import TftpConfig
from ownsocket.events import KINDS, EventBus, EventList
from ownsocket.tftp import wire
from ownsocket.tftp.service import BindError, TFTPService

from tests.fakes import FakeUDPReactor
from tests.test_tftp_protocol import PEER, FakeBackend, rrq


class EventsTestCase(unittest.TestCase):

    def make(self, files=None, **config):
        self.reactor = FakeUDPReactor()
        self.backend = FakeBackend(files if files is not None else {"f": os.urandom(1500)})
        self.bus = EventBus(self.reactor)
        self.seen = EventList()
        self.bus.subscribe(self.seen)
        settings = dict(port=6969)
        settings.update(config)
        self.service = TFTPService(TftpConfig(**settings), backend=self.backend,
                                   reactor=self.reactor, events=self.bus)
        self.service.privilegedStartService()
        self.service.startService()
        self.listener = self.reactor.ports[0][1]
        return self.service

    def send(self, datagram, peer=PEER):
        self.listener.datagramReceived(datagram, peer)

    def session(self, index=-1):
        port, proto, _, transport = [p for p in self.reactor.ports if p[0] != 6969][index]
        return proto, transport

    def finished(self):
        return [e for e in self.seen.events if e.kind == "finished"]

    def results(self):
        return [e.fields["result"] for e in self.finished()]

    def ack_all(self, proto, peer=PEER, limit=1000):
        if proto.session.state == "wait-oack-ack":
            proto.datagramReceived(wire.build_ack(0), peer)
        block = 0
        while not proto.session.done:
            block += 1
            proto.datagramReceived(wire.build_ack(block), peer)
            self.assertLess(block, limit)


class EventTests(EventsTestCase):

    def test_full_transfer_started_then_finished_once(self):
        self.make()
        self.send(rrq("f", blksize=1000, tsize=0))
        proto, _ = self.session()
        [started] = self.seen.events
        self.assertEqual((started.service, started.kind, started.mac, started.peer),
                         ("tftp", "started", None, "192.0.2.10"))
        self.assertEqual({k: started.fields[k] for k in KINDS["tftp"]["started"]},
                         {"file": "f", "blksize": 1000, "windowsize": 1, "size": 1500})
        proto.datagramReceived(wire.build_ack(0), PEER)
        self.reactor.advance(0.15)  # below the least retransmission timeout
        proto.datagramReceived(wire.build_ack(1), PEER)
        proto.datagramReceived(wire.build_ack(2), PEER)
        proto.datagramReceived(wire.build_ack(2), PEER)   # a late duplicate changes nothing
        [finished] = self.finished()
        self.assertEqual({k: finished.fields[k] for k in KINDS["tftp"]["finished"]},
                         {"file": "f", "result": "ok", "bytes": 1500, "seconds": 0.15,
                          "retransmits": 0, "block": 2, "blksize": 1000, "windowsize": 1,
                          "error": ""})
        self.assertEqual(finished.time, 0.15)
        self.service.stopService()
        self.assertEqual(len(self.finished()), 1)

    def test_refusals_finish_without_starting(self):
        self.make()
        for index, (name, mode) in enumerate([("missing", "octet"), ("denied", "octet"),
                                              ("../etc/passwd", "octet"), ("broken", "octet"),
                                              ("f", "mail")]):
            self.send(rrq(name, mode=mode), ("192.0.2.20", 100 + index))
        self.assertEqual([e.kind for e in self.seen.events], ["finished"] * 5)
        self.assertEqual(self.results(), ["not-found", "denied", "denied", "error", "error"])
        errors = [e.fields["error"] for e in self.finished()]
        self.assertEqual(errors[0], "1 File not found")
        self.assertIn("disk on fire", errors[3])
        self.assertIn("mail", errors[4])
        for event in self.finished():
            self.assertLessEqual(set(KINDS["tftp"]["finished"]), set(event.fields))

    def test_size_probe_then_real_transfer(self):
        self.make()
        self.send(rrq("f", tsize=0, blksize=1468, windowsize=4))
        proto, _ = self.session()
        proto.datagramReceived(wire.build_error(8, "User aborted the transfer"), PEER)
        self.send(rrq("f", blksize=1468, windowsize=4))
        proto, _ = self.session()
        self.ack_all(proto)
        self.assertEqual([(e.kind, e.fields.get("result")) for e in self.seen.events],
                         [("started", None), ("finished", "size-probe"),
                          ("started", None), ("finished", "ok")])
        self.assertEqual(self.seen.events[2].fields["windowsize"], 4)

    def test_timeout_and_client_error(self):
        self.make(files={"f": os.urandom(5000)})
        self.send(rrq("f"), ("192.0.2.10", 1))
        self.send(rrq("f"), ("192.0.2.10", 2))
        proto2, _ = self.session()
        proto2.datagramReceived(wire.build_ack(1), ("192.0.2.10", 2))
        proto2.datagramReceived(wire.build_error(0, "disk full"), ("192.0.2.10", 2))
        self.reactor.pump([1] * 100)
        self.assertEqual(self.results(), ["aborted", "timeout"])
        aborted, timeout = self.finished()
        self.assertEqual((aborted.fields["block"], aborted.fields["bytes"]), (1, 512))
        self.assertIn("disk full", aborted.fields["error"])
        self.assertEqual(timeout.fields["block"], 0)
        self.assertGreater(timeout.fields["retransmits"], 0)
        self.assertGreater(timeout.fields["seconds"], 1)

    def test_shutdown_aborts_each_transfer_once(self):
        self.make()
        pending = defer.Deferred()
        self.backend.get_reader = lambda request: pending   # the backend is still thinking
        self.send(rrq("f"), ("192.0.2.10", 1))
        self.service.stopService()
        self.assertEqual(self.results(), ["aborted"])
        self.assertIn("shutdown", self.finished()[0].fields["error"])

    def test_quiet_bus_builds_no_events(self):
        self.make()
        self.bus.unsubscribe(self.seen)
        published = []
        self.bus.publish = lambda *a, **k: published.append(a)
        self.send(rrq("f"))
        self.ack_all(self.session()[0])
        self.send(rrq("missing"))
        self.assertEqual(published, [])


class InFlightTests(EventsTestCase):

    def test_rows_follow_progress(self):
        self.make(files={"f": os.urandom(5000)})
        self.reactor.advance(7)
        self.send(rrq("f", blksize=1000, windowsize=2))
        proto, _ = self.session()
        [row] = self.service.transfers_in_flight()
        self.assertEqual(row, {"peer": "192.0.2.10", "port": 2000, "file": "f", "bytes": 0,
                               "acked": 0, "block": 0, "blksize": 1000, "windowsize": 2,
                               "started": 7, "state": "wait-oack-ack"})
        proto.datagramReceived(wire.build_ack(0), PEER)
        [row] = self.service.transfers_in_flight()
        self.assertEqual((row["bytes"], row["acked"], row["block"], row["state"]),
                         (2000, 0, 0, "sending"))
        proto.datagramReceived(wire.build_ack(2), PEER)
        proto.datagramReceived(wire.build_ack(4), PEER)
        [row] = self.service.transfers_in_flight()
        self.assertEqual((row["bytes"], row["acked"], row["block"]), (5000, 4000, 4))
        proto.datagramReceived(wire.build_ack(6), PEER)
        self.assertEqual(self.service.transfers_in_flight(), [])

    def test_waiting_request_listed(self):
        self.make(max_sessions=1)
        self.send(rrq("f"), ("192.0.2.10", 1))
        self.reactor.advance(0.25)
        self.send(rrq("f"), ("192.0.2.11", 2))
        rows = self.service.transfers_in_flight()
        self.assertEqual([(r["peer"], r["state"], r["started"]) for r in rows],
                         [("192.0.2.10", "sending", 0), ("192.0.2.11", "waiting", 0.25)])

    def test_opening_transfer_listed(self):
        self.make()
        self.backend.get_reader = lambda request: defer.Deferred()
        self.send(rrq("f"))
        [row] = self.service.transfers_in_flight()
        self.assertEqual((row["state"], row["blksize"], row["bytes"]), ("opening", None, 0))


class ReconfigureTests(EventsTestCase):

    def test_new_backend_and_limits_for_new_transfers_only(self):
        self.make(files={"f": b"old" * 1000}, max_blksize=1468)
        self.send(rrq("f", blksize=1468), ("192.0.2.10", 1))
        old_proto, old_transport = self.session()
        listeners = list(self.service.ports)
        new_backend = FakeBackend({"f": b"new" * 1000})
        config = TftpConfig(port=6969, max_blksize=512, root="elsewhere")
        d = self.service.reconfigure(config, None, new_backend)
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(self.service.ports, listeners)   # same port, same addresses: kept
        self.assertIs(self.service.config, config)
        self.send(rrq("f", blksize=1468), ("192.0.2.10", 2))
        new_proto, new_transport = self.session()
        self.assertEqual(wire.parse_oack(new_transport.written[0][0]), {"blksize": "512"})
        self.assertEqual(len(new_backend.requests), 1)
        # The transfer in flight keeps its reader and block size.
        old_proto.datagramReceived(wire.build_ack(0), ("192.0.2.10", 1))
        self.assertEqual(old_transport.written[1][0], wire.build_data(1, (b"old" * 1000)[:1468]))
        self.ack_all(old_proto, ("192.0.2.10", 1))
        new_proto.datagramReceived(wire.build_ack(0), ("192.0.2.10", 2))
        self.ack_all(new_proto, ("192.0.2.10", 2))
        self.assertEqual(self.results(), ["ok", "ok"])
        self.assertEqual([e.fields["blksize"] for e in self.finished()], [1468, 512])

    def test_whole_config_without_backend_serves_the_new_root(self):
        from ownsocket import config as configuration
        self.make()
        root = os.path.abspath(self.mktemp())
        os.makedirs(root)
        with open(os.path.join(root, "g"), "wb") as f:
            f.write(b"hello")
        whole = configuration.load(text=f"[tftp]\nport = 6969\nroot = {root}\nmax_sessions = 9\n",
                                   known_interfaces=set())
        self.successResultOf(self.service.reconfigure(whole, None, None))
        self.assertEqual(self.service.server.max_sessions, 9)
        self.assertIs(self.service.config, whole.tftp)
        self.send(rrq("g"))
        proto, transport = self.session()
        self.assertEqual(transport.written[0][0], wire.build_data(1, b"hello"))

    def test_changed_port_rebinds_and_transfers_in_flight_finish(self):
        self.make(files={"f": os.urandom(3000)})
        self.send(rrq("f"))
        proto, transport = self.session()
        old_listener = self.service.ports[0]
        d = self.service.reconfigure(TftpConfig(port=7070, addresses=(
            ipaddress.IPv4Address("127.0.0.1"),)), None, self.backend)
        self.successResultOf(d)
        self.assertFalse(old_listener.connected)
        self.assertEqual(self.service.listening_addresses(), [("127.0.0.1", 7070)])
        self.ack_all(proto)
        self.assertEqual(self.results(), ["ok"])
        # A retransmitted RRQ that reached the old listener just before it
        # closed cannot break anything either.
        self.listener.reply(b"x", PEER)

    def test_failed_rebind_keeps_the_old_listeners(self):
        self.make()
        listen = self.reactor.listenUDP

        def refuse_7070(port, protocol, interface="", maxPacketSize=8192):
            if port == 7070:
                raise CannotListenError(interface, port, OSError(98, "Address already in use"))
            return listen(port, protocol, interface, maxPacketSize)
        self.reactor.listenUDP = refuse_7070
        d = self.service.reconfigure(TftpConfig(port=7070, max_sessions=7), None, self.backend)
        self.failureResultOf(d, BindError)
        self.assertEqual(self.service.listening_addresses(), [("0.0.0.0", 6969)])
        self.assertEqual((self.service.config.port, self.service.config.max_sessions), (6969, 7))
        self.assertEqual(self.service.server.max_sessions, 7)


class FakeResource:
    RLIMIT_NOFILE = 7
    RLIM_INFINITY = -1

    def __init__(self, soft, hard, refuse=False):
        self.limits = (soft, hard)
        self.refuse = refuse

    def getrlimit(self, which):
        return self.limits

    def setrlimit(self, which, limits):
        if self.refuse:
            raise ValueError("not allowed")
        self.limits = limits


class DescriptorLimitTests(unittest.TestCase):

    def test_soft_limit_raised_within_the_hard_one(self):
        from ownsocket.tftp.service import _ensure_descriptors
        fake = FakeResource(1024, 524288)
        self.assertIsNone(_ensure_descriptors(1600, fake))
        self.assertEqual(fake.limits, (1600, 524288))
        fake = FakeResource(4096, 524288)
        self.assertIsNone(_ensure_descriptors(1600, fake))
        self.assertEqual(fake.limits, (4096, 524288))   # never lowered

    def test_warns_when_the_hard_limit_is_too_low(self):
        from ownsocket.tftp.service import _ensure_descriptors
        fake = FakeResource(256, 1000)
        warning = _ensure_descriptors(1600, fake)
        self.assertEqual(fake.limits, (1000, 1000))
        self.assertIn("open-file limit 1000 is below the 1600", warning)
        fake = FakeResource(256, 4096, refuse=True)
        self.assertIn("open-file limit 256", _ensure_descriptors(1600, fake))
