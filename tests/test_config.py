"""Config errors are one line naming file, section and key."""

import os
import subprocess
import sys

from twisted.trial import unittest

from ownsocket import config as configuration

IFACES = {"lo", "eth0", "eth1"}


class LoadTests(unittest.TestCase):
    def load(self, text):
        return configuration.load(path="site.ini", text=text, known_interfaces=IFACES)

    def error(self, text):
        with self.assertRaises(configuration.ConfigError) as caught:
            self.load(text)
        return str(caught.exception)

    def test_embedded_defaults_name_no_subnet(self):
        config = configuration.load(known_interfaces=IFACES)
        self.assertEqual(config.subnets, ())
        self.assertEqual(dict(config.boot.arch)[7], "snponly.efi")

    def test_shipped_file_equals_embedded_defaults(self):
        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        with open(os.path.join(here, "conf", "ownsocket.ini"), encoding="utf-8") as handle:
            self.assertEqual(handle.read(), configuration.EMBEDDED_DEFAULTS)

    def test_examples_load(self):
        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        conf = os.path.join(here, "conf")
        examples = [name for name in os.listdir(conf) if name.endswith(".example.ini")]
        self.assertGreaterEqual(len(examples), 3)
        from twisted.internet.task import Clock
        from ownsocket.boot.loader import load_selectors
        for name in examples:
            config = configuration.load(path=os.path.join(conf, name), known_interfaces={"eth0", "eth1", "eth2"})
            load_selectors(config, Clock())  # every [selector:...] of the examples is valid too

    def test_full_subnet(self):
        config = self.load("""
[subnet:lab]
network = 10.0.0.0/24
pool = 10.0.0.100-10.0.0.150, 10.0.0.200-10.0.0.210
router = 10.0.0.1
dns = 10.0.0.1 10.0.0.2
lease_time = 7200
interface = eth0
[host:pc]
mac = 52-54-00-AA-BB-CC
address = 10.0.0.5
""")
        subnet = config.subnets[0]
        self.assertEqual(len(subnet.pools), 2)
        self.assertEqual(len(subnet.dns), 2)
        self.assertEqual(config.hosts[0].mac, "52:54:00:aa:bb:cc")

    def test_unknown_section(self):
        self.assertEqual(self.error("[dhcpd]\nport = 67\n"),
                         "site.ini: [dhcpd]: unknown section (known: [dhcp], [tftp], [http], [boot], "
                         "[admin], [subnet:NAME], [host:NAME], [selector:NAME])")

    def test_unknown_key(self):
        self.assertIn("site.ini: [tftp] rot: unknown key", self.error("[tftp]\nrot = /srv\n"))

    def test_malformed_address(self):
        self.assertEqual(self.error("[subnet:a]\nnetwork = 10.0.0.0/24\nrouter = 10.0.0.256\n"),
                         "site.ini: [subnet:a] router: '10.0.0.256' is not an IPv4 address")

    def test_host_bits_in_network(self):
        self.assertIn("[subnet:a] network:", self.error("[subnet:a]\nnetwork = 10.0.0.1/24\n"))

    def test_pool_outside_subnet(self):
        self.assertEqual(self.error("[subnet:a]\nnetwork = 10.0.0.0/24\npool = 10.0.1.5-10.0.1.9\n"),
                         "site.ini: [subnet:a] pool: 10.0.1.5-10.0.1.9 is outside network 10.0.0.0/24")

    def test_overlapping_pools(self):
        message = self.error("[subnet:a]\nnetwork = 10.0.0.0/24\npool = 10.0.0.10-10.0.0.20, 10.0.0.15-10.0.0.30\n")
        self.assertIn("[subnet:a] pool: 10.0.0.15-10.0.0.30 overlaps 10.0.0.10-10.0.0.20", message)

    def test_overlapping_networks(self):
        self.assertIn("overlaps", self.error("[subnet:a]\nnetwork = 10.0.0.0/16\n"
                                             "[subnet:b]\nnetwork = 10.0.5.0/24\n"))

    def test_unknown_interface(self):
        self.assertIn("[dhcp] interfaces: no interface named 'wlan9'",
                      self.error("[dhcp]\ninterfaces = eth0, wlan9\n"))
        self.assertIn("[subnet:a] interface:", self.error("[subnet:a]\nnetwork = 10.0.0.0/24\ninterface = x\n"))

    def test_bad_values(self):
        self.assertIn("[dhcp] port: 70000 is out of range", self.error("[dhcp]\nport = 70000\n"))
        self.assertIn("[tftp] enabled: 'maybe' is not a yes/no value", self.error("[tftp]\nenabled = maybe\n"))
        self.assertIn("[host:x] mac:", self.error("[host:x]\nmac = 52:54:00\n"))
        self.assertIn("[boot] arch.x86:", self.error("[boot]\narch.x86 = a.efi\n"))

    def test_missing_required(self):
        self.assertIn("[subnet:a] network: is required", self.error("[subnet:a]\npool = 10.0.0.1-10.0.0.2\n"))
        self.assertIn("[host:x] mac: is required", self.error("[host:x]\naddress = 10.0.0.5\n"))

    def test_duplicates(self):
        self.assertIn("[dhcp] port: key appears twice", self.error("[dhcp]\nport = 1\nport = 2\n"))
        self.assertIn("[dhcp]: section appears twice", self.error("[dhcp]\n[dhcp]\n"))
        self.assertIn("is also the MAC of [host:a]", self.error(
            "[subnet:s]\nnetwork = 10.0.0.0/24\n[host:a]\nmac = 52:54:00:00:00:01\n"
            "[host:b]\nmac = 52:54:00:00:00:01\n"))

    def test_reservation_outside_subnets(self):
        self.assertIn("[host:a] address: 10.5.0.5 is in no configured", self.error(
            "[host:a]\nmac = 52:54:00:00:00:01\naddress = 10.5.0.5\n"))

    def test_reservation_inside_pool_is_kept_out_of_the_pool(self):
        config = self.load("[subnet:s]\nnetwork = 10.0.0.0/24\npool = 10.0.0.10-10.0.0.20\n"
                           "[host:a]\nmac = 52:54:00:00:00:01\naddress = 10.0.0.15\n")
        from ownsocket.dhcp.pool import AddressPool
        pool = AddressPool(config.subnets[0], [config.hosts[0].address])
        self.assertEqual(pool.free_count, 10)

    def test_admin_defaults_are_loopback(self):
        for config in (configuration.load(known_interfaces=IFACES), self.load("")):
            admin = config.admin
            self.assertEqual(admin, configuration.AdminConfig())
            self.assertEqual((admin.enabled, admin.port, admin.boots, admin.events_per_boot,
                              admin.stall_after), (True, 9067, 1000, 64, 30.0))
            self.assertEqual([str(a) for a in admin.addresses], ["127.0.0.1"])
            self.assertTrue(admin.loopback_only)

    def test_admin_section(self):
        admin = self.load("[admin]\nenabled = no\naddresses = 10.0.0.1, 127.0.0.1\nport = 8080\n"
                          "boots = 50\nevents_per_boot = 10\nstall_after = 2.5\n").admin
        self.assertEqual((admin.enabled, admin.port, admin.boots, admin.events_per_boot,
                          admin.stall_after), (False, 8080, 50, 10, 2.5))
        self.assertEqual([str(a) for a in admin.addresses], ["10.0.0.1", "127.0.0.1"])
        self.assertFalse(admin.loopback_only)
        self.assertFalse(self.load("[admin]\naddresses =\n").admin.loopback_only)

    def test_admin_errors(self):
        self.assertEqual(self.error("[admin]\nport = 0\n"),
                         "site.ini: [admin] port: 0 is out of range (1 to 65535)")
        self.assertIn("[admin] boots: 0 is out of range", self.error("[admin]\nboots = 0\n"))
        self.assertIn("[admin] events_per_boot: 'many' is not a whole number",
                      self.error("[admin]\nevents_per_boot = many\n"))
        self.assertIn("[admin] stall_after: 'soon' is not a number", self.error("[admin]\nstall_after = soon\n"))
        self.assertIn("[admin] addresses: 'localhost' is not an IPv4 address",
                      self.error("[admin]\naddresses = localhost\n"))
        self.assertIn("[admin] listen: unknown key", self.error("[admin]\nlisten = 1\n"))

    def test_unparsable_line_is_named(self):
        self.assertEqual(self.error("[tftp]\nport = 69\n[http\n"),
                         "site.ini: line 3: cannot parse '[http' (expected [section], key = value or a comment)")
        self.assertIn("line 2: cannot parse 'just words'", self.error("[tftp]\njust words\n"))

    def test_text_before_section(self):
        self.assertIn("text before the first [section]", self.error("port = 67\n"))

    def test_unreadable_file(self):
        with self.assertRaises(configuration.ConfigError) as caught:
            configuration.load(path="/nonexistent/ownsocket.ini")
        self.assertIn("/nonexistent/ownsocket.ini: cannot read", str(caught.exception))


class TwistdErrorTests(unittest.TestCase):
    """The whole path: twistd exits non-zero with one line, no traceback."""

    def test_twistd_reports_config_error(self):
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as handle:
            handle.write("[subnet:a]\nnetwork = 10.0.0.0/24\npool = 10.0.1.5-10.0.1.9\n")
        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = dict(os.environ, PYTHONPATH=here + os.pathsep + os.environ.get("PYTHONPATH", ""))
        result = subprocess.run(
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
             "-n", "--pidfile=", "ownsocket", "--config", path],
            capture_output=True, text=True, env=env, cwd=here, timeout=60)
        self.assertNotEqual(result.returncode, 0)
        self.assertNotIn("Traceback", result.stderr + result.stdout)
        self.assertIn(f"ownsocket: {path}: [subnet:a] pool: 10.0.1.5-10.0.1.9 is outside network 10.0.0.0/24",
                      result.stderr)
