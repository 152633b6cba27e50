"""[subnet6:NAME] and IPv6 listener addresses in the INI config."""

import ipaddress

from twisted.trial import unittest

from ownsocket import config as configuration


def load(text):
    return configuration.load(text=text, known_interfaces={"br0"})


class Subnet6(unittest.TestCase):

    def test_full_section(self):
        config = load("[subnet6:lab]\nnetwork = fd99::/64\npool = fd99::100-fd99::1ff, fd99::300-fd99::3ff\n"
                      "interface = br0\nlease_time = 600\ndns = fd99::1\ndomain = lab.example\n"
                      "router_advertisements = false\nserver_address = fd99::1\n")
        (subnet,) = config.subnets6
        self.assertEqual(subnet.name, "lab")
        self.assertEqual(subnet.network, ipaddress.IPv6Network("fd99::/64"))
        self.assertEqual([str(pool) for pool in subnet.pools], ["fd99::100-fd99::1ff", "fd99::300-fd99::3ff"])
        self.assertTrue(subnet.in_pool(ipaddress.IPv6Address("fd99::1ff")))
        self.assertFalse(subnet.in_pool(ipaddress.IPv6Address("fd99::200")))
        self.assertEqual((subnet.interface, subnet.lease_time), ("br0", 600))
        self.assertEqual(subnet.dns, (ipaddress.IPv6Address("fd99::1"),))
        self.assertEqual(subnet.domain, ("lab.example",))
        self.assertFalse(subnet.router_advertisements)
        self.assertEqual(subnet.server_address, ipaddress.IPv6Address("fd99::1"))
        self.assertEqual(config.subnets, ())

    def test_defaults(self):
        (subnet,) = load("[subnet6:x]\nnetwork = fd99::/64\n").subnets6
        self.assertTrue(subnet.router_advertisements)
        self.assertEqual((subnet.pools, subnet.interface, subnet.lease_time), ((), None, 3600))

    def test_embedded_defaults_name_no_subnet6(self):
        self.assertEqual(configuration.load().subnets6, ())

    def assertError(self, text, expected):
        error = self.assertRaises(configuration.ConfigError, load, text)
        self.assertEqual(str(error), expected)
        self.assertNotIn("\n", str(error))

    def test_errors_are_one_line_naming_section_and_key(self):
        self.assertError("[subnet6:a]\npool = fd99::1-fd99::2\n",
                         "<text>: [subnet6:a] network: is required (e.g. network = fd99::/64)")
        self.assertError("[subnet6:a]\nnetwork = fd99::/64\npool = fd98::1-fd98::5\n",
                         "<text>: [subnet6:a] pool: fd98::1-fd98::5 is outside network fd99::/64")
        self.assertError("[subnet6:a]\nnetwork = fd99::/64\npool = fd99::9-fd99::1\n",
                         "<text>: [subnet6:a] pool: range 'fd99::9-fd99::1' ends before it starts")
        self.assertError("[subnet6:a]\nnetwork = fd99::/64\ninterface = eth9\n",
                         "<text>: [subnet6:a] interface: no interface named 'eth9' on this host")
        self.assertError("[subnet6:a]\nnetwork = fd99::/64\nrouter = fd99::1\n",
                         "<text>: [subnet6:a] router: unknown key (known keys: dns, domain, interface, "
                         "lease_time, network, pool, router_advertisements, router_lifetime, server_address)")
        self.assertError("[subnet6:a]\nnetwork = fd99::/64\n\n[subnet6:b]\nnetwork = fd99::/48\n",
                         "<text>: [subnet6:b] network: fd99::/48 overlaps fd99::/64 of [subnet6:a]")
        self.assertError("[subnet6:a]\nnetwork = fe80::/64\n",
                         "<text>: [subnet6:a] network: fe80::/64 is not a network to hand out addresses in")
        self.assertError("[subnet6:a]\nnetwork = fd99::/64\nserver_address = fd98::1\n",
                         "<text>: [subnet6:a] server_address: fd98::1 is outside network fd99::/64")
        self.assertError("[subnet6:a]\nnetwork = 10.0.0.0/24\n",
                         "<text>: [subnet6:a] network: '10.0.0.0/24' is not an IPv6 network such as "
                         "fd99::/64 (At least 3 parts expected in '10.0.0.0')")


    def test_no_proxy_mode(self):
        self.assertError("[dhcp]\nmode = proxy\n\n[subnet6:a]\nnetwork = fd99::/64\n",
                         "<text>: [subnet6:a]: DHCPv6 has no proxy mode: remove the [subnet6:...] sections "
                         "or set [dhcp] mode = server")


class ListenerAddresses(unittest.TestCase):

    def test_tftp_and_http_take_ipv6_addresses(self):
        config = load("[tftp]\naddresses = fd99::1, 10.0.0.1\n\n[http]\naddresses = ::\n")
        self.assertEqual(config.tftp.addresses, (ipaddress.ip_address("fd99::1"), ipaddress.ip_address("10.0.0.1")))
        self.assertEqual(config.http.addresses, (ipaddress.ip_address("::"),))

    def test_bad_address(self):
        error = self.assertRaises(configuration.ConfigError, load, "[tftp]\naddresses = fd99::zz\n")
        self.assertEqual(str(error), "<text>: [tftp] addresses: 'fd99::zz' is not an IPv4 or IPv6 address")


class ShippedExample(unittest.TestCase):
    """conf/ipv6.example.ini, which the README's IPv6 section shows, loads
    and builds a selector chain that gives OVMF and iPXE their URLs."""

    def test_loads_and_boots(self):
        import os

        from twisted.internet import task

        from ownsocket.dhcp6 import wire
        from ownsocket.dhcp6.leases import MemoryLeaseStore6
        from ownsocket.dhcp6.server import Dhcp6Server, Link
        from ownsocket.tap import build_selector
        from tests.fixtures_loader import load_hex6

        path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                            "conf", "ipv6.example.ini")
        config = configuration.load(path, known_interfaces={"eth0"})
        (subnet,) = config.subnets6
        self.assertEqual((subnet.interface, str(subnet.network)), ("eth0", "fd99::/64"))
        self.assertEqual(len(config.subnets), 1)
        clock = task.Clock()
        server = Dhcp6Server(config, MemoryLeaseStore6(), build_selector(config, clock), clock)
        link = Link("eth0", (ipaddress.IPv6Address("fd99::1"),), wire.duid_ll("02:00:00:00:00:01"))
        urls = {}
        for name in ("ovmf_pxe6_solicit", "ovmf_http6_solicit"):
            (out,) = server.handle(wire.parse(load_hex6(name)), link, ("fe80::5054:ff:fe99:10", 546))
            urls[name] = wire.parse_server_message(out.data).option(wire.OPT_BOOTFILE_URL)
        self.assertEqual(urls, {"ovmf_pxe6_solicit": b"tftp://[fd99::1]/snponly.efi",
                                "ovmf_http6_solicit": b"http://[fd99::1]/snponly.efi"})
