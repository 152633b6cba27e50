"""
TFTP packets as bytes and back (RFC 1350, 2347): no sockets, no clocks.

Parsing is strict about structure and forgiving about content: a request
without a NUL-terminated file name and mode is garbage, but an unknown or
truncated trailing option is ignored, because firmware in the wild pads and
truncates and the RFCs tell servers to ignore what they do not understand.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

from ownsocket.interfaces import AccessViolation, BackendError, FileNotFound

RRQ, WRQ, DATA, ACK, ERROR, OACK = 1, 2, 3, 4, 5, 6

# RFC 1350 error codes, and RFC 2347's code 8.
ERR_UNDEFINED = 0
ERR_NOT_FOUND = 1
ERR_ACCESS = 2
ERR_DISK_FULL = 3
ERR_ILLEGAL = 4
ERR_UNKNOWN_TID = 5
ERR_EXISTS = 6
ERR_NO_USER = 7
ERR_OPTIONS = 8

MODES = ("octet", "netascii")

_HEADER = struct.Struct("!HH")
_OPCODE = struct.Struct("!H")
#: The DATA header packer, bound once: it is called for every block sent.
pack_data_header = struct.Struct("!HH").pack
unpack_header = _HEADER.unpack_from


class MalformedPacket(ValueError):
    """The datagram is not a TFTP packet we can act on."""


@dataclass(frozen=True)
class Request:
    """A parsed RRQ or WRQ."""

    opcode: int
    filename: bytes
    mode: str
    options: Dict[str, str] = field(default_factory=dict)


def opcode_of(datagram: bytes) -> Optional[int]:
    """The opcode, or None when the datagram is too short to have one."""
    if len(datagram) < 2:
        return None
    return _OPCODE.unpack_from(datagram)[0]


def parse_request(datagram: bytes) -> Request:
    """
    Parse an RRQ/WRQ.  Option names and the mode are case-insensitive
    (RFC 1350, 2347) and come back lower-cased; values stay as sent.
    Duplicate options: the first one wins.

    @raise MalformedPacket: not a request, or no file name/mode.
    """
    opcode = opcode_of(datagram)
    if opcode not in (RRQ, WRQ):
        raise MalformedPacket("not a request")
    fields = datagram[2:].split(b"\x00")
    # A well-formed request ends with NUL, so the split leaves a final b"".
    if len(fields) < 3:
        raise MalformedPacket("request without NUL-terminated file name and mode")
    filename, mode = fields[0], fields[1]
    if not filename:
        raise MalformedPacket("empty file name")
    try:
        mode_text = mode.decode("ascii").lower()
    except UnicodeDecodeError:
        raise MalformedPacket("mode is not ASCII") from None
    if not mode_text:
        raise MalformedPacket("empty mode")
    options: Dict[str, str] = {}
    rest = fields[2:-1]
    for index in range(0, len(rest) - 1, 2):
        name = rest[index].decode("latin-1").lower()
        if name and name not in options:
            options[name] = rest[index + 1].decode("latin-1")
    return Request(opcode, filename, mode_text, options)


def build_request(opcode: int, filename: bytes, mode: str = "octet",
                  options: Optional[Dict[str, str]] = None) -> bytes:
    parts = [_OPCODE.pack(opcode), filename, b"\x00", mode.encode("ascii"), b"\x00"]
    for name, value in (options or {}).items():
        parts += [name.encode("latin-1"), b"\x00", str(value).encode("latin-1"), b"\x00"]
    return b"".join(parts)


def build_data(block: int, payload: bytes) -> bytes:
    return pack_data_header(DATA, block & 0xFFFF) + payload


def build_ack(block: int) -> bytes:
    return _HEADER.pack(ACK, block & 0xFFFF)


def build_error(code: int, message: str) -> bytes:
    return _HEADER.pack(ERROR, code) + message.encode("utf-8", "replace") + b"\x00"


def build_oack(options) -> bytes:
    """C{options}: ordered (name, value) pairs or a dict, already accepted."""
    items = options.items() if hasattr(options, "items") else options
    parts = [_OPCODE.pack(OACK)]
    for name, value in items:
        parts += [name.encode("latin-1"), b"\x00", str(value).encode("latin-1"), b"\x00"]
    return b"".join(parts)


def parse_oack(datagram: bytes) -> Dict[str, str]:
    if opcode_of(datagram) != OACK:
        raise MalformedPacket("not an OACK")
    fields = datagram[2:].split(b"\x00")[:-1]
    return {fields[i].decode("latin-1").lower(): fields[i + 1].decode("latin-1")
            for i in range(0, len(fields) - 1, 2)}


def parse_error(datagram: bytes) -> Tuple[int, str]:
    """(code, message); a missing NUL or undecodable text is tolerated."""
    if len(datagram) < 4 or opcode_of(datagram) != ERROR:
        raise MalformedPacket("not an ERROR packet")
    code = _HEADER.unpack_from(datagram)[1]
    message = datagram[4:].split(b"\x00", 1)[0].decode("utf-8", "replace")
    return code, message


def error_for(exception: BaseException) -> Tuple[int, str]:
    """
    The one place where backend failures become TFTP error codes.  Messages
    of unexpected exceptions are not sent to the client: they may reveal
    paths or internals.
    """
    if isinstance(exception, FileNotFound):
        return ERR_NOT_FOUND, "File not found"
    if isinstance(exception, AccessViolation):
        return ERR_ACCESS, "Access violation"
    if isinstance(exception, BackendError):
        return ERR_UNDEFINED, str(exception) or "Server error"
    return ERR_UNDEFINED, "Internal server error"
