#!/usr/bin/env python3
"""
TFTP: request and option parsing, and the whole server (listener, admission,
session state machine) fed arbitrary datagrams and timer expiries.

Input (first byte 0xff): one Session alone; see L{session_program}.
Input (otherwise): a program of steps, each a 2-byte instruction and a
length-prefixed datagram.  Instruction byte 0 picks the action, byte 1 its argument:
  0  the datagram to port 69 from client (arg % 4)
  1  the datagram to transfer port (arg % n) from its own client
  2  the datagram to transfer port (arg % n) from a stranger
  3  advance the clock by arg / 20 seconds (timers fire)
  4  an RRQ for file (arg % 4) with the datagram's bytes as options text
Every transfer runs on fake ports and a Clock, with the server's real
code; a small server (max_sessions 4, 2 per client) so admission,
eviction and the waiting queue are reached quickly.

What counts as a bug:
  - any exception, or one the code caught and logged (log.failure);
  - parse_request accepting a request that does not survive
    build_request -> parse_request unchanged;
  - a sent DATA packet whose payload is not the file's bytes at that
    block, or longer than the block size granted; an OACK granting
    something not asked for or out of the configured bounds; a packet
    that is not DATA, OACK or ERROR;
  - after a long quiet time: a transfer still in the table, a reader not
    finished exactly once, a started transfer without exactly one
    "finished" event, a result outside events.KINDS' list.
"""

import os
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _harness  # noqa: E402

import atheris  # noqa: E402

with atheris.instrument_imports(include=["ownsocket"]):
    from ownsocket.config import TftpConfig
    from ownsocket.events import EventBus, EventList
    from ownsocket.files import BytesReader
    from ownsocket.interfaces import AccessViolation, FileNotFound, IFileBackend
    from ownsocket.tftp import wire
    from ownsocket.tftp.service import TFTPService
    from ownsocket.tftp.session import Session

from twisted.internet import defer  # noqa: E402
from zope.interface import implementer  # noqa: E402

from tests.fakes import FakeUDPReactor  # noqa: E402

FILES = {
    "a": bytes(range(256)) * 12 + b"tail",    # 3076 bytes
    "b": b"",
    "c": bytes(512),
    "d/e.txt": b"line one\nline two\r\n\rthree\n",
}
NAMES = [b"a", b"b", b"c", b"d/e.txt"]
MAX_BLKSIZE, MAX_WINDOW = 1468, 8
CLIENTS = [("192.0.2.10", 1000), ("192.0.2.10", 1001), ("192.0.2.11", 2000), ("198.51.100.7", 69)]
STRANGER = ("203.0.113.9", 4242)
RESULTS = {"ok", "not-found", "denied", "size-probe", "timeout", "aborted", "refused", "error"}


class Reader(BytesReader):
    def __init__(self, data):
        super().__init__(data)
        self.finished = 0

    def finish(self):
        self.finished += 1
        super().finish()


@implementer(IFileBackend)
class Backend:
    def __init__(self):
        self.readers = []

    def get_reader(self, request):
        if request.path == "secret":
            raise AccessViolation("no")
        data = FILES.get(request.path)
        if data is None:
            raise FileNotFound(request.path)
        reader = Reader(data)
        self.readers.append(reader)
        return defer.succeed(reader)


trap = _harness.FailureTrap().install()


def check_request(datagram: bytes) -> None:
    try:
        request = wire.parse_request(datagram)
    except wire.MalformedPacket:
        return
    again = wire.parse_request(wire.build_request(request.opcode, request.filename, request.mode,
                                                  request.options))
    assert again == request, (request, again)


def check_sent(packet: bytes, protocol, name) -> None:
    opcode = wire.opcode_of(packet)
    if opcode == wire.ERROR:
        wire.parse_error(packet)
        return
    if opcode == wire.OACK:
        granted = wire.parse_oack(packet)
        assert set(granted) <= {"blksize", "windowsize", "tsize", "timeout"}, granted
        if "blksize" in granted:
            assert 8 <= int(granted["blksize"]) <= MAX_BLKSIZE, granted
        if "windowsize" in granted:
            assert 1 <= int(granted["windowsize"]) <= MAX_WINDOW, granted
        return
    assert opcode == wire.DATA, packet[:4]
    block = struct.unpack_from("!H", packet, 2)[0]
    blksize = protocol.session.blksize
    payload = packet[4:]
    assert len(payload) <= blksize, (len(payload), blksize)
    data = FILES.get(name)
    if data is not None and protocol.transport is not None:
        mode = protocol_mode[id(protocol)]
        if mode == "octet":
            assert block >= 1 and payload == data[(block - 1) * blksize:block * blksize], \
                (name, block, blksize, payload[:16])


protocol_mode = {}


def session_program(data: bytes) -> None:
    """
    One Session (the sans-I/O state machine) alone, with parameters beyond
    what the server's config would grant: block sizes from 8, windows up
    to 64, files of up to 6,000 bytes, with or without an OACK; fed ACKs
    (absolute, or relative to what was sent), ERRORs, runts and other
    garbage, and timer expiries.  Every DATA must carry the file's bytes;
    the session must end once the peer falls silent, finish its reader
    exactly once, and an "ok" must mean every byte was acknowledged.
    """
    if len(data) < 6:
        return
    blksize = 8 + data[1] * 4
    windowsize = 1 + data[2] % 64
    size = int.from_bytes(data[3:5], "big") % 6001
    content = bytes((index * 7 + index // 251) & 0xFF for index in range(size))
    flags = data[5]
    oack = wire.build_oack({"blksize": str(blksize)}) if flags & 1 else None
    reader = Reader(content)
    session = Session(reader, blksize=blksize, windowsize=windowsize, timeout=1.0, retries=3,
                      oack=oack, tsize_offered=bool(flags & 2), now=0.0,
                      initial_rto=(0.2 if flags & 4 else None))
    now = 0.0
    highest = 0

    def check(packets):
        nonlocal highest
        for packet in packets:
            opcode = wire.opcode_of(packet)
            if opcode == wire.OACK:
                assert packet == oack
                continue
            if opcode == wire.ERROR:
                wire.parse_error(packet)
                continue
            assert opcode == wire.DATA, packet[:4]
            block = struct.unpack_from("!H", packet, 2)[0]
            assert block >= 1 and packet[4:] == content[(block - 1) * blksize:block * blksize], \
                (block, blksize, len(packet))
            highest = max(highest, block)
        assert len(packets) <= windowsize + 1, (len(packets), windowsize)

    check(session.start(now))
    at = 6
    while at + 3 <= len(data) and not session.done:
        kind, value = data[at] % 6, int.from_bytes(data[at + 1:at + 3], "big")
        at += 3
        now += (value & 0x7) * 0.01
        if kind == 0:
            out = session.receive(wire.build_ack(value), now)
        elif kind == 1:
            out = session.receive(wire.build_ack(max(0, highest - (value & 0x1F))), now)
        elif kind == 2:
            if session.deadline is not None:
                now = max(now, session.deadline)
            out = session.timer_expired(now)
        elif kind == 3:
            out = session.receive(data[at:at + (value & 0x7)], now)
        elif kind == 4:
            out = session.receive(wire.build_error(value & 0xF, "x"), now)
        else:
            out = session.receive(struct.pack("!HH", value >> 8, value & 0xFF), now)
        check(out)
        assert session.bytes_acked <= size
    for _ in range(50):   # the peer falls silent
        if session.done:
            break
        assert session.deadline is not None
        now = max(now, session.deadline)
        check(session.timer_expired(now))
    assert session.done, session.state
    assert reader.finished == 1, reader.finished
    if session.result == "ok":
        assert session.bytes_acked == size, (session.bytes_acked, size)


def test_one_input(data: bytes) -> None:
    if data[:1] == b"\xff":
        session_program(data)
        trap.check()
        return
    server_program(data)


def server_program(data: bytes) -> None:
    reactor = FakeUDPReactor()
    backend = Backend()
    bus = EventBus(reactor)
    seen = EventList()
    bus.subscribe(seen)
    config = TftpConfig(port=69, max_blksize=MAX_BLKSIZE, max_windowsize=MAX_WINDOW,
                        max_bytes_in_flight=8 * 1024, max_sessions=4, max_sessions_per_client=2,
                        timeout=1.0, retries=3)
    service = TFTPService(config, backend=backend, reactor=reactor, events=bus)
    service.startService()
    listener = reactor.ports[0][1]
    checked = {}   # transport -> packets already checked
    protocol_mode.clear()

    def sessions():
        return [(proto, transport) for _, proto, _, transport in reactor.ports[1:]]

    def check_all():
        for proto, transport in sessions():
            done = checked.get(id(transport), 0)
            transfer_name = getattr(proto, "_fuzz_name", None)
            for packet, _ in transport.written[done:]:
                check_sent(packet, proto, transfer_name)
            checked[id(transport)] = len(transport.written)

    at = 0
    steps = 0
    while at + 3 <= len(data) and steps < 64:
        action, argument, length = data[at] % 5, data[at + 1], data[at + 2]
        datagram = data[at + 3:at + 3 + length]
        at += 3 + length
        steps += 1
        if action == 0:
            check_request(datagram)
            listener.datagramReceived(datagram, CLIENTS[argument % len(CLIENTS)])
        elif action == 4:
            name = NAMES[argument % len(NAMES)]
            request = b"\x00\x01" + name + b"\x00octet\x00" + datagram
            check_request(request)
            listener.datagramReceived(request, CLIENTS[argument % len(CLIENTS)])
        elif action == 3:
            reactor.advance(argument / 20.0)
        else:
            running = sessions()
            if not running:
                continue
            proto, transport = running[argument % len(running)]
            peer = proto.peer if action == 1 else STRANGER
            proto.datagramReceived(datagram, peer)
        # Note the file and mode of every transfer that appeared.
        for proto, transport in sessions():
            if not hasattr(proto, "_fuzz_name"):
                transfer = service.server.transfers.get(proto.peer)
                request = transfer.request if transfer is not None else None
                proto._fuzz_name = request.filename.decode("latin-1").replace("\\", "/").lstrip("/") \
                    if request is not None else None
                protocol_mode[id(proto)] = request.mode if request is not None else "?"
        check_all()
        trap.check()

    # A long quiet time: every transfer times out and is cleaned up.
    for _ in range(100):
        reactor.advance(1.0)
        if not service.server.transfers and not service.server._waiting:
            break
    check_all()
    assert not service.server.transfers, service.server.transfers
    assert service.transfers_in_flight() == []
    assert all(reader.finished == 1 for reader in backend.readers), \
        [reader.finished for reader in backend.readers]
    # Every started transfer finished exactly once, before its client's
    # next one started; refusals finish without starting.
    open_transfers = {}
    for event in seen.events:
        key = (event.peer, event.fields.get("port"))
        if event.kind == "started":
            assert key not in open_transfers, ("started twice", key)
            open_transfers[key] = event
        elif event.kind == "finished":
            open_transfers.pop(key, None)
            assert event.fields["result"] in RESULTS, event.fields["result"]
    assert not open_transfers, ("never finished", open_transfers)
    assert len([e for e in seen.events if e.kind == "started"]) <= len(backend.readers)
    service.stopService()
    trap.check()


def _step(action, argument, datagram):
    return bytes([action, argument, len(datagram)]) + datagram


def seeds():
    # Session programs (first byte 0xff): a perfect client, a lossy one.
    yield b"\xff" + bytes([1, 15, 0x0b, 0xb8, 1]) + b"".join(bytes([0, 0, n]) for n in range(0, 40))
    yield b"\xff" + bytes([125, 3, 0x17, 0x70, 6]) + bytes([1, 0, 2, 2, 0, 0, 1, 0, 0, 0, 0, 3] * 8)
    ack = wire.build_ack
    yield (_step(4, 0, b"blksize\x00512\x00tsize\x000\x00") + _step(1, 0, ack(0))
           + b"".join(_step(1, 0, ack(n)) for n in range(1, 8)))
    # OVMF: size probe aborted with error 8, then windowed fetch.
    yield (_step(4, 0, b"tsize\x000\x00blksize\x001468\x00windowsize\x004\x00")
           + _step(1, 0, wire.build_error(8, "User aborted"))
           + _step(4, 0, b"blksize\x001468\x00windowsize\x004\x00") + _step(1, 0, ack(0))
           + _step(1, 0, ack(2)) + _step(3, 30, b"") + _step(1, 0, ack(3)))
    yield _step(0, 1, wire.build_request(wire.RRQ, b"c")) + _step(1, 0, ack(1)) + _step(1, 0, ack(2))
    yield _step(0, 2, wire.build_request(wire.RRQ, b"d/e.txt", "netascii")) + _step(2, 0, ack(1))
    yield b"".join(_step(4, n, b"") for n in range(6)) + _step(3, 40, b"") + _step(4, 1, b"")
    yield _step(0, 0, wire.build_request(wire.WRQ, b"x")) + _step(0, 0, b"\x00\x09junk")


if __name__ == "__main__":
    _harness.main("tftp", test_one_input, seeds())
