"""The strict parser and the reply builder, on hand-built and firmware bytes."""

import ipaddress
import random
import struct

from twisted.trial import unittest

from ownsocket.dhcp import wire
from tests import packets


class ParseTests(unittest.TestCase):
    def test_ovmf_discover(self):
        message = wire.parse(packets.ovmf_pxe_discover())
        self.assertEqual(message.mac, "52:54:00:99:00:10")
        self.assertEqual(message.message_type, wire.DISCOVER)
        self.assertEqual(message.arch_types, (7,))
        self.assertTrue(message.broadcast)
        self.assertEqual(message.max_reply_size, 1472 - 28)
        self.assertEqual(message.option_order, (53, 57, 55, 97, 94, 93, 60))
        self.assertEqual(message.options[60], b"PXEClient:Arch:00007:UNDI:003000")

    def test_ipxe_user_class_is_raw(self):
        message = wire.parse(packets.ipxe_bios_discover())
        self.assertEqual(message.user_classes, (b"iPXE",))
        self.assertIn(175, message.options)

    def test_rfc3004_user_class(self):
        self.assertEqual(wire.parse_user_class(b"\x04iPXE\x03foo"), (b"iPXE", b"foo"))
        self.assertEqual(wire.parse_user_class(b"iPXE"), (b"iPXE",))

    def test_bootp_without_option_53(self):
        message = wire.parse(packets.request(message_type=None))
        self.assertIsNone(message.message_type)

    def test_bootp_without_cookie(self):
        message = wire.parse(packets.request(cookie=False, pad_to=300))
        self.assertFalse(message.has_cookie)
        self.assertIsNone(message.message_type)

    def test_duplicate_options_concatenate(self):
        """RFC 3396: two instances of one option are one long option."""
        data = packets.request(options=[(43, b"abc"), (43, b"def")])
        self.assertEqual(wire.parse(data).options[43], b"abcdef")

    def test_overload_reads_file_then_sname(self):
        file_field = packets.option(12, b"fromfile") + b"\xff"
        sname_field = packets.option(15, b"fromsname") + b"\xff"
        data = packets.request(options=[(52, b"\x03")], file=file_field, sname=sname_field)
        message = wire.parse(data)
        self.assertEqual(message.options[12], b"fromfile")
        self.assertEqual(message.options[15], b"fromsname")
        self.assertEqual(message.file, b"")

    def test_overload_without_end_is_malformed(self):
        data = packets.request(options=[(52, b"\x01")], file=packets.option(12, b"x" * 120) + b"\x0c")
        self.assertRaises(wire.MalformedPacket, wire.parse, data)

    def test_option_past_end_is_malformed(self):
        data = packets.request(end=False) + b"\x0c\x20abc"
        self.assertRaises(wire.MalformedPacket, wire.parse, data)

    def test_missing_end_is_tolerated(self):
        message = wire.parse(packets.request(end=False, options=[(12, b"host")]))
        self.assertEqual(message.options[12], b"host")

    def test_bad_fixed_lengths(self):
        for code, value in [(50, b"\x01\x02\x03"), (54, b""), (57, b"\x05"), (53, b"\x01\x01")]:
            data = packets.request(message_type=None, options=[(53, b"\x01"), (code, value)] if code != 53
                                   else [(53, value)])
            self.assertRaises(wire.MalformedPacket, wire.parse, data)

    def test_server_messages_and_unknown_types_refused(self):
        for message_type in (wire.OFFER, wire.ACK, wire.NAK, 0, 9, 200):
            self.assertRaises(wire.MalformedPacket, wire.parse, packets.request(message_type=message_type))

    def test_reply_op_refused(self):
        self.assertRaises(wire.MalformedPacket, wire.parse, packets.request(op=2))

    def test_non_ethernet_refused(self):
        self.assertRaises(wire.MalformedPacket, wire.parse, packets.request(htype=6))
        self.assertRaises(wire.MalformedPacket, wire.parse, packets.request(hlen=16))

    def test_size_limits(self):
        self.assertRaises(wire.MalformedPacket, wire.parse, b"\x01" * 100)
        self.assertRaises(wire.MalformedPacket, wire.parse, packets.request(pad_to=wire.MAX_SIZE + 1))

    def test_odd_arch_length(self):
        self.assertRaises(wire.MalformedPacket, wire.parse, packets.request(options=[(93, b"\x00")]))

    def test_truncated_relay_suboption(self):
        self.assertRaises(wire.MalformedPacket, wire.parse,
                          packets.request(options=[(82, b"\x01\x09abc")]))

    def test_relay_suboptions(self):
        message = wire.parse(packets.request(options=[(82, b"\x01\x03eth\x02\x02ab")]))
        self.assertEqual(message.relay_info, ((1, b"eth"), (2, b"ab")))

    def test_max_size_below_576_ignored(self):
        message = wire.parse(packets.request(options=[(57, struct.pack("!H", 100))]))
        self.assertEqual(message.max_reply_size, 576 - 28)

    def test_pad_flood_is_capped(self):
        self.assertRaises(wire.MalformedPacket, wire.parse, packets.request(end=False) + bytes(65000))

    def test_fuzz_never_raises_anything_else(self):
        """Random mutations of a real request either parse or raise
        MalformedPacket: no other exception may escape the parser."""
        rng = random.Random(4242)
        seeds = [packets.ovmf_pxe_discover(), packets.ipxe_bios_discover(),
                 packets.request(options=[(82, b"\x01\x02ab"), (52, b"\x01")])]
        for _ in range(4000):
            data = bytearray(rng.choice(seeds))
            for _ in range(rng.randint(1, 8)):
                choice = rng.random()
                position = rng.randrange(len(data))
                if choice < 0.5:
                    data[position] = rng.randrange(256)
                elif choice < 0.75:
                    del data[position:]
                    if len(data) < 10:
                        data += rng.randbytes(10)
                else:
                    data[position:position] = rng.randbytes(rng.randint(1, 20))
            try:
                wire.parse(bytes(data))
            except wire.MalformedPacket:
                pass


class BuildTests(unittest.TestCase):
    def reply_for(self, request_bytes, message_type=wire.OFFER, options=()):
        reply = wire.Reply(request=wire.parse(request_bytes), message_type=message_type,
                           yiaddr=ipaddress.IPv4Address("10.0.0.5"))
        reply.add(wire.OPT_MESSAGE_TYPE, bytes((message_type,)))
        reply.add(wire.OPT_SERVER_ID, ipaddress.IPv4Address("10.0.0.1").packed)
        for code, value in options:
            reply.add(code, value)
        return packets.parse_reply(wire.build(reply))

    def test_padded_to_300_with_end(self):
        parsed = self.reply_for(packets.request())
        self.assertEqual(parsed["size"], 300)
        self.assertEqual(parsed["op"], 2)
        self.assertEqual(parsed["yiaddr"], "10.0.0.5")

    def test_end_after_option_ending_in_ff(self):
        """dhcppython would leave End out here; we must not."""
        data = wire.build(wire.Reply(request=wire.parse(packets.request()), message_type=wire.OFFER,
                                     options=[(53, b"\x02"), (43, b"\x06\x01\xff")]))
        body = data[240:]
        self.assertEqual(body[:8], b"\x35\x01\x02\x2b\x03\x06\x01\xff")
        self.assertEqual(body[8], 255)

    def test_order_follows_parameter_list(self):
        request = packets.request(options=[(55, bytes([6, 3, 1, 67]))])
        parsed = self.reply_for(request, options=[(1, b"\xff\xff\xff\0"), (3, b"\x0a\0\0\x01"),
                                                  (6, b"\x0a\0\0\x01"), (51, b"\0\0\x0e\x10"),
                                                  (67, b"x.efi\0"), (82, b"\x01\x01a")])
        self.assertEqual(parsed["order"], [53, 54, 6, 3, 1, 67, 51, 82])

    def test_long_option_split(self):
        parsed = self.reply_for(packets.request(options=[(57, struct.pack("!H", 1500))]),
                                options=[(43, b"x" * 600)])
        self.assertEqual(parsed["options"][43], b"x" * 600)

    def test_trimmed_to_max_size(self):
        request = packets.request(options=[(57, struct.pack("!H", 576))])
        parsed = self.reply_for(request, options=[(43, b"y" * 250), (60, b"z" * 250)])
        self.assertLessEqual(parsed["size"], 576 - 28)
        self.assertIn(53, parsed["options"])
        self.assertIn(54, parsed["options"])

    def test_header_matches_dhcppython(self):
        """Our one-struct header is what dhcppython's DHCPPacket encodes for
        the same fields (the header used to be built through it)."""
        from dhcppython import options as dhcp_options
        from dhcppython import packet as dhcp_packet
        rng = random.Random(7)
        for _ in range(200):
            mac = ":".join(f"{rng.randrange(256):02x}" for _ in range(6))
            relayed = rng.random() < 0.5
            request = wire.parse(packets.request(
                mac=mac, xid=rng.randrange(1 << 32), flags=rng.choice((0, 0x8000)),
                giaddr=str(ipaddress.IPv4Address(rng.randrange(1, 1 << 32))) if relayed else "0.0.0.0"))
            fields = {name: ipaddress.IPv4Address(rng.randrange(1 << 32))
                      for name in ("ciaddr", "yiaddr", "siaddr")}
            sname = bytes(rng.randrange(1, 128) for _ in range(rng.randrange(70)))
            file = bytes(rng.randrange(1, 128) for _ in range(rng.randrange(140)))
            ours = wire.build(wire.Reply(request=request, message_type=wire.OFFER, sname=sname,
                                         file=file, **fields))
            theirs = dhcp_packet.DHCPPacket(
                op="BOOTREPLY", htype="ETHERNET", hlen=6, hops=0, xid=request.xid, secs=0,
                flags=request.flags, giaddr=request.giaddr, chaddr=request.mac, sname=sname[:63],
                file=file[:127], options=dhcp_options.OptionList(), **fields).asbytes
            self.assertEqual(ours[:wire.HEADER_SIZE + 4], theirs[:wire.HEADER_SIZE + 4])
