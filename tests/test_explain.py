"""The explain command answers "why did this machine get that file?"."""

import io
import os
import subprocess
import sys

from twisted.internet.task import Clock
from twisted.trial import unittest

from ownsocket.explain import build_parser, explain
from tests.fixtures_loader import fixture_path

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CONFIG = """
[boot]
default = undionly.kpxe
arch.7 = snponly.efi
[selector:mac]
52:54:00:aa = lab.efi
[selector:ipxe]
script = boot.ipxe
"""


class ExplainTests(unittest.TestCase):
    def run_explain(self, *argv):
        path = self.mktemp()
        with open(path, "w") as handle:
            handle.write(CONFIG)
        out = io.StringIO()
        args = build_parser().parse_args(["--config", path, *argv])
        code = self.successResultOf(explain(args, out=out, clock=Clock()))
        return code, out.getvalue()

    def chosen(self, text):
        [line] = [line for line in text.splitlines() if line.startswith(" ==>")]
        return line

    def test_arch(self):
        code, text = self.run_explain("--arch", "7")
        self.assertEqual(code, 0)
        self.assertIn("arch       'snponly.efi'", self.chosen(text))
        self.assertIn("decision: snponly.efi (by 'arch'", text)

    def test_mac_prefix_beats_arch_and_others_shown(self):
        code, text = self.run_explain("--mac", "52:54:00:aa:00:01", "--arch", "7")
        self.assertIn("mac        'lab.efi'", self.chosen(text))
        self.assertIn("arch       'snponly.efi'", text)
        self.assertIn("[not used: an earlier selector decided]", text)

    def test_captured_packet_of_chained_ipxe(self):
        code, text = self.run_explain("--packet", "@" + fixture_path("undionly_discover"))
        self.assertIn("client     52:54:00:99:00:10", text)
        self.assertIn("iPXE       yes", text)
        self.assertIn("undionly.kpxe", self.chosen(text))
        self.assertIn("note: this client is iPXE", text)
        # the packet's own options, decoded by dhcppython
        self.assertIn("options     53 MessageType: DHCPDISCOVER\n", text)
        self.assertIn("\n            60 VendorClassIdentifier: PXEClient:Arch:00000:UNDI:002001\n", text)
        code, text = self.run_explain("--packet", "@" + fixture_path("undionly_discover"),
                                      "--after-first-stage")
        self.assertIn("ipxe       'boot.ipxe'", self.chosen(text))

    def test_bad_packet(self):
        from ownsocket.explain import ExplainError
        path = self.mktemp()
        with open(path, "w") as handle:
            handle.write(CONFIG)
        args = build_parser().parse_args(["--config", path, "--packet", "0102"])
        self.failureResultOf(explain(args, out=io.StringIO(), clock=Clock()), ExplainError)

    def test_command_line(self):
        env = dict(os.environ, PYTHONPATH=HERE)
        result = subprocess.run([sys.executable, "-m", "ownsocket", "explain", "--arch", "0,7"],
                                capture_output=True, text=True, env=env, cwd=HERE, timeout=60)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("decision: undionly.kpxe", result.stdout)
        bad = subprocess.run([sys.executable, "-m", "ownsocket", "explain", "--config", "/nonexistent.ini"],
                             capture_output=True, text=True, env=env, cwd=HERE, timeout=60)
        self.assertEqual(bad.returncode, 2)
        self.assertIn("ownsocket explain: /nonexistent.ini: cannot read", bad.stderr)
        self.assertNotIn("Traceback", bad.stderr)

    def test_config_for_another_host(self):
        """A config naming interfaces this host lacks (a namespace's br0)
        is still explained: only the selectors matter here."""
        path = self.mktemp()
        with open(path, "w") as handle:
            handle.write("[dhcp]\ninterfaces = br-not-here\n[boot]\ndefault = x.efi\n")
        out = io.StringIO()
        args = build_parser().parse_args(["--config", path, "--arch", "7"])
        self.assertEqual(self.successResultOf(explain(args, out=out, clock=Clock())), 0)
        self.assertIn("decision: x.efi", out.getvalue())


class NextFetchExplainTests(unittest.TestCase):
    """explain says what shim and GRUB will ask for after the boot file."""

    def explain_with(self, *argv):
        out = io.StringIO()
        args = build_parser().parse_args(list(argv))
        code = self.successResultOf(explain(args, out=out, clock=Clock()))
        return code, out.getvalue()

    def test_shim_in_a_subdirectory_with_generated_grub_cfg(self):
        root = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(root, "efi"))
        with open(os.path.join(root, "efi", "shimx64.efi"), "wb") as handle:
            handle.write(b"MZ .sbat sbat,1,SBAT Version\nshim,4,UEFI shim,shim,1,https://github.com/rhboot/shim\n")
        config = os.path.join(os.path.dirname(root), "sb.ini")
        with open(os.path.join(os.path.dirname(root), "grub.cfg.in"), "w") as handle:
            handle.write("source /marker-@mac-hex@\n")
        with open(config, "w") as handle:
            handle.write("[tftp]\nroot = %s\n[boot]\nselectors = template, arch\narch.7 = efi/shimx64.efi\n"
                         "[selector:template]\ngrub/grub.cfg = grub.cfg.in\n" % root)
        code, text = self.explain_with("--config", config, "--arch", "7")
        self.assertEqual(code, 0)
        self.assertIn("efi/shimx64.efi is shim: it takes the directory of its second stage from the BOOTP 'file'",
                      text)
        lines = text.splitlines()
        fetched = [line.split()[0] for line in lines[lines.index("next, over TFTP:") + 3:]]
        self.assertEqual(fetched[:4], ["efi/revocations_sku.efi", "efi/revocations_sbat.efi",
                                       "efi/shim_certificate_0.efi", "efi/grubx64.efi"])
        self.assertRegex(text, r"efi/grubx64\.efi\s+MISSING under the TFTP root")
        self.assertRegex(text, r"/grub/grub\.cfg\s+generated per machine by 'template'")

    def test_ipxe_first_stage_has_no_next_section(self):
        code, text = ExplainTests.run_explain(self, "--arch", "7")
        self.assertNotIn("next, over TFTP", text)
