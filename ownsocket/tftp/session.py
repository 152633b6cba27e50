"""
One read transfer as a state machine (sans-I/O, like h11).

The session is fed datagrams from its peer and timer expiries, each with the
current time, and answers with the datagrams to send; it asks for a timer by
setting L{Session.deadline}.  No reactor, no socket: every edge case (block
number rollover, a lost packet in a window, duplicate ACKs, a vanished
client) is a plain function call in the tests.

Reliability rules it follows:
  - a duplicate ACK never triggers a resend (RFC 1123 4.2.3.1: resending on
    duplicates is the Sorcerer's Apprentice bug, which doubles traffic with
    every delayed packet); only the timer resends;
  - an ACK short of the window's end means the client saw a gap (RFC 7440):
    the window restarts after the acknowledged block, at most once per
    window, so a burst of stale partial ACKs cannot multiply the traffic;
  - the retransmission timeout follows the measured round trip (RFC 6298
    smoothing, Karn's rule: no samples from resent packets), starts at and
    never exceeds the configured or negotiated timeout, and doubles on each
    expiry; after C{retries} expiries without progress the client is gone.
"""

from __future__ import annotations

from typing import List, Optional

from ownsocket.tftp import wire

WAIT_OACK_ACK, SENDING, DONE = "wait-oack-ack", "sending", "done"

#: The timer never goes below this, however fast the link: a busy machine
#: can stall a client for longer than a LAN round trip, and a spurious
#: window resend costs more than a slightly late real one.
MIN_RTO = 0.2
#: Expiries tolerated before the first ACK (a spoofed RRQ never answers).
FIRST_CONTACT_RETRIES = 3
#: Bytes read from the reader per call, at least one window: fewer syscalls
#: in lock-step, bounded memory per session.
READAHEAD = 32768

_pack_data = wire.pack_data_header
_unpack = wire.unpack_header
_DATA, _ACK, _ERROR = wire.DATA, wire.ACK, wire.ERROR


class Session:
    """
    Sends one reader's bytes to one peer.

    @ivar deadline: absolute time at which L{timer_expired} must be called,
        or None when no timer is needed (the session is done).
    @ivar result: None while running; then "ok", "size probe",
        "client error", "timeout", "protocol error", or what L{abort} was
        given.
    """

    def __init__(self, reader, *, blksize: int = 512, windowsize: int = 1,
                 timeout: float = 1.0, retries: int = 6,
                 oack: Optional[bytes] = None, tsize_offered: bool = False,
                 now: float = 0.0, initial_rto: Optional[float] = None):
        self._reader = reader
        self.blksize = blksize
        self.windowsize = windowsize
        self._retries = retries
        # Until the first ACK the peer may be a spoofed address that will
        # never answer: give up sooner, so floods free their slots fast.
        self._retries_left = min(retries, FIRST_CONTACT_RETRIES)
        self._oack = oack
        self._tsize_offered = tsize_offered
        self._max_rto = float(timeout)
        self._min_rto = min(MIN_RTO, self._max_rto)
        # The first timer: the caller may know the round trip from earlier
        # transfers (RFC 6298 2.1 allows it); otherwise the full timeout.
        rto = self._max_rto if initial_rto is None else float(initial_rto)
        self._rto = min(max(rto, self._min_rto), self._max_rto)
        self._srtt: Optional[float] = None
        self._rttvar = 0.0
        self._timing: Optional[float] = None  # send time of a clean window

        self._base = 0          # highest block (absolute) acknowledged
        self._sent = 0          # highest block (absolute) sent
        self._packets: List[bytes] = []   # blocks base+1 .. base+len, built
        self._last_block: Optional[int] = None
        self._last_len = 0
        self._recover_point = 0
        readahead = max(READAHEAD, blksize * windowsize)
        self._readahead = -(-readahead // blksize) * blksize
        # Packets built from the last read, not yet in the window: a whole
        # read is cut into DATA packets at once, so taking the next block is
        # a list index, not a slice, a header and a concatenation per call.
        self._ready: List[bytes] = []
        self._ready_at = 0
        self._built = 0         # highest block (absolute) built
        self._eof = False       # the reader is exhausted (the last block is built)

        self.state = WAIT_OACK_ACK if oack is not None else SENDING
        self.deadline: Optional[float] = None
        self.started = now
        self.ended: Optional[float] = None
        self.result: Optional[str] = None
        self.detail = ""
        self.retransmits = 0
        self.bytes_acked = 0
        self.acked_any = False
        #: Resent something and heard nothing from the peer since: only
        #: such a transfer may be evicted to make room (a new one is not
        #: silent yet, only not yet answered).
        self.silent = False

    @property
    def done(self) -> bool:
        return self.state is DONE

    @property
    def srtt(self) -> Optional[float]:
        """The smoothed round trip measured, or None before any sample."""
        return self._srtt

    @property
    def acked_block(self) -> int:
        """The highest block acknowledged, counted past 65535 (no wrap)."""
        return self._base

    @property
    def bytes_sent(self) -> int:
        """Payload bytes sent at least once (the status page's progress)."""
        sent = self._sent
        if sent and sent == self._last_block:
            return (sent - 1) * self.blksize + self._last_len
        return sent * self.blksize

    # -- events ------------------------------------------------------------

    def start(self, now: float) -> List[bytes]:
        if self.state is WAIT_OACK_ACK:
            self._timing = now
            self.deadline = now + self._rto
            return [self._oack]
        return self._transmit(now, resend=False)

    def receive(self, datagram: bytes, now: float) -> List[bytes]:
        """A datagram from the peer's TID (the caller filters foreign TIDs)."""
        if len(datagram) < 4:
            return []
        self.silent = False
        opcode, number = _unpack(datagram)
        if opcode != _ACK or self.state is not SENDING:
            return self._not_data_ack(opcode, number, datagram, now)
        # The per-packet path: an ACK while data flows.  _progress and
        # _transmit are inlined for the usual case (the whole window
        # acknowledged): it runs once per ACK, so every call counts.
        base = self._base
        sent = self._sent
        delta = (number - base) & 0xFFFF
        if delta == 0 or delta > sent - base:
            return []   # duplicate or stale: only the timer resends
        self.acked_any = True
        self._base = base = base + delta
        packets = self._packets
        del packets[:delta]
        self._retries_left = self._retries
        if self._timing is not None:
            self._sample(now - self._timing)
        if base == self._last_block:
            self.bytes_acked += (delta - 1) * self.blksize + self._last_len
            self._finish("ok", now)
            return []
        self.bytes_acked += delta * self.blksize
        if base == sent:
            # Everything sent was acknowledged: the next window, all new.
            # (Not the last block, so more data remains to be read.)
            at = self._ready_at
            if self.windowsize == 1 and at < len(self._ready) - 1:
                # Lock-step, and the next block is built and not the
                # last one: _fill's work is one list index.
                packet = self._ready[at]
                self._ready_at = at + 1
                packets.append(packet)
                self._timing = None if base & 7 else now
                self._sent = base + 1
                self.deadline = now + self._rto
                return [packet]
            self._fill()
            # Karn's rule allows a sample from any clean window; one in
            # eight is plenty (RFC 6298 asks for one per round trip) and
            # saves the arithmetic on most ACKs in lock-step.
            self._timing = None if base & 7 else now
            self._sent = base + len(packets)
            self.deadline = now + self._rto
            return packets[:]
        if base < self._recover_point:
            return []   # this window was already restarted once
        return self._transmit(now, resend=True)

    def _not_data_ack(self, opcode: int, number: int, datagram: bytes, now: float) -> List[bytes]:
        if self.state is DONE:
            return []
        if opcode == _ACK:  # in WAIT_OACK_ACK: only ACK 0 answers the OACK
            if number != 0:
                return []
            self.acked_any = True
            self.state = SENDING
            self._progress(now)
            return self._transmit(now, resend=False)
        if opcode == _ERROR:
            code, message = wire.parse_error(datagram)
            if self.state is WAIT_OACK_ACK and self._tsize_offered:
                # OVMF asks with tsize=0, reads the size from the OACK and
                # aborts with code 8 before asking again for real.
                self._finish("size probe", now, f"client sent error {code}: {message}")
            else:
                self._finish("client error", now, f"error {code}: {message}")
            return []
        self._finish("protocol error", now, f"unexpected opcode {opcode}")
        return [wire.build_error(wire.ERR_ILLEGAL, "Illegal TFTP operation")]

    def timer_expired(self, now: float) -> List[bytes]:
        if self.state is DONE or self.deadline is None or now < self.deadline:
            return []
        if self._retries_left <= 0:
            self._finish("timeout", now, f"no reply after {self._retries} retries")
            return []
        self._retries_left -= 1
        self._rto = min(self._rto * 2, self._max_rto)
        self._timing = None
        self.silent = True
        if self.state is WAIT_OACK_ACK:
            self.retransmits += 1
            self.deadline = now + self._rto
            return [self._oack]
        return self._transmit(now, resend=True)

    def abort(self, result: str, now: float, detail: str = "") -> None:
        """End the transfer from outside (eviction, shutdown, socket error)."""
        if self.state is not DONE:
            self._finish(result, now, detail)

    # -- internals ---------------------------------------------------------

    def _progress(self, now: float) -> None:
        self._retries_left = self._retries
        if self._timing is not None:
            self._sample(now - self._timing)

    def _sample(self, rtt: float) -> None:
        """One round-trip sample (RFC 6298 smoothing, bounded RTO)."""
        srtt = self._srtt
        if srtt is None:
            srtt, rttvar = rtt, rtt / 2
        else:
            rttvar = 0.75 * self._rttvar + 0.25 * abs(srtt - rtt)
            srtt = 0.875 * srtt + 0.125 * rtt
        self._srtt, self._rttvar = srtt, rttvar
        rto = srtt + 4 * rttvar
        if rto < self._min_rto:
            rto = self._min_rto
        elif rto > self._max_rto:
            rto = self._max_rto
        self._rto = rto

    def _transmit(self, now: float, resend: bool) -> List[bytes]:
        """Send the window after the last ACK: only unsent blocks, or all."""
        packets = self._packets
        if len(packets) < self.windowsize and self._last_block is None:
            self._fill()
        outstanding = self._sent - self._base
        if resend:
            self.retransmits += outstanding
            self._recover_point = self._sent
            self._timing = None
            out = packets[:]
        else:
            self._timing = now
            out = packets[outstanding:]
        self._sent = self._base + len(packets)
        self.deadline = now + self._rto
        return out

    def _fill(self) -> None:
        """Top the window up to C{windowsize} packets from the built ones."""
        packets = self._packets
        missing = self.windowsize - len(packets)
        ready, at = self._ready, self._ready_at
        while missing > 0:
            left = len(ready) - at
            if left <= 0:
                if self._eof:
                    break
                ready, at = self._build(), 0
                continue
            if missing == 1:
                packets.append(ready[at])
                at += 1
                break
            take = missing if missing < left else left
            packets += ready[at:at + take]
            at += take
            missing -= take
        if at >= len(ready) and self._eof and self._last_block is None:
            # The last block is in the window now.
            self._last_block = self._base + len(packets)
            self._last_len = len(packets[-1]) - 4
            ready, at = [], 0
        self._ready, self._ready_at = ready, at

    def _build(self) -> List[bytes]:
        """Read the next chunk and cut it into DATA packets.  A short read
        is the end of the file: its last packet is shorter than a block
        (empty when the size is a multiple of the block size)."""
        size = self._readahead
        chunk = self._reader.read(size)
        blksize = self.blksize
        view = memoryview(chunk)
        first = self._built + 1
        count = len(chunk) // blksize
        if len(chunk) < size:
            self._eof = True
            count += 1   # the short (maybe empty) last block
        self._built += count
        return [_pack_data(_DATA, (first + i) & 0xFFFF) + view[i * blksize:(i + 1) * blksize]
                for i in range(count)]

    def _finish(self, result: str, now: float, detail: str = "") -> None:
        self.state = DONE
        self.result = result
        self.detail = detail
        self.deadline = None
        self.ended = now
        self._packets = []
        self._ready = []
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.finish()
