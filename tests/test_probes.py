"""
Expected probes (FIRMWARE-FACTS §6c) and what shim/GRUB fetch next (§6d, §6e).
"""

import ipaddress
import os

from twisted.internet import defer
from twisted.trial import unittest

from ownsocket import probes
from ownsocket.dhcp import wire
from ownsocket.dhcp.bootfields import add_boot_fields
from ownsocket.boot.request import BootDecision
from ownsocket.tftp import wire as tftp_wire

from tests import packets, test_http, test_tftp_protocol
from tests.fixtures_loader import load_hex

#: Every optional name shim 16.1 and Debian's GRUB asked for in §6c and §7.
SEEN_PROBES = ["revocations_sku.efi", "revocations_sbat.efi", "shim_certificate_0.efi",
               "efi/revocations_sku.efi", "/grub/x86_64-efi/command.lst", "/grub/x86_64-efi/fs.lst",
               "/grub/x86_64-efi/crypto.lst", "/grub/arm64-efi/terminal.lst"]


class ClassifierTests(unittest.TestCase):

    def test_probes(self):
        for name in SEEN_PROBES:
            self.assertIsNotNone(probes.expected_probe(name), name)
        self.assertIn("shim", probes.expected_probe(b"revocations_sbat.efi"))
        self.assertIn("GRUB", probes.expected_probe("\\grub\\x86_64-efi\\fs.lst"))

    def test_real_files_are_not_probes(self):
        for name in ["grubx64.efi", "efi/grubx64.efi", "/grub/grub.cfg", "snponly.efi", "boot.ipxe",
                     "revocations_sku.efi.bak", "lst", "shim_certificate_x.efi"]:
            self.assertIsNone(probes.expected_probe(name), name)


class NextFetchTests(unittest.TestCase):

    def test_shim_in_a_subdirectory(self):
        names = [name for name, _ in probes.next_fetches("shim", "efi/shimx64.efi", 7)]
        self.assertEqual(names[:4], ["efi/revocations_sku.efi", "efi/revocations_sbat.efi",
                                     "efi/shim_certificate_0.efi", "efi/grubx64.efi"])
        self.assertEqual(names[-1], "/grub/grub.cfg")
        self.assertIn("/grub/x86_64-efi/command.lst", names)

    def test_shim_in_the_root_and_arm64_grub(self):
        self.assertEqual(probes.next_fetches("shim", "bootx64.efi", 7)[3], ("grubx64.efi", "needed"))
        self.assertEqual(probes.next_fetches("shim", "shimaa64.efi", 11)[3], ("grubaa64.efi", "needed"))
        grub = probes.next_fetches("grub", "grubnetaa64.efi", 11)
        self.assertEqual(grub[0], ("/grub/arm64-efi/command.lst", "probe"))
        self.assertEqual(grub[-1], ("/grub/grub.cfg", "needed"))

    def test_loader_kind_from_sbat_not_name(self):
        root = self.mktemp()
        os.makedirs(root)
        shim = os.path.join(root, "bootx64.efi")
        with open(shim, "wb") as handle:
            handle.write(b"MZ...sbat,1,SBAT Version\nshim,4,UEFI shim,shim,1,https://github.com/rhboot/shim\n")
        self.assertEqual(probes.loader_kind("bootx64.efi", shim), "shim")
        plain = os.path.join(root, "shimlike.efi")
        with open(plain, "wb") as handle:
            handle.write(b"MZ no sbat here")
        self.assertIsNone(probes.loader_kind("shimlike.efi", plain))
        self.assertEqual(probes.loader_kind("shimx64.efi"), "shim")
        self.assertEqual(probes.loader_kind("grubnetx64.efi.signed"), "grub")
        self.assertIsNone(probes.loader_kind("snponly.efi"))

    def test_describe_says_what_is_missing(self):
        root = self.mktemp()
        os.makedirs(os.path.join(root, "efi"))
        lines = probes.describe_next("efi/shimx64.efi", 7, root,
                                     lambda path: "generated" if path == "grub/grub.cfg" else None)
        text = "\n".join(lines)
        self.assertIn("'file' field", text)
        self.assertRegex(text, r"efi/grubx64\.efi\s+MISSING under the TFTP root")
        self.assertRegex(text, r"/grub/grub\.cfg\s+generated")
        self.assertEqual(probes.describe_next("snponly.efi", 7, root), [])
        self.assertEqual(probes.describe_next("http://x/shimx64.efi", 16, root), [])


class BootpFileFieldTests(unittest.TestCase):
    """shim ignores option 67 and takes its directory from the BOOTP file
    field (§6d): a boot file in a subdirectory must be there, whole, for the
    Secure Boot OVMF request that lists 67 in option 55 as well."""

    def test_subdirectory_in_file_field_and_option_67(self):
        message = wire.parse(load_hex("ovmf_pxe_request"))
        self.assertIn(wire.OPT_BOOTFILE, message.parameter_list)
        reply = wire.Reply(request=message, message_type=wire.ACK)
        decision = BootDecision("efi/shimx64.efi", reason="test")
        add_boot_fields(reply, message, decision, ipaddress.IPv4Address("10.99.0.1"))
        data = wire.build(reply)
        self.assertEqual(data[108:236].rstrip(b"\x00"), b"efi/shimx64.efi")
        self.assertEqual(data[20:24], bytes([10, 99, 0, 1]))  # siaddr: where shim fetches from
        self.assertEqual(dict(packets.dhcp_options(data))[wire.OPT_BOOTFILE].rstrip(b"\x00"), b"efi/shimx64.efi")
        self.assertEqual(probes.bootp_file_directory(data[108:236].rstrip(b"\x00").decode()), "efi/")


class ProbeLoggingTests(test_tftp_protocol.ServiceTestCase):

    def test_tftp_probe_gets_error_1_at_once_and_is_logged_as_expected(self):
        self.make(files={"efi/grubx64.efi": b"x"})
        self.send(test_tftp_protocol.rrq("efi/revocations_sku.efi", blksize=512, windowsize=4))
        self.send(test_tftp_protocol.rrq("/grub/x86_64-efi/fs.lst", blksize=1024, tsize=0), ("192.0.2.10", 2001))
        self.send(test_tftp_protocol.rrq("efi/grubx86.efi"), ("192.0.2.10", 2002))
        self.assertEqual([tftp_wire.parse_error(p)[0] for p, _ in self.replies()], [1, 1, 1])
        self.assertEqual(self.sessions(), [])
        lines = self.lines()
        self.assertEqual([line["tftp_result"] for line in lines], ["expected probe", "expected probe", "error"])
        self.assertIn("shim's optional revocation list", lines[0]["detail"])
        self.assertIn("GRUB's optional module list", lines[1]["detail"])
        self.assertEqual(lines[2]["detail"], " (1 File not found)")


class HttpProbeLoggingTests(test_http.ServiceMixin, unittest.TestCase):

    @defer.inlineCallbacks
    def test_http_probe_gets_404_and_is_logged_as_expected(self):
        from twisted.logger import globalLogPublisher
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        port = self.start(test_http.FakeBackend({}))
        for path in ("/grub/x86_64-efi/command.lst", "/grub/grub.cfg"):
            response = yield test_http.get(port, path)
            self.assertEqual(response.status, 404)
        yield test_http.wait_for(lambda: len([e for e in events if "http_status" in e]) == 2)
        details = [e["detail"] for e in events if "http_status" in e]
        self.assertIn("expected probe: GRUB's optional module list", details[0])
        self.assertNotIn("expected probe", details[1])
