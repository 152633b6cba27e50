"""
Netascii (RFC 764 via RFC 1350) on the fly.

The conversion is per byte (LF -> CR LF, CR -> CR NUL), so chunks can be
converted independently and the converted stream sliced into blocks of
exactly blksize bytes.  The converted size is not known without reading the
whole file twice, so a netascii transfer offers no tsize.
"""

from zope.interface import implementer

from ownsocket.interfaces import IReader

_CHUNK = 65536


def encode(data: bytes) -> bytes:
    # CR first: the CRs inserted for LF must not become CR NUL.
    return data.replace(b"\r", b"\r\x00").replace(b"\n", b"\r\n")


@implementer(IReader)
class NetasciiReader:
    """Wraps a reader; its size is unknown (None) by design."""

    size = None

    def __init__(self, inner):
        self._inner = inner
        self._buffer = b""
        self._eof = False

    def read(self, n: int) -> bytes:
        while len(self._buffer) < n and not self._eof:
            raw = self._inner.read(max(n, _CHUNK))
            if not raw:
                self._eof = True
                break
            self._buffer += encode(raw)
        out, self._buffer = self._buffer[:n], self._buffer[n:]
        return out

    def finish(self) -> None:
        self._inner.finish()
