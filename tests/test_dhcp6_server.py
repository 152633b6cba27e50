"""
The DHCPv6 policy, driven by the packets OVMF and iPXE really sent, with
the real selector chain and an injected clock.
"""

import ipaddress
import os
import struct

from twisted.internet import defer, task
from twisted.trial import unittest
from zope.interface import implementer

from ownsocket import config as configuration
from ownsocket.boot.recent import RecentRequests
from ownsocket.boot.request import BootDecision
from ownsocket.dhcp6 import wire
from ownsocket.dhcp6.leases import MemoryLeaseStore6, SqliteLeaseStore6, sqlite_path_for
from ownsocket.dhcp6.server import Dhcp6Server, Link, boot_url
from ownsocket.events import EventBus, EventList
from ownsocket.interfaces import IBootFileSelector
from ownsocket.tap import build_selector
from tests.fixtures_loader import load_hex6

IPv6 = ipaddress.IPv6Address
SERVER_DUID = wire.duid_ll("02:00:00:00:00:01")
LINK = Link("br0", (IPv6("fd99::1"), IPv6("fe80::1")), SERVER_DUID)
CLIENT = ("fe80::5054:ff:fe99:10", 546)
OTHER_CLIENT = ("fe80::5054:ff:fe99:11", 546)

CONFIG = """
[dhcp]
decline_time = 600
offer_hold = 60

[subnet6:lab]
network = fd99::/64
pool = fd99::100-fd99::1ff
interface = br0
lease_time = 600
dns = fd99::1
domain = lab.example

[http]
enabled = true

[boot]
default = undionly.kpxe
arch.7 = snponly.efi

[selector:ipxe]
script = boot.ipxe
mode = stateless
"""


def load_config(text=CONFIG):
    return configuration.load(text=text, known_interfaces={"br0", "eth1"})


def retarget(data, server_duid=SERVER_DUID, address=None):
    """A captured Request/Release aimed at this server (and at C{address})."""
    out = data[:4]
    offset = 4
    while offset < len(data):
        code, length = struct.unpack_from("!HH", data, offset)
        value = data[offset + 4:offset + 4 + length]
        offset += 4 + length
        if code == wire.OPT_SERVERID:
            value = server_duid
        elif code == wire.OPT_IA_NA and address is not None:
            iaid, t1, t2 = struct.unpack_from("!III", value)
            value = struct.pack("!III", iaid, t1, t2) + wire.iaaddr(address, 0, 0)
        out += wire.option(code, value)
    return out


@implementer(IBootFileSelector)
class Recording:
    name = "recording"

    def __init__(self, decision=None):
        self.requests = []
        self.decision = decision

    def select(self, request):
        self.requests.append(request)
        return self.decision


class Policy(unittest.TestCase):

    def setUp(self):
        self.clock = task.Clock()
        self.clock.advance(1000)
        self.config = load_config()
        self.store = MemoryLeaseStore6()
        self.recent = RecentRequests(arp_table=dict)
        self.events = EventBus(self.clock)
        self.seen = EventList()
        self.events.subscribe(self.seen)
        self.server = Dhcp6Server(self.config, self.store, build_selector(self.config, self.clock),
                                  self.clock, recent=self.recent, events=self.events)

    def ask(self, data, source=CLIENT, link=LINK):
        message = wire.parse(data) if isinstance(data, bytes) else data
        result = self.server.handle(message, link, source)
        self.assertNotIsInstance(result, defer.Deferred)
        return result

    def answer(self, data, source=CLIENT, link=LINK):
        (outgoing,) = self.ask(data, source, link)
        return outgoing, wire.parse_server_message(outgoing.data)

    def test_ovmf_pxe_gets_an_address_preference_255_and_a_tftp_url(self):
        solicit = load_hex6("ovmf_pxe6_solicit")
        outgoing, advertise = self.answer(solicit)
        self.assertEqual((outgoing.host, outgoing.port), CLIENT)
        self.assertFalse(outgoing.boot)
        self.assertEqual(advertise.message_type, wire.ADVERTISE)
        self.assertEqual(advertise.xid, wire.parse(solicit).xid)
        self.assertEqual(advertise.option(wire.OPT_CLIENTID), wire.parse(solicit).client_id)
        self.assertEqual(advertise.option(wire.OPT_SERVERID), SERVER_DUID)
        self.assertEqual(advertise.option(wire.OPT_PREFERENCE), b"\xff")
        self.assertEqual(advertise.option(wire.OPT_BOOTFILE_URL), b"tftp://[fd99::1]/snponly.efi")
        self.assertIsNone(advertise.option(wire.OPT_VENDOR_CLASS))  # PXEClient would mean port 4011
        (ia,) = advertise.ia_na()
        self.assertEqual(ia.iaid, wire.parse(solicit).ia_na[0].iaid)
        self.assertEqual((ia.t1, ia.t2), (300, 480))
        (address,) = ia.addresses
        self.assertTrue(self.config.subnets6[0].in_pool(address.address))
        self.assertEqual((address.preferred, address.valid), (600, 600))
        self.assertEqual(self.store.holder(address.address).state, "offered")

    def test_ovmf_pxe_request_binds_the_advertised_address(self):
        _, advertise = self.answer(load_hex6("ovmf_pxe6_solicit"))
        offered = advertise.ia_na()[0].addresses[0].address
        request = retarget(load_hex6("ovmf_pxe6_request"), address=offered)
        outgoing, reply = self.answer(request)
        self.assertEqual(reply.message_type, wire.REPLY)
        self.assertEqual(reply.ia_na()[0].addresses[0].address, offered)
        self.assertEqual(reply.option(wire.OPT_BOOTFILE_URL), b"tftp://[fd99::1]/snponly.efi")
        self.assertIsNone(reply.option(wire.OPT_PREFERENCE))
        self.assertTrue(outgoing.boot)  # the protocol sends it an RA first
        lease = self.store.holder(offered)
        self.assertEqual((lease.state, lease.mac, lease.expires), ("bound", "52:54:00:99:00:10", 1600))
        remembered = self.recent.get(str(offered))
        self.assertEqual((remembered.family, remembered.arch, remembered.mac), (6, (7,), "52:54:00:99:00:10"))
        self.assertEqual(remembered.firmware, "uefi")

    def test_request_for_another_server_is_ignored_and_frees_our_offer(self):
        _, advertise = self.answer(load_hex6("ovmf_pxe6_solicit"))
        offered = advertise.ia_na()[0].addresses[0].address
        # The captured Request names dnsmasq's DUID.
        self.assertEqual(self.ask(load_hex6("ovmf_pxe6_request")), [])
        self.assertIsNone(self.store.holder(offered))
        self.assertEqual(self.seen.events[-1].fields["reason"], "not-for-us")

    def test_ovmf_http_gets_an_http_url_and_vendor_class(self):
        _, advertise = self.answer(load_hex6("ovmf_http6_solicit"))
        self.assertEqual(advertise.option(wire.OPT_BOOTFILE_URL), b"http://[fd99::1]/snponly.efi")
        vendor = advertise.option(wire.OPT_VENDOR_CLASS)
        self.assertEqual(vendor, b"\x00\x00\x01\x57\x00\x0aHTTPClient")
        self.assertEqual(vendor[6:16], b"HTTPClient")  # what OVMF checks

    def test_ipxe_gets_the_script(self):
        _, advertise = self.answer(load_hex6("ipxe6_solicit"))
        self.assertEqual(advertise.option(wire.OPT_BOOTFILE_URL), b"tftp://[fd99::1]/boot.ipxe")
        self.assertEqual(advertise.option(wire.OPT_DNS_SERVERS), IPv6("fd99::1").packed)
        self.assertEqual(advertise.option(wire.OPT_DOMAIN_LIST), b"\x03lab\x07example\x00")

    def test_two_vms_with_the_same_zero_duid_and_xid_get_two_addresses(self):
        solicit = load_hex6("ipxe6_solicit")
        _, first = self.answer(solicit, CLIENT)
        _, second = self.answer(solicit, OTHER_CLIENT)  # same bytes: same DUID, IAID and xid
        a = first.ia_na()[0].addresses[0].address
        b = second.ia_na()[0].addresses[0].address
        self.assertNotEqual(a, b)
        self.assertEqual(self.store.holder(a).mac, "52:54:00:99:00:10")
        self.assertEqual(self.store.holder(b).mac, "52:54:00:99:00:11")

    def test_same_client_gets_the_same_address_again(self):
        _, first = self.answer(load_hex6("ipxe6_solicit"))
        _, again = self.answer(load_hex6("ipxe6_solicit"))
        self.assertEqual(first.ia_na()[0].addresses, again.ia_na()[0].addresses)

    def test_ip6config_solicit_gets_no_boot_file_and_no_selection(self):
        selector = Recording(BootDecision("x.efi", reason="test"))
        self.server.selector = selector
        _, advertise = self.answer(load_hex6("ovmf_ip6config_solicit"))
        self.assertEqual(len(advertise.ia_na()[0].addresses), 1)
        self.assertIsNone(advertise.option(wire.OPT_BOOTFILE_URL))
        self.assertEqual(selector.requests, [])

    def test_boot_request_carries_the_v6_facts(self):
        selector = Recording()
        self.server.selector = selector
        self.answer(load_hex6("ipxe6_solicit"))
        (request,) = selector.requests
        self.assertEqual(request.family, 6)
        self.assertEqual(request.duid, b"\x00\x04" + bytes(16))
        self.assertEqual(request.iaid, 0x63A053EC)
        self.assertEqual(request.client_uuid, bytes(17))
        self.assertEqual(request.user_class, (b"iPXE",))
        self.assertTrue(request.is_ipxe)
        self.assertEqual(request.message_type, 1)
        self.assertEqual(request.nic_version, b"\x01\x03\x0a")
        self.assertEqual(request.server_address, IPv6("fd99::1"))

    def test_no_subnet_no_answer(self):
        other = Link("eth1", (IPv6("fd42::1"),), SERVER_DUID)
        self.assertEqual(self.ask(load_hex6("ovmf_pxe6_solicit"), link=other), [])
        self.assertEqual(list(self.store.all_leases()), [])
        self.assertEqual(self.seen.events[-1].fields["reason"], "no-subnet")

    def test_subnet_by_interface_address(self):
        config = load_config(CONFIG.replace("interface = br0\n", ""))
        server = Dhcp6Server(config, self.store, build_selector(config, self.clock), self.clock)
        unnamed = Link("eth1", (IPv6("fd99::1"),), SERVER_DUID)
        self.assertEqual(len(server.handle(wire.parse(load_hex6("ipxe6_solicit")), unnamed, CLIENT)), 1)
        elsewhere = Link("eth1", (IPv6("fd42::1"),), SERVER_DUID)
        self.assertEqual(server.handle(wire.parse(load_hex6("ipxe6_solicit")), elsewhere, CLIENT), [])

    def test_offer_lapses_after_offer_hold(self):
        _, advertise = self.answer(load_hex6("ovmf_pxe6_solicit"))
        offered = advertise.ia_na()[0].addresses[0].address
        self.clock.advance(61)
        self.ask(load_hex6("ipxe6_solicit"), OTHER_CLIENT)  # any request sweeps
        self.assertIsNone(self.store.holder(offered))

    def test_release(self):
        _, advertise = self.answer(load_hex6("ovmf_pxe6_solicit"))
        offered = advertise.ia_na()[0].addresses[0].address
        self.answer(retarget(load_hex6("ovmf_pxe6_request"), address=offered))
        release = wire.parse(retarget(load_hex6("ovmf_ip6config_release"), address=offered))
        # the captured Release is for another IA of the same client: aim it at ours
        release = wire.Message(release.message_type, release.xid, release.options, release.client_id,
                               release.server_id, (wire.IANA(wire.parse(load_hex6("ovmf_pxe6_solicit")).ia_na[0].iaid,
                                                             0, 0, (wire.IAAddress(offered),)),))
        outgoing, reply = self.answer(release)
        self.assertEqual(reply.message_type, wire.REPLY)
        self.assertEqual(reply.status(), wire.SUCCESS)
        self.assertIsNone(self.store.holder(offered))

    def test_release_of_something_not_held(self):
        release = retarget(load_hex6("ovmf_ip6config_release"), address=IPv6("fd99::150"))
        _, reply = self.answer(release)
        self.assertEqual(reply.status(), wire.SUCCESS)
        (ia_value,) = [value for code, value in reply.options if code == wire.OPT_IA_NA]
        self.assertEqual(wire.ia_status(ia_value), wire.NO_BINDING)

    def renew(self, address, iaid=0x63A053EC, kind=wire.RENEW, client=b"\x00\x04" + bytes(16)):
        options = [wire.option(wire.OPT_CLIENTID, client)]
        if kind == wire.RENEW:
            options.append(wire.option(wire.OPT_SERVERID, SERVER_DUID))
        options.append(wire.ia_na(iaid, 0, 0, [wire.iaaddr(address, 0, 0)]))
        return wire.build(kind, 0x42, options)

    def test_renew_extends_and_refuses_foreign_addresses(self):
        _, advertise = self.answer(load_hex6("ipxe6_solicit"))
        mine = advertise.ia_na()[0].addresses[0].address
        self.clock.advance(30)
        _, reply = self.answer(self.renew(mine))
        self.assertEqual(reply.ia_na()[0].addresses[0], wire.IAAddress(mine, 600, 600))
        self.assertEqual(self.store.holder(mine).expires, self.clock.seconds() + 600)
        # Another VM (other MAC) asking to renew my address gets lifetimes 0.
        _, refused = self.answer(self.renew(mine), OTHER_CLIENT)
        self.assertEqual(refused.ia_na()[0].addresses[0], wire.IAAddress(mine, 0, 0))
        # An address outside the pool too (Rebind, no server id).
        _, outside = self.answer(self.renew(IPv6("fd99::9999"), kind=wire.REBIND))
        self.assertEqual(outside.ia_na()[0].addresses[0], wire.IAAddress(IPv6("fd99::9999"), 0, 0))

    def test_decline_quarantines(self):
        config = load_config(CONFIG.replace("fd99::100-fd99::1ff", "fd99::100-fd99::100"))
        server = Dhcp6Server(config, self.store, build_selector(config, self.clock), self.clock)
        solicit = wire.parse(load_hex6("ipxe6_solicit"))
        (out,) = server.handle(solicit, LINK, CLIENT)
        address = wire.parse_server_message(out.data).ia_na()[0].addresses[0].address
        decline = wire.build(wire.DECLINE, 1, [wire.option(1, solicit.client_id), wire.option(2, SERVER_DUID),
                                               wire.ia_na(solicit.ia_na[0].iaid, 0, 0,
                                                          [wire.iaaddr(address, 0, 0)])])
        (reply,) = server.handle(wire.parse(decline), LINK, CLIENT)
        self.assertEqual(wire.parse_server_message(reply.data).status(), wire.SUCCESS)
        self.assertEqual(self.store.holder(address).state, "declined")
        (out,) = server.handle(solicit, LINK, OTHER_CLIENT)
        answer = wire.parse_server_message(out.data)
        self.assertEqual(answer.ia_na()[0].addresses, ())
        self.assertEqual(answer.status(), wire.NO_ADDRS_AVAIL)
        self.clock.advance(601)
        (out,) = server.handle(solicit, LINK, OTHER_CLIENT)
        self.assertEqual(wire.parse_server_message(out.data).ia_na()[0].addresses[0].address, address)

    def test_pool_exhausted(self):
        config = load_config(CONFIG.replace("fd99::100-fd99::1ff", "fd99::100-fd99::101"))
        server = Dhcp6Server(config, self.store, build_selector(config, self.clock), self.clock)
        solicit = wire.parse(load_hex6("ipxe6_solicit"))
        got = []
        for last in (0x10, 0x11, 0x12):
            (out,) = server.handle(solicit, LINK, (f"fe80::5054:ff:fe99:{last:x}", 546))
            got.append(wire.parse_server_message(out.data))
        self.assertEqual({a.ia_na()[0].addresses[0].address for a in got[:2]},
                         {IPv6("fd99::100"), IPv6("fd99::101")})
        self.assertEqual(got[2].ia_na()[0].addresses, ())
        self.assertEqual(got[2].status(), wire.NO_ADDRS_AVAIL)

    def test_rapid_commit(self):
        solicit = wire.build(wire.SOLICIT, 7, [wire.option(1, wire.duid_ll("52:54:00:99:00:10")),
                                                wire.ia_na(1, 0, 0), wire.option(wire.OPT_RAPID_COMMIT, b"")])
        _, reply = self.answer(solicit)
        self.assertEqual(reply.message_type, wire.REPLY)
        self.assertEqual(reply.option(wire.OPT_RAPID_COMMIT), b"")
        address = reply.ia_na()[0].addresses[0].address
        self.assertEqual(self.store.holder(address).state, "bound")

    def test_confirm(self):
        client = wire.option(1, wire.duid_ll("52:54:00:99:00:10"))
        on = wire.build(wire.CONFIRM, 1, [client, wire.ia_na(1, 0, 0, [wire.iaaddr(IPv6("fd99::5"), 0, 0)])])
        off = wire.build(wire.CONFIRM, 1, [client, wire.ia_na(1, 0, 0, [wire.iaaddr(IPv6("fd42::5"), 0, 0)])])
        self.assertEqual(self.answer(on)[1].status(), wire.SUCCESS)
        self.assertEqual(self.answer(off)[1].status(), wire.NOT_ON_LINK)
        self.assertEqual(self.ask(wire.build(wire.CONFIRM, 1, [client])), [])

    def test_information_request(self):
        data = wire.build(wire.INFORMATION_REQUEST, 9, [wire.option(wire.OPT_ORO, b"\x00\x17\x00\x3b"),
                                                        wire.option(wire.OPT_CLIENT_ARCH, b"\x00\x07")])
        _, reply = self.answer(data)
        self.assertEqual(reply.message_type, wire.REPLY)
        self.assertEqual(reply.ia_na(), ())
        self.assertEqual(reply.option(wire.OPT_DNS_SERVERS), IPv6("fd99::1").packed)
        self.assertEqual(reply.option(wire.OPT_BOOTFILE_URL), b"tftp://[fd99::1]/snponly.efi")

    def test_relayed_solicit(self):
        inner = load_hex6("ipxe6_solicit")
        relayed = (bytes((wire.RELAY_FORW, 0)) + IPv6("fd99::2").packed + IPv6("fe80::5054:ff:fe99:12").packed +
                   wire.option(wire.OPT_INTERFACE_ID, b"port7") + wire.option(wire.OPT_RELAY_MSG, inner))
        far = Link("eth1", (IPv6("fd42::1"),), SERVER_DUID)
        (outgoing,) = self.ask(relayed, source=("fd42::2", 547), link=far)
        self.assertEqual((outgoing.host, outgoing.port), ("fd42::2", 547))
        self.assertEqual(outgoing.data[0], wire.RELAY_REPL)
        mac = [lease.mac for lease in self.store.all_leases()]
        self.assertEqual(mac, ["52:54:00:99:00:12"])

    def test_selector_deferred(self):
        d = defer.Deferred()

        @implementer(IBootFileSelector)
        class Later:
            name = "later"

            def select(self, request):
                return d

        self.server.selector = Later()
        result = self.server.handle(wire.parse(load_hex6("ovmf_pxe6_solicit")), LINK, CLIENT)
        self.assertIsInstance(result, defer.Deferred)
        d.callback(BootDecision("later.efi", reason="later"))
        (outgoing,) = self.successResultOf(result)
        self.assertEqual(wire.parse_server_message(outgoing.data).option(59), b"tftp://[fd99::1]/later.efi")

    def test_events(self):
        self.answer(load_hex6("ovmf_pxe6_solicit"))
        event = self.seen.events[-1]
        self.assertEqual((event.service, event.kind, event.mac), ("dhcp6", "sent", "52:54:00:99:00:10"))
        self.assertEqual(event.fields["message"], "advertise")
        self.assertEqual(event.fields["file"], "tftp://[fd99::1]/snponly.efi")


class BootUrls(unittest.TestCase):

    def test_plain_names(self):
        server = IPv6("fd99::1")
        self.assertEqual(boot_url("snponly.efi", server, False), "tftp://[fd99::1]/snponly.efi")
        self.assertEqual(boot_url("/x/y.efi", server, True), "http://[fd99::1]/x/y.efi")
        self.assertEqual(boot_url("y.efi", server, True, 8080), "http://[fd99::1]:8080/y.efi")
        self.assertIsNone(boot_url("y.efi", None, False))

    def test_urls_get_brackets(self):
        self.assertEqual(boot_url("http://fd99::1/snponly.efi", None, True), "http://[fd99::1]/snponly.efi")
        self.assertEqual(boot_url("http://[fd99::1]:81/a", None, True), "http://[fd99::1]:81/a")
        self.assertEqual(boot_url("http://boot.example/a", None, True), "http://boot.example/a")
        self.assertEqual(boot_url("http://10.0.0.1:8080/a", None, True), "http://10.0.0.1:8080/a")

    def test_uefi_http_selector_url_comes_out_bracketed(self):
        clock = task.Clock()
        config = load_config(CONFIG.replace("[boot]", "[selector:uefi-http]\n\n[boot]")
                             .replace("[selector:ipxe]", "[selector:ipxe]"))
        server = Dhcp6Server(config, MemoryLeaseStore6(), build_selector(config, clock), clock)
        (out,) = server.handle(wire.parse(load_hex6("ovmf_http6_solicit")), LINK, CLIENT)
        self.assertEqual(wire.parse_server_message(out.data).option(59), b"http://[fd99::1]/snponly.efi")


class Stores(unittest.TestCase):

    def test_sqlite_store_survives_a_restart(self):
        path = os.path.join(self.mktemp() + ".d")
        os.makedirs(path)
        db = os.path.join(path, "leases-v6.sqlite")
        from ownsocket.dhcp6.leases import Lease6
        store = SqliteLeaseStore6(db)
        store.put(Lease6(b"\x00\x04" + bytes(16), 5, "52:54:00:99:00:10", IPv6("fd99::105"), "bound", 5000.0))
        store.put(Lease6(b"\x00\x04" + bytes(16), 5, "52:54:00:99:00:10", IPv6("fd99::106"), "bound", 6000.0))
        store.close()
        again = SqliteLeaseStore6(db)
        (lease,) = list(again.all_leases())
        self.assertEqual((lease.address, lease.iaid, lease.expires), (IPv6("fd99::106"), 5, 6000.0))
        again.sweep(7000.0)
        again.close()
        self.assertEqual(list(SqliteLeaseStore6(db).all_leases()), [])

    def test_offers_are_not_written(self):
        path = self.mktemp() + ".sqlite"
        from ownsocket.dhcp6.leases import Lease6
        store = SqliteLeaseStore6(path)
        store.put(Lease6(b"\x00\x04" + bytes(16), 5, "52:54:00:99:00:10", IPv6("fd99::105"), "offered", 5000.0))
        self.assertEqual(store.holder(IPv6("fd99::105")).state, "offered")
        store.close()
        self.assertEqual(list(SqliteLeaseStore6(path).all_leases()), [])

    def test_path(self):
        self.assertEqual(sqlite_path_for("/var/lib/ownsocket/leases.sqlite"), "/var/lib/ownsocket/leases.sqlite")

    def test_one_file_with_the_dhcpv4_leases(self):
        """Both tables in one file, each store reading its own."""
        import ipaddress as ip4
        from ownsocket.dhcp.leases import SqliteLeaseStore
        from ownsocket.dhcp6.leases import Lease6
        path = self.mktemp() + ".sqlite"
        v4 = SqliteLeaseStore(path)
        v6 = SqliteLeaseStore6(sqlite_path_for(path))
        v4.claim("52:54:00:99:00:10", "lab", [ip4.IPv4Address("10.0.0.5")], "bound", 1000)
        v6.put(Lease6(b"\x00\x04" + bytes(16), 5, "52:54:00:99:00:10", IPv6("fd99::105"), "bound", 5000.0))
        v4.close()
        v6.close()
        again4, again6 = SqliteLeaseStore(path), SqliteLeaseStore6(path)
        self.assertEqual([lease.address for lease in self.successResultOf(again4.all_leases())],
                         [ip4.IPv4Address("10.0.0.5")])
        self.assertEqual([lease.address for lease in again6.all_leases()], [IPv6("fd99::105")])
        again4.close()
        again6.close()

    def test_bindings_of_the_old_separate_file_are_imported_once(self):
        from ownsocket.dhcp6.leases import Lease6
        directory = self.mktemp()
        os.makedirs(directory)
        path = os.path.join(directory, "leases.sqlite")
        old = os.path.join(directory, "leases-v6.sqlite")
        earlier = SqliteLeaseStore6(old, legacy="")  # as the previous version wrote it
        earlier.put(Lease6(b"\x00\x04" + bytes(16), 5, "52:54:00:99:00:10", IPv6("fd99::105"), "bound", 5000.0))
        earlier.put(Lease6(b"\x00\x04" + bytes(16), 6, "52:54:00:99:00:11", IPv6("fd99::106"), "bound", 5000.0))
        earlier.close()
        current = SqliteLeaseStore6(path, legacy="")  # a binding already in the new place
        current.put(Lease6(b"\x00\x04" + bytes(16), 7, "52:54:00:99:00:12", IPv6("fd99::107"), "bound", 6000.0))
        current.close()
        store = SqliteLeaseStore6(path)
        self.assertEqual(store.imported, 2)
        self.assertEqual(sorted(lease.address for lease in store.all_leases()),
                         [IPv6("fd99::105"), IPv6("fd99::106"), IPv6("fd99::107")])
        store.close()
        self.assertFalse(os.path.exists(old))
        self.assertTrue(os.path.exists(old + ".imported"))
        self.assertEqual(SqliteLeaseStore6(path).imported, 0)
