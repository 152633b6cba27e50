"""
Option negotiation (RFC 2347, 2348, 2349, 7440).

A value the client sent outside its RFC range is left out of the OACK rather
than clamped: clamping a blksize of 4 up to 8 would hand the client a block
size it never offered to handle.  A value inside the range but above what we
allow is lowered, which every RFC explicitly permits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

DEFAULT_BLKSIZE = 512
BLKSIZE_RANGE = (8, 65464)
TIMEOUT_RANGE = (1, 255)
WINDOWSIZE_RANGE = (1, 65535)


@dataclass(frozen=True)
class Limits:
    """What the server allows; normally built from the TftpConfig."""

    max_blksize: int = 1468
    max_windowsize: int = 64
    max_bytes_in_flight: int = 65536


@dataclass(frozen=True)
class Negotiated:
    blksize: int
    windowsize: int
    timeout: Optional[int]
    tsize: Optional[int]
    #: (name, value) pairs for the OACK, in the client's order; empty means
    #: "send no OACK, start with DATA 1".
    accepted: Tuple[Tuple[str, str], ...]


def _integer(text: str) -> Optional[int]:
    """Plain ASCII decimal only: no signs, no spaces, no 0x, no unicode digits."""
    if not text or len(text) > 12 or not text.isascii() or not text.isdigit():
        return None
    return int(text)


def _in_range(value: Optional[int], bounds) -> bool:
    return value is not None and bounds[0] <= value <= bounds[1]


def negotiate(options, size: Optional[int], limits: Limits) -> Negotiated:
    """
    @param options: the request's options (lower-case names -> text).
    @param size: the reader's size, or None when unknown (then no tsize).
    """
    blksize = DEFAULT_BLKSIZE
    windowsize = 1
    timeout = None
    tsize = None
    accepted = []
    requested_blksize = _integer(options.get("blksize", ""))
    if "blksize" in options and _in_range(requested_blksize, BLKSIZE_RANGE):
        blksize = max(BLKSIZE_RANGE[0], min(requested_blksize, limits.max_blksize))
    for name, text in options.items():
        value = _integer(text)
        if name == "blksize":
            if _in_range(value, BLKSIZE_RANGE):
                accepted.append((name, str(blksize)))
        elif name == "tsize":
            # In an RRQ the client sends 0 (or anything): we answer the size.
            if value is not None and size is not None:
                tsize = size
                accepted.append((name, str(size)))
        elif name == "timeout":
            if _in_range(value, TIMEOUT_RANGE):
                timeout = value
                accepted.append((name, str(value)))
        elif name == "windowsize":
            if _in_range(value, WINDOWSIZE_RANGE):
                by_bytes = max(1, limits.max_bytes_in_flight // blksize)
                windowsize = max(1, min(value, limits.max_windowsize, by_bytes))
                accepted.append((name, str(windowsize)))
    return Negotiated(blksize, windowsize, timeout, tsize, tuple(accepted))
