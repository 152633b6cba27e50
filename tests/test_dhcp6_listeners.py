"""
TFTP and HTTP on IPv6 (loopback ::1 only), with curl as the client: an
IPV6_V6ONLY listener beside the IPv4 one, and TFTP transfers on IPv6
session ports with OVMF's IPv6 block size 1228.
"""

import ipaddress
import os
import shutil
import socket

from twisted.internet import reactor, utils
from twisted.trial import unittest

from ownsocket.config import HttpConfig, TftpConfig
from ownsocket.files import FilesystemBackend
from ownsocket.http import HTTPService
from ownsocket.tftp.service import TFTPService


def has_ipv6_loopback():
    try:
        probe = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        probe.bind(("::1", 0))
        probe.close()
        return True
    except OSError:
        return False


class IPv6Listeners(unittest.TestCase):

    if shutil.which("curl") is None:
        skip = "needs curl"
    elif not has_ipv6_loopback():
        skip = "no IPv6 on the loopback interface"

    def setUp(self):
        self.root = self.mktemp()
        os.makedirs(self.root)
        self.payload = os.urandom(1228 * 40 + 17)
        with open(os.path.join(self.root, "snponly.efi"), "wb") as handle:
            handle.write(self.payload)
        self.out = os.path.abspath(self.mktemp())

    def start(self, service):
        service.startService()
        self.addCleanup(service.stopService)
        return service

    def read_out(self):
        with open(self.out, "rb") as handle:
            return handle.read()

    async def test_tftp_over_ipv6_with_blksize_1228(self):
        config = TftpConfig(port=0, root=self.root, addresses=(ipaddress.ip_address("::1"),))
        service = self.start(TFTPService(config, reactor=reactor))
        ((host, port),) = service.listening_addresses()
        self.assertEqual(host, "::1")
        out, err, code = await utils.getProcessOutputAndValue(
            "curl", ["-s", "-S", "-g", "--tftp-blksize", "1228", "-o", self.out, f"tftp://[::1]:{port}/snponly.efi"],
            env=os.environ)
        self.assertEqual(code, 0, err)
        self.assertEqual(self.read_out(), self.payload)

    async def test_http_over_ipv6(self):
        config = HttpConfig(enabled=True, port=0, addresses=(ipaddress.ip_address("::1"),))
        service = self.start(HTTPService(config, FilesystemBackend(os.path.abspath(self.root)), reactor=reactor))
        ((host, port),) = service.listening_addresses()
        out, err, code = await utils.getProcessOutputAndValue(
            "curl", ["-s", "-S", "-g", "-o", self.out, "-w", "%{http_code}", f"http://[::1]:{port}/snponly.efi"],
            env=os.environ)
        self.assertEqual((code, out), (0, b"200"), err)
        self.assertEqual(self.read_out(), self.payload)

    def test_default_listens_on_both_families_without_collision(self):
        """No addresses configured and IPv6 wanted: 0.0.0.0 and [::] on the
        same port, which a dual-stack [::] socket would refuse."""
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()
        service = TFTPService(TftpConfig(port=port, root=self.root), reactor=reactor)
        service.listen_ipv6 = True
        self.start(service)
        hosts = sorted(host for host, _ in service.listening_addresses())
        self.assertEqual(hosts, ["0.0.0.0", "::"])
        self.assertEqual({p for _, p in service.listening_addresses()}, {port})

    def test_without_ipv6_only_ipv4(self):
        service = self.start(TFTPService(TftpConfig(port=0, root=self.root), reactor=reactor))
        self.assertEqual([host for host, _ in service.listening_addresses()], ["0.0.0.0"])
