#!/usr/bin/env python3
"""
HTTP: the request path and the Range header, as ownsocket/http.py and
ownsocket/files.py turn them into a file and a byte range (read-only use
of their functions; no server is started).

Input: a byte choosing how the file size is read, the size, a Range
header up to the first newline, then the request path.
What counts as a bug:
  - parse_range raising anything but Unsatisfiable, or returning a range
    outside the file or backwards;
  - the path decoder raising anything but FileNotFound/AccessViolation,
    or accepting a path with a '..' component or a NUL;
  - resolve() returning a path outside the served root (a small tree with
    a file, a directory and a symlink pointing out of it).
"""

import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _harness  # noqa: E402

import atheris  # noqa: E402

with atheris.instrument_imports(include=["ownsocket"]):
    from ownsocket import files, http
    from ownsocket.interfaces import AccessViolation, FileNotFound

# A fixed, read-only tree (reused by every run, never left behind twice):
# a file, a directory and symlinks inside and out of the root.
ROOT = os.path.join(tempfile.gettempdir(), f"ownsocket-fuzz-http-{os.getuid()}")
if not os.path.lexists(os.path.join(ROOT, "alias.ipxe")):
    os.makedirs(os.path.join(ROOT, "efi", "boot"), exist_ok=True)
    with open(os.path.join(ROOT, "efi", "boot", "bootx64.efi"), "wb") as f:
        f.write(b"x" * 100)
    with open(os.path.join(ROOT, "boot.ipxe"), "wb") as f:
        f.write(b"#!ipxe\n")
    for link, target in (("escape", "/etc"), ("alias.ipxe", "boot.ipxe")):
        try:
            os.symlink(target, os.path.join(ROOT, link))
        except FileExistsError:
            pass
REAL_ROOT = os.path.realpath(ROOT)


class Request:
    """What BootFileResource._path reads of a twisted.web request."""

    def __init__(self, path: bytes):
        self.path = path


def check_range(header: bytes, size):
    try:
        result = http.parse_range(header, size)
    except http.Unsatisfiable:
        assert size is not None
        return
    if result is None:
        return
    first, last = result
    assert size is not None and 0 <= first <= last < size, (header, size, result)


def check_path(raw: bytes):
    try:
        path = http.BootFileResource._path(Request(raw))
    except (FileNotFound, AccessViolation):
        return
    assert isinstance(path, str) and path, (raw, path)
    parts = path.split("/")
    assert ".." not in parts and "" not in parts and "\x00" not in path, (raw, path)
    for case_insensitive in (False, True):
        try:
            real = files.resolve(ROOT, path, case_insensitive)
        except (FileNotFound, AccessViolation):
            continue
        assert real.startswith(REAL_ROOT + os.sep), (raw, real)


def test_one_input(data: bytes) -> None:
    if len(data) < 3:
        return
    # byte 0: how to read the size; then the size; then the Range header
    # up to the first newline; the rest is the request path.
    choice, rest = data[0] % 3, data[1:]
    if choice == 0:
        size = None
    elif choice == 1:
        size, rest = rest[0], rest[1:]
    else:
        size, rest = int.from_bytes(rest[:6], "big"), rest[6:]
    header, _, path = rest.partition(b"\n")
    check_range(header, size)
    check_path(path)


def seeds():
    for header in (b"bytes=0-99", b"bytes=-10", b"bytes=5-", b"bytes=0-0,5-6", b"items=1-2", b""):
        for path in (b"/efi/boot/bootx64.efi", b"/boot.ipxe?x=1", b"http://h/efi%2Fboot/bootx64.efi",
                     b"/%2e%2e/etc/passwd", b"/escape/passwd", b"/ALIAS.IPXE"):
            yield b"\x01\x64" + header + b"\n" + path
            yield b"\x02\x00\x00\x00\x01\x00\x00" + header + b"\n" + path


if __name__ == "__main__":
    _harness.main("http", test_one_input, seeds())
