"""
Where served bytes come from, and the one place that decides whether a name
a client sent may be served at all.

TFTP (and later HTTP) clients send names that were never meant to be trusted:
firmware copies the DHCP boot file name verbatim, Windows tools send
backslashes, and anyone on the LAN can send C{../../etc/shadow}.  Every name
therefore goes through L{normalise} (syntax) and L{resolve} (the filesystem,
symlinks included) before a file is opened, and the DHCP server calls
L{resolve} too so that the size it advertises is the size TFTP will serve.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Tuple

from twisted.internet import defer
from zope.interface import implementer

from ownsocket.interfaces import (
    AccessViolation, BackendError, FileNotFound, IFileBackend, IReader)

#: Longest name accepted from a client, in bytes.  Real boot file names are
#: short; a long one is either a mistake or an attempt to make the server
#: work hard (deep directory walks, huge log lines).
MAX_NAME_BYTES = 255


@dataclass(frozen=True)
class ReadRequest:
    """
    Everything a backend may base its answer on.

    C{boot_request} lets a backend render per-client content (an iPXE script
    per MAC): TFTP only knows the peer address, DHCP knows who is behind it.
    """

    path: str
    peer: Tuple[str, int]
    options: Mapping[str, str] = field(default_factory=dict)
    boot_request: Optional[Any] = None


def normalise(name) -> str:
    """
    Turn a client's name into a relative C{a/b/c} path, or refuse it.

    Percent-encodings are deliberately not decoded: C{%2e%2e} is a legal file
    name on disk and means exactly that.  Backslashes become slashes because
    Windows deployment tools (WDS) send C{boot\\x64\\wdsmgfw.efi}.  A leading
    slash is stripped, as tftpd-hpa does with C{-s}, so C{/pxelinux.0} means
    the file in the root.

    @param name: C{bytes} from the wire or C{str}.
    @raise AccessViolation: for NUL bytes, over-long names, C{..} components
        and names that are empty once normalised.
    """
    if isinstance(name, str):
        raw = name.encode("utf-8", "surrogateescape")
    else:
        raw = bytes(name)
    if b"\x00" in raw:
        raise AccessViolation("file name contains a NUL byte")
    if len(raw) > MAX_NAME_BYTES:
        raise AccessViolation(f"file name longer than {MAX_NAME_BYTES} bytes")
    text = raw.decode("utf-8", "surrogateescape").replace("\\", "/")
    parts = []
    for part in text.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            raise AccessViolation("file name contains '..'")
        parts.append(part)
    if not parts:
        raise AccessViolation("empty file name")
    return "/".join(parts)


def _find_casefolded(directory: str, part: str) -> Optional[str]:
    """The entry of C{directory} whose name matches C{part} ignoring case."""
    try:
        names = os.listdir(directory)
    except OSError:
        return None
    wanted = part.casefold()
    matches = sorted(name for name in names if name.casefold() == wanted)
    return matches[0] if matches else None


def resolve(root: str, name, case_insensitive: bool = False) -> str:
    """
    The absolute path of the regular file C{name} under C{root}.

    Symlinks are followed and the result must still be inside the real root,
    so a link to C{/etc} placed in the root serves nothing outside it.

    @raise FileNotFound: no such regular file (directories count as absent).
    @raise AccessViolation: the name is refused, escapes the root, or the file
        is not readable.
    """
    relative = normalise(name)
    real_root = os.path.realpath(root)
    candidate = real_root
    for part in relative.split("/"):
        step = os.path.join(candidate, part)
        if case_insensitive and not os.path.lexists(step):
            found = _find_casefolded(candidate, part)
            if found is not None:
                step = os.path.join(candidate, found)
        candidate = step
    real = os.path.realpath(candidate)
    if real != real_root and not real.startswith(real_root.rstrip(os.sep) + os.sep):
        raise AccessViolation("file name resolves outside the root")
    try:
        info = os.stat(real)
    except OSError as error:
        if error.errno in (errno.EACCES, errno.EPERM):
            raise AccessViolation("permission denied") from None
        raise FileNotFound("file not found") from None
    if not stat.S_ISREG(info.st_mode):
        raise FileNotFound("file not found")
    if not os.access(real, os.R_OK):
        raise AccessViolation("permission denied")
    return real


@implementer(IReader)
class FileReader:
    """An open regular file; its size is exact because it comes from fstat."""

    def __init__(self, fileobj, size: int):
        self._file = fileobj
        self.size = size

    def read(self, n: int) -> bytes:
        return self._file.read(n)

    def seek(self, offset: int) -> None:
        """Optional beyond IReader: lets an HTTP Range start mid-file
        without reading and discarding everything before it."""
        self._file.seek(offset)

    def finish(self) -> None:
        self._file.close()


@implementer(IReader)
class BytesReader:
    """Generated content (an iPXE script, a menu) served like a file."""

    def __init__(self, data: bytes):
        self._view = memoryview(bytes(data))
        self._offset = 0
        self.size = len(self._view)

    def read(self, n: int) -> bytes:
        start = self._offset
        self._offset = min(start + n, self.size)
        return self._view[start:self._offset].tobytes()

    def finish(self) -> None:
        self._view.release()


def open_file(path: str) -> FileReader:
    """
    Open C{path} for reading without ever blocking the reactor.

    O_NONBLOCK keeps a FIFO swapped in after L{resolve} from hanging the
    process; the fstat check then refuses it.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as error:
        if error.errno in (errno.EACCES, errno.EPERM):
            raise AccessViolation("permission denied") from None
        if error.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
            raise FileNotFound("file not found") from None
        raise BackendError(f"cannot open: {error.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise FileNotFound("file not found")
        # Regular files ignore O_NONBLOCK for reads; unbuffered reads let the
        # TFTP session read exactly one window per call.
        fileobj = os.fdopen(fd, "rb", buffering=0)
    except BaseException:
        os.close(fd)
        raise
    return FileReader(fileobj, info.st_size)


@implementer(IFileBackend)
class FilesystemBackend:
    """
    Files under one root directory.

    Opening is synchronous: it is a few syscalls on a local disk, cheaper
    than a thread hop, and the Deferred keeps the door open for backends that
    really are asynchronous.
    """

    def __init__(self, root: str, case_insensitive: bool = False):
        self.root = root
        self.case_insensitive = case_insensitive

    def resolve(self, name) -> str:
        return resolve(self.root, name, self.case_insensitive)

    def get_reader(self, request: ReadRequest):
        try:
            return defer.succeed(open_file(self.resolve(request.path)))
        except BackendError:
            return defer.fail()

    def size(self, request: ReadRequest) -> int:
        """What C{get_reader} would serve, in bytes, without opening it (for
        DHCP option 13); the same for every client, so callers may keep it
        a while.  Raises what C{get_reader} would fail with."""
        path = self.resolve(request.path)
        try:
            info = os.stat(path)
        except OSError:
            raise FileNotFound(request.path) from None
        if not stat.S_ISREG(info.st_mode):
            raise FileNotFound(request.path)  # as open_file: only regular files are served
        return info.st_size
