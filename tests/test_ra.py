"""
Router Advertisements: the wire format against dnsmasq's captured RA and
OVMF's captured RS, the advertiser's timing on a task.Clock, and the final
RA with router lifetime 0 when advertising stops (shutdown, reload).
"""

import ipaddress
import random
import struct

from twisted.internet import task
from twisted.trial import unittest

from ownsocket import config as configuration
from ownsocket.dhcp6 import ra
from tests.fixtures_loader import load_hex6


def options(data):
    """(type, body) of each ND option after the 16-byte RA header."""
    found, offset = [], 16
    while offset < len(data):
        kind, units = data[offset], data[offset + 1]
        found.append((kind, data[offset + 2:offset + units * 8]))
        offset += units * 8
    return found


SUBNETS = configuration.load(text=(
    "[subnet6:lab]\nnetwork = fd99::/64\npool = fd99::100-fd99::1ff\nlease_time = 1800\n"
    "\n[subnet6:quiet]\nnetwork = fd98::/64\nrouter_advertisements = false\n"), known_interfaces=set()).subnets6


class Wire(unittest.TestCase):

    def test_rs_from_ovmf(self):
        rs = ra.parse_rs(load_hex6("ovmf_rs"), unspecified_source=True)
        self.assertIsNone(rs.source_mac)

    def test_rs_validation(self):
        self.assertRaises(ra.MalformedPacket, ra.parse_rs, b"\x85\x00\x00\x00")
        self.assertRaises(ra.MalformedPacket, ra.parse_rs, b"\x86" + bytes(7))
        self.assertRaises(ra.MalformedPacket, ra.parse_rs, b"\x85\x01" + bytes(6))
        self.assertRaises(ra.MalformedPacket, ra.parse_rs, bytes.fromhex("8500000000000000" "0100"))
        self.assertRaises(ra.MalformedPacket, ra.parse_rs, bytes.fromhex("8500000000000000" "0102aabbccddeeff"))
        with_mac = bytes.fromhex("8500000000000000" "0101525400990010")
        self.assertEqual(ra.parse_rs(with_mac).source_mac, "52:54:00:99:00:10")
        self.assertRaises(ra.MalformedPacket, ra.parse_rs, with_mac, True)

    def test_our_ra_says_what_dnsmasqs_said(self):
        """Same flags, prefix, L/A bits and options as the RA that booted
        OVMF and iPXE in FIRMWARE-FACTS §8."""
        theirs = load_hex6("dnsmasq_ra")
        ad = ra.advertisement_for(SUBNETS, "52:54:00:00:00:01", 1500)
        ours = ra.build_ra(ad)
        self.assertEqual(ours[0], ra.ROUTER_ADVERTISEMENT)
        self.assertEqual(ours[4:6], theirs[4:6])  # hop limit 64, M=1 O=1
        self.assertEqual(ours[4:6], b"\x40\xc0")
        self.assertEqual(ours[4:8], theirs[4:8])  # router lifetime 1800 too
        self.assertEqual(struct.unpack("!H", ours[6:8])[0], 1800)
        their_options = dict(options(theirs))
        our_options = dict(options(ours))
        self.assertEqual(sorted(our_options), sorted(their_options))
        self.assertEqual(our_options[ra.OPT_PREFIX_INFO], their_options[ra.OPT_PREFIX_INFO])
        self.assertEqual(our_options[ra.OPT_PREFIX_INFO][:2], b"\x40\x80")  # /64, L=1 A=0
        self.assertEqual(our_options[ra.OPT_MTU], their_options[ra.OPT_MTU])
        self.assertEqual(our_options[ra.OPT_SOURCE_LLADDR], bytes.fromhex("525400000001"))

    def test_retrans_timer(self):
        """EDK2 times DAD with the advertised Retrans Timer (ra docstring)."""
        data = ra.build_ra(ra.advertisement_for(SUBNETS, None, None))
        self.assertEqual(struct.unpack("!II", data[8:16]), (0, ra.RETRANS_TIMER_MS))
        self.assertEqual(ra.RETRANS_TIMER_MS, 500)

    def test_quiet_subnets_get_no_ra(self):
        self.assertIsNone(ra.advertisement_for(SUBNETS[1:], None, None))
        self.assertIsNone(ra.advertisement_for((), None, None))

    def test_rdnss(self):
        (subnet,) = configuration.load(text="[subnet6:a]\nnetwork = fd99::/64\ndns = fd99::53\n",
                                       known_interfaces=set()).subnets6
        data = ra.build_ra(ra.advertisement_for([subnet], None, None))
        (body,) = [body for kind, body in options(data) if kind == ra.OPT_RDNSS]
        self.assertEqual(body[2:6], struct.pack("!I", 3600))
        self.assertEqual(body[6:], ipaddress.IPv6Address("fd99::53").packed)


class FakeSocket:
    def __init__(self):
        self.sent = []
        self.closed = False

    def sendto(self, data, address):
        self.sent.append((data, address))

    def fileno(self):
        return 99

    def close(self):
        self.closed = True


class FakeReactor(task.Clock):
    def __init__(self):
        task.Clock.__init__(self)
        self.readers = []

    def addReader(self, reader):
        self.readers.append(reader)

    def removeReader(self, reader):
        self.readers.remove(reader)


class Advertiser(unittest.TestCase):

    def setUp(self):
        self.reactor = FakeReactor()
        self.sock = FakeSocket()
        ad = ra.advertisement_for(SUBNETS, "52:54:00:00:00:01", 1500)
        self.advertiser = ra.RouterAdvertiser("lo", ad, self.reactor, self.sock, rng=random.Random(4))
        self.advertiser._index = 7

    def test_periodic(self):
        self.advertiser.start()
        self.assertEqual(len(self.sock.sent), 1)  # one at start
        self.assertEqual(self.sock.sent[0][1], ("ff02::1", 0, 0, 7))
        self.reactor.advance(2.9)
        self.assertEqual(len(self.sock.sent), 1)
        self.reactor.advance(1.2)
        self.assertEqual(len(self.sock.sent), 2)
        for _ in range(10):
            self.reactor.advance(4.0)
        self.assertEqual(len(self.sock.sent), 12)
        self.advertiser.stop()
        self.assertTrue(self.sock.closed)
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.assertEqual(self.reactor.readers, [])

    def test_rs_from_unspecified_is_answered_by_multicast_rate_limited(self):
        self.advertiser.start()
        self.reactor.advance(1)
        self.advertiser.solicited(load_hex6("ovmf_rs"), "::")
        self.assertEqual(self.sock.sent[-1][1], ("ff02::1", 0, 0, 7))
        self.assertEqual(len(self.sock.sent), 2)
        self.reactor.advance(0.1)
        self.advertiser.solicited(load_hex6("ovmf_rs"), "::")
        self.assertEqual(len(self.sock.sent), 2)  # within the gap
        self.advertiser.stop()

    def test_rs_from_link_local_is_answered_by_unicast(self):
        self.advertiser.start()
        self.advertiser.solicited(bytes.fromhex("8500000000000000"), "fe80::5054:ff:fe99:10%br0")
        self.assertEqual(self.sock.sent[-1][1], ("fe80::5054:ff:fe99:10", 0, 0, 7))
        self.advertiser.stop()

    def test_own_kernels_rs_is_not_answered(self):
        self.advertiser.start()
        self.advertiser.solicited(bytes.fromhex("8500000000000000" "0101525400000001"), "fe80::1")
        self.assertEqual(len(self.sock.sent), 1)
        self.advertiser.solicited(bytes.fromhex("8500000000000000" "0101525400000002"), "fe80::2")
        self.assertEqual(len(self.sock.sent), 2)
        self.advertiser.stop()

    def test_nudge_unicasts_now_and_once_more(self):
        self.advertiser.start()
        self.advertiser.nudge("fe80::5054:ff:fe99:10%br0")
        self.assertEqual(self.sock.sent[-1][1], ("fe80::5054:ff:fe99:10", 0, 0, 7))
        self.advertiser.nudge("fe80::5054:ff:fe99:10")  # a repeated Request
        self.assertEqual(len(self.sock.sent), 3)
        self.assertEqual(len(self.reactor.getDelayedCalls()), 2)  # periodic + one pending nudge
        self.reactor.advance(ra.NUDGE_AGAIN)
        self.assertEqual(len(self.sock.sent), 4)
        self.assertEqual(self.sock.sent[-1][1], ("fe80::5054:ff:fe99:10", 0, 0, 7))
        self.reactor.advance(ra.NUDGE_AGAIN)
        self.assertEqual(len(self.sock.sent), 4)
        self.advertiser.stop()

    def test_nudge_only_to_link_local_and_cancelled_by_stop(self):
        self.advertiser.start()
        self.advertiser.nudge("fd99::5")
        self.assertEqual(len(self.sock.sent), 1)
        self.advertiser.nudge("fe80::1")
        self.advertiser.stop()
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_bad_rs_is_dropped(self):
        self.advertiser.start()
        self.advertiser.solicited(bytes.fromhex("8500000000000000"), "fe80::1", hop_limit=64)
        self.advertiser.solicited(b"\x85", "fe80::1")
        self.assertEqual(len(self.sock.sent), 1)
        self.advertiser.stop()


class RouterLifetime(unittest.TestCase):

    def test_configurable(self):
        subnets = configuration.load(text="[subnet6:a]\nnetwork = fd99::/64\nrouter_lifetime = 0\n",
                                     known_interfaces=set()).subnets6
        data = ra.build_ra(ra.advertisement_for(subnets, None, None))
        self.assertEqual(data[6:8], b"\x00\x00")


def header(data):
    """(type, cur hop limit, flags, router lifetime, reachable, retrans) of an RA."""
    return struct.unpack("!BxxxBBHII", data[:16])


class FinalAdvertisement(unittest.TestCase):
    """RFC 4861 §6.2.5: a router that stops advertising on an interface
    sends a final multicast RA with Router Lifetime 0."""

    def setUp(self):
        self.reactor = FakeReactor()
        self.sock = FakeSocket()
        ad = ra.advertisement_for(configuration.load(
            text="[subnet6:lab]\nnetwork = fd99::/64\ndns = fd99::53\n", known_interfaces=set()).subnets6,
            "52:54:00:00:00:01", 1500)
        self.advertiser = ra.RouterAdvertiser("lo", ad, self.reactor, self.sock, rng=random.Random(4))
        self.advertiser._index = 7

    def test_stop_sends_lifetime_zero_to_all_nodes(self):
        self.advertiser.start()
        self.reactor.advance(4)
        self.advertiser.nudge("fe80::5054:ff:fe99:10")
        before = len(self.sock.sent)
        self.assertEqual(header(self.sock.sent[-1][0])[3], 1800)
        self.advertiser.stop()
        self.assertEqual(len(self.sock.sent), before + 1)
        data, address = self.sock.sent[-1]
        self.assertEqual(address, ("ff02::1", 0, 0, 7))
        kind, hops, flags, lifetime, _, retrans = header(data)
        self.assertEqual((kind, hops, flags, lifetime, retrans), (ra.ROUTER_ADVERTISEMENT, 64, 0xC0, 0, 500))
        # No prefix, no RDNSS: the on-link prefix and DNS servers age out as
        # advertised, with the leases (ra docstring); who we are and the MTU stay.
        self.assertEqual([kind for kind, _ in options(data)], [ra.OPT_SOURCE_LLADDR, ra.OPT_MTU])
        self.assertTrue(self.sock.closed)
        self.assertEqual(self.reactor.getDelayedCalls(), [])  # the pending nudge went too
        self.assertEqual(self.reactor.readers, [])

    def test_final_advertisement_changes_nothing_else(self):
        ad = self.advertiser.advertisement
        final = ra.final_advertisement(ad)
        self.assertEqual((final.router_lifetime, final.prefixes, final.dns), (0, (), ()))
        self.assertEqual((final.managed, final.other, final.mtu, final.source_mac, final.retrans_timer),
                         (ad.managed, ad.other, ad.mtu, ad.source_mac, ad.retrans_timer))
        self.assertEqual(ad.router_lifetime, 1800)  # the running advertisement is left alone

    def test_never_started_sends_nothing(self):
        """An advertiser torn down before it advertised (start-up failed on
        another link) has nobody to tell."""
        self.advertiser.stop()
        self.assertEqual(self.sock.sent, [])
        self.assertTrue(self.sock.closed)

    def test_stop_twice_sends_one(self):
        self.advertiser.start()
        self.advertiser.stop()
        self.advertiser.stop()
        self.assertEqual([header(data)[3] for data, _ in self.sock.sent], [1800, 0])

    def test_send_error_still_closes(self):
        self.advertiser.start()

        def refuse(data, address):
            raise OSError(101, "Network is unreachable")
        self.sock.sendto = refuse
        self.advertiser.stop()
        self.assertTrue(self.sock.closed)


class FinalAdvertisementFromTheService(unittest.TestCase):
    """The DHCPv6 service stops an advertiser on shutdown and when a reload
    takes RAs off a link; a reload that keeps them sends no final RA."""

    LAB = "[subnet6:lab]\nnetwork = fd99::/64\npool = fd99::100-fd99::1ff\n\n[boot]\narch.7 = snponly.efi\n"

    def start(self, text):
        from ownsocket.dhcp6.leases import MemoryLeaseStore6
        from ownsocket.dhcp6.service import Dhcp6Service
        from ownsocket.tap import build_selector
        from tests.test_dhcp6_service import ADDRESSES, FakeReactor as ServiceReactor, FakeSocket as Sock
        self.build_selector = build_selector
        self.reactor = ServiceReactor()
        self.raw = []

        def open_ra(name):
            self.raw.append(Sock(name, "raw"))
            return self.raw[-1]

        config = self.load(text)
        service = Dhcp6Service(config, build_selector(config, self.reactor), self.reactor,
                               store_factory=MemoryLeaseStore6, addresses=lambda: ADDRESSES,
                               open_socket=lambda name: Sock(name, "udp"), open_ra=open_ra,
                               mac_of=lambda name: "02:00:00:00:00:01", mtu_of=lambda name: 1500)
        service.privilegedStartService()
        service.startService()
        return service

    def load(self, text):
        return configuration.load(text=text, known_interfaces={"br0", "eth0", "lo"})

    def lifetimes(self, sock):
        return [(header(data)[3], address[0]) for data, address in sock.sent]

    def test_shutdown(self):
        service = self.start(self.LAB)
        service.stopService()
        self.assertEqual(self.lifetimes(self.raw[0]), [(1800, "ff02::1"), (0, "ff02::1")])
        self.assertTrue(self.raw[0].closed)

    def test_reload_removes_the_last_subnet6(self):
        service = self.start(self.LAB)
        new = self.load("[boot]\narch.7 = snponly.efi\n")
        service.reconfigure(new, self.build_selector(new, self.reactor), None)
        self.assertEqual(self.lifetimes(self.raw[0]), [(1800, "ff02::1"), (0, "ff02::1")])
        self.assertEqual(service.advertisers, {})
        self.reactor.advance(10)
        self.assertEqual(len(self.raw[0].sent), 2)  # and nothing after it
        service.stopService()

    def test_reload_turns_router_advertisements_off(self):
        service = self.start(self.LAB)
        new = self.load(self.LAB.replace("pool =", "router_advertisements = false\npool ="))
        service.reconfigure(new, self.build_selector(new, self.reactor), None)
        self.assertEqual(self.lifetimes(self.raw[0]), [(1800, "ff02::1"), (0, "ff02::1")])
        service.stopService()

    def test_reload_that_keeps_the_link_sends_no_final_ra(self):
        """Replacing the RA (new lease time here) must not flap hosts'
        default route through a zero lifetime."""
        service = self.start(self.LAB)
        new = self.load(self.LAB.replace("pool =", "lease_time = 900\npool ="))
        service.reconfigure(new, self.build_selector(new, self.reactor), None)
        self.reactor.advance(4)
        self.assertEqual([lifetime for lifetime, _ in self.lifetimes(self.raw[0])], [1800, 1800])
        service.stopService()
        self.assertEqual([lifetime for lifetime, _ in self.lifetimes(self.raw[0])], [1800, 1800, 0])
