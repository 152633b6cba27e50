"""proxyDHCP: boot information for PXE clients, never an address."""

import ipaddress

from twisted.internet.task import Clock
from twisted.trial import unittest

from ownsocket import config as configuration
from ownsocket.boot.recent import RecentRequests
from ownsocket.dhcp import wire
from ownsocket.dhcp.proxy import ProxyArrival, ProxyServer
from ownsocket.dhcp.server import make_boot_request
from ownsocket.events import EventList
from ownsocket.tap import build_selector
from tests import packets
from tests.fixtures_loader import load_hex

IP = ipaddress.IPv4Address
SERVER = IP("10.99.0.2")

CONFIG = """
[dhcp]
mode = proxy
[http]
enabled = true
[boot]
default = undionly.kpxe
arch.7 = snponly.efi
[selector:ipxe]
script = boot.ipxe
"""


class ProxyTests(unittest.TestCase):
    def setUp(self):
        self.config = configuration.load(text=CONFIG, known_interfaces={"br0"})
        self.recent = RecentRequests(arp_table=lambda: {"10.99.0.150": "52:54:00:99:00:10"})
        self.server = ProxyServer(self.config, build_selector(self.config, Clock()), make_boot_request,
                                  boot_file_size=lambda name, request=None: {"snponly.efi": 1024}.get(name), recent=self.recent)

    def handle(self, data, port=67, source=("0.0.0.0", 68)):
        return self.server.handle(wire.parse(data), ProxyArrival("br0", SERVER, port), source)

    def test_ovmf_discover_gets_proxy_offer_without_address(self):
        [out] = self.handle(load_hex("ovmf_pxe_discover"))
        reply = packets.parse_reply(out.data)
        self.assertEqual(reply["type"], wire.OFFER)
        self.assertEqual(reply["yiaddr"], "0.0.0.0")
        self.assertEqual(reply["siaddr"], str(SERVER))
        self.assertEqual(reply["file"], b"snponly.efi")
        options = reply["options"]
        self.assertEqual(options[54], SERVER.packed)
        self.assertEqual(options[60], b"PXEClient")
        self.assertEqual(options[43], b"\x06\x01\x08\xff")
        self.assertEqual(options[97], bytes(17))
        for code in (1, 3, 6, 51, 58, 59):
            self.assertNotIn(code, options)
        self.assertEqual((out.host, out.port), ("255.255.255.255", 68))

    def test_http_client_gets_httpclient(self):
        [out] = self.handle(load_hex("ovmf_http_discover"))
        reply = packets.parse_reply(out.data)
        self.assertEqual(reply["options"][60], b"HTTPClient")
        self.assertEqual(reply["file"], b"http://10.99.0.2/snponly.efi")
        self.assertEqual(reply["yiaddr"], "0.0.0.0")

    def test_non_pxe_clients_ignored(self):
        self.assertEqual(self.handle(packets.request(options=[(60, b"MSFT 5.0")])), [])
        self.assertEqual(self.handle(packets.request()), [])

    def test_request_on_67_ignored(self):
        self.assertEqual(self.handle(load_hex("ovmf_pxe_request")), [])

    def test_boot_server_request_on_4011(self):
        message = wire.parse(load_hex("ovmf_pxe_request"))
        data = packets.request(mac=message.mac, message_type=3, ciaddr="10.99.0.150",
                               options=[(code, message.options[code]) for code in message.option_order
                                        if code not in (53, 50, 54)])
        [out] = self.handle(data, port=4011, source=("10.99.0.150", 4011))
        reply = packets.parse_reply(out.data)
        self.assertEqual(reply["type"], wire.ACK)
        self.assertEqual(reply["yiaddr"], "0.0.0.0")
        self.assertEqual((out.host, out.port), ("10.99.0.150", 4011))
        self.assertEqual(reply["file"], b"snponly.efi")

    def test_discover_on_4011_ignored(self):
        self.assertEqual(self.handle(load_hex("ovmf_pxe_discover"), port=4011), [])

    def test_recent_by_mac_through_arp(self):
        self.handle(load_hex("ovmf_pxe_discover"))
        self.assertEqual(self.recent.get("10.99.0.150").mac, "52:54:00:99:00:10")
        self.assertIsNone(self.recent.get("10.99.0.151"))

    def test_proxy_mode_refuses_pools(self):
        with self.assertRaises(configuration.ConfigError) as caught:
            configuration.load(text="[dhcp]\nmode = proxy\n[subnet:a]\nnetwork = 10.0.0.0/24\n"
                                    "pool = 10.0.0.10-10.0.0.20\n", known_interfaces=set())
        self.assertIn("[subnet:a] pool: [dhcp] mode = proxy hands out no addresses", str(caught.exception))


class ProxyEventTests(unittest.TestCase):
    def setUp(self):
        self.config = configuration.load(text=CONFIG, known_interfaces={"br0"})
        self.server = ProxyServer(self.config, build_selector(self.config, Clock()), make_boot_request)
        self.seen = EventList()
        self.server.events.subscribe(self.seen)

    def test_offer_and_skip(self):
        self.server.handle(wire.parse(load_hex("ovmf_pxe_discover")), ProxyArrival("br0", SERVER, 67))
        self.server.handle(wire.parse(packets.request(mac="52:54:00:00:00:02")), ProxyArrival("br0", SERVER, 67))
        self.assertEqual(self.seen.kinds(), [("proxy", "received"), ("proxy", "sent"),
                                             ("proxy", "received"), ("proxy", "dropped")])
        sent = self.seen.events[1].fields
        self.assertEqual((sent["message"], sent["address"], sent["file"], sent["arch"]),
                         ("offer", None, "snponly.efi", "efi-x64"))
        self.assertEqual(self.seen.events[3].fields["reason"], "not-for-us")
