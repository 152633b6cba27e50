"""The DHCP/BOOTP policy on a task.Clock, with no sockets."""

import ipaddress
import struct

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial import unittest
from zope.interface import implementer

from ownsocket import config as configuration
from ownsocket.boot.recent import RecentRequests
from ownsocket.boot.request import BootDecision
from ownsocket.dhcp import wire
from ownsocket.dhcp.leases import SqliteLeaseStore
from ownsocket.dhcp.server import Arrival, DhcpServer
from ownsocket.events import EventList
from ownsocket.interfaces import IBootFileSelector
from ownsocket.tap import build_selector
from tests import packets

IP = ipaddress.IPv4Address
SERVER = IP("10.0.0.1")
ETH0 = Arrival("eth0", SERVER)

CONFIG = """
[dhcp]
decline_time = 300
offer_hold = 30
bootp_dynamic = true
[subnet:lab]
network = 10.0.0.0/24
pool = 10.0.0.100-10.0.0.103
router = 10.0.0.1
dns = 10.0.0.2, 10.0.0.3
lease_time = 600
[subnet:far]
network = 10.9.0.0/24
pool = 10.9.0.10-10.9.0.20
router = 10.9.0.1
[host:pinned]
mac = 52:54:00:00:00:aa
address = 10.0.0.50
hostname = pinned
bootfile = special.efi
[boot]
default = undionly.kpxe
arch.0 = undionly.kpxe
arch.7 = snponly.efi
"""


def mac(n):
    return f"52:54:00:00:01:{n:02x}"


class ServerTestCase(unittest.TestCase):
    config_text = CONFIG

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.db = self.mktemp() + ".sqlite"
        self.config = configuration.load(text=self.config_text, known_interfaces={"eth0", "eth1"})
        self.sizes = {"snponly.efi": 1_000_000, "undionly.kpxe": 70_000}
        self.recent = RecentRequests()
        self.server = self.make_server()

    def make_server(self, selector=None):
        self.store = SqliteLeaseStore(self.db, clock=self.clock)
        self.addCleanup(self.store.close)
        return DhcpServer(self.config, self.store, selector or build_selector(self.config, self.clock),
                          self.clock, boot_file_size=lambda name, request=None: self.sizes.get(name), recent=self.recent)

    def lease(self, client):
        return self.successResultOf(self.store.lookup(client, None))

    def exchange(self, data, arrival=ETH0):
        result = self.server.handle(wire.parse(data), arrival)
        return [(packets.parse_reply(out.data), out.host, out.port) for out in result]

    def one(self, data, arrival=ETH0):
        replies = self.exchange(data, arrival)
        self.assertEqual(len(replies), 1, replies)
        return replies[0]

    def discover(self, client, **kwargs):
        return self.one(packets.ovmf_pxe_discover(mac=client, **kwargs))

    def request(self, client, address, server=SERVER, **kwargs):
        extra = [(50, IP(address).packed)]
        if server is not None:
            extra.append((54, IP(server).packed))
        return self.exchange(packets.ovmf_pxe_discover(mac=client, message_type=3, extra=extra), **kwargs)

    def obtain(self, client):
        offer, _, _ = self.discover(client)
        [(ack, _, _)] = self.request(client, offer["yiaddr"])
        self.assertEqual(ack["type"], wire.ACK)
        return ack["yiaddr"]


class DiscoverTests(ServerTestCase):
    def test_offer_contents(self):
        reply, host, port = self.discover(mac(1))
        self.assertEqual(reply["type"], wire.OFFER)
        self.assertIn(IP(reply["yiaddr"]), [IP("10.0.0.100") + i for i in range(4)])
        self.assertEqual(reply["siaddr"], "10.0.0.1")
        self.assertEqual(reply["file"], b"snponly.efi")
        options = reply["options"]
        self.assertEqual(options[54], SERVER.packed)
        self.assertEqual(options[1], IP("255.255.255.0").packed)
        self.assertEqual(options[3], IP("10.0.0.1").packed)
        self.assertEqual(options[6], IP("10.0.0.2").packed + IP("10.0.0.3").packed)
        self.assertEqual(options[51], struct.pack("!I", 600))
        self.assertEqual(options[58], struct.pack("!I", 300))
        self.assertEqual(options[59], struct.pack("!I", 525))
        self.assertEqual(options[13], struct.pack("!H", (1_000_000 + 511) // 512))
        self.assertEqual(options[67], b"snponly.efi")  # OVMF lists 67 in option 55
        self.assertEqual(options[66], b"10.0.0.1")
        self.assertEqual(options[97], bytes(17))
        self.assertEqual(reply["order"][:2], [53, 54])
        self.assertEqual((host, port), ("255.255.255.255", 68))

    def test_bios_and_uefi_get_different_files(self):
        bios, _, _ = self.one(packets.ipxe_bios_discover(mac=mac(2)))
        uefi, _, _ = self.discover(mac(3))
        self.assertEqual(bios["file"], b"undionly.kpxe")
        self.assertEqual(uefi["file"], b"snponly.efi")
        self.assertEqual(bios["options"][13], struct.pack("!H", (70_000 + 511) // 512))

    def test_no_66_67_unless_asked(self):
        reply, _, _ = self.one(packets.request(mac=mac(4), options=[(55, bytes([1, 3]))]))
        self.assertNotIn(66, reply["options"])
        self.assertNotIn(67, reply["options"])
        self.assertEqual(reply["file"], b"undionly.kpxe")

    def test_same_client_same_offer(self):
        first, _, _ = self.discover(mac(5))
        second, _, _ = self.discover(mac(5))
        self.assertEqual(first["yiaddr"], second["yiaddr"])

    def test_requested_address_honoured(self):
        reply, _, _ = self.discover(mac(6), extra=[(50, IP("10.0.0.102").packed)])
        self.assertEqual(reply["yiaddr"], "10.0.0.102")

    def test_requested_address_outside_pool_ignored(self):
        reply, _, _ = self.discover(mac(6), extra=[(50, IP("10.0.0.7").packed)])
        self.assertNotEqual(reply["yiaddr"], "10.0.0.7")

    def test_offers_are_distinct_and_oldest_offer_reused_when_exhausted(self):
        addresses = [self.discover(mac(10 + i))[0]["yiaddr"] for i in range(4)]
        self.assertEqual(len(set(addresses)), 4)
        self.clock.advance(1)
        fifth, _, _ = self.discover(mac(20))
        self.assertEqual(fifth["yiaddr"], addresses[0])
        [(nak, _, _)] = self.request(mac(10), addresses[0])
        self.assertEqual(nak["type"], wire.NAK)

    def test_pool_exhausted_by_bound_leases_gives_no_offer(self):
        for i in range(4):
            self.obtain(mac(30 + i))
        self.assertEqual(self.exchange(packets.ovmf_pxe_discover(mac=mac(40))), [])

    def test_reservation(self):
        reply, _, _ = self.discover("52:54:00:00:00:aa")
        self.assertEqual(reply["yiaddr"], "10.0.0.50")
        self.assertEqual(reply["file"], b"special.efi")

    def test_no_subnet_no_reply(self):
        self.assertEqual(self.exchange(packets.ovmf_pxe_discover(), Arrival("eth1", IP("192.168.5.1"))), [])
        self.assertEqual(self.exchange(packets.ovmf_pxe_discover(), Arrival("eth1", None)), [])

    def test_offer_hold_expires(self):
        first, _, _ = self.discover(mac(1))
        self.clock.advance(29)
        self.discover(mac(50))
        self.assertEqual(str(self.lease(mac(1)).address), first["yiaddr"])
        self.clock.advance(2)
        self.discover(mac(51))
        self.assertIsNone(self.lease(mac(1)))
        self.assertTrue(self.server.pools["lab"].free_count >= 1)

    def test_recent_request_remembered_for_file_backends(self):
        reply, _, _ = self.discover(mac(7))
        self.assertEqual(self.recent.get(reply["yiaddr"]).mac, mac(7))
        self.assertEqual(self.recent.get(reply["yiaddr"]).arch, (7,))

    def test_bootp_compat_offer(self):
        self.config = configuration.load(text=CONFIG + "", known_interfaces={"eth0"})
        import dataclasses
        self.config = dataclasses.replace(self.config, dhcp=dataclasses.replace(
            self.config.dhcp, bootp_compat_offer=True))
        self.server = self.make_server()
        replies = self.exchange(packets.ovmf_pxe_discover(mac=mac(8)))
        self.assertEqual([reply["type"] for reply, _, _ in replies], [None, wire.OFFER])
        self.assertEqual(replies[0][0]["yiaddr"], replies[1][0]["yiaddr"])


class RequestTests(ServerTestCase):
    def test_selecting_ack_and_durable(self):
        address = self.obtain(mac(1))
        reopened = SqliteLeaseStore(self.db, clock=self.clock)
        self.addCleanup(reopened.close)
        self.assertEqual(str(self.successResultOf(reopened.lookup(mac(1), None)).address), address)
        self.assertEqual(self.successResultOf(reopened.lookup(mac(1), None)).state, "bound")

    def test_other_server_chosen(self):
        offer, _, _ = self.discover(mac(1))
        self.assertEqual(self.request(mac(1), offer["yiaddr"], server="10.0.0.254"), [])
        self.assertIsNone(self.lease(mac(1)))

    def test_init_reboot_other_clients_address_nak(self):
        address = self.obtain(mac(1))
        [(nak, host, port)] = self.request(mac(2), address, server=None)
        self.assertEqual(nak["type"], wire.NAK)
        self.assertEqual((host, port), ("255.255.255.255", 68))
        self.assertIn(b"held by", nak["options"][56])

    def test_init_reboot_off_subnet_nak(self):
        [(nak, _, _)] = self.request(mac(1), "192.168.1.5", server=None)
        self.assertEqual(nak["type"], wire.NAK)

    def test_init_reboot_out_of_pool_nak(self):
        [(nak, _, _)] = self.request(mac(1), "10.0.0.7", server=None)
        self.assertEqual(nak["type"], wire.NAK)

    def test_reserved_address_nak_for_others(self):
        [(nak, _, _)] = self.request(mac(1), "10.0.0.50", server=None)
        self.assertEqual(nak["type"], wire.NAK)

    def test_init_reboot_own_address_ack(self):
        address = self.obtain(mac(1))
        [(ack, _, _)] = self.request(mac(1), address, server=None)
        self.assertEqual(ack["type"], wire.ACK)
        self.assertEqual(ack["yiaddr"], address)

    def test_renewing_unicast_to_ciaddr(self):
        address = self.obtain(mac(1))
        self.clock.advance(300)
        replies = self.exchange(packets.request(mac=mac(1), message_type=3, ciaddr=address))
        [(ack, host, port)] = replies
        self.assertEqual(ack["type"], wire.ACK)
        self.assertEqual((host, port), (address, 68))
        self.assertEqual(self.lease(mac(1)).expires, self.clock.seconds() + 600)

    def test_rebinding_for_another_clients_address_nak(self):
        address = self.obtain(mac(1))
        [(nak, _, _)] = self.exchange(packets.request(mac=mac(2), message_type=3, ciaddr=address,
                                                      flags=0x8000))
        self.assertEqual(nak["type"], wire.NAK)

    def test_expired_lease_goes_to_someone_else_only_when_needed(self):
        address = self.obtain(mac(1))
        self.clock.advance(601)
        others = [self.discover(mac(10 + i))[0]["yiaddr"] for i in range(3)]
        self.assertNotIn(address, others)  # three other addresses were free
        again, _, _ = self.discover(mac(1))
        self.assertEqual(again["yiaddr"], address)  # still there for its old owner

    def test_expired_lease_reused_when_pool_full(self):
        addresses = {self.obtain(mac(1))} | {self.obtain(mac(10 + i)) for i in range(3)}
        self.assertEqual(self.exchange(packets.ovmf_pxe_discover(mac=mac(20))), [])
        self.clock.advance(601)
        newcomer, _, _ = self.discover(mac(20))
        self.assertIn(newcomer["yiaddr"], addresses)

    def test_no_address_ever_bound_twice(self):
        bound = {}
        for round_ in range(3):
            for i in range(6):
                client = mac(60 + i)
                offers = self.exchange(packets.ovmf_pxe_discover(mac=client))
                if not offers:
                    continue
                acks = self.request(client, offers[0][0]["yiaddr"])
                if acks and acks[0][0]["type"] == wire.ACK:
                    bound[client] = acks[0][0]["yiaddr"]
            self.clock.advance(200)
            active = [lease for lease in self.successResultOf(self.store.all_leases()) if lease.state == "bound"
                      and lease.active(self.clock.seconds())]
            self.assertEqual(len({l.address for l in active}), len(active))
        self.assertTrue(bound)


class OtherMessageTests(ServerTestCase):
    def test_decline_quarantines(self):
        address = self.obtain(mac(1))
        self.assertEqual(self.exchange(packets.request(mac=mac(1), message_type=4,
                                                       options=[(50, IP(address).packed)])), [])
        others = {self.obtain(mac(10 + i)) for i in range(3)}
        self.assertNotIn(address, others)
        # Only the quarantined address is left, and it is not offered ...
        self.assertEqual(self.exchange(packets.ovmf_pxe_discover(mac=mac(20))), [])
        self.clock.advance(301)
        # ... until its quarantine is over.
        reply, _, _ = self.discover(mac(20))
        self.assertEqual(reply["yiaddr"], address)

    def test_release_only_by_owner(self):
        address = self.obtain(mac(1))
        self.exchange(packets.request(mac=mac(2), message_type=7, ciaddr=address))
        self.assertEqual(str(self.lease(mac(1)).address), address)
        self.exchange(packets.request(mac=mac(1), message_type=7, ciaddr=address))
        self.assertIsNone(self.lease(mac(1)))
        reopened = SqliteLeaseStore(self.db, clock=self.clock)
        self.addCleanup(reopened.close)
        self.assertIsNone(self.successResultOf(reopened.lookup(mac(1), None)))

    def test_inform(self):
        [(ack, host, port)] = self.exchange(packets.request(mac=mac(1), message_type=8,
                                                            ciaddr="10.0.0.77"))
        self.assertEqual(ack["type"], wire.ACK)
        self.assertEqual(ack["yiaddr"], "0.0.0.0")
        self.assertEqual(ack["ciaddr"], "10.0.0.77")
        self.assertNotIn(51, ack["options"])
        self.assertEqual((host, port), ("10.0.0.77", 68))
        self.assertIsNone(self.lease(mac(1)))

    def test_bootp(self):
        [(reply, host, _)] = self.exchange(packets.request(mac=mac(1), message_type=None,
                                                           options=[(55, bytes([1, 3]))]))
        self.assertIsNone(reply["type"])
        self.assertNotIn(53, reply["options"])
        self.assertNotIn(51, reply["options"])
        self.assertEqual(reply["file"], b"undionly.kpxe")
        self.assertEqual(self.lease(mac(1)).expires, float("inf"))
        self.assertEqual(host, "255.255.255.255")

    def test_bootp_unknown_host_refused_without_bootp_dynamic(self):
        import dataclasses
        self.config = dataclasses.replace(self.config, dhcp=dataclasses.replace(
            self.config.dhcp, bootp_dynamic=False))
        self.server = self.make_server()
        self.assertEqual(self.exchange(packets.request(mac=mac(1), message_type=None)), [])
        self.assertIsNone(self.lease(mac(1)))
        [(reply, _, _)] = self.exchange(packets.request(mac="52:54:00:00:00:aa", message_type=None))
        self.assertEqual(reply["yiaddr"], "10.0.0.50")

    def test_bootp_reserved_host(self):
        [(reply, _, _)] = self.exchange(packets.request(mac="52:54:00:00:00:aa", message_type=None))
        self.assertEqual(reply["yiaddr"], "10.0.0.50")
        self.assertEqual(reply["options"][12], b"pinned")

    def test_relay(self):
        relay = b"\x01\x04port\x02\x03abc"
        data = packets.ovmf_pxe_discover(mac=mac(1), extra=[(82, relay)])
        data = data[:24] + IP("10.9.0.1").packed + data[28:]  # giaddr
        [(reply, host, port)] = self.exchange(data)
        self.assertIn(IP(reply["yiaddr"]), ipaddress.IPv4Network("10.9.0.0/24"))
        self.assertEqual((host, port), ("10.9.0.1", 67))
        self.assertEqual(reply["options"][82], relay)
        self.assertEqual(reply["order"][-1], 82)
        self.assertEqual(reply["options"][3], IP("10.9.0.1").packed)

    def test_relay_unknown_subnet(self):
        data = packets.ovmf_pxe_discover(mac=mac(1))
        data = data[:24] + IP("172.16.0.1").packed + data[28:]
        self.assertEqual(self.exchange(data), [])


class PersistenceTests(ServerTestCase):
    def test_restart_keeps_every_lease(self):
        owned = {mac(i): self.obtain(mac(i)) for i in range(4)}
        self.store.close()
        self.server = self.make_server()
        for client, address in owned.items():
            [(ack, _, _)] = self.request(client, address, server=None)
            self.assertEqual((ack["type"], ack["yiaddr"]), (wire.ACK, address))
        self.assertEqual(self.exchange(packets.ovmf_pxe_discover(mac=mac(99))), [])


@implementer(IBootFileSelector)
class SlowSelector:
    name = "slow"

    def __init__(self):
        self.pending = []

    def select(self, request):
        d = defer.Deferred()
        self.pending.append(d)
        return d


class SelectorTests(ServerTestCase):
    def test_deferred_selector(self):
        selector = SlowSelector()
        self.server = self.make_server(selector=selector)
        result = self.server.handle(wire.parse(packets.ovmf_pxe_discover(mac=mac(1))), ETH0)
        self.assertIsInstance(result, defer.Deferred)
        selector.pending[0].callback(BootDecision(filename="late.efi", reason="test"))
        [outgoing] = self.successResultOf(result)
        self.assertEqual(packets.parse_reply(outgoing.data)["file"], b"late.efi")

    def test_failing_selector_still_answers(self):
        @implementer(IBootFileSelector)
        class Broken:
            name = "broken"

            def select(self, request):
                raise RuntimeError("boom")

        self.server = self.make_server(selector=Broken())
        reply, _, _ = self.discover(mac(1))
        self.assertEqual(reply["type"], wire.OFFER)
        self.assertEqual(reply["file"], b"")
        self.flushLoggedErrors(RuntimeError)


class RoutedClientTests(ServerTestCase):
    def test_relayed_client_renews_by_unicast(self):
        """A client behind a relay renews straight to the server (giaddr 0):
        its lease's subnet is found from ciaddr, not from our interface."""
        data = packets.ovmf_pxe_discover(mac=mac(1))
        data = data[:24] + IP("10.9.0.1").packed + data[28:]
        [(offer, _, _)] = self.exchange(data)
        request = packets.ovmf_pxe_discover(mac=mac(1), message_type=3, extra=[
            (54, SERVER.packed), (50, IP(offer["yiaddr"]).packed)])
        request = request[:24] + IP("10.9.0.1").packed + request[28:]
        [(ack, _, _)] = self.exchange(request)
        self.assertEqual(ack["type"], wire.ACK)
        [(renewed, host, port)] = self.exchange(packets.request(mac=mac(1), message_type=3,
                                                                ciaddr=offer["yiaddr"]))
        self.assertEqual(renewed["type"], wire.ACK)
        self.assertEqual((host, port), (offer["yiaddr"], 68))
        self.assertEqual(renewed["options"][3], IP("10.9.0.1").packed)

    def test_routed_inform_gets_its_own_subnet(self):
        [(ack, host, _)] = self.exchange(packets.request(mac=mac(2), message_type=8, ciaddr="10.9.0.15"))
        self.assertEqual(ack["options"][3], IP("10.9.0.1").packed)
        self.assertEqual(host, "10.9.0.15")


class EventTests(ServerTestCase):
    """What the policy tells observers: exactly one event per step."""

    def setUp(self):
        super().setUp()
        self.seen = EventList()
        self.server.events.subscribe(self.seen)

    def summary(self):
        return [(e.service, e.kind, e.mac, dict(e.fields)) for e in self.seen.events]

    def test_discover_offer_request_ack(self):
        offer, _, _ = self.discover(mac(1))
        address = offer["yiaddr"]
        self.request(mac(1), address)
        events = self.summary()
        committed = events[3]
        self.assertIsInstance(committed[3].pop("seconds"), float)
        self.assertEqual(events, [
            ("dhcp", "received", mac(1), {"message": "discover", "xid": 0x1234, "interface": "eth0"}),
            ("dhcp", "sent", mac(1), {"message": "offer", "xid": 0x1234, "address": address,
                                      "file": "snponly.efi", "selector": "arch", "arch": "efi-x64",
                                      "reason": "arch 7 (EFI x64) -> [boot] arch.7",
                                      "lease": "new address from the pool"}),
            ("dhcp", "received", mac(1), {"message": "request", "xid": 0x1234, "interface": "eth0"}),
            ("dhcp", "committed", mac(1), {"address": address}),
            ("dhcp", "sent", mac(1), {"message": "ack", "xid": 0x1234, "address": address,
                                      "file": "snponly.efi", "selector": "arch", "arch": "efi-x64",
                                      "reason": "arch 7 (EFI x64) -> [boot] arch.7",
                                      "lease": "selecting: lease 600s committed"}),
        ])
        self.assertEqual([e.time for e in self.seen.events], [self.clock.seconds()] * 5)

    def test_nak(self):
        [(nak, _, _)] = self.request(mac(1), "10.0.0.7", server=None)
        self.assertEqual(self.seen.kinds(), [("dhcp", "received"), ("dhcp", "sent")])
        sent = self.seen.events[1].fields
        self.assertEqual((sent["message"], sent["address"], sent["file"], sent["selector"]),
                         ("nak", None, None, None))
        self.assertIn("outside the pools", sent["reason"])

    def test_drops_name_their_reason(self):
        self.exchange(packets.ovmf_pxe_discover(), Arrival("eth1", IP("192.168.5.1")))
        offer, _, _ = self.discover(mac(1))
        self.request(mac(1), offer["yiaddr"], server="10.0.0.254")
        drops = [e.fields["reason"] for e in self.seen.events if e.kind == "dropped"]
        self.assertEqual(drops, ["no-subnet", "not-for-us"])

    def test_pool_exhausted(self):
        for i in range(4):
            self.obtain(mac(10 + i))
        self.seen.events.clear()
        self.assertEqual(self.exchange(packets.ovmf_pxe_discover(mac=mac(20))), [])
        self.assertEqual([(e.kind, e.fields.get("reason")) for e in self.seen.events][1:], [
            ("allocation-failed", "pool of [subnet:lab] exhausted (4 addresses); no offer"),
            ("dropped", "pool-exhausted")])
        self.assertEqual(self.seen.events[1].fields["subnet"], "lab")

    def test_address_counts(self):
        self.obtain(mac(1))
        self.discover(mac(2))
        counts = self.server.address_counts()
        self.assertEqual({k: v for k, v in counts.items() if k[0] == "lab"}, {
            ("lab", "free"): 2, ("lab", "offered"): 1, ("lab", "bound"): 1, ("lab", "declined"): 0})
        self.assertEqual(counts[("far", "free")], 11)

    def test_silent_when_nobody_listens(self):
        self.server.events.unsubscribe(self.seen)
        self.obtain(mac(1))
        self.assertEqual(self.seen.events, [])

    def test_release_event(self):
        address = self.obtain(mac(1))
        self.seen.events.clear()
        self.exchange(packets.request(mac=mac(1), message_type=7, ciaddr=address))
        self.assertEqual([(e.kind, e.fields.get("address")) for e in self.seen.events],
                         [("received", None), ("released", address)])
