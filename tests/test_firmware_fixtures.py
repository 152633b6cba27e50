"""
The DHCP packets captured from real firmware (tests/fixtures) parse as
FIRMWARE-FACTS.md describes, and each firmware gets the file it needs.
"""

import ipaddress
import struct

from twisted.internet.task import Clock
from twisted.trial import unittest

from ownsocket import config as configuration
from ownsocket.dhcp import wire
from ownsocket.dhcp.leases import SqliteLeaseStore
from ownsocket.dhcp.server import Arrival, DhcpServer
from ownsocket.tap import build_selector
from tests import packets
from tests.fixtures_loader import load_hex

SERVER = ipaddress.IPv4Address("10.99.0.1")

CONFIG = """
[subnet:lab]
network = 10.99.0.0/24
pool = 10.99.0.100-10.99.0.200
router = 10.99.0.1
[boot]
default = undionly.kpxe
arch.0 = undionly.kpxe
arch.7 = snponly.efi
arch.16 = http://10.99.0.1/snponly.efi
"""

IPXE_ORDER = (53, 57, 93, 94, 60, 77, 55, 175, 61, 97)
EDK2_DISCOVER_ORDER = (53, 57, 55, 97, 94, 93, 60)
EDK2_REQUEST_ORDER = (53, 54, 50, 57, 55, 97, 94, 93, 60)


class ParseFixtureTests(unittest.TestCase):
    def parse(self, name):
        return wire.parse(load_hex(name))

    def test_seabios_ipxe_rom(self):
        message = self.parse("seabios_ipxe_discover")
        self.assertEqual(message.option_order, IPXE_ORDER)
        self.assertEqual(message.arch_types, (0,))
        self.assertEqual(message.user_classes, (b"iPXE",))
        self.assertFalse(message.broadcast)
        self.assertEqual(message.options[wire.OPT_MAX_SIZE], struct.pack("!H", 1472))
        self.assertEqual(message.options[wire.OPT_VENDOR_CLASS], b"PXEClient:Arch:00000:UNDI:002001")
        self.assertEqual(self.parse("seabios_ipxe_request").option_order, IPXE_ORDER + (54, 50))

    def test_undionly_differs_from_rom_only_by_flag(self):
        rom, chained = self.parse("seabios_ipxe_discover"), self.parse("undionly_discover")
        self.assertTrue(chained.broadcast)
        self.assertEqual(rom.options, chained.options)

    def test_ovmf_pxe(self):
        discover, request = self.parse("ovmf_pxe_discover"), self.parse("ovmf_pxe_request")
        self.assertEqual(discover.option_order, EDK2_DISCOVER_ORDER)
        self.assertEqual(request.option_order, EDK2_REQUEST_ORDER)
        self.assertEqual(discover.arch_types, (7,))
        self.assertTrue(discover.broadcast)
        self.assertEqual(request.max_reply_size, 65280 - 28)
        self.assertEqual(discover.user_classes, ())

    def test_ovmf_http(self):
        discover = self.parse("ovmf_http_discover")
        self.assertEqual(discover.arch_types, (16,))
        self.assertEqual(discover.options[wire.OPT_VENDOR_CLASS], b"HTTPClient:Arch:00016:UNDI:003000")
        self.assertIn(241, discover.parameter_list)

    def test_snponly(self):
        discover = self.parse("snponly_discover")
        self.assertEqual(discover.option_order, IPXE_ORDER)
        self.assertEqual(discover.arch_types, (7,))
        self.assertEqual(discover.options[wire.OPT_NIC_VERSION], b"\x01\x03\x0a")


class ServeFixtureTests(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1_000_000)
        config = configuration.load(text=CONFIG, known_interfaces={"br0"})
        store = SqliteLeaseStore(":memory:")
        self.addCleanup(store.close)
        self.server = DhcpServer(config, store, build_selector(config, self.clock), self.clock)
        self.arrival = Arrival("br0", SERVER)

    def answer(self, name):
        [outgoing] = self.server.handle(wire.parse(load_hex(name)), self.arrival)
        return packets.parse_reply(outgoing.data), outgoing

    def full_exchange(self, discover, request):
        offer, _ = self.answer(discover)
        self.assertEqual(offer["type"], wire.OFFER)
        # The captured REQUEST names dnsmasq's offer; our server hands out
        # addresses from the same range, so rewrite 50/54 to ours.
        message = wire.parse(load_hex(request))
        options = dict(message.options)
        options[wire.OPT_SERVER_ID] = SERVER.packed
        options[wire.OPT_REQUESTED_ADDRESS] = ipaddress.IPv4Address(offer["yiaddr"]).packed
        rebuilt = packets.request(mac=message.mac, message_type=None, xid=message.xid, flags=message.flags,
                                  options=[(code, options[code]) for code in message.option_order])
        [outgoing] = self.server.handle(wire.parse(rebuilt), self.arrival)
        ack = packets.parse_reply(outgoing.data)
        self.assertEqual(ack["type"], wire.ACK)
        self.assertEqual(ack["yiaddr"], offer["yiaddr"])
        return offer, ack

    def test_bios_rom_gets_undionly(self):
        offer, ack = self.full_exchange("seabios_ipxe_discover", "seabios_ipxe_request")
        self.assertEqual(ack["file"], b"undionly.kpxe")
        self.assertEqual(ack["options"][67], b"undionly.kpxe")
        self.assertEqual(ack["siaddr"], "10.99.0.1")

    def test_ovmf_pxe_gets_snponly(self):
        offer, ack = self.full_exchange("ovmf_pxe_discover", "ovmf_pxe_request")
        self.assertEqual(offer["file"], b"snponly.efi")
        self.assertEqual(offer["options"][97], bytes(17))
        self.assertLessEqual(offer["size"], 1472 - 28)

    def test_ovmf_http_gets_a_url(self):
        offer, ack = self.full_exchange("ovmf_http_discover", "ovmf_http_request")
        self.assertEqual(offer["file"], b"http://10.99.0.1/snponly.efi")

    def test_replies_broadcast_for_clients_without_address(self):
        for name in ("seabios_ipxe_discover", "ovmf_pxe_discover", "snponly_discover"):
            _, outgoing = self.answer(name)
            self.assertEqual((outgoing.host, outgoing.port), ("255.255.255.255", 68))
