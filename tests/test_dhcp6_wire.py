"""
The DHCPv6 wire layer against the packets OVMF and iPXE really sent
(tests/fixtures6, captured by tests/fixtures6/capture6.py), and against
everything a hostile or broken client can send.
"""

import ipaddress
import random
import struct

from twisted.trial import unittest

from ownsocket.dhcp6 import wire
from tests.fixtures_loader import fixture6_names, load_hex6

MAC = "52:54:00:99:00:10"

CLIENT_FIXTURES = [name for name in fixture6_names()
                   if name.startswith(("ovmf_pxe6_", "ovmf_http6_", "ovmf_ip6config_", "ipxe6_"))
                   and "tftp" not in name]


def codes(message):
    return [code for code, _ in message.options]


class FirmwareFixtures(unittest.TestCase):
    """What §8b of FIRMWARE-FACTS says, read back from the captured bytes."""

    def test_every_client_fixture_parses(self):
        self.assertTrue(len(CLIENT_FIXTURES) >= 8, CLIENT_FIXTURES)
        for name in CLIENT_FIXTURES:
            message = wire.parse(load_hex6(name))
            self.assertIn(message.message_type, wire.CLIENT_MESSAGES, name)

    def test_ovmf_pxe_solicit(self):
        message = wire.parse(load_hex6("ovmf_pxe6_solicit"))
        self.assertEqual(message.message_type, wire.SOLICIT)
        self.assertEqual(codes(message), [1, 8, 3, 6, 62, 61, 16])
        self.assertEqual(len(message.client_id), 14)
        self.assertEqual(message.client_id[:4], b"\x00\x01\x00\x01")  # DUID-LLT, Ethernet
        self.assertEqual(wire.mac_from_duid(message.client_id), MAC)
        self.assertEqual(message.oro, (59, 60, 23, 16))
        self.assertEqual(message.client_arch, (7,))
        self.assertEqual(message.nii, b"\x01\x03\x00")
        self.assertEqual(message.elapsed, 0)
        self.assertEqual(message.vendor_classes, ((343, (b"PXEClient:Arch:00007:UNDI:003000",)),))
        self.assertEqual(message.vendor_class, b"PXEClient:Arch:00007:UNDI:003000")
        self.assertEqual(len(message.ia_na), 1)
        ia = message.ia_na[0]
        self.assertEqual((ia.t1, ia.t2, ia.addresses), (0xFFFFFFFF, 0xFFFFFFFF, ()))
        self.assertIsNone(message.server_id)
        self.assertEqual(message.relays, ())

    def test_ovmf_pxe_request_echoes_the_advertised_address(self):
        message = wire.parse(load_hex6("ovmf_pxe6_request"))
        self.assertEqual(message.message_type, wire.REQUEST)
        self.assertEqual(codes(message), [1, 8, 2, 3, 6, 62, 61, 16])
        self.assertIsNotNone(message.server_id)
        (ia,) = message.ia_na
        (address,) = ia.addresses
        self.assertIn(address.address, ipaddress.ip_network("fd99::/64"))
        self.assertTrue(address.valid > 0)

    def test_ovmf_http_solicit(self):
        message = wire.parse(load_hex6("ovmf_http6_solicit"))
        self.assertEqual(codes(message), [1, 8, 3, 6, 62, 61, 16])
        self.assertEqual(message.client_arch, (16,))
        self.assertEqual(message.vendor_classes, ((343, (b"HTTPClient:Arch:00016:UNDI:003000",)),))

    def test_ovmf_ip6config_solicit_asks_dns_only(self):
        message = wire.parse(load_hex6("ovmf_ip6config_solicit"))
        self.assertEqual(codes(message), [1, 8, 3, 6])
        self.assertEqual(message.oro, (23,))
        self.assertEqual(message.client_arch, ())

    def test_ovmf_release(self):
        message = wire.parse(load_hex6("ovmf_ip6config_release"))
        self.assertEqual(message.message_type, wire.RELEASE)
        self.assertEqual(codes(message), [1, 2, 8, 3])
        self.assertEqual(len(message.ia_na[0].addresses), 1)

    def test_ipxe_solicit(self):
        message = wire.parse(load_hex6("ipxe6_solicit"))
        self.assertEqual(codes(message), [1, 3, 6, 16, 61, 62, 15, 8])
        self.assertEqual(message.client_id, b"\x00\x04" + bytes(16))  # DUID-UUID of zeros
        self.assertIsNone(wire.mac_from_duid(message.client_id))
        self.assertEqual(wire.uuid_from_duid(message.client_id), bytes(16))
        self.assertEqual(message.user_classes, (b"iPXE",))
        self.assertEqual(message.oro, (23, 24, 59, 60))
        self.assertEqual(message.client_arch, (7,))
        self.assertEqual(message.nii, b"\x01\x03\x0a")
        self.assertEqual(message.vendor_class, b"PXEClient:Arch:00007:UNDI:003010")
        (ia,) = message.ia_na
        self.assertEqual((ia.iaid, ia.t1, ia.t2), (0x63A053EC, 0, 0))  # CRC32 of the MAC

    def test_ipxe_request_has_zero_lifetimes(self):
        message = wire.parse(load_hex6("ipxe6_request"))
        self.assertEqual(codes(message), [1, 2, 3, 6, 16, 61, 62, 15, 8])
        (address,) = message.ia_na[0].addresses
        self.assertEqual((address.preferred, address.valid), (0, 0))

    def test_dnsmasq_answers_parse_as_server_messages(self):
        for name in fixture6_names():
            if name.startswith("dnsmasq6_"):
                answer = wire.parse_server_message(load_hex6(name))
                self.assertIn(answer.message_type, (wire.ADVERTISE, wire.REPLY), name)
                # and a server never accepts one from a client
                self.assertRaises(wire.MalformedPacket, wire.parse, load_hex6(name))

    def test_mac_from_link_local(self):
        self.assertEqual(wire.mac_from_link_local("fe80::5054:ff:fe99:10"), MAC)
        self.assertEqual(wire.mac_from_link_local("fe80::5054:ff:fe99:10%br0"), MAC)
        self.assertIsNone(wire.mac_from_link_local("fe80::1"))
        self.assertIsNone(wire.mac_from_link_local("fd99::5054:ff:fe99:10"))
        self.assertIsNone(wire.mac_from_link_local("not an address"))


def solicit(*options, xid=0x123456, kind=wire.SOLICIT):
    return bytes((kind,)) + xid.to_bytes(3, "big") + b"".join(options)


CLIENT_ID = wire.option(wire.OPT_CLIENTID, wire.duid_ll(MAC))
SERVER_ID = wire.option(wire.OPT_SERVERID, wire.duid_ll("02:00:00:00:00:01"))


class Strictness(unittest.TestCase):

    def assertMalformed(self, data, fragment=""):
        error = self.assertRaises(wire.MalformedPacket, wire.parse, data)
        self.assertIn(fragment, str(error))

    def test_minimal_solicit(self):
        message = wire.parse(solicit(CLIENT_ID))
        self.assertEqual((message.message_type, message.xid), (wire.SOLICIT, 0x123456))
        self.assertEqual(wire.mac_from_duid(message.client_id), MAC)

    def test_short_header(self):
        self.assertMalformed(b"\x01\x00\x00", "shorter")

    def test_option_past_the_end(self):
        self.assertMalformed(solicit(CLIENT_ID, b"\x00\x08\x00\x05\x00"), "claims 5 bytes")

    def test_cut_option_header(self):
        self.assertMalformed(solicit(CLIENT_ID, b"\x00"), "cut off")

    def test_server_messages_are_refused(self):
        for kind in (wire.ADVERTISE, wire.REPLY, wire.RECONFIGURE, wire.RELAY_REPL, 0, 200):
            self.assertMalformed(solicit(CLIENT_ID, kind=kind), "not sent by clients")

    def test_identifier_rules(self):
        self.assertMalformed(solicit(), "without a Client Identifier")
        self.assertMalformed(solicit(CLIENT_ID, SERVER_ID), "with a Server Identifier")
        self.assertMalformed(solicit(CLIENT_ID, kind=wire.REQUEST), "without a Server Identifier")
        self.assertMalformed(solicit(CLIENT_ID, SERVER_ID, kind=wire.REBIND), "with a Server Identifier")
        self.assertMalformed(solicit(wire.ia_na(1, 0, 0), kind=wire.INFORMATION_REQUEST), "IA_NA")
        wire.parse(solicit(kind=wire.INFORMATION_REQUEST))
        wire.parse(solicit(CLIENT_ID, SERVER_ID, kind=wire.RENEW))

    def test_repeated_singletons(self):
        self.assertMalformed(solicit(CLIENT_ID, CLIENT_ID), "twice")
        self.assertMalformed(solicit(CLIENT_ID, wire.ia_na(5, 0, 0), wire.ia_na(5, 0, 0)), "twice")
        message = wire.parse(solicit(CLIENT_ID, wire.ia_na(5, 0, 0), wire.ia_na(6, 0, 0)))
        self.assertEqual([ia.iaid for ia in message.ia_na], [5, 6])

    def test_fixed_lengths(self):
        self.assertMalformed(solicit(CLIENT_ID, wire.option(8, b"\x00")), "elapsed")
        self.assertMalformed(solicit(CLIENT_ID, wire.option(14, b"\x00")), "rapid commit")
        self.assertMalformed(solicit(CLIENT_ID, wire.option(62, b"\x01\x03")), "62")
        self.assertMalformed(solicit(CLIENT_ID, wire.option(61, b"")), "61")
        self.assertMalformed(solicit(CLIENT_ID, wire.option(61, b"\x00\x07\x00")), "odd")
        self.assertMalformed(solicit(CLIENT_ID, wire.option(6, b"\x00")), "odd")
        self.assertMalformed(solicit(wire.option(1, b"\x00\x01")), "DUID")
        self.assertMalformed(solicit(CLIENT_ID, wire.option(3, bytes(11))), "IA_NA")
        self.assertMalformed(solicit(CLIENT_ID, wire.option(3, bytes(12) + wire.option(5, bytes(23)))),
                             "IA address")

    def test_user_and_vendor_class_framing(self):
        good = wire.parse(solicit(CLIENT_ID, wire.option(15, b"\x00\x04iPXE\x00\x01x")))
        self.assertEqual(good.user_classes, (b"iPXE", b"x"))
        self.assertMalformed(solicit(CLIENT_ID, wire.option(15, b"\x00\x05iPXE")), "option 15")
        self.assertMalformed(solicit(CLIENT_ID, wire.option(15, b"\x00")), "option 15")
        self.assertMalformed(solicit(CLIENT_ID, wire.option(16, b"\x00\x00\x01")), "enterprise")
        self.assertMalformed(solicit(CLIENT_ID, wire.option(16, b"\x00\x00\x01\x57\x00\x0aHTTP")),
                             "option 16")

    def test_size_cap(self):
        self.assertMalformed(solicit(CLIENT_ID, wire.option(99, bytes(wire.MAX_SIZE))), "more than")

    def test_relay_forw_is_unwrapped(self):
        inner = solicit(CLIENT_ID)
        relayed = (bytes((wire.RELAY_FORW, 0)) + ipaddress.IPv6Address("fd98::1").packed +
                   ipaddress.IPv6Address("fe80::5054:ff:fe99:10").packed +
                   wire.option(wire.OPT_INTERFACE_ID, b"eth7") + wire.option(wire.OPT_RELAY_MSG, inner))
        message = wire.parse(relayed)
        self.assertEqual(message.message_type, wire.SOLICIT)
        (relay,) = message.relays
        self.assertEqual(relay.link_address, ipaddress.IPv6Address("fd98::1"))
        self.assertEqual(relay.interface_id, b"eth7")
        reply = wire.wrap_relay_reply(wire.build(wire.ADVERTISE, 0x123456, []), message.relays)
        self.assertEqual(reply[:2], bytes((wire.RELAY_REPL, 0)))
        self.assertEqual(reply[2:34], relayed[2:34])
        outer = wire.parse_server_message(b"\x0d\x00\x00\x00" + reply[34:])  # options after the header
        self.assertEqual(outer.option(wire.OPT_INTERFACE_ID), b"eth7")
        self.assertEqual(outer.option(wire.OPT_RELAY_MSG), b"\x02\x12\x34\x56")

    def test_relay_without_message_and_too_deep(self):
        header = bytes((wire.RELAY_FORW, 0)) + bytes(32)
        self.assertMalformed(header, "without a Relay Message")
        self.assertMalformed(header[:20], "34-byte header")
        data = solicit(CLIENT_ID)
        for _ in range(wire.MAX_RELAY_DEPTH + 1):
            data = header + wire.option(wire.OPT_RELAY_MSG, data)
        self.assertMalformed(data, "relays")


class Building(unittest.TestCase):

    def test_vendor_class_is_rfc_8415_framed(self):
        self.assertEqual(wire.vendor_class(343, [b"HTTPClient"]),
                         b"\x00\x10\x00\x10" + b"\x00\x00\x01\x57\x00\x0aHTTPClient")

    def test_advertise_round_trip(self):
        address = ipaddress.IPv6Address("fd99::100")
        data = wire.build(wire.ADVERTISE, 0xABCDEF, [
            CLIENT_ID, SERVER_ID,
            wire.ia_na(0x63A053EC, 300, 480, [wire.iaaddr(address, 600, 600)]),
            wire.option(wire.OPT_PREFERENCE, b"\xff"),
            wire.option(wire.OPT_BOOTFILE_URL, b"tftp://[fd99::1]/snponly.efi"),
            wire.status_code(wire.SUCCESS, "ok"),
        ])
        answer = wire.parse_server_message(data)
        self.assertEqual((answer.message_type, answer.xid), (wire.ADVERTISE, 0xABCDEF))
        (ia,) = answer.ia_na()
        self.assertEqual((ia.iaid, ia.t1, ia.t2), (0x63A053EC, 300, 480))
        self.assertEqual(ia.addresses, (wire.IAAddress(address, 600, 600),))
        self.assertEqual(answer.option(wire.OPT_PREFERENCE), b"\xff")
        self.assertEqual(answer.option(59), b"tftp://[fd99::1]/snponly.efi")
        self.assertEqual(answer.status(), wire.SUCCESS)

    def test_ia_status(self):
        value = wire.ia_na(7, 0, 0, status=(wire.NO_ADDRS_AVAIL, "none"))[4:]
        self.assertEqual(wire.ia_status(value), wire.NO_ADDRS_AVAIL)

    def test_domain_list(self):
        self.assertEqual(wire.domain_list(["lab.example"]),
                         b"\x00\x18\x00\x0d\x03lab\x07example\x00")
        self.assertRaises(ValueError, wire.domain_list, ["a..b"])

    def test_duid_ll(self):
        self.assertEqual(wire.duid_ll(MAC), bytes.fromhex("00030001525400990010"))
        self.assertEqual(wire.mac_from_duid(wire.duid_ll(MAC)), MAC)


class Mutations(unittest.TestCase):
    """Fuzz-style: whatever the bytes, the parser raises MalformedPacket or
    returns a Message; no other exception ever escapes."""

    def check(self, data):
        try:
            message = wire.parse(data)
        except wire.MalformedPacket:
            return 0
        self.assertIsInstance(message, wire.Message)
        return 1

    def test_every_prefix_of_every_fixture(self):
        for name in CLIENT_FIXTURES:
            data = load_hex6(name)
            for end in range(len(data)):
                self.check(data[:end])

    def test_random_mutations(self):
        rng = random.Random(8415)
        seeds = [load_hex6(name) for name in CLIENT_FIXTURES]
        parsed = 0
        for _ in range(20000):
            data = bytearray(rng.choice(seeds))
            for _ in range(rng.randint(1, 4)):
                action = rng.randrange(4)
                position = rng.randrange(len(data) + 1)
                if action == 0 and data:
                    data[min(position, len(data) - 1)] = rng.randrange(256)
                elif action == 1:
                    data[position:position] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 6)))
                elif action == 2:
                    del data[position:position + rng.randint(1, 8)]
                else:  # a plausible option header with an arbitrary length
                    data[position:position] = struct.pack("!HH", rng.choice((1, 2, 3, 5, 6, 8, 14, 15, 16, 61, 62)),
                                                          rng.randrange(40))
            parsed += self.check(bytes(data))
        # Some mutations must survive (value bytes flipped), or the test only
        # exercised the first length check.
        self.assertTrue(parsed > 100, parsed)

    def test_random_bytes(self):
        rng = random.Random(547)
        for _ in range(5000):
            self.check(bytes(rng.randrange(256) for _ in range(rng.randint(0, 80))))
