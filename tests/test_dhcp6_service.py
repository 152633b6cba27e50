"""
The DHCPv6 service's wiring with fake sockets: which links get a socket and
an advertiser, what happens on reload, and that an unconfigured server
opens nothing at all.
"""

import ipaddress

from twisted.internet import task
from twisted.trial import unittest

from ownsocket import config as configuration
from ownsocket.dhcp6 import ra, wire
from ownsocket.dhcp6.leases import MemoryLeaseStore6
from ownsocket.dhcp6.service import Dhcp6Service, LinkView, interface_addresses6
from ownsocket.tap import build_selector
from tests.fixtures_loader import load_hex6

IPv6 = ipaddress.IPv6Address

ADDRESSES = {
    "br0": [IPv6("fd99::1"), IPv6("fe80::1")],
    "eth0": [IPv6("fd00::2"), IPv6("fe80::fc00:ff:fe00:1")],
    "lo": [IPv6("::1")],
}


class FakeSocket:
    def __init__(self, name, kind):
        self.name, self.kind = name, kind
        self.closed = False
        self.sent = []

    def fileno(self):
        return 7

    def close(self):
        self.closed = True

    def sendto(self, data, address):
        self.sent.append((data, address))


class FakePort:
    def __init__(self, protocol):
        self.protocol = protocol
        self.stopped = False
        self.written = []
        protocol.transport = self

    def write(self, data, address):
        self.written.append((data, address))

    def stopListening(self):
        self.stopped = True


class FakeReactor(task.Clock):
    def __init__(self):
        task.Clock.__init__(self)
        self.adopted = []
        self.readers = []

    def adoptDatagramPort(self, fd, family, protocol):
        self.adopted.append(family)
        return FakePort(protocol)

    def addReader(self, reader):
        self.readers.append(reader)

    def removeReader(self, reader):
        self.readers.remove(reader)


class Recorder(list):
    """A list of sent datagrams that also notes, in one shared order list,
    which kind of socket sent each."""

    def __init__(self, order, kind):
        list.__init__(self)
        self.order, self.kind = order, kind

    def append(self, item):
        self.order.append(self.kind)
        list.append(self, item)


def load(text):
    return configuration.load(text=text, known_interfaces={"br0", "eth0", "lo"})


LAB = "[subnet6:lab]\nnetwork = fd99::/64\npool = fd99::100-fd99::1ff\n\n[boot]\narch.7 = snponly.efi\n"


def fake_service(config, selector, reactor, sockets, events=None, refuse=None):
    """
    A DHCPv6 service on fake sockets (each one opened is appended to
    C{sockets}), an in-memory store and fixed interface facts.

    @param refuse: an exception that opening a DHCPv6 socket raises.
    """

    def open_socket(name):
        if refuse is not None:
            raise refuse
        sock = FakeSocket(name, "udp")
        sockets.append(sock)
        return sock

    def open_ra(name):
        sock = FakeSocket(name, "raw")
        sockets.append(sock)
        return sock

    return Dhcp6Service(config, selector, reactor, events=events,
                        store_factory=MemoryLeaseStore6, addresses=lambda: ADDRESSES,
                        open_socket=open_socket, open_ra=open_ra,
                        mac_of=lambda name: "02:00:00:00:00:01", mtu_of=lambda name: 1500)


class ServiceTests(unittest.TestCase):

    def make(self, text):
        self.reactor = FakeReactor()
        self.sockets = []
        config = load(text)
        service = fake_service(config, build_selector(config, self.reactor), self.reactor, self.sockets)
        return service

    def test_no_subnet6_opens_nothing(self):
        service = self.make("[dhcp]\nenabled = true\n")
        service.privilegedStartService()
        service.startService()
        self.assertEqual((self.sockets, service.ports, service.advertisers), ([], {}, {}))
        service.stopService()

    def test_socket_and_advertiser_only_on_the_subnets_link(self):
        service = self.make(LAB)
        service.privilegedStartService()
        self.assertEqual(sorted(service.ports), ["br0"])
        self.assertEqual(sorted(service.advertisers), ["br0"])
        self.assertEqual([(s.name, s.kind) for s in self.sockets], [("br0", "udp"), ("br0", "raw")])
        service.startService()
        raw = self.sockets[1]
        self.assertEqual(len(raw.sent), 1)
        self.assertEqual(raw.sent[0][0][0], ra.ROUTER_ADVERTISEMENT)
        # a Solicit arriving on br0 is answered there, from this link's DUID
        port = service.ports["br0"]
        port.protocol.datagramReceived(load_hex6("ovmf_pxe6_solicit"), ("fe80::5054:ff:fe99:10", 546))
        ((data, address),) = port.written
        self.assertEqual(address, ("fe80::5054:ff:fe99:10", 546))
        answer = wire.parse_server_message(data)
        self.assertEqual(answer.option(wire.OPT_SERVERID), wire.duid_ll("02:00:00:00:00:01"))
        self.assertEqual(answer.option(59), b"tftp://[fd99::1]/snponly.efi")
        # garbage is dropped, the port keeps working
        port.protocol.datagramReceived(b"\x01\x00", ("fe80::5054:ff:fe99:10", 546))
        self.assertEqual(len(port.written), 1)
        service.stopService()
        self.assertTrue(port.stopped)
        self.assertTrue(raw.closed)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_boot_reply_is_preceded_by_a_unicast_ra(self):
        """PXE and HTTP boot look for a default route right after the Reply:
        the client gets an RA unicast just before it, and once more later;
        the Advertise (no route check yet) gets none."""
        service = self.make(LAB)
        service.privilegedStartService()
        service.startService()
        raw = self.sockets[1]
        port = service.ports["br0"]
        client = ("fe80::5054:ff:fe99:10", 546)
        port.protocol.datagramReceived(load_hex6("ovmf_pxe6_solicit"), client)
        self.assertEqual(len(raw.sent), 1)  # only the one at start
        offered = wire.parse_server_message(port.written[-1][0]).ia_na()[0].addresses[0].address
        from tests.test_dhcp6_server import retarget
        request = retarget(load_hex6("ovmf_pxe6_request"), server_duid=wire.duid_ll("02:00:00:00:00:01"),
                           address=offered)
        order = []
        port.written = Recorder(order, "reply")
        raw.sent = Recorder(order, "ra")
        port.protocol.datagramReceived(bytes(request), client)
        self.assertEqual(order, ["ra", "reply"])
        self.assertEqual(raw.sent[0][1][0], "fe80::5054:ff:fe99:10")
        self.assertEqual(wire.parse_server_message(port.written[0][0]).message_type, wire.REPLY)
        self.reactor.advance(ra.NUDGE_AGAIN)
        self.assertEqual(order, ["ra", "reply", "ra"])
        service.stopService()
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_router_advertisements_false(self):
        service = self.make(LAB.replace("pool =", "router_advertisements = false\npool ="))
        service.privilegedStartService()
        self.assertEqual((sorted(service.ports), service.advertisers), (["br0"], {}))
        service.stopService()

    def test_named_interface(self):
        service = self.make("[subnet6:lab]\nnetwork = fd97::/64\npool = fd97::5-fd97::9\ninterface = eth0\n")
        self.assertEqual(sorted(service.links()), ["eth0"])

    def test_reload_moves_the_link(self):
        service = self.make(LAB)
        service.privilegedStartService()
        service.startService()
        old_port = service.ports["br0"]
        new = load("[subnet6:lab]\nnetwork = fd97::/64\npool = fd97::5-fd97::9\ninterface = eth0\n")
        service.reconfigure(new, build_selector(new, self.reactor), None)
        self.assertTrue(old_port.stopped)
        self.assertEqual((sorted(service.ports), sorted(service.advertisers)), (["eth0"], ["eth0"]))
        service.stopService()

    def test_reload_same_link_keeps_socket(self):
        service = self.make(LAB)
        service.privilegedStartService()
        service.startService()
        port = service.ports["br0"]
        new = load(LAB.replace("[subnet6:lab]", "[subnet6:lab]\nrouter_advertisements = false"))
        service.reconfigure(new, build_selector(new, self.reactor), None)
        self.assertIs(service.ports["br0"], port)
        self.assertEqual(service.advertisers, {})
        service.stopService()


class Helpers(unittest.TestCase):

    def test_proc_if_inet6(self):
        path = self.mktemp()
        with open(path, "w") as handle:
            handle.write("fd990000000000000000000000000001 05 40 00 80      br0\n"
                         "fe800000000000000000000000000001 05 40 20 80      br0\n"
                         "00000000000000000000000000000001 01 80 10 80       lo\n"
                         "garbage\n")
        self.assertEqual(interface_addresses6(path),
                         {"br0": [IPv6("fd99::1"), IPv6("fe80::1")], "lo": [IPv6("::1")]})
        self.assertEqual(interface_addresses6(path + ".missing"), {})

    def test_link_view_rereads_addresses(self):
        clock = task.Clock()
        table = {"br0": [IPv6("fe80::1")]}
        view = LinkView("br0", b"\x00\x03\x00\x01" + bytes(6), lambda: table, clock)
        self.assertEqual(view().addresses, (IPv6("fe80::1"),))
        table["br0"] = [IPv6("fd99::1"), IPv6("fe80::1")]
        self.assertEqual(view().addresses, (IPv6("fe80::1"),))
        clock.advance(5)
        self.assertEqual(view().addresses, (IPv6("fd99::1"), IPv6("fe80::1")))
