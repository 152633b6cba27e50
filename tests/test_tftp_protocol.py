"""
The listener, the service and the session caps on fake ports and a Clock:
real packets in, real packets out, no sockets.
"""

import errno
import ipaddress
import os

from twisted.internet import defer
from twisted.internet.error import CannotListenError
from twisted.logger import globalLogPublisher
from twisted.trial import unittest
from zope.interface import implementer

from ownsocket.boot.recent import RecentRequests
from ownsocket.config import TftpConfig
from ownsocket.files import BytesReader
from ownsocket.interfaces import AccessViolation, BackendError, FileNotFound, IFileBackend
from ownsocket.tftp import wire
from ownsocket.tftp.service import BindError, TFTPService

from tests.fakes import FakeUDPReactor

PEER = ("192.0.2.10", 2000)


class SpyReader(BytesReader):
    def __init__(self, data):
        super().__init__(data)
        self.finished = 0

    def finish(self):
        self.finished += 1


@implementer(IFileBackend)
class FakeBackend:
    """Serves a dict of name -> bytes and records every request."""

    def __init__(self, files):
        self.files = files
        self.requests = []
        self.readers = []

    def get_reader(self, request):
        self.requests.append(request)
        if request.path == "denied":
            return defer.fail(AccessViolation("no"))
        if request.path == "broken":
            return defer.fail(BackendError("disk on fire"))
        if request.path not in self.files:
            return defer.fail(FileNotFound(request.path))
        reader = SpyReader(self.files[request.path])
        self.readers.append(reader)
        return defer.succeed(reader)


def rrq(name, mode="octet", **options):
    return wire.build_request(wire.RRQ, name.encode() if isinstance(name, str) else name,
                              mode, {k: str(v) for k, v in options.items()})


class ServiceTestCase(unittest.TestCase):

    def make(self, files=None, **config):
        self.reactor = FakeUDPReactor()
        self.backend = FakeBackend(files if files is not None else {"f": os.urandom(1500)})
        self.recent = RecentRequests()
        settings = dict(port=6969)
        settings.update(config)
        self.service = TFTPService(TftpConfig(**settings), backend=self.backend,
                                   reactor=self.reactor, recent=self.recent)
        self.service.privilegedStartService()
        self.service.startService()
        self.listener_port, self.listener, _, self.listener_transport = self.reactor.ports[0]
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        return self.service

    def send(self, datagram, peer=PEER):
        self.listener.datagramReceived(datagram, peer)

    def sessions(self):
        """(protocol, transport) of every session port ever opened."""
        return [(proto, transport) for port, proto, _, transport in self.reactor.ports[1:]]

    def replies(self):
        return self.listener_transport.written

    def lines(self):
        return [e for e in self.events if "tftp_result" in e]


class ServiceTests(ServiceTestCase):

    def test_binds_once_per_address(self):
        self.make(addresses=(ipaddress.IPv4Address("127.0.0.1"), ipaddress.IPv4Address("127.0.0.2")))
        self.assertEqual([(p[0], p[2]) for p in self.reactor.ports], [(6969, "127.0.0.1"), (6969, "127.0.0.2")])
        self.assertEqual(self.service.listening_addresses(), [("127.0.0.1", 6969), ("127.0.0.2", 6969)])

    def test_session_bound_to_the_listener_address(self):
        self.make(addresses=(ipaddress.IPv4Address("127.0.0.2"),))
        self.send(rrq("f"))
        port, proto, interface, transport = self.reactor.ports[1]
        self.assertEqual((port, interface), (40001, "127.0.0.2"))
        self.assertEqual(transport.written, [(wire.build_data(1, self.backend.files["f"][:512]), PEER)])

    def test_default_binds_all_addresses(self):
        self.make()
        self.assertEqual([(p[0], p[2]) for p in self.reactor.ports], [(6969, "")])

    def test_bind_error_is_readable(self):
        for code, words in [(errno.EACCES, "cannot bind UDP 0.0.0.0:69: permission denied (run as root "
                                           "or grant CAP_NET_BIND_SERVICE)"),
                            (errno.EADDRINUSE, "cannot bind UDP 0.0.0.0:69: address already in use")]:
            reactor = FakeUDPReactor()

            def refuse(port, protocol, interface="", maxPacketSize=8192, code=code):
                raise CannotListenError(interface, port, OSError(code, os.strerror(code)))
            reactor.listenUDP = refuse
            service = TFTPService(TftpConfig(), backend=FakeBackend({}), reactor=reactor)
            error = self.assertRaises(BindError, service.privilegedStartService)
            self.assertTrue(str(error).startswith(words), str(error))

    def test_stop_finishes_readers_and_closes_ports(self):
        self.make()
        self.send(rrq("f"))
        self.send(rrq("f"), ("192.0.2.11", 1))
        self.service.stopService()
        self.assertEqual([r.finished for r in self.backend.readers], [1, 1])
        self.assertFalse(any(t.connected for _, _, _, t in self.reactor.ports))
        self.assertEqual(self.service.server.transfers, {})
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_full_transfer_and_log_line(self):
        self.make()
        self.send(rrq("f", blksize=1000, tsize=0))
        proto, transport = self.sessions()[0]
        self.assertEqual(wire.parse_oack(transport.written[0][0]), {"blksize": "1000", "tsize": "1500"})
        proto.datagramReceived(wire.build_ack(0), PEER)
        proto.datagramReceived(wire.build_ack(1), PEER)
        self.reactor.advance(0.15)  # below MIN_RTO: no resend
        proto.datagramReceived(wire.build_ack(2), PEER)
        data = b"".join(p[4:] for p, _ in transport.written[1:])
        self.assertEqual(data, self.backend.files["f"])
        [line] = self.lines()
        self.assertEqual((line["tftp_result"], line["nbytes"], line["blksize"], line["windowsize"],
                          line["retransmits"], line["peer"], line["file"], line["duration"]),
                         ("ok", 1500, 1000, 1, 0, "192.0.2.10:2000", "f", "0.150s"))
        self.assertFalse(transport.connected)

    def test_control_characters_never_reach_the_log(self):
        self.make(files={"a\nb": b"x"})
        self.send(rrq(b"a\nb"))
        self.sessions()[0][0].datagramReceived(wire.build_ack(1), PEER)
        [line] = self.lines()
        self.assertEqual(line["file"], "a\\x0ab")

    def test_boot_request_handed_to_backend(self):
        self.make()
        marker = object()
        self.recent.remember("192.0.2.10", marker)
        self.send(rrq("\\f", tsize=0))
        [request] = self.backend.requests
        self.assertEqual((request.path, request.peer, request.options, request.boot_request),
                         ("f", PEER, {"tsize": "0"}, marker))

    def test_size_probe_logged_as_probe(self):
        self.make()
        self.send(rrq("f", tsize=0, blksize=1468, windowsize=4))
        proto, transport = self.sessions()[0]
        proto.datagramReceived(wire.build_error(8, "User aborted the transfer"), PEER)
        self.assertEqual([line["tftp_result"] for line in self.lines()], ["size probe"])
        self.assertEqual(self.backend.readers[0].finished, 1)
        # ... and the real request that follows is served.
        self.send(rrq("f", blksize=1468, windowsize=4))
        proto, transport = self.sessions()[1]
        self.assertEqual(wire.parse_oack(transport.written[0][0]), {"blksize": "1468", "windowsize": "4"})

    def test_new_request_read_before_the_probe_abort(self):
        # The second RRQ reaches port 69 before the error 8 reaches the
        # transfer port: it must be served once the abort is seen.
        self.make()
        self.send(rrq("f", tsize=0, blksize=1468, windowsize=4))
        self.send(rrq("f", blksize=1468, windowsize=4))
        self.assertEqual(len(self.sessions()), 1)
        proto, _ = self.sessions()[0]
        proto.datagramReceived(wire.build_error(8, "User aborted the transfer"), PEER)
        self.assertEqual(len(self.sessions()), 2)
        proto, transport = self.sessions()[1]
        self.assertEqual(wire.parse_oack(transport.written[0][0]), {"blksize": "1468", "windowsize": "4"})
        self.assertEqual([line["tftp_result"] for line in self.lines()], ["size probe"])

    def test_retransmitted_rrq_is_not_served_twice(self):
        self.make(files={"f": b"x" * 100})
        self.send(rrq("f"))
        self.send(rrq("f"))
        proto, _ = self.sessions()[0]
        proto.datagramReceived(wire.build_ack(1), PEER)
        self.assertEqual(len(self.sessions()), 1)
        self.assertEqual([line["tftp_result"] for line in self.lines()], ["ok"])

    def test_no_oack_when_nothing_accepted(self):
        self.make()
        self.send(rrq("f", blksize=4, windowsize=0, bogus=1))
        proto, transport = self.sessions()[0]
        self.assertEqual(wire.unpack_header(transport.written[0][0]), (wire.DATA, 1))
        self.assertEqual(len(transport.written[0][0]), 4 + 512)


class ListenerTests(ServiceTestCase):

    def test_backend_errors_mapped(self):
        self.make()
        for name, code in [("missing", 1), ("denied", 2), ("../etc/passwd", 2), ("broken", 0)]:
            self.send(rrq(name), ("192.0.2.20", 100 + code))
            self.assertEqual(wire.parse_error(self.replies()[-1][0])[0], code, name)
        self.assertEqual(wire.parse_error(self.replies()[-1][0]), (0, "disk on fire"))
        self.assertEqual(self.sessions(), [])
        self.assertEqual(self.service.server.transfers, {})
        self.assertEqual([line["tftp_result"] for line in self.lines()], ["error", "error", "refused", "error"])

    def test_traversal_never_reaches_backend(self):
        self.make()
        for name in [b"../x", b"a/../../x", b"x\x00y"]:
            self.send(wire.build_request(wire.RRQ, name))
        self.assertEqual(self.backend.requests, [])
        self.assertTrue(all(wire.parse_error(p)[0] in (2, 4) for p, _ in self.replies()))

    def test_wrq_refused_with_error_2(self):
        self.make()
        self.send(wire.build_request(wire.WRQ, b"upload.bin"))
        self.assertEqual(self.replies(), [(wire.build_error(2, "Read-only server: writes are refused"), PEER)])
        self.assertEqual(self.sessions(), [])
        self.assertEqual(self.backend.requests, [])

    def test_unsupported_mode(self):
        self.make()
        self.send(rrq("f", mode="mail"))
        self.assertEqual(wire.parse_error(self.replies()[0][0])[0], wire.ERR_ILLEGAL)
        self.assertEqual(self.sessions(), [])

    def test_netascii_has_no_tsize(self):
        self.make(files={"t": b"a\nb\n"})
        self.send(rrq("t", mode="netascii", tsize=0))
        proto, transport = self.sessions()[0]
        self.assertEqual(transport.written[0][0], wire.build_data(1, b"a\r\nb\r\n"))

    def test_malformed_datagrams(self):
        self.make()
        garbage = [b"", b"\x00", b"\x00\x01", b"\x00\x01f", b"\x00\x01f\x00", b"\x00\x01\x00octet\x00",
                   b"\x00\x03\x00\x01hello", b"\x00\x04\x00\x01", b"\x00\x06tsize\x001\x00",
                   b"\x00\x05\x00\x01oops\x00", b"\x00\x07junk", b"\xff\xff" * 100, os.urandom(700)]
        for datagram in garbage:
            self.send(datagram)
        self.assertEqual(self.sessions(), [])
        self.assertEqual(self.backend.requests, [])
        codes = [wire.parse_error(p)[0] for p, _ in self.replies()]
        # RRQs without file name/mode, DATA, ACK and OACK get error 4;
        # ERROR packets and unknown opcodes are dropped unanswered.
        self.assertEqual(codes[:7], [4, 4, 4, 4, 4, 4, 4])

    def test_garbage_logging_is_rate_limited(self):
        self.make()
        for _ in range(500):
            self.send(b"\x00\x09nonsense")
        dropped = [e for e in self.events if "dropped" in e.get("log_format", "")]
        self.assertEqual(len(dropped), 10)
        self.reactor.advance(5)
        self.send(b"\x00\x09nonsense")
        self.assertEqual(self.events[-1]["more"], " (490 more not logged)")

    def test_refusal_logging_is_rate_limited(self):
        self.make()
        for index in range(300):
            self.send(rrq("../etc/passwd"), ("192.0.2.30", 1000 + index))
        self.assertEqual(len(self.replies()), 300)  # every request is answered
        self.assertEqual(len(self.lines()), 50)
        self.reactor.advance(1)
        self.send(rrq("missing"), ("192.0.2.31", 1))
        self.assertIn("250 more refusals not logged", self.lines()[-1]["detail"])

    def test_garbage_answers_are_rate_limited(self):
        self.make()
        for _ in range(1000):
            self.send(wire.build_ack(1))
        self.assertEqual(len(self.replies()), 100)

    def test_retransmitted_rrq_does_not_open_a_second_session(self):
        self.make()
        self.send(rrq("f"))
        self.send(rrq("f"))
        self.assertEqual(len(self.sessions()), 1)


class CapacityTests(ServiceTestCase):

    def finish(self, proto, peer, limit=1000):
        """Acknowledge every block, as a client that keeps up would."""
        block = 0
        if proto.session.state == "wait-oack-ack":
            proto.datagramReceived(wire.build_ack(0), peer)
        while not proto.session.done:
            block += 1
            proto.datagramReceived(wire.build_ack(block), peer)
            self.assertLess(block, limit)
        return proto.session.result

    def test_defaults_admit_a_burst_of_100_from_one_address(self):
        self.make(files={"f": os.urandom(3000)})
        peers = [("192.0.2.10", 1000 + n) for n in range(100)]
        for peer in peers:
            self.send(rrq("f", blksize=1468), peer)
        self.assertEqual(len(self.sessions()), 100)
        self.assertEqual(self.replies(), [])   # nobody refused
        # Clients that take a while to answer (the first timer expires)
        # lose nothing: nobody else asked for room.
        self.reactor.advance(1.0)
        results = [self.finish(proto, peer) for (proto, _), peer in zip(self.sessions(), peers)]
        self.assertEqual(results, ["ok"] * 100)
        self.assertEqual({line["tftp_result"] for line in self.lines()}, {"ok"})

    def test_new_requests_never_evict_unanswered_ones(self):
        self.make(max_sessions_per_client=2, files={"f": os.urandom(100000)})
        self.send(rrq("f"), ("192.0.2.10", 1))
        self.send(rrq("f"), ("192.0.2.10", 2))
        self.send(rrq("f"), ("192.0.2.10", 3))
        self.send(rrq("f"), ("192.0.2.10", 3))   # retransmitted while it waits
        # The third waits: no session, no answer yet, nobody evicted ...
        self.assertEqual(self.replies(), [])
        (p1, t1), (p2, t2) = self.sessions()
        # ... and other addresses are not limited by this one.
        self.send(rrq("f"), ("192.0.2.11", 1))
        self.assertEqual(len(self.sessions()), 3)
        # The first two keep answering: the server is really full, and the
        # third hears so within about a second (its own timeout is longer).
        for step in range(1, 30):
            p1.datagramReceived(wire.build_ack(step), ("192.0.2.10", 1))
            p2.datagramReceived(wire.build_ack(step), ("192.0.2.10", 2))
            self.reactor.advance(0.05)
        self.assertEqual(self.replies(), [(wire.build_error(0, "Server busy, try again"), ("192.0.2.10", 3))])
        self.assertLessEqual(self.service.server.max_wait, 1.1)
        self.assertEqual(len(self.sessions()), 3)
        self.assertTrue(t1.connected and t2.connected)

    def test_waiting_request_takes_the_place_of_a_silent_one(self):
        self.make(max_sessions=2)
        self.send(rrq("f"), ("192.0.2.10", 1))
        self.send(rrq("f"), ("192.0.2.10", 2))
        self.reactor.advance(0.3)
        self.send(rrq("f"), ("192.0.2.12", 1))
        self.assertEqual(len(self.sessions()), 2)
        self.reactor.pump([0.05] * 20)
        # At the first retransmission (1 s) the oldest silent one makes room.
        (p1, t1), (p2, t2), (p3, t3) = self.sessions()
        self.assertEqual((p1.session.result, p2.session.result, p3.session.result), ("evicted", None, None))
        self.assertEqual(p3.peer, ("192.0.2.12", 1))
        self.assertEqual(self.replies(), [])

    def test_per_client_cap_evicts_oldest_silent_session(self):
        self.make(max_sessions_per_client=2)
        self.send(rrq("f"), ("192.0.2.10", 1))
        self.reactor.advance(0.5)
        self.send(rrq("f"), ("192.0.2.10", 2))
        self.reactor.advance(0.6)   # the first has resent its DATA 1: silent
        self.send(rrq("f"), ("192.0.2.10", 3))
        (p1, t1), (p2, t2), (p3, t3) = self.sessions()
        self.assertEqual((t1.connected, t2.connected, t3.connected), (False, True, True))
        self.assertEqual(p1.session.result, "evicted")
        self.assertEqual(self.backend.readers[0].finished, 1)
        self.assertEqual(sorted(self.service.server.transfers), [("192.0.2.10", 2), ("192.0.2.10", 3)])

    def test_silent_session_that_never_answered_goes_first(self):
        self.make(max_sessions=2, files={"f": os.urandom(100000)})
        self.send(rrq("f"), ("192.0.2.10", 1))
        self.send(rrq("f"), ("192.0.2.11", 1))
        first, _ = self.sessions()[0]
        first.datagramReceived(wire.build_ack(1), ("192.0.2.10", 1))
        self.reactor.advance(1.1)   # both resend, neither hears back
        self.assertTrue(all(proto.session.silent for proto, _ in self.sessions()))
        self.send(rrq("f"), ("192.0.2.12", 1))
        self.assertEqual([proto.session.result for proto, _ in self.sessions()], [None, "evicted", None])
        # A stalled transfer is evicted too, when nothing better is left:
        # the oldest first.
        third, _ = self.sessions()[2]
        third.datagramReceived(wire.build_ack(1), ("192.0.2.12", 1))
        self.reactor.advance(1.1)
        self.send(rrq("f"), ("192.0.2.13", 1))
        self.assertEqual([proto.session.result for proto, _ in self.sessions()],
                         ["evicted", "evicted", None, None])

    def test_active_sessions_are_never_evicted(self):
        self.make(max_sessions=2, files={"f": os.urandom(1000000)})
        peers = [("192.0.2.10", 1), ("192.0.2.10", 2)]
        blocks = {}
        for peer in peers:
            self.send(rrq("f"), peer)
            blocks[peer] = 1
        for step in range(40):
            for (proto, _), peer in zip(self.sessions(), peers):
                proto.datagramReceived(wire.build_ack(blocks[peer]), peer)
                blocks[peer] += 1
            self.reactor.advance(0.1)
            self.send(rrq("f"), ("192.0.2.99", 9 + step))
        # Each waited about a second for a slot, then heard "busy".
        self.assertEqual(self.replies(), [(wire.build_error(0, "Server busy, try again"), ("192.0.2.99", 9 + step))
                                          for step in range(29)])
        self.assertTrue(all(t.connected for _, t in self.sessions()))

    def test_first_timer_follows_the_learned_round_trip_under_pressure(self):
        self.make(files={"f": b"x" * 100}, timeout=3, max_sessions=4)
        server = self.service.server
        self.assertEqual(server.initial_rto("192.0.2.10"), 3.0)
        self.send(rrq("f"))
        proto, _ = self.sessions()[0]
        self.reactor.advance(0.01)
        proto.datagramReceived(wire.build_ack(1), PEER)
        # Learned (a LAN: MIN_RTO), but with room to spare the first timer
        # stays at the timeout: a client's first answer may be slow.
        self.assertEqual(server.initial_rto("192.0.2.10"), 3.0)
        self.send(rrq("f"), ("192.0.2.10", 2))
        self.assertEqual(server.initial_rto("192.0.2.10"), 3.0)
        # Half full: new transfers get the learned round trip.
        self.send(rrq("f"), ("192.0.2.10", 3))
        self.assertEqual(server.initial_rto("192.0.2.10"), 0.2)
        proto, transport = self.sessions()[-1]
        self.reactor.advance(0.19)
        self.assertEqual(len(transport.written), 1)
        self.reactor.advance(0.02)
        self.assertEqual(len(transport.written), 2)
        self.assertTrue(proto.session.silent)
        first, first_transport = self.sessions()[1]
        self.assertEqual(len(first_transport.written), 1)   # still on its 3 s timer
        self.assertFalse(first.session.silent)

    def learn_lan_round_trip(self, peer):
        self.send(rrq("f"), peer)
        proto, _ = self.sessions()[-1]
        self.reactor.advance(0.002)
        self.assertEqual(self.finish(proto, peer), "ok")

    def flood(self, count, rate, first_index=0):
        """C{count} spoofed RRQs from 250 addresses, C{rate} per second."""
        for index in range(first_index, first_index + count):
            self.send(rrq("f", blksize=1468), (f"198.51.100.{index % 250}", 10000 + index))
            self.reactor.advance(1.0 / rate)

    def test_spoofed_flood_does_not_lock_out_a_real_client(self):
        self.make(max_sessions=16, max_sessions_per_client=4, files={"f": os.urandom(20000)})
        legit = ("192.0.2.77", 3333)
        self.learn_lan_round_trip(legit)
        self.send(rrq("f"), legit)
        running, running_transport = self.sessions()[-1]
        running.datagramReceived(wire.build_ack(1), legit)
        block = 1
        # 1,000 spoofed requests at 60/s (below 16 slots / MIN_RTO), while
        # the running transfer keeps answering.
        for index in range(0, 1000, 10):
            self.flood(10, 60.0, index)
            if running_transport.connected:
                block += 1
                running.datagramReceived(wire.build_ack(block), legit)
            self.assertLessEqual(len(self.service.server.transfers), 16)
            if index == 500:
                # A second real client arriving mid-flood gets a session at
                # once, and keeps it because it answers.
                newcomer = ("192.0.2.78", 4444)
                before = len(self.sessions())
                self.send(rrq("f"), newcomer)
                self.assertEqual(len(self.sessions()), before + 1)
                proto, transport = self.sessions()[-1]
                self.assertEqual(self.finish(proto, newcomer), "ok")
        self.assertEqual(running.session.result, "ok")
        self.assertEqual(proto.session.result, "ok")
        # Every evicted reader was finished exactly once.
        finished = [r.finished for r in self.backend.readers]
        self.assertEqual(set(finished) - {0, 1}, set())
        evictions = [line for line in self.lines() if line["tftp_result"] == "evicted"]
        self.assertGreaterEqual(len(evictions), 10)
        self.assertLessEqual(len(evictions), 30)   # logged at a bounded rate (1/s after 10)

    def test_flood_above_capacity_answers_newcomers_and_spares_running_ones(self):
        self.make(max_sessions=16, files={"f": os.urandom(400000)})
        legit = ("192.0.2.77", 3333)
        self.learn_lan_round_trip(legit)
        self.send(rrq("f"), legit)
        running, running_transport = self.sessions()[-1]
        newcomer = ("192.0.2.78", 4444)
        block = 0
        # 3,000 spoofed requests at 1,000/s: far above 16 slots / MIN_RTO.
        for index in range(0, 3000, 10):
            self.flood(10, 1000.0, index)
            block += 1
            running.datagramReceived(wire.build_ack(block), legit)
            if index == 1000:
                self.send(rrq("f"), newcomer)
        self.assertTrue(running_transport.connected)
        self.assertLessEqual(len(self.service.server.transfers), 16)
        # The newcomer got a slot (a lottery at this rate) or was told
        # "busy" within about a second: never left to its own timeout.
        admitted = newcomer in [proto.peer for proto, _ in self.sessions()]
        told = (wire.build_error(0, "Server busy, try again"), newcomer) in self.replies()
        self.assertTrue(admitted != told, (admitted, told))
        busy = [line for line in self.lines() if line["tftp_result"] == "busy"]
        self.assertGreater(len(busy), 0)
