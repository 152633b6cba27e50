"""Packets as bytes: parse what real clients send, build what they expect."""

from twisted.trial import unittest

from ownsocket.interfaces import AccessViolation, BackendError, FileNotFound
from ownsocket.tftp import wire

#: OVMF's size probe, as captured (FIRMWARE-FACTS.md section 4).
OVMF_PROBE = (b"\x00\x01snponly.efi\x00octet\x00tsize\x000\x00"
              b"blksize\x001468\x00windowsize\x004\x00")
#: iPXE's request.
IPXE_RRQ = b"\x00\x01undionly.kpxe\x00octet\x00blksize\x001432\x00tsize\x000\x00"


class ParseRequestTests(unittest.TestCase):

    def test_ovmf_probe(self):
        request = wire.parse_request(OVMF_PROBE)
        self.assertEqual(request.opcode, wire.RRQ)
        self.assertEqual(request.filename, b"snponly.efi")
        self.assertEqual(request.mode, "octet")
        self.assertEqual(request.options, {"tsize": "0", "blksize": "1468", "windowsize": "4"})
        self.assertEqual(list(request.options), ["tsize", "blksize", "windowsize"])

    def test_ipxe(self):
        request = wire.parse_request(IPXE_RRQ)
        self.assertEqual(request.options, {"blksize": "1432", "tsize": "0"})

    def test_case_insensitive_mode_and_options(self):
        request = wire.parse_request(b"\x00\x01f\x00OcTeT\x00BLKSIZE\x001024\x00")
        self.assertEqual(request.mode, "octet")
        self.assertEqual(request.options, {"blksize": "1024"})

    def test_first_duplicate_wins(self):
        request = wire.parse_request(b"\x00\x01f\x00octet\x00blksize\x00800\x00blksize\x001400\x00")
        self.assertEqual(request.options, {"blksize": "800"})

    def test_truncated_trailing_option_ignored(self):
        request = wire.parse_request(b"\x00\x01f\x00octet\x00blksize\x001024\x00tsize\x00")
        self.assertEqual(request.options, {"blksize": "1024"})
        request = wire.parse_request(b"\x00\x01f\x00octet\x00blksize")
        self.assertEqual(request.options, {})

    def test_wrq(self):
        self.assertEqual(wire.parse_request(b"\x00\x02up\x00octet\x00").opcode, wire.WRQ)

    def test_malformed(self):
        for datagram in [b"", b"\x00", b"\x00\x01", b"\x00\x01file", b"\x00\x01file\x00",
                         b"\x00\x01file\x00octet", b"\x00\x01\x00octet\x00",
                         b"\x00\x01f\x00\x00", b"\x00\x01f\x00\xff\xfe\x00",
                         b"\x00\x03\x00\x01data", b"\x00\x09f\x00octet\x00"]:
            self.assertRaises(wire.MalformedPacket, wire.parse_request, datagram)

    def test_round_trip(self):
        packet = wire.build_request(wire.RRQ, b"a/b", "netascii", {"blksize": "8", "tsize": "0"})
        self.assertEqual(packet, b"\x00\x01a/b\x00netascii\x00blksize\x008\x00tsize\x000\x00")
        request = wire.parse_request(packet)
        self.assertEqual((request.filename, request.mode, request.options),
                         (b"a/b", "netascii", {"blksize": "8", "tsize": "0"}))


class BuildTests(unittest.TestCase):

    def test_data_wraps_block_number(self):
        self.assertEqual(wire.build_data(1, b"xy"), b"\x00\x03\x00\x01xy")
        self.assertEqual(wire.build_data(65535, b""), b"\x00\x03\xff\xff")
        self.assertEqual(wire.build_data(65536, b"z"), b"\x00\x03\x00\x00z")
        self.assertEqual(wire.build_data(65537, memoryview(b"z")), b"\x00\x03\x00\x01z")

    def test_ack(self):
        self.assertEqual(wire.build_ack(0x1234), b"\x00\x04\x12\x34")

    def test_error(self):
        packet = wire.build_error(wire.ERR_NOT_FOUND, "File not found")
        self.assertEqual(packet, b"\x00\x05\x00\x01File not found\x00")
        self.assertEqual(wire.parse_error(packet), (1, "File not found"))

    def test_error_without_nul_tolerated(self):
        self.assertEqual(wire.parse_error(b"\x00\x05\x00\x08abort"), (8, "abort"))
        self.assertRaises(wire.MalformedPacket, wire.parse_error, b"\x00\x05\x00")

    def test_oack(self):
        packet = wire.build_oack([("tsize", "1234"), ("blksize", "1468")])
        self.assertEqual(packet, b"\x00\x06tsize\x001234\x00blksize\x001468\x00")
        self.assertEqual(wire.parse_oack(packet), {"tsize": "1234", "blksize": "1468"})

    def test_opcode_of(self):
        self.assertIsNone(wire.opcode_of(b"\x00"))
        self.assertEqual(wire.opcode_of(b"\x00\x04\x00\x00"), wire.ACK)


class ErrorMappingTests(unittest.TestCase):

    def test_backend_errors(self):
        self.assertEqual(wire.error_for(FileNotFound("x")), (1, "File not found"))
        self.assertEqual(wire.error_for(AccessViolation("/etc/shadow")), (2, "Access violation"))
        self.assertEqual(wire.error_for(BackendError("disk gone")), (0, "disk gone"))

    def test_unexpected_exception_message_not_leaked(self):
        self.assertEqual(wire.error_for(KeyError("/secret/path")), (0, "Internal server error"))
