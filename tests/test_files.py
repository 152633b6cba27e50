"""Name safety and the filesystem backend, on a real temporary directory."""

import os

from twisted.trial import unittest
from zope.interface.verify import verifyObject

from ownsocket.files import (
    BytesReader, FilesystemBackend, ReadRequest, normalise, resolve)
from ownsocket.interfaces import AccessViolation, FileNotFound, IFileBackend, IReader


class NormaliseTests(unittest.TestCase):

    def test_plain_and_nested(self):
        self.assertEqual(normalise(b"pxelinux.0"), "pxelinux.0")
        self.assertEqual(normalise(b"pxelinux.cfg/default"), "pxelinux.cfg/default")

    def test_leading_slash_and_dots_stripped(self):
        self.assertEqual(normalise(b"/pxelinux.0"), "pxelinux.0")
        self.assertEqual(normalise(b"//a/./b//c"), "a/b/c")

    def test_backslashes(self):
        self.assertEqual(normalise(b"boot\\x64\\wdsmgfw.efi"), "boot/x64/wdsmgfw.efi")

    def test_dotdot_refused_everywhere(self):
        for name in [b"..", b"../etc/passwd", b"a/../../b", b"a/..", b"..\\..\\win.ini",
                     b"/../etc/shadow", b"a/b/../c"]:
            self.assertRaises(AccessViolation, normalise, name)

    def test_percent_encoding_taken_literally(self):
        self.assertEqual(normalise(b"%2e%2e/%2e%2e/etc/passwd"), "%2e%2e/%2e%2e/etc/passwd")

    def test_nul_long_and_empty_refused(self):
        self.assertRaises(AccessViolation, normalise, b"a\x00b")
        self.assertRaises(AccessViolation, normalise, b"a" * 256)
        self.assertEqual(normalise(b"a" * 255), "a" * 255)
        for name in [b"", b"/", b"./.", b"\\"]:
            self.assertRaises(AccessViolation, normalise, name)

    def test_non_utf8_round_trips_to_the_same_bytes(self):
        name = normalise(b"caf\xe9.bin")
        self.assertEqual(os.fsencode(name), b"caf\xe9.bin")


class ResolveTests(unittest.TestCase):

    def setUp(self):
        base = os.path.abspath(self.mktemp())
        self.root = os.path.join(base, "root")
        os.makedirs(os.path.join(self.root, "Boot", "X64"))
        os.makedirs(os.path.join(base, "outside"))
        self.write("pxelinux.0", b"pxe")
        self.write("Boot/X64/WdsMgFw.efi", b"wds")
        self.write("%2e%2e", b"literal")
        with open(os.path.join(base, "secret"), "wb") as f:
            f.write(b"secret")
        with open(os.path.join(base, "outside", "x"), "wb") as f:
            f.write(b"x")
        os.symlink(os.path.join(base, "secret"), os.path.join(self.root, "escape"))
        os.symlink(os.path.join(base, "outside"), os.path.join(self.root, "outdir"))
        os.symlink("../secret", os.path.join(self.root, "relescape"))
        os.symlink("pxelinux.0", os.path.join(self.root, "alias"))
        os.symlink("/etc", os.path.join(self.root, "etc"))

    def write(self, name, data):
        with open(os.path.join(self.root, name), "wb") as f:
            f.write(data)

    def test_inside(self):
        self.assertEqual(resolve(self.root, b"pxelinux.0"),
                         os.path.join(os.path.realpath(self.root), "pxelinux.0"))
        self.assertEqual(resolve(self.root, b"/pxelinux.0"), resolve(self.root, "pxelinux.0"))

    def test_symlink_inside_root_allowed(self):
        self.assertEqual(resolve(self.root, b"alias"), resolve(self.root, b"pxelinux.0"))

    def test_symlinks_out_of_root_refused(self):
        for name in [b"escape", b"relescape", b"outdir/x", b"etc/passwd", b"etc/hostname"]:
            self.assertRaises(AccessViolation, resolve, self.root, name)

    def test_traversal_refused(self):
        for name in [b"../secret", b"/../secret", b"..\\secret", b"Boot/../../secret"]:
            self.assertRaises(AccessViolation, resolve, self.root, name)

    def test_percent_name_is_a_file_name(self):
        self.assertTrue(resolve(self.root, b"%2e%2e").endswith("%2e%2e"))
        self.assertRaises(FileNotFound, resolve, self.root, b"%2e%2e/secret")

    def test_missing_and_directory(self):
        self.assertRaises(FileNotFound, resolve, self.root, b"nope")
        self.assertRaises(FileNotFound, resolve, self.root, b"Boot")
        self.assertRaises(FileNotFound, resolve, self.root, b"pxelinux.0/x")

    def test_backslashes(self):
        self.assertTrue(resolve(self.root, b"Boot\\X64\\WdsMgFw.efi").endswith("Boot/X64/WdsMgFw.efi"))

    def test_case_insensitive(self):
        self.assertRaises(FileNotFound, resolve, self.root, b"boot\\x64\\wdsmgfw.efi")
        path = resolve(self.root, b"boot\\x64\\wdsmgfw.efi", case_insensitive=True)
        self.assertTrue(path.endswith("Boot/X64/WdsMgFw.efi"))
        self.assertTrue(resolve(self.root, b"PXELINUX.0", True).endswith("pxelinux.0"))
        self.assertRaises(AccessViolation, resolve, self.root, b"ESCAPE", True)

    def test_unreadable(self):
        if os.getuid() == 0:
            raise unittest.SkipTest("root reads every file")
        path = os.path.join(self.root, "pxelinux.0")
        os.chmod(path, 0)
        self.assertRaises(AccessViolation, resolve, self.root, b"pxelinux.0")

    def test_fifo_is_not_a_file(self):
        os.mkfifo(os.path.join(self.root, "fifo"))
        self.assertRaises(FileNotFound, resolve, self.root, b"fifo")


class BackendTests(unittest.TestCase):

    def setUp(self):
        self.root = self.mktemp()
        os.makedirs(self.root)
        self.data = os.urandom(5000)
        with open(os.path.join(self.root, "f"), "wb") as f:
            f.write(self.data)
        self.backend = FilesystemBackend(self.root)

    def test_provides(self):
        verifyObject(IFileBackend, self.backend)
        verifyObject(IReader, BytesReader(b""))

    def test_reader_has_exact_size_and_bytes(self):
        reader = self.successResultOf(self.backend.get_reader(ReadRequest("f", ("127.0.0.1", 1))))
        verifyObject(IReader, reader)
        self.assertEqual(reader.size, 5000)
        self.assertEqual(reader.read(4096) + reader.read(4096), self.data)
        self.assertEqual(reader.read(10), b"")
        reader.finish()

    def test_errors_are_failed_deferreds(self):
        self.failureResultOf(self.backend.get_reader(ReadRequest("nope", ("h", 1))), FileNotFound)
        self.failureResultOf(self.backend.get_reader(ReadRequest("../x", ("h", 1))), AccessViolation)

    def test_bytes_reader(self):
        reader = BytesReader(b"hello world")
        self.assertEqual(reader.size, 11)
        self.assertEqual(reader.read(5), b"hello")
        self.assertEqual(reader.read(100), b" world")
        self.assertEqual(reader.read(100), b"")
        reader.finish()

    def test_read_request_is_frozen(self):
        request = ReadRequest("a", ("h", 1), {"tsize": "0"})
        self.assertRaises(Exception, setattr, request, "path", "b")
        self.assertIsNone(request.boot_request)
