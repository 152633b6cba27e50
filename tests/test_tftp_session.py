"""
One transfer's state machine, driven by hand: every datagram and every
timer expiry is a function call with an explicit time.
"""

import os

from twisted.internet.task import Clock
from twisted.trial import unittest

from ownsocket.files import BytesReader
from ownsocket.tftp import wire
from ownsocket.tftp.netascii import NetasciiReader, encode
from ownsocket.tftp.options import Limits, negotiate
from ownsocket.tftp.protocol import SessionProtocol
from ownsocket.tftp.session import MIN_RTO, Session

from tests.fakes import FakeDatagramTransport


class SpyReader(BytesReader):
    """A BytesReader that records reads and finish() calls."""

    def __init__(self, data):
        super().__init__(data)
        self.finished = 0
        self.bytes_read = 0

    def read(self, n):
        chunk = super().read(n)
        self.bytes_read += len(chunk)
        return chunk

    def finish(self):
        self.finished += 1
        super().finish()


def decode(packet):
    opcode, number = wire.unpack_header(packet)
    return opcode, number, bytes(packet[4:])


def ack(block):
    return wire.build_ack(block)


def run_to_end(session, now=0.0, max_packets=10 ** 6):
    """Acknowledge every window as a perfect client would; return the bytes."""
    received = bytearray()
    out = session.start(now)
    expected = 1
    count = 0
    while not session.done:
        assert out, "session went silent"
        last = None
        for packet in out:
            opcode, number, payload = decode(packet)
            if opcode == wire.OACK:
                last = 0
                continue
            assert opcode == wire.DATA, opcode
            assert number == expected & 0xFFFF, (number, expected)
            received += payload
            expected += 1
            last = number
            count += 1
            assert count < max_packets
        now += 0.001
        out = session.receive(ack(last), now)
    return bytes(received)


class NegotiationTests(unittest.TestCase):
    limits = Limits(max_blksize=1468, max_windowsize=64, max_bytes_in_flight=65536)

    def test_ovmf_probe(self):
        result = negotiate({"tsize": "0", "blksize": "1468", "windowsize": "4"}, 123456, self.limits)
        self.assertEqual(result.accepted, (("tsize", "123456"), ("blksize", "1468"), ("windowsize", "4")))
        self.assertEqual((result.blksize, result.windowsize, result.tsize), (1468, 4, 123456))

    def test_blksize_capped_to_max(self):
        result = negotiate({"blksize": "65464"}, 10, self.limits)
        self.assertEqual(result.accepted, (("blksize", "1468"),))
        self.assertEqual(result.blksize, 1468)

    def test_out_of_range_values_left_out(self):
        for options in [{"blksize": "7"}, {"blksize": "65465"}, {"blksize": "0"},
                        {"blksize": "-512"}, {"blksize": "abc"}, {"blksize": ""},
                        {"blksize": " 1024"}, {"blksize": "0x400"}, {"blksize": "\uff11\uff12"},
                        {"timeout": "0"}, {"timeout": "256"}, {"windowsize": "0"},
                        {"windowsize": "65536"}, {"tsize": "x"}, {"frobnicate": "1"}]:
            result = negotiate(options, 10, self.limits)
            self.assertEqual(result.accepted, (), options)
            self.assertEqual((result.blksize, result.windowsize, result.timeout), (512, 1, None), options)

    def test_small_blksize_kept(self):
        result = negotiate({"blksize": "8"}, 10, self.limits)
        self.assertEqual((result.blksize, result.accepted), (8, (("blksize", "8"),)))

    def test_windowsize_capped_by_max_and_bytes_in_flight(self):
        result = negotiate({"windowsize": "65535"}, 10, self.limits)
        self.assertEqual((result.windowsize, result.accepted), (64, (("windowsize", "64"),)))
        result = negotiate({"blksize": "1468", "windowsize": "100"}, 10, self.limits)
        self.assertEqual(result.windowsize, 65536 // 1468)
        tight = Limits(max_blksize=8192, max_windowsize=64, max_bytes_in_flight=8192)
        result = negotiate({"blksize": "8192", "windowsize": "16"}, 10, tight)
        self.assertEqual(result.windowsize, 1)

    def test_timeout_echoed(self):
        result = negotiate({"timeout": "5"}, None, self.limits)
        self.assertEqual((result.timeout, result.accepted), (5, (("timeout", "5"),)))

    def test_tsize_needs_known_size(self):
        self.assertEqual(negotiate({"tsize": "0"}, None, self.limits).accepted, ())
        self.assertEqual(negotiate({"tsize": "0"}, 0, self.limits).accepted, (("tsize", "0"),))


class TransferTests(unittest.TestCase):

    def test_lock_step_without_options(self):
        data = os.urandom(512 * 3 + 100)
        out = Session(SpyReader(data)).start(0.0)
        self.assertEqual([decode(p)[:2] for p in out], [(wire.DATA, 1)])
        reader = SpyReader(data)
        session = Session(reader)
        self.assertEqual(run_to_end(session), data)
        self.assertEqual((session.result, session.bytes_acked, reader.finished), ("ok", len(data), 1))
        self.assertIsNone(session.deadline)

    def test_exact_multiple_ends_with_empty_block(self):
        data = os.urandom(512 * 2)
        session = Session(SpyReader(data))
        packets = []
        out = session.start(0.0)
        while not session.done:
            packets += out
            out = session.receive(ack(decode(out[-1])[1]), 0.0)
        self.assertEqual([(decode(p)[1], len(decode(p)[2])) for p in packets], [(1, 512), (2, 512), (3, 0)])
        self.assertEqual(session.bytes_acked, 1024)

    def test_windows_across_read_boundaries(self):
        # Blocks are cut from reads of READAHEAD bytes (or a window, if
        # larger): windows that straddle two reads, files that end exactly
        # on a read, one byte before or after.
        from ownsocket.tftp.session import READAHEAD
        for size in (READAHEAD - 1, READAHEAD, READAHEAD + 1, 3 * READAHEAD + 700):
            for blksize, windowsize in ((512, 1), (1468, 16), (1000, 7), (8192, 8)):
                data = os.urandom(size)
                session = Session(SpyReader(data), blksize=blksize, windowsize=windowsize)
                self.assertEqual(run_to_end(session), data, (size, blksize, windowsize))
                self.assertEqual((session.result, session.bytes_acked), ("ok", size))

    def test_empty_file(self):
        session = Session(SpyReader(b""))
        out = session.start(0.0)
        self.assertEqual(out, [b"\x00\x03\x00\x01"])
        self.assertEqual(session.receive(ack(1), 0.1), [])
        self.assertEqual(session.result, "ok")

    def test_oack_then_data(self):
        reader = SpyReader(b"x" * 2000)
        oack = wire.build_oack([("blksize", "1000"), ("tsize", "2000")])
        session = Session(reader, blksize=1000, oack=oack, tsize_offered=True)
        self.assertEqual(session.start(0.0), [oack])
        self.assertEqual(reader.bytes_read, 0)
        self.assertEqual(session.receive(ack(5), 0.01), [])  # only ACK 0 answers an OACK
        out = session.receive(ack(0), 0.01)
        self.assertEqual([decode(p)[:2] for p in out], [(wire.DATA, 1)])
        self.assertEqual(len(decode(out[0])[2]), 1000)

    def test_rollover_past_65535(self):
        # blksize 8 makes 70000 blocks cheap; the numbering is what matters.
        data = os.urandom(8 * 70000 + 3)
        session = Session(SpyReader(data), blksize=8)
        self.assertEqual(run_to_end(session), data)
        self.assertEqual(session.result, "ok")

    def test_rollover_windowed(self):
        data = os.urandom(8 * 66000)
        session = Session(SpyReader(data), blksize=8, windowsize=7)
        self.assertEqual(run_to_end(session), data)

    def test_window_sends_windowsize_blocks(self):
        session = Session(SpyReader(os.urandom(512 * 10)), windowsize=4)
        out = session.start(0.0)
        self.assertEqual([decode(p)[1] for p in out], [1, 2, 3, 4])
        out = session.receive(ack(4), 0.01)
        self.assertEqual([decode(p)[1] for p in out], [5, 6, 7, 8])

    def test_lost_packet_in_window_resends_from_last_ack_once(self):
        data = os.urandom(512 * 20)
        session = Session(SpyReader(data), windowsize=4)
        session.start(0.0)  # 1..4; block 2 is lost
        out = session.receive(ack(1), 0.01)  # client acks the last in-order block
        self.assertEqual([decode(p)[1] for p in out], [2, 3, 4, 5])
        self.assertEqual(session.retransmits, 3)
        self.assertEqual(out[0], wire.build_data(2, data[512:1024]))
        # A second report of the same gap is a duplicate: no resend.
        self.assertEqual(session.receive(ack(1), 0.011), [])
        # A stale partial ACK from the first window: already restarted once.
        self.assertEqual(session.receive(ack(3), 0.012), [])
        self.assertEqual(session.retransmits, 3)
        out = session.receive(ack(5), 0.02)
        self.assertEqual([decode(p)[1] for p in out], [6, 7, 8, 9])

    def test_duplicate_ack_never_resends(self):
        session = Session(SpyReader(os.urandom(5000)))
        session.start(0.0)
        self.assertEqual(len(session.receive(ack(1), 0.01)), 1)
        for _ in range(5):
            self.assertEqual(session.receive(ack(1), 0.02), [])
        self.assertEqual(session.receive(ack(0), 0.02), [])
        self.assertEqual(session.retransmits, 0)

    def test_ack_beyond_what_was_sent_ignored(self):
        session = Session(SpyReader(os.urandom(5000)), windowsize=2)
        session.start(0.0)
        self.assertEqual(session.receive(ack(7), 0.01), [])
        self.assertEqual(session.bytes_acked, 0)

    def test_timer_resends_and_gives_up(self):
        reader = SpyReader(os.urandom(3000))
        session = Session(reader, timeout=1.0, retries=3, windowsize=2)
        first = session.start(0.0)
        self.assertEqual(session.deadline, 1.0)
        self.assertEqual(session.timer_expired(0.5), [])  # early: nothing
        now = 0.0
        for attempt in range(3):
            now = session.deadline
            self.assertEqual(session.timer_expired(now), first)
        self.assertEqual(session.retransmits, 6)
        self.assertFalse(session.done)
        self.assertEqual(session.timer_expired(session.deadline), [])
        self.assertEqual((session.result, reader.finished), ("timeout", 1))
        self.assertIsNone(session.deadline)

    def test_silent_peer_given_up_sooner(self):
        # A spoofed RRQ never answers: 3 expiries, not the configured 6.
        reader = SpyReader(os.urandom(3000))
        session = Session(reader, timeout=1.0, retries=6)
        session.start(0.0)
        expiries = 0
        while not session.done:
            session.timer_expired(session.deadline)
            expiries += 1
            self.assertLess(expiries, 10)
        self.assertEqual((expiries, session.result, reader.finished), (4, "timeout", 1))

    def test_answering_peer_gets_all_retries(self):
        session = Session(SpyReader(os.urandom(3000)), timeout=1.0, retries=6)
        session.start(0.0)
        session.receive(ack(1), 0.01)
        expiries = 0
        while not session.done:
            session.timer_expired(session.deadline)
            expiries += 1
        self.assertEqual(expiries, 7)

    def test_progress_resets_retries(self):
        session = Session(SpyReader(os.urandom(3000)), timeout=1.0, retries=1)
        session.start(0.0)
        session.timer_expired(1.0)
        session.receive(ack(1), 1.1)
        self.assertEqual(len(session.timer_expired(session.deadline)), 1)
        self.assertFalse(session.done)

    def test_rto_adapts_to_fast_peer_within_bounds(self):
        session = Session(SpyReader(os.urandom(512 * 50)), timeout=2.0)
        session.start(0.0)
        now = 0.0
        for block in range(1, 20):
            now += 0.001
            session.receive(ack(block), now)
        self.assertAlmostEqual(session.deadline - now, MIN_RTO)
        # Backoff doubles on expiry but never passes the negotiated timeout.
        deadline = session.deadline
        session.timer_expired(deadline)
        self.assertAlmostEqual(session.deadline - deadline, 2 * MIN_RTO)
        for _ in range(4):
            deadline = session.deadline
            session.timer_expired(deadline)
        self.assertAlmostEqual(session.deadline - deadline, 2.0)

    def test_oack_resent_on_timeout(self):
        oack = wire.build_oack([("tsize", "3")])
        session = Session(SpyReader(b"abc"), oack=oack, tsize_offered=True, retries=2)
        session.start(0.0)
        self.assertEqual(session.timer_expired(1.0), [oack])
        self.assertEqual(session.retransmits, 1)

    def test_size_probe(self):
        reader = SpyReader(os.urandom(10000))
        oack = wire.build_oack([("tsize", "10000"), ("blksize", "1468"), ("windowsize", "4")])
        session = Session(reader, blksize=1468, windowsize=4, oack=oack, tsize_offered=True)
        session.start(0.0)
        out = session.receive(wire.build_error(8, "User aborted the transfer"), 0.01)
        self.assertEqual(out, [])
        self.assertEqual((session.result, reader.finished, reader.bytes_read), ("size probe", 1, 0))

    def test_client_error_during_data(self):
        reader = SpyReader(os.urandom(10000))
        session = Session(reader)
        session.start(0.0)
        session.receive(wire.build_error(0, "disk full"), 0.01)
        self.assertEqual((session.result, reader.finished), ("client error", 1))
        self.assertIn("disk full", session.detail)
        self.assertEqual(session.receive(ack(1), 0.02), [])

    def test_unexpected_opcode_is_illegal(self):
        session = Session(SpyReader(b"abc"))
        session.start(0.0)
        out = session.receive(wire.build_data(1, b"x"), 0.01)
        self.assertEqual(wire.parse_error(out[0])[0], wire.ERR_ILLEGAL)
        self.assertEqual(session.result, "protocol error")

    def test_runt_datagram_ignored(self):
        session = Session(SpyReader(b"abc"))
        session.start(0.0)
        self.assertEqual(session.receive(b"\x00\x04\x00", 0.01), [])
        self.assertFalse(session.done)

    def test_abort_finishes_reader_once(self):
        reader = SpyReader(b"abc")
        session = Session(reader)
        session.start(0.0)
        session.abort("shutdown", 1.0)
        session.abort("shutdown", 2.0)
        self.assertEqual((session.result, reader.finished), ("shutdown", 1))


class NetasciiTests(unittest.TestCase):

    def test_encode(self):
        self.assertEqual(encode(b"a\nb\rc\r\nd"), b"a\r\nb\r\x00c\r\x00\r\nd")

    def test_reader_blocks_are_exact(self):
        text = (b"line one\nline\rtwo\r\n" * 500)
        reader = NetasciiReader(SpyReader(text))
        self.assertIsNone(reader.size)
        chunks = []
        while True:
            chunk = reader.read(512)
            chunks.append(chunk)
            if len(chunk) < 512:
                break
        self.assertTrue(all(len(c) == 512 for c in chunks[:-1]))
        self.assertEqual(b"".join(chunks), encode(text))

    def test_session_in_netascii(self):
        text = b"#!ipxe\nchain http://x/boot\n" * 100
        session = Session(NetasciiReader(SpyReader(text)))
        self.assertEqual(run_to_end(session), encode(text))


class SessionProtocolTests(unittest.TestCase):
    """The thin driver: timers on a Clock, packets on a fake port."""

    def setUp(self):
        self.clock = Clock()
        self.reader = SpyReader(os.urandom(3000))
        self.session = Session(self.reader, timeout=1.0, retries=2)
        self.done = []
        self.peer = ("127.0.0.1", 5000)
        self.protocol = SessionProtocol(self.session, self.peer, self.clock, self.done.append)
        self.transport = FakeDatagramTransport("127.0.0.1", 40001)
        self.protocol.makeConnection(self.transport)
        self.protocol.begin()

    def test_foreign_tid_gets_error_5_and_changes_nothing(self):
        self.assertEqual(len(self.transport.written), 1)
        self.protocol.datagramReceived(ack(1), ("127.0.0.1", 5001))
        self.protocol.datagramReceived(ack(1), ("10.9.9.9", 5000))
        self.assertEqual(self.transport.written[1:], [
            (wire.build_error(5, "Unknown transfer ID"), ("127.0.0.1", 5001)),
            (wire.build_error(5, "Unknown transfer ID"), ("10.9.9.9", 5000))])
        self.assertEqual(self.session.bytes_acked, 0)
        self.protocol.datagramReceived(ack(1), self.peer)
        self.assertEqual(decode(self.transport.written[-1][0])[:2], (wire.DATA, 2))
        self.assertEqual(self.transport.written[-1][1], self.peer)

    def test_foreign_tid_answers_are_bounded(self):
        for port in range(100):
            self.protocol.datagramReceived(ack(1), ("127.0.0.1", 6000 + port))
        self.assertEqual(len(self.transport.written), 1 + 8)
        self.assertEqual(self.session.bytes_acked, 0)

    def test_timer_resends_then_drops_vanished_client(self):
        first = self.transport.written[0]
        self.clock.advance(1.0)
        self.assertEqual(self.transport.written[1], first)
        self.clock.advance(1.0)
        self.assertEqual(self.transport.written[2], first)
        self.assertEqual(self.done, [])
        self.clock.advance(1.0)
        self.assertEqual(self.done, [self.protocol])
        self.assertEqual((self.session.result, self.reader.finished), ("timeout", 1))
        self.assertFalse(self.transport.connected)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_acks_push_the_timer(self):
        for block in (1, 2, 3):
            self.clock.advance(0.9)
            self.protocol.datagramReceived(ack(block), self.peer)
        self.assertEqual(self.session.retransmits, 0)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)

    def test_completion_closes_port(self):
        for block in range(1, 7):
            self.protocol.datagramReceived(ack(block), self.peer)
        self.assertEqual(self.session.result, "ok")
        self.assertEqual(self.done, [self.protocol])
        self.assertFalse(self.transport.connected)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_send_failure_is_a_lost_packet(self):
        self.transport.fail_with = OSError(105, "No buffer space available")
        self.protocol.datagramReceived(ack(1), self.peer)
        self.assertEqual(self.done, [])
        self.transport.fail_with = None
        self.clock.advance(1.0)
        self.assertEqual(decode(self.transport.written[-1][0])[:2], (wire.DATA, 2))

    def test_reader_failure_ends_with_error_0(self):
        def broken(n):
            raise OSError(5, "Input/output error")
        self.reader.read = broken
        # Forget what was read ahead: the next block needs a read.
        self.session._eof = False
        self.session._ready = []
        self.session._ready_at = 0
        self.protocol.datagramReceived(ack(1), self.peer)
        self.assertEqual(wire.parse_error(self.transport.written[-1][0])[0], 0)
        self.assertEqual(self.session.result, "server error")
        self.assertEqual(self.reader.finished, 1)
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
