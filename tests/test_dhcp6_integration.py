"""
ownsocket's DHCPv6 and Router Advertisements against real clients, in
network namespaces this test creates and deletes: ISC dhclient -6 gets an
IA_NA address and the option-59 boot URL, rdisc6 sees the RA (M=1, on-link
prefix, A=0), curl fetches the boot file over TFTP on IPv6 from the leased
address.  And on a link no [subnet6:...] names, nothing answers at all.
"""

import os
import re
import subprocess

from twisted.trial import unittest

from tests import netns
from tests.lab.waits import wait_until

SERVER6, NETWORK6 = "fd77::1", "fd77::/64"


TOOLS = (("dhclient", "isc-dhcp-client"), ("rdisc6", "ndisc6"), ("curl", "curl"))


class RealClients(unittest.TestCase):
    skip = netns.skip_reason(TOOLS)
    timeout = 120

    def setUp(self):
        from tests.lab import ownsocket_argv, ownsocket_env  # read-only use of the shared helpers
        self.ownsocket_argv, self.ownsocket_env = ownsocket_argv, ownsocket_env
        self.work = os.path.abspath(self.mktemp())
        os.makedirs(self.work)
        self.root = os.path.join(self.work, "root")
        os.makedirs(self.root)
        self.payload = os.urandom(100000)
        with open(os.path.join(self.root, "snponly.efi"), "wb") as handle:
            handle.write(self.payload)
        self.lab = netns.Lab()
        self.addCleanup(self.lab.close)
        self.topology = netns.server_client(self.lab)
        self.server, self.client = self.topology.server, self.topology.client
        for space, interface in ((self.server, "srv0"), (self.client, "cli0")):
            space.run(["sysctl", "-qw", f"net.ipv6.conf.{interface}.accept_dad=0"])
        self.server.ip("addr", "add", f"{SERVER6}/64", "dev", "srv0", "nodad")
        # The client's link-local was made before accept_dad=0: wait out DAD.
        wait_until(lambda: "tentative" not in self.client.ip("-6", "addr", "show", "dev", "cli0")
                 and "fe80::" in self.client.ip("-6", "addr", "show", "dev", "cli0"), 10)

    def start_ownsocket(self, subnet6=True):
        lines = ["[dhcp]", f"leases = {os.path.join(self.work, 'leases.sqlite')}", "interfaces = srv0",
                 "", "[tftp]", f"root = {self.root}", "", "[boot]", "default = snponly.efi", ""]
        if subnet6:
            lines += ["[subnet6:lab]", f"network = {NETWORK6}", "pool = fd77::100-fd77::1ff",
                      "interface = srv0", "lease_time = 600", f"dns = {SERVER6}", ""]
        config = os.path.join(self.work, "ownsocket.ini")
        with open(config, "w") as handle:
            handle.write("\n".join(lines))
        self.log = os.path.join(self.work, "ownsocket.log")
        process = self.server.spawn(self.ownsocket_argv(config, self.log), env=self.ownsocket_env(),
                                    stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        self.assertTrue(wait_until(lambda: "TFTP" in self.read_log() and "ownsocket 0" in self.read_log(), 30),
                        self.read_log())
        self.assertIsNone(process.poll(), self.read_log())
        return process

    def read_log(self):
        try:
            with open(self.log) as handle:
                return handle.read()
        except OSError:
            return ""

    def listening(self, port):
        out = self.server.run(["ss", "-H", "-uln"]).stdout
        return any(line.split()[3].endswith(f":{port}") for line in out.splitlines() if len(line.split()) > 3)

    def test_dhclient_gets_address_and_boot_url_rdisc6_sees_the_ra(self):
        self.start_ownsocket()
        self.assertTrue(self.listening(547))

        ra = self.client.run(["rdisc6", "-1", "-w", "3000", "cli0"], timeout=20).stdout
        self.assertRegex(ra, r"Stateful address conf\.\s*:\s*Yes")
        self.assertRegex(ra, r"Stateful other conf\.\s*:\s*Yes")
        self.assertRegex(ra, r"Prefix\s*:\s*fd77::/64")
        self.assertRegex(ra, r"On-link\s*:\s*Yes")
        self.assertRegex(ra, r"Autonomous address conf\.\s*:\s*No")
        self.assertRegex(ra, r"Router lifetime\s*:\s*1800 \(0x00000708\) seconds")

        conf = os.path.join(self.work, "dhclient6.conf")
        with open(conf, "w") as handle:
            handle.write("also request dhcp6.bootfile-url;\n")
        leases = os.path.join(self.work, "dhclient6.leases")
        dhclient = self.client.spawn(
            ["dhclient", "-6", "-d", "-v", "-1", "-cf", conf, "-lf", leases, "-sf", "/bin/true",
             "-pf", os.path.join(self.work, "dhclient6.pid"), "cli0"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.assertTrue(wait_until(lambda: os.path.exists(leases) and "iaaddr" in open(leases).read(), 30),
                        self.read_log())
        netns.stop(dhclient)
        text = open(leases).read()
        address = re.search(r"iaaddr (fd77::[0-9a-f:]+)", text).group(1)
        self.assertTrue(0x100 <= int(address.split("::")[1], 16) <= 0x1ff, address)
        self.assertIn('option dhcp6.bootfile-url "tftp://[fd77::1]/snponly.efi"', text)
        self.assertIn("option dhcp6.name-servers fd77::1", text)
        self.assertRegex(text, r"max-life 600")
        log = self.read_log()
        self.assertIn("DHCPv6 Solicit", log)
        self.assertRegex(log, rf"DHCPv6 Request .* -> Reply {address} boot 'tftp://\[fd77::1\]/snponly.efi'")

        # The boot file, over TFTP on IPv6, from the address just leased.
        self.client.ip("-6", "addr", "add", f"{address}/64", "dev", "cli0", "nodad")
        out = os.path.join(self.work, "fetched")
        self.client.run(["curl", "-s", "-S", "-g", "--tftp-blksize", "1228", "-o", out,
                         "tftp://[fd77::1]/snponly.efi"], timeout=30)
        with open(out, "rb") as handle:
            self.assertEqual(handle.read(), self.payload)

    def test_no_subnet6_no_answer_no_ra(self):
        self.start_ownsocket(subnet6=False)
        self.assertFalse(self.listening(547))
        ra = self.client.run(["rdisc6", "-1", "-w", "1500", "cli0"], timeout=20, check=False)
        self.assertNotEqual(ra.returncode, 0)
        self.assertNotIn("Prefix", ra.stdout)
