"""The pieces twistd ownsocket is assembled from."""

import os

from twisted.internet.task import Clock
from twisted.trial import unittest

from ownsocket import config as configuration
from ownsocket.tap import boot_file_size_function


class BootFileSizeTests(unittest.TestCase):
    def test_size_from_tftp_root_remembered_briefly(self):
        root = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(root, "efi"))
        with open(os.path.join(root, "efi", "snponly.efi"), "wb") as handle:
            handle.write(b"x" * 1000)
        os.symlink("/etc/passwd", os.path.join(root, "escape"))
        clock = Clock()
        tftp = configuration.TftpConfig(root=root)
        size = boot_file_size_function(tftp, clock, ttl=5)
        self.assertEqual(size("efi/snponly.efi"), 1000)
        self.assertEqual(size("/efi/snponly.efi"), 1000)
        with open(os.path.join(root, "efi", "snponly.efi"), "ab") as handle:
            handle.write(b"y" * 24)
        self.assertEqual(size("efi/snponly.efi"), 1000)
        clock.advance(6)
        self.assertEqual(size("efi/snponly.efi"), 1024)
        self.assertIsNone(size("missing.efi"))
        self.assertIsNone(size("../etc/passwd"))
        self.assertIsNone(size("escape"))


class MakeServiceTests(unittest.TestCase):
    def test_startup_summary_and_missing_root_warning(self):
        from twisted.logger import globalLogPublisher, formatEvent
        from ownsocket.tap import Options, makeService
        from tests.fakes import FakeUDPReactor
        path = self.mktemp()
        missing = os.path.abspath(self.mktemp())
        with open(path, "w") as handle:
            handle.write(f"[dhcp]\nenabled = false\n[tftp]\nport = 16969\nroot = {missing}\n")
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        options = Options()
        options.parseOptions(["--config", path])
        reactor = FakeUDPReactor()
        service = makeService(options, reactor=reactor)
        service.privilegedStartService()
        service.startService()
        self.addCleanup(service.stopService)
        lines = [formatEvent(event) for event in events]
        self.assertTrue(any("DHCP off, TFTP port 16969" in line for line in lines), lines)
        self.assertTrue(any(f"[tftp] root {missing} is not a directory" in line for line in lines), lines)
        self.assertEqual([port for port, _, _, _ in reactor.ports], [16969])
