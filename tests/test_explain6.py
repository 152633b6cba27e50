"""explain for DHCPv6 clients: options 61/16/15 and the DUID go through the
same selectors, and the answer is shown as the option-59 URL (and option 16
for UEFI HTTP boot) that the DHCPv6 server would send."""

import io
import os
import subprocess
import sys

from twisted.internet.task import Clock
from twisted.trial import unittest

from ownsocket.explain import ExplainError, build_parser, explain, is_dhcp6_packet
from tests.fixtures_loader import fixture_path, load_hex

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES6 = os.path.join(HERE, "tests", "fixtures6")

CONFIG = """
[subnet6:lab]
network = fd99::/64
pool = fd99::100-fd99::1ff
[http]
enabled = true
port = 8080
[boot]
selectors = ipxe, uefi-http, arch
arch.7 = snponly.efi
[selector:uefi-http]
arch.16 = http://@server@/snponly.efi
[selector:ipxe]
script = boot.ipxe
"""


def fixture6(name):
    return "@" + fixture_path(name, FIXTURES6)


class Explain6Tests(unittest.TestCase):
    def run_explain(self, *argv, config=CONFIG):
        path = self.mktemp()
        with open(path, "w") as handle:
            handle.write(config)
        out = io.StringIO()
        args = build_parser().parse_args(["--config", path, *argv])
        code = self.successResultOf(explain(args, out=out, clock=Clock()))
        return code, out.getvalue()

    def answer(self, text):
        return [line for line in text.splitlines() if line.startswith("option ")]

    def test_captured_ovmf_pxe6_solicit(self):
        code, text = self.run_explain("--packet", fixture6("ovmf_pxe6_solicit"))
        self.assertEqual(code, 0)
        self.assertIn("client     52:54:00:99:00:10, DHCPv6 Solicit", text)  # from its DUID-LLT
        self.assertIn("arch (61)  7 (EFI x64)", text)
        self.assertIn("vendor(16) PXEClient:Arch:00007:UNDI:003000", text)
        self.assertIn("asks (6)   59, 60, 23, 16", text)
        # No [subnet6] server_address: the first address of its network.
        self.assertEqual(self.answer(text), ["option 59: tftp://[fd99::1]/snponly.efi"])

    def test_captured_ovmf_http6_solicit_gets_http_url_and_vendor_class(self):
        code, text = self.run_explain("--packet", fixture6("ovmf_http6_solicit"), "--server-address", "fd99::2")
        self.assertEqual(code, 0)
        self.assertIn("arch (61)  16 (x64 UEFI HTTP)", text)
        self.assertEqual(self.answer(text), [
            "option 59: http://[fd99::2]/snponly.efi",
            "option 16: enterprise 343 'HTTPClient' (UEFI HTTP boot needs it; FIRMWARE-FACTS §8c)"])

    def test_captured_ipxe_solicit_by_user_class(self):
        """iPXE's DUID-UUID holds no MAC; its user class 15 says iPXE and the
        stateful selector gives the script once the first stage was fetched."""
        code, text = self.run_explain("--packet", fixture6("ipxe6_solicit"))
        self.assertIn("client     MAC unknown", text)
        self.assertIn("DUID (1)   0004" + "00" * 16 + ", IAID 0x63a053ec", text)
        self.assertIn("user (15)  iPXE", text)
        self.assertIn("iPXE       yes", text)
        self.assertEqual(self.answer(text), ["option 59: tftp://[fd99::1]/snponly.efi"])
        code, text = self.run_explain("--packet", fixture6("ipxe6_solicit"), "--after-first-stage",
                                      "--source", "fe80::5054:ff:fe99:10")
        self.assertIn("client     52:54:00:99:00:10", text)
        self.assertEqual(self.answer(text), ["option 59: tftp://[fd99::1]/boot.ipxe"])

    def test_described_client(self):
        code, text = self.run_explain("--v6", "--arch", "16", "--vendor-class", "HTTPClient:Arch:00016:UNDI:003000",
                                      "--mac", "52:54:00:aa:bb:cc", "--duid", "00030001525400aabbcc",
                                      "--iaid", "0x10", "--server-address", "2001:db8::5")
        self.assertIn("DUID (1)   00030001525400aabbcc, IAID 0x00000010", text)
        self.assertIn("decision: http://fd99::1/snponly.efi".replace("fd99::1", "2001:db8::5"), text)
        self.assertEqual(self.answer(text)[0], "option 59: http://[2001:db8::5]/snponly.efi")

    def test_plain_file_for_http_client_gets_the_http_port(self):
        config = CONFIG.split("[selector:uefi-http]")[0].replace(
            "selectors = ipxe, uefi-http, arch", "selectors = arch").replace("arch.7 = snponly.efi", "arch.16 = snponly.efi")
        code, text = self.run_explain("--v6", "--arch", "16", config=config)
        self.assertEqual(self.answer(text)[0], "option 59: http://[fd99::1]:8080/snponly.efi")

    def test_server_address_from_subnet6(self):
        config = CONFIG.replace("pool = fd99::100-fd99::1ff", "pool = fd99::100-fd99::1ff\nserver_address = fd99::53")
        code, text = self.run_explain("--v6", "--arch", "7", config=config)
        self.assertEqual(self.answer(text), ["option 59: tftp://[fd99::53]/snponly.efi"])

    def test_no_boot_url_without_option_59_or_61(self):
        """OVMF's Ip6Config Solicit asks only for DNS: no boot URL."""
        code, text = self.run_explain("--packet", fixture6("ovmf_ip6config_solicit"),
                                      config=CONFIG.replace("arch.7 = snponly.efi", "default = snponly.efi"))
        self.assertEqual(code, 0)
        self.assertIn("option 59: none -- the client neither asks for option 59", text)

    def test_ipv4_server_address_refused(self):
        path = self.mktemp()
        with open(path, "w") as handle:
            handle.write(CONFIG)
        args = build_parser().parse_args(["--config", path, "--v6", "--arch", "7", "--server-address", "10.0.0.1"])
        failure = self.failureResultOf(explain(args, out=io.StringIO(), clock=Clock()), ExplainError)
        self.assertIn("not an IPv6 address", str(failure.value))

    def test_bad_dhcp6_packet(self):
        path = self.mktemp()
        with open(path, "w") as handle:
            handle.write(CONFIG)
        # A Solicit whose client-id option runs past the end.
        args = build_parser().parse_args(["--config", path, "--v6", "--packet", "01000001" "0001ff00"])
        failure = self.failureResultOf(explain(args, out=io.StringIO(), clock=Clock()), ExplainError)
        self.assertIn("DHCPv6 packet would be dropped", str(failure.value))

    def test_family_recognised(self):
        self.assertTrue(is_dhcp6_packet(load_hex("ovmf_pxe6_solicit", FIXTURES6)))
        self.assertTrue(is_dhcp6_packet(load_hex("ipxe6_request", FIXTURES6)))
        self.assertFalse(is_dhcp6_packet(load_hex("undionly_discover")))

    def test_command_line(self):
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as handle:
            handle.write(CONFIG)
        env = dict(os.environ, PYTHONPATH=HERE)
        result = subprocess.run([sys.executable, "-m", "ownsocket", "explain", "--config", path,
                                 "--packet", fixture6("ovmf_pxe6_solicit")],
                                capture_output=True, text=True, env=env, cwd=HERE, timeout=60)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("option 59: tftp://[fd99::1]/snponly.efi", result.stdout)
