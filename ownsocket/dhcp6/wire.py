"""
DHCPv6 (RFC 8415) on the wire: a strict parser and a reply builder, no I/O.

dhcppython knows only DHCPv4, so this is our own.  Every length is checked
before it is used and anything malformed raises L{MalformedPacket}, the only
exception the parser lets out: the protocol drops such a datagram with one
log line and the server keeps serving everyone else.  Options are kept in
wire order as raw bytes, and the ones the server decides on are decoded once
into typed fields of L{Message}.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field
from typing import Optional, Sequence, Tuple

IPv6 = ipaddress.IPv6Address

# Message types (RFC 8415 §7.3).
SOLICIT, ADVERTISE, REQUEST, CONFIRM, RENEW, REBIND, REPLY = 1, 2, 3, 4, 5, 6, 7
RELEASE, DECLINE, RECONFIGURE, INFORMATION_REQUEST, RELAY_FORW, RELAY_REPL = 8, 9, 10, 11, 12, 13

MESSAGE_NAMES = {
    SOLICIT: "Solicit", ADVERTISE: "Advertise", REQUEST: "Request", CONFIRM: "Confirm",
    RENEW: "Renew", REBIND: "Rebind", REPLY: "Reply", RELEASE: "Release", DECLINE: "Decline",
    RECONFIGURE: "Reconfigure", INFORMATION_REQUEST: "Information-Request",
    RELAY_FORW: "Relay-forw", RELAY_REPL: "Relay-repl",
}

#: What a server may receive from a client (anything else is dropped).
CLIENT_MESSAGES = frozenset({SOLICIT, REQUEST, CONFIRM, RENEW, REBIND, RELEASE, DECLINE,
                             INFORMATION_REQUEST})

# Option codes.
OPT_CLIENTID, OPT_SERVERID, OPT_IA_NA, OPT_IA_TA, OPT_IAADDR, OPT_ORO = 1, 2, 3, 4, 5, 6
OPT_PREFERENCE, OPT_ELAPSED_TIME, OPT_RELAY_MSG, OPT_STATUS_CODE, OPT_RAPID_COMMIT = 7, 8, 9, 13, 14
OPT_USER_CLASS, OPT_VENDOR_CLASS, OPT_VENDOR_OPTS, OPT_INTERFACE_ID = 15, 16, 17, 18
OPT_DNS_SERVERS, OPT_DOMAIN_LIST, OPT_IA_PD = 23, 24, 25
OPT_BOOTFILE_URL, OPT_BOOTFILE_PARAM, OPT_CLIENT_ARCH, OPT_NII = 59, 60, 61, 62
OPT_CLIENT_LINKLAYER_ADDR = 79

# Status codes (RFC 8415 §21.13).
SUCCESS, UNSPEC_FAIL, NO_ADDRS_AVAIL, NO_BINDING, NOT_ON_LINK, USE_MULTICAST = 0, 1, 2, 3, 4, 5

#: IANA enterprise number of Intel, which PXE and UEFI HTTP boot use in option 16.
ENTERPRISE_PXE = 343

#: Largest datagram parsed; DHCPv6 clients stay far below (OVMF: 158 bytes).
MAX_SIZE = 4096
#: RFC 8415 §19: HOP_COUNT_LIMIT.
MAX_RELAY_DEPTH = 8

_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_IA = struct.Struct("!III")
_LIFETIMES = struct.Struct("!II")

#: Options a message may carry at most once (RFC 8415 §21: every one of
#: these is defined as singular).
_SINGLETONS = frozenset({OPT_CLIENTID, OPT_SERVERID, OPT_ORO, OPT_PREFERENCE, OPT_ELAPSED_TIME,
                         OPT_RELAY_MSG, OPT_RAPID_COMMIT, OPT_USER_CLASS, OPT_INTERFACE_ID,
                         OPT_CLIENT_ARCH, OPT_NII, OPT_BOOTFILE_URL, OPT_CLIENT_LINKLAYER_ADDR})


class MalformedPacket(ValueError):
    """The datagram is not a DHCPv6 message this server may answer."""


@dataclass(frozen=True)
class IAAddress:
    address: IPv6
    preferred: int = 0
    valid: int = 0


@dataclass(frozen=True)
class IANA:
    iaid: int
    t1: int = 0
    t2: int = 0
    addresses: Tuple[IAAddress, ...] = ()


@dataclass(frozen=True)
class Message:
    """
    A client message (or the innermost message of a relay chain).

    @ivar options: every option in wire order as C{(code, raw value)}.
    @ivar vendor_classes: option 16 as C{(enterprise, (data, ...))} tuples.
    @ivar relays: the Relay-forw wrappers, outermost first (empty when the
        client talked to us directly).
    """

    message_type: int
    xid: int
    options: Tuple[Tuple[int, bytes], ...] = ()
    client_id: Optional[bytes] = None
    server_id: Optional[bytes] = None
    ia_na: Tuple[IANA, ...] = ()
    oro: Tuple[int, ...] = ()
    elapsed: Optional[int] = None
    rapid_commit: bool = False
    user_classes: Tuple[bytes, ...] = ()
    vendor_classes: Tuple[Tuple[int, Tuple[bytes, ...]], ...] = ()
    client_arch: Tuple[int, ...] = ()
    nii: Optional[bytes] = None
    relays: Tuple["Relay", ...] = ()

    @property
    def name(self) -> str:
        return MESSAGE_NAMES.get(self.message_type, str(self.message_type))

    @property
    def vendor_class(self) -> Optional[bytes]:
        """The first vendor-class string, the DHCPv6 twin of DHCPv4 option 60."""
        for _, items in self.vendor_classes:
            if items:
                return items[0]
        return None

    def option(self, code: int) -> Optional[bytes]:
        for option_code, value in self.options:
            if option_code == code:
                return value
        return None


@dataclass(frozen=True)
class Relay:
    """One Relay-forw header (RFC 8415 §9.1) and its options but 9."""

    hop_count: int
    link_address: IPv6
    peer_address: IPv6
    interface_id: Optional[bytes] = None
    options: Tuple[Tuple[int, bytes], ...] = ()


# ---------------------------------------------------------------------------
# Parsing

def parse(data: bytes) -> Message:
    """
    One client datagram -> L{Message} (a Relay-forw is unwrapped, its
    headers kept in C{relays}).

    @raise MalformedPacket: for anything a server must not answer: a cut-off
        option, a wrong fixed length, a repeated singular option, a message a
        server never receives, or one that lacks (or wrongly carries) the
        identifiers RFC 8415 §16 requires of its type.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise MalformedPacket("not bytes")
    data = bytes(data)
    if len(data) > MAX_SIZE:
        raise MalformedPacket(f"{len(data)} bytes is more than {MAX_SIZE}")
    return _parse(data, ())


def _parse(data: bytes, relays: Tuple[Relay, ...]) -> Message:
    if len(data) < 4:
        raise MalformedPacket(f"{len(data)} bytes is shorter than a DHCPv6 header")
    message_type = data[0]
    if message_type == RELAY_FORW:
        return _parse_relay(data, relays)
    if message_type not in CLIENT_MESSAGES:
        raise MalformedPacket(f"message type {message_type} ({MESSAGE_NAMES.get(message_type, 'unknown')}) "
                              "is not sent by clients")
    xid = int.from_bytes(data[1:4], "big")
    options = _walk(data, 4)
    fields = _decode(options)
    message = Message(message_type=message_type, xid=xid, options=options, relays=relays, **fields)
    _check_identifiers(message)
    return message


def _parse_relay(data: bytes, relays: Tuple[Relay, ...]) -> Message:
    if len(relays) >= MAX_RELAY_DEPTH:
        raise MalformedPacket(f"relayed through more than {MAX_RELAY_DEPTH} relays")
    if len(data) < 34:
        raise MalformedPacket("Relay-forw shorter than its 34-byte header")
    hop_count = data[1]
    link_address, peer_address = IPv6(data[2:18]), IPv6(data[18:34])
    options = _walk(data, 34)
    inner = interface_id = None
    rest = []
    for code, value in options:
        if code == OPT_RELAY_MSG:
            inner = value
        elif code == OPT_INTERFACE_ID:
            interface_id = value
        else:
            rest.append((code, value))
    _no_duplicates(options)
    if inner is None:
        raise MalformedPacket("Relay-forw without a Relay Message option")
    relay = Relay(hop_count, link_address, peer_address, interface_id, tuple(rest))
    return _parse(inner, relays + (relay,))


def _walk(data: bytes, offset: int) -> Tuple[Tuple[int, bytes], ...]:
    """The (code, value) list of an option area, every length checked."""
    options = []
    end = len(data)
    while offset < end:
        if offset + 4 > end:
            raise MalformedPacket(f"option header cut off at byte {offset}")
        code, length = struct.unpack_from("!HH", data, offset)
        offset += 4
        if offset + length > end:
            raise MalformedPacket(f"option {code} claims {length} bytes, {end - offset} left")
        options.append((code, data[offset:offset + length]))
        offset += length
    return tuple(options)


def _no_duplicates(options) -> None:
    seen = set()
    for code, _ in options:
        if code in _SINGLETONS:
            if code in seen:
                raise MalformedPacket(f"option {code} appears twice")
            seen.add(code)


def _decode(options) -> dict:
    _no_duplicates(options)
    fields: dict = {}
    ia_na = []
    iaids = set()
    for code, value in options:
        if code in (OPT_CLIENTID, OPT_SERVERID):
            if not 2 < len(value) <= 130:  # a DUID: 2-byte type and 1 to 128 bytes
                raise MalformedPacket(f"option {code}: a DUID of {len(value)} bytes")
            fields["client_id" if code == OPT_CLIENTID else "server_id"] = value
        elif code == OPT_IA_NA:
            ia = _parse_ia_na(value)
            if ia.iaid in iaids:
                raise MalformedPacket(f"IA_NA {ia.iaid:#x} appears twice")
            iaids.add(ia.iaid)
            ia_na.append(ia)
        elif code == OPT_ORO:
            fields["oro"] = _u16_list(code, value)
        elif code == OPT_ELAPSED_TIME:
            if len(value) != 2:
                raise MalformedPacket(f"option 8 (elapsed time) has {len(value)} bytes, not 2")
            fields["elapsed"] = _U16.unpack(value)[0]
        elif code == OPT_RAPID_COMMIT:
            if value:
                raise MalformedPacket("option 14 (rapid commit) must be empty")
            fields["rapid_commit"] = True
        elif code == OPT_USER_CLASS:
            fields["user_classes"] = tuple(_framed(code, value, 0))
        elif code == OPT_VENDOR_CLASS:
            if len(value) < 4:
                raise MalformedPacket("option 16 (vendor class) shorter than its enterprise number")
            enterprise = _U32.unpack_from(value)[0]
            entry = (enterprise, tuple(_framed(code, value, 4)))
            fields["vendor_classes"] = fields.get("vendor_classes", ()) + (entry,)
        elif code == OPT_CLIENT_ARCH:
            arches = _u16_list(code, value)
            if not arches:
                raise MalformedPacket("option 61 (client architecture) is empty")
            fields["client_arch"] = arches
        elif code == OPT_NII:
            if len(value) != 3:
                raise MalformedPacket(f"option 62 (network interface id) has {len(value)} bytes, not 3")
            fields["nii"] = value
        elif code == OPT_PREFERENCE and len(value) != 1:
            raise MalformedPacket(f"option 7 (preference) has {len(value)} bytes, not 1")
    fields["ia_na"] = tuple(ia_na)
    return fields


def _parse_ia_na(value: bytes) -> IANA:
    if len(value) < 12:
        raise MalformedPacket(f"option 3 (IA_NA) has {len(value)} bytes, fewer than 12")
    iaid, t1, t2 = _IA.unpack_from(value)
    addresses = []
    for code, sub in _walk(value, 12):
        if code == OPT_IAADDR:
            if len(sub) < 24:
                raise MalformedPacket(f"option 5 (IA address) has {len(sub)} bytes, fewer than 24")
            preferred, valid = _LIFETIMES.unpack_from(sub, 16)
            _walk(sub, 24)  # its own options (a status code) must be well formed too
            addresses.append(IAAddress(IPv6(sub[:16]), preferred, valid))
        elif code == OPT_STATUS_CODE and len(sub) < 2:
            raise MalformedPacket("status code option shorter than 2 bytes")
    return IANA(iaid, t1, t2, tuple(addresses))


def _u16_list(code: int, value: bytes) -> Tuple[int, ...]:
    if len(value) % 2:
        raise MalformedPacket(f"option {code} has an odd length {len(value)}")
    return struct.unpack(f"!{len(value) // 2}H", value)


def _framed(code: int, value: bytes, offset: int):
    """RFC 8415 §21.15/§21.16 data: 2-byte length, then that many bytes, repeated."""
    end = len(value)
    while offset < end:
        if offset + 2 > end:
            raise MalformedPacket(f"option {code}: item length cut off")
        length = _U16.unpack_from(value, offset)[0]
        offset += 2
        if offset + length > end:
            raise MalformedPacket(f"option {code}: item of {length} bytes, {end - offset} left")
        yield value[offset:offset + length]
        offset += length


def _check_identifiers(message: Message) -> None:
    """RFC 8415 §16: which identifiers each message type must (not) carry."""
    kind = message.message_type
    name = message.name
    if kind != INFORMATION_REQUEST and message.client_id is None:
        raise MalformedPacket(f"{name} without a Client Identifier")
    if kind in (REQUEST, RENEW, RELEASE, DECLINE) and message.server_id is None:
        raise MalformedPacket(f"{name} without a Server Identifier")
    if kind in (SOLICIT, CONFIRM, REBIND) and message.server_id is not None:
        raise MalformedPacket(f"{name} with a Server Identifier")
    if kind == INFORMATION_REQUEST and message.ia_na:
        raise MalformedPacket("Information-Request with an IA_NA")


# ---------------------------------------------------------------------------
# DUIDs

DUID_LLT, DUID_EN, DUID_LL, DUID_UUID = 1, 2, 3, 4


def duid_ll(mac: str) -> bytes:
    """DUID-LL (type 3, hardware type 1 = Ethernet): stable and needs no clock."""
    return struct.pack("!HH", DUID_LL, 1) + bytes.fromhex(mac.replace(":", ""))


def mac_from_duid(duid: Optional[bytes]) -> Optional[str]:
    """The Ethernet MAC inside a DUID-LLT or DUID-LL, if it holds one."""
    if not duid or len(duid) < 4:
        return None
    kind, hardware = struct.unpack_from("!HH", duid)
    if hardware != 1:
        return None
    if kind == DUID_LLT and len(duid) == 14:
        raw = duid[8:]
    elif kind == DUID_LL and len(duid) == 10:
        raw = duid[4:]
    else:
        return None
    return ":".join(f"{b:02x}" for b in raw)


def mac_from_link_local(address) -> Optional[str]:
    """The MAC behind a modified EUI-64 link-local address (fe80::5054:ff:fe99:10)."""
    try:
        packed = IPv6(str(address).split("%", 1)[0]).packed
    except ValueError:
        return None
    if packed[:8] != b"\xfe\x80" + bytes(6) or packed[11:13] != b"\xff\xfe":
        return None
    raw = bytes((packed[8] ^ 0x02,)) + packed[9:11] + packed[13:16]
    return ":".join(f"{b:02x}" for b in raw)


def uuid_from_duid(duid: Optional[bytes]) -> Optional[bytes]:
    """The 16 bytes of a DUID-UUID (RFC 6355)."""
    if duid and len(duid) == 18 and duid[:2] == b"\x00\x04":
        return duid[2:]
    return None


# ---------------------------------------------------------------------------
# Building replies

def option(code: int, value: bytes) -> bytes:
    if len(value) > 0xFFFF:
        raise ValueError(f"option {code} value of {len(value)} bytes is too long")
    return _U16.pack(code) + _U16.pack(len(value)) + value


def iaaddr(address: IPv6, preferred: int, valid: int, status: Optional[Tuple[int, str]] = None) -> bytes:
    body = address.packed + _LIFETIMES.pack(preferred, valid)
    if status is not None:
        body += status_code(*status)
    return option(OPT_IAADDR, body)


def ia_na(iaid: int, t1: int, t2: int, addresses: Sequence[bytes] = (),
          status: Optional[Tuple[int, str]] = None) -> bytes:
    body = _IA.pack(iaid, t1, t2) + b"".join(addresses)
    if status is not None:
        body += status_code(*status)
    return option(OPT_IA_NA, body)


def status_code(code: int, text: str = "") -> bytes:
    return option(OPT_STATUS_CODE, _U16.pack(code) + text.encode("utf-8"))


def vendor_class(enterprise: int, items: Sequence[bytes]) -> bytes:
    """Option 16 as RFC 8415 frames it: enterprise, then length-prefixed items."""
    return option(OPT_VENDOR_CLASS, _U32.pack(enterprise) +
                  b"".join(_U16.pack(len(item)) + item for item in items))


def addresses(code: int, values: Sequence[IPv6]) -> bytes:
    return option(code, b"".join(value.packed for value in values))


def domain_list(names: Sequence[str]) -> bytes:
    """Option 24: names in DNS wire format (RFC 1035 §3.1), no compression."""
    body = b""
    for name in names:
        for label in name.strip(".").split("."):
            raw = label.encode("ascii")
            if not 0 < len(raw) < 64:
                raise ValueError(f"{name!r}: a DNS label must be 1 to 63 bytes")
            body += bytes((len(raw),)) + raw
        body += b"\0"
    return option(OPT_DOMAIN_LIST, body)


def build(message_type: int, xid: int, options: Sequence[bytes]) -> bytes:
    """A server message: type, transaction id, then the already encoded options."""
    return bytes((message_type,)) + (xid & 0xFFFFFF).to_bytes(3, "big") + b"".join(options)


def wrap_relay_reply(reply: bytes, relays: Sequence[Relay]) -> bytes:
    """RFC 8415 §19.3: a Relay-repl per Relay-forw, innermost first, echoing
    each relay's addresses and Interface-Id."""
    for relay in reversed(relays):
        body = option(OPT_RELAY_MSG, reply)
        if relay.interface_id is not None:
            body = option(OPT_INTERFACE_ID, relay.interface_id) + body
        reply = (bytes((RELAY_REPL, relay.hop_count)) + relay.link_address.packed +
                 relay.peer_address.packed + body)
    return reply


# ---------------------------------------------------------------------------
# Reading server messages (for tests and the integration checks)

@dataclass(frozen=True)
class ServerMessage:
    message_type: int
    xid: int
    options: Tuple[Tuple[int, bytes], ...] = field(default=())

    def option(self, code: int) -> Optional[bytes]:
        for option_code, value in self.options:
            if option_code == code:
                return value
        return None

    def ia_na(self) -> Tuple[IANA, ...]:
        return tuple(_parse_ia_na(value) for code, value in self.options if code == OPT_IA_NA)

    def status(self) -> Optional[int]:
        value = self.option(OPT_STATUS_CODE)
        return _U16.unpack_from(value)[0] if value and len(value) >= 2 else None


def ia_status(value: bytes) -> Optional[int]:
    """The status code inside one IA_NA option's value, if any."""
    for code, sub in _walk(value, 12):
        if code == OPT_STATUS_CODE and len(sub) >= 2:
            return _U16.unpack_from(sub)[0]
    return None


def parse_server_message(data: bytes) -> ServerMessage:
    """An Advertise/Reply, loosely (what tests read back)."""
    if len(data) < 4:
        raise MalformedPacket("shorter than a DHCPv6 header")
    return ServerMessage(data[0], int.from_bytes(data[1:4], "big"), _walk(data, 4))
