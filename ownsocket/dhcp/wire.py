"""
DHCP/BOOTP on the wire: a strict parser and a reply builder, with no I/O.

dhcppython does not validate what it parses (it raises assorted exceptions on
bad input, reads option lengths past the end, lets the last duplicate win and
ignores option 52), and its encoder forgets End after an option whose data
ends in 0xFF and never pads.  So every received byte goes through the
bounds-checked walk below first, and replies are assembled and serialised
here from checked pieces.  dhcppython decodes option values for display
(L{describe_options}), and the tests check our header against its encoder.
"""

from __future__ import annotations

import functools
import ipaddress
import struct
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from dhcppython import options as dhcp_options

IPv4 = ipaddress.IPv4Address

BOOTREQUEST, BOOTREPLY = 1, 2
MAGIC_COOKIE = b"\x63\x82\x53\x63"
HEADER = struct.Struct("!BBBBIHHIIII16s64s128s")
HEADER_SIZE = HEADER.size  # 236
MIN_SIZE = HEADER_SIZE  # a BOOTP request without vendor area is still legal
MAX_SIZE = 4096  # anything larger is not a DHCP client speaking
MIN_REPLY_SIZE = 300  # RFC 1542 §3.3: some clients ignore shorter replies
DEFAULT_MAX_REPLY = 576 - 28  # IP datagram minimum less IP and UDP headers
BROADCAST_FLAG = 0x8000

DISCOVER, OFFER, REQUEST, DECLINE, ACK, NAK, RELEASE, INFORM = range(1, 9)
MESSAGE_NAMES = {
    None: "BOOTP", DISCOVER: "DISCOVER", OFFER: "OFFER", REQUEST: "REQUEST",
    DECLINE: "DECLINE", ACK: "ACK", NAK: "NAK", RELEASE: "RELEASE", INFORM: "INFORM",
}

OPT_PAD, OPT_END = 0, 255
OPT_SUBNET_MASK, OPT_ROUTER, OPT_DNS, OPT_HOSTNAME = 1, 3, 6, 12
OPT_BOOT_SIZE, OPT_DOMAIN = 13, 15
OPT_VENDOR_SPECIFIC = 43
OPT_REQUESTED_ADDRESS, OPT_LEASE_TIME, OPT_OVERLOAD = 50, 51, 52
OPT_MESSAGE_TYPE, OPT_SERVER_ID, OPT_PARAMETER_LIST = 53, 54, 55
OPT_MESSAGE, OPT_MAX_SIZE, OPT_RENEWAL, OPT_REBINDING = 56, 57, 58, 59
OPT_VENDOR_CLASS, OPT_CLIENT_ID = 60, 61
OPT_TFTP_SERVER, OPT_BOOTFILE = 66, 67
OPT_USER_CLASS, OPT_RELAY_INFO = 77, 82
OPT_CLIENT_ARCH, OPT_NIC_VERSION, OPT_CLIENT_UUID = 93, 94, 97
OPT_IPXE = 175

#: Options whose payload has a fixed length; a request that breaks one of
#: these is malformed rather than merely unusual.
FIXED_LENGTHS = {
    OPT_REQUESTED_ADDRESS: 4, OPT_SERVER_ID: 4, OPT_MESSAGE_TYPE: 1,
    OPT_MAX_SIZE: 2, OPT_OVERLOAD: 1, OPT_LEASE_TIME: 4,
}


#: option 93 bytes -> architectures: a fleet sends a handful of distinct values
_ARCHES: Dict[bytes, Tuple[int, ...]] = {}


class MalformedPacket(ValueError):
    """The datagram is not a well-formed BOOTP/DHCP request; drop it."""


def _lazy_address(slot):
    """An address field made into an IPv4Address only when asked for: most
    requests never look at siaddr or yiaddr, and building the objects was a
    tenth of the per-packet cost.  The integer stays in C{slot} (comparing
    an IPv4Address with 0 goes through an exception: 5 % of a relayed
    exchange), the object is kept beside it."""
    cache = slot + "_object"

    def get(self):
        value = getattr(self, cache)
        if value is None:
            value = IPv4(getattr(self, slot))
            setattr(self, cache, value)
        return value

    return property(get)


@functools.lru_cache(maxsize=1024)
def address_text(value: int) -> str:
    """Dotted text of an address as an integer: a relay's giaddr is written
    into every log line and reply destination of the clients behind it."""
    return str(IPv4(value))


class Message:
    """One parsed BOOTP/DHCP message; options keep their wire bytes.

    Built only by L{parse}; treat it as read-only."""

    __slots__ = ("op", "htype", "hlen", "hops", "xid", "secs", "flags", "_ciaddr", "_yiaddr",
                 "_siaddr", "_giaddr", "_ciaddr_object", "_yiaddr_object", "_siaddr_object",
                 "_giaddr_object", "chaddr", "sname", "file", "options", "option_order",
                 "has_cookie", "mac", "parameter_list")

    def __init__(self, op, htype, hlen, hops, xid, secs, flags, ciaddr, yiaddr, siaddr, giaddr,
                 chaddr, sname, file, options, option_order=(), has_cookie=True):
        self.op, self.htype, self.hlen, self.hops = op, htype, hlen, hops
        self.xid, self.secs, self.flags = xid, secs, flags
        self._ciaddr, self._yiaddr, self._siaddr, self._giaddr = int(ciaddr), int(yiaddr), int(siaddr), int(giaddr)
        self._ciaddr_object = self._yiaddr_object = self._siaddr_object = self._giaddr_object = None
        self.chaddr, self.sname, self.file = chaddr, sname, file
        self.options, self.option_order, self.has_cookie = options, option_order, has_cookie
        self.mac = chaddr[:hlen].hex(":")
        self.parameter_list = tuple(options.get(OPT_PARAMETER_LIST, b""))

    ciaddr = _lazy_address("_ciaddr")
    yiaddr = _lazy_address("_yiaddr")
    siaddr = _lazy_address("_siaddr")
    giaddr = _lazy_address("_giaddr")

    def _giaddr_int(self) -> int:
        return self._giaddr

    @property
    def giaddr_text(self) -> str:
        return address_text(self._giaddr)

    @property
    def relayed(self) -> bool:
        """giaddr is set: a relay agent forwarded this request."""
        return self._giaddr != 0

    @property
    def has_ciaddr(self) -> bool:
        return self._ciaddr != 0

    def __repr__(self):
        return f"<Message {MESSAGE_NAMES.get(self.message_type, '?')} from {self.mac} xid {self.xid:#010x}>"

    @property
    def message_type(self) -> Optional[int]:
        """The DHCP message type, or None for a plain BOOTP request."""
        value = self.options.get(OPT_MESSAGE_TYPE)
        return value[0] if value else None

    @property
    def broadcast(self) -> bool:
        return bool(self.flags & BROADCAST_FLAG)

    def address_option(self, code: int) -> Optional[IPv4]:
        value = self.options.get(code)
        return IPv4(value) if value is not None else None

    @property
    def requested_address(self) -> Optional[IPv4]:
        return self.address_option(OPT_REQUESTED_ADDRESS)

    @property
    def server_id(self) -> Optional[IPv4]:
        return self.address_option(OPT_SERVER_ID)

    @property
    def max_reply_size(self) -> int:
        """Largest DHCP payload the client accepts (RFC 2132 §9.10).

        Option 57 counts the whole IP datagram, so IP and UDP headers come off.
        Values under 576 are illegal and ignored.
        """
        value = self.options.get(OPT_MAX_SIZE)
        if value is None:
            return DEFAULT_MAX_REPLY
        size = struct.unpack("!H", value)[0]
        return max(size, 576) - 28

    @property
    def arch_types(self) -> Tuple[int, ...]:
        value = self.options.get(OPT_CLIENT_ARCH)
        if value is None:
            return ()
        arches = _ARCHES.get(value)
        if arches is None:
            arches = tuple(struct.unpack(f"!{len(value) // 2}H", value[: len(value) // 2 * 2]))
            if len(_ARCHES) > 1024:
                _ARCHES.clear()  # made-up lists cannot grow it
            _ARCHES[value] = arches
        return arches

    @property
    def user_classes(self) -> Tuple[bytes, ...]:
        return parse_user_class(self.options.get(OPT_USER_CLASS))

    @property
    def relay_info(self) -> Tuple[Tuple[int, bytes], ...]:
        value = self.options.get(OPT_RELAY_INFO)
        if value is None:
            return ()
        return tuple(walk_suboptions(value))


def parse_user_class(value: Optional[bytes]) -> Tuple[bytes, ...]:
    """
    Option 77 exists in two shapes: RFC 3004 length-prefixed items, and the
    raw string iPXE sends (FIRMWARE-FACTS §1a).  Read it as RFC 3004 only if
    the framing accounts for every byte exactly; otherwise it is raw.
    """
    if not value:
        return ()
    items, position = [], 0
    while position < len(value):
        length = value[position]
        end = position + 1 + length
        if length == 0 or end > len(value):
            return (value,)
        items.append(value[position + 1:end])
        position = end
    return tuple(items)


def walk_suboptions(value: bytes):
    """Bounds-checked walk of code/length/data records (options 43, 82, 175)."""
    position = 0
    while position < len(value):
        code = value[position]
        if code == OPT_PAD:
            position += 1
            continue
        if code == OPT_END:
            return
        if position + 2 > len(value):
            raise MalformedPacket("sub-option header runs past the end")
        length = value[position + 1]
        end = position + 2 + length
        if end > len(value):
            raise MalformedPacket(f"sub-option {code} length {length} runs past the end")
        yield code, value[position + 2:end]
        position = end


def _walk_options(data: bytes, start: int, stop: int, found: Dict[int, bytearray], order: List[int],
                  require_end: bool) -> None:
    position = start
    while position < stop:
        code = data[position]
        if code == OPT_PAD:
            position += 1
            continue
        if code == OPT_END:
            return
        if position + 2 > stop:
            raise MalformedPacket(f"option {code} at offset {position} has no length byte")
        length = data[position + 1]
        end = position + 2 + length
        if end > stop:
            raise MalformedPacket(f"option {code} at offset {position} claims {length} bytes, "
                                  f"only {stop - position - 2} remain")
        if code in found:
            found[code] += data[position + 2:end]  # RFC 3396: concatenate
        else:
            found[code] = bytearray(data[position + 2:end])
            order.append(code)
        position = end
    if require_end:
        raise MalformedPacket("overloaded field has no End option")


def parse(data: bytes) -> Message:
    """
    Parse a BOOTREQUEST strictly.

    @raise MalformedPacket: for anything truncated, oversized, inconsistent
        or not a request; the caller drops the datagram and logs the reason.
    """
    size = len(data)
    if size < MIN_SIZE:
        raise MalformedPacket(f"{size} bytes is shorter than a BOOTP header ({MIN_SIZE})")
    if size > MAX_SIZE:
        raise MalformedPacket(f"{size} bytes is larger than the {MAX_SIZE}-byte cap")
    (op, htype, hlen, hops, xid, secs, flags, ciaddr, yiaddr, siaddr, giaddr,
     chaddr, sname, file) = HEADER.unpack_from(data)
    if op != BOOTREQUEST:
        raise MalformedPacket(f"op {op} is not BOOTREQUEST")
    if htype != 1 or hlen != 6:
        raise MalformedPacket(f"hardware type {htype}/length {hlen} is not Ethernet")
    if hops > 16:
        raise MalformedPacket(f"hops {hops} exceeds 16 (RFC 1542 relay limit)")

    found: Dict[int, bytearray] = {}
    order: List[int] = []
    has_cookie = size >= HEADER_SIZE + 4 and data[HEADER_SIZE:HEADER_SIZE + 4] == MAGIC_COOKIE
    if has_cookie:
        _walk_options(data, HEADER_SIZE + 4, size, found, order, require_end=False)
        overload = found.get(OPT_OVERLOAD)
        if overload is not None:
            if len(overload) != 1 or overload[0] not in (1, 2, 3):
                raise MalformedPacket("option 52 (overload) must be 1, 2 or 3")
            # RFC 2131 §4.1: file first, then sname.
            if overload[0] & 1:
                _walk_options(data, 108, 236, found, order, require_end=True)
            if overload[0] & 2:
                _walk_options(data, 44, 108, found, order, require_end=True)
            if overload[0] & 1:
                file = b""
            if overload[0] & 2:
                sname = b""
    elif size > HEADER_SIZE + 64:
        # RFC 951 vendor area without the RFC 1048 cookie: opaque, ignore it.
        pass

    for code, expected in FIXED_LENGTHS.items():
        value = found.get(code)
        if value is not None and len(value) != expected:
            raise MalformedPacket(f"option {code} has length {len(value)}, expected {expected}")
    message_type = found.get(OPT_MESSAGE_TYPE)
    if message_type is not None and not DISCOVER <= message_type[0] <= INFORM:
        raise MalformedPacket(f"message type {message_type[0]} is unknown")
    if message_type is not None and message_type[0] in (OFFER, ACK, NAK):
        raise MalformedPacket(f"{MESSAGE_NAMES[message_type[0]]} is a server message")
    arch = found.get(OPT_CLIENT_ARCH)
    if arch is not None and (not arch or len(arch) % 2):
        raise MalformedPacket(f"option 93 has odd length {len(arch)}")
    relay = found.get(OPT_RELAY_INFO)
    if relay is not None:
        for _ in walk_suboptions(bytes(relay)):
            pass

    return Message(op, htype, hlen, hops, xid, secs, flags, ciaddr, yiaddr, siaddr, giaddr,
                   chaddr, sname.split(b"\x00", 1)[0], file.split(b"\x00", 1)[0],
                   {code: bytes(value) for code, value in found.items()}, tuple(order), has_cookie)


def describe_options(message: Message) -> List[Tuple[int, str, object]]:
    """Human-readable option values (through dhcppython's decoders) for logs
    and for the explain command; a value dhcppython cannot decode is shown
    as hex rather than raising."""
    described = []
    for code in message.option_order:
        value = message.options[code]
        try:
            decoded = dhcp_options.options.bytes_to_object(
                bytes([code, len(value) & 0xFF]) + value).value
        except Exception:
            decoded = value.hex()
        name = dhcp_options.options.code_to_class(code).__name__ if code else "Pad"
        described.append((code, name, decoded))
    return described


# ---------------------------------------------------------------------------
# Replies

def encode_option(code: int, value: bytes) -> bytes:
    """One option, split into several records if longer than 255 (RFC 3396)."""
    size = len(value)
    if size <= 255:
        return bytes((code, size)) + value
    chunks = []
    for start in range(0, size, 255):
        piece = value[start:start + 255]
        chunks.append(bytes((code, len(piece))) + piece)
    return b"".join(chunks)


@dataclass
class Reply:
    """A reply being assembled: header fields plus options in send order."""

    request: Message
    message_type: Optional[int]  # None: a BOOTP reply
    yiaddr: IPv4 = IPv4(0)
    siaddr: IPv4 = IPv4(0)
    ciaddr: IPv4 = IPv4(0)
    sname: bytes = b""
    file: bytes = b""
    flags: Optional[int] = None
    options: List[Tuple[int, bytes]] = field(default_factory=list)

    def add(self, code: int, value: bytes) -> None:
        self.options.append((code, value))


#: Options that keep their place whatever the client asked: 53 and 54 first
#: (some ROMs look only there), 82 last (RFC 3046 §2.1).
_PLACE_FIRST = {OPT_MESSAGE_TYPE: -2, OPT_SERVER_ID: -1}
_PROTECTED = frozenset((OPT_MESSAGE_TYPE, OPT_SERVER_ID, OPT_RELAY_INFO))
_UNASKED = 1000  # after every code of option 55 (at most 255 of them)
_LAST = 2000
#: option 55 -> {code: position}, for the few parameter lists a fleet sends
_RANKS: Dict[bytes, Dict[int, int]] = {}


def _ranks(parameter_list: bytes) -> Dict[int, int]:
    ranks = _RANKS.get(parameter_list)
    if ranks is None:
        ranks = {}
        for index, code in enumerate(parameter_list):
            ranks.setdefault(code, index)
        ranks.update(_PLACE_FIRST)
        ranks[OPT_RELAY_INFO] = _LAST
        if len(_RANKS) > 1024:
            _RANKS.clear()  # a client making up lists cannot grow this
        _RANKS[parameter_list] = ranks
    return ranks


def build(reply: Reply) -> bytes:
    """
    Serialise a reply: the BOOTP header, the cookie, the options, End always
    present, padded to 300 bytes, options trimmed from the back to fit the
    client's limit.

    Order on the wire: 53 and 54 first (some ROMs look only there), then the
    rest in the order the client listed them in option 55, then what it did
    not ask for, with option 82 last as RFC 3046 §2.1 requires.

    The header is packed here with one C{struct} call rather than through
    dhcppython's C{DHCPPacket}, which was a fifth of the cost of a reply
    under load; tests/test_dhcp_wire.py checks that both give the same bytes.
    """
    request = reply.request
    ranks = _ranks(request.options.get(OPT_PARAMETER_LIST, b""))
    ordered = sorted(reply.options, key=lambda item: ranks.get(item[0], _UNASKED))
    records = [encode_option(code, value) for code, value in ordered]
    limit = max(request.max_reply_size if request.has_cookie else DEFAULT_MAX_REPLY, MIN_REPLY_SIZE)
    budget = limit - HEADER_SIZE - len(MAGIC_COOKIE) - 1  # 1 for End
    while sum(map(len, records)) > budget:
        # Drop the lowest-ranked optional option until the reply fits.
        for index in range(len(ordered) - 1, -1, -1):
            if ordered[index][0] not in _PROTECTED:
                del ordered[index], records[index]
                break
        else:
            break

    flags = request.flags if reply.flags is None else reply.flags
    header = HEADER.pack(
        BOOTREPLY, 1, 6, 0, request.xid, 0, flags,  # parse() accepts only Ethernet
        int(reply.ciaddr), int(reply.yiaddr), int(reply.siaddr), request._giaddr_int(),
        request.chaddr[:6], reply.sname[:63], reply.file[:127])
    encoded = b"".join((header, MAGIC_COOKIE, *records, b"\xff"))
    if len(encoded) < MIN_REPLY_SIZE:
        encoded += bytes(MIN_REPLY_SIZE - len(encoded))
    return encoded


def address_bytes(addresses: Sequence[IPv4]) -> bytes:
    return b"".join(address.packed for address in addresses)
