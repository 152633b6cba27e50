"""
Per-machine generated files: the 'template' selector/backend.

Checked: placeholders and escaping, rendering per client from the last DHCP
request (by address, and by MAC through ARP in proxy mode), start-up errors
for every value that could be missing, a clear refusal for unknown clients
that never falls through to a file of the same name on disk, concurrent
fetches, and the plugin path (config -> load_selectors -> build_backend).
"""

import ipaddress
import os

from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.trial import unittest

from ownsocket import config as configuration
from ownsocket.boot import templates
from ownsocket.boot.loader import load_selectors
from ownsocket.boot.recent import RecentRequests
from ownsocket.boot.request import BootRequest
from ownsocket.config import ConfigError, HostConfig
from ownsocket.files import ReadRequest
from ownsocket.interfaces import FileNotFound, IBootFileSelector, IFileBackend, SettingError
from ownsocket.tap import build_backend
from zope.interface.verify import verifyObject

MAC_A = "52:54:00:99:00:10"
MAC_B = "52:54:00:99:00:11"
SERVER = ipaddress.IPv4Address("10.99.0.1")
GRUB = ("# @hostname@ @mac@ @ip@ arch @arch@ (@arch-name@, @grub-cpu@) via @server@\n"
        "set sb=\nif [ \"$shim_lock\" = y ]; then set sb=-sb; fi\n"
        "source /marker-@hostname@-@role@$sb # mail root@@example.org, user@host\n")


def request(mac=MAC_A, arch=(7,), **kw):
    return BootRequest(mac=mac, arch=arch, server_address=SERVER, **kw)


def reader_text(reader):
    data = reader.read(1 << 20)
    reader.finish()
    return data.decode()


def hosts():
    return (HostConfig("sb1", MAC_A, hostname="sb1.lab"), HostConfig("arm1", MAC_B, hostname="arm1.lab"))


class ParseTests(unittest.TestCase):

    def test_pieces(self):
        self.assertEqual(templates.parse("a @mac@ b @@ c user@host d @X@"),
                         [("a ", "mac"), (" b @", None), (" c user@host d ", "x"), ("", None)])

    def test_no_placeholder(self):
        self.assertEqual(templates.parse("plain ${x} $y"), [("plain ${x} $y", None)])


class BuildTests(unittest.TestCase):

    def build(self, settings, text=GRUB, host_list=None):
        sources = {}

        def read(path):
            if path not in sources:
                raise FileNotFoundError(2, "No such file or directory")
            return sources[path]
        for key, value in settings.items():
            if not key.startswith("var.") and key != "clients":
                sources[value] = text.encode() if isinstance(text, str) else text
        return templates.build(settings, hosts() if host_list is None else host_list, SettingError, read=read)

    def assertSettingError(self, key, fragment, settings, **kw):
        error = self.assertRaises(SettingError, self.build, settings, **kw)
        self.assertEqual(error.key, key)
        self.assertIn(fragment, str(error))
        return error

    def test_verifies_both_interfaces(self):
        files = self.build({"grub/grub.cfg": "t.in", "var.role": "compute", "var.hostname": "anon"})
        verifyObject(IBootFileSelector, files)
        verifyObject(IFileBackend, files)
        self.assertIsNone(files.select(request()))

    def test_unknown_placeholder_names_file_and_line(self):
        error = self.assertSettingError("grub/grub.cfg", "t.in line 4: unknown placeholder @role@",
                                        {"grub/grub.cfg": "t.in", "var.hostname": "anon"})
        self.assertIn("@@", str(error))

    def test_missing_default_for_unknown_machines(self):
        self.assertSettingError("grub/grub.cfg", "@role@ has no value for a machine without a [host:NAME]",
                                {"grub/grub.cfg": "t.in", "var.role.sb1": "x", "var.role.arm1": "y",
                                 "var.hostname": "anon"})

    def test_missing_host_value_with_hosts_only(self):
        self.assertSettingError("grub/grub.cfg", "@role@ has no value for [host:arm1]: give it var.role.arm1",
                                {"grub/grub.cfg": "t.in", "var.role.sb1": "x", "clients": "hosts"})

    def test_host_without_hostname(self):
        host_list = (HostConfig("sb1", MAC_A, hostname="sb1.lab"), HostConfig("bare", MAC_B))
        self.assertSettingError("boot.ipxe", "@hostname@ has no value for [host:bare]: give it a hostname key",
                                {"boot.ipxe": "t.in", "clients": "hosts"}, text="#!ipxe\necho @hostname@\n",
                                host_list=host_list)

    def test_hostname_default_covers_unknown_machines(self):
        files = self.build({"boot.ipxe": "t.in", "var.hostname": "anonymous"}, text="@hostname@")
        self.assertEqual(files.render(files.templates["boot.ipxe"],
                                      ReadRequest("boot.ipxe", ("10.99.0.9", 1), {}, request("52:54:00:00:00:01"))),
                         b"anonymous")

    def test_bad_settings(self):
        self.assertSettingError("var.role.nosuch", "no [host:nosuch]", {"x": "t.in", "var.role.nosuch": "a"})
        self.assertSettingError("var.mac", "built in", {"x": "t.in", "var.mac": "a"})
        self.assertSettingError("var.a b", "not a value name", {"x": "t.in", "var.a b": "a"})
        self.assertSettingError("clients", "neither any nor hosts", {"x": "t.in", "clients": "some"})
        self.assertSettingError("../x", "not a file name", {"../x": "t.in"}, text="x")
        self.assertSettingError("var.role", "names no file", {"var.role": "a"})

    def test_unreadable_and_binary_templates(self):
        error = self.assertRaises(SettingError, templates.build, {"x": "/nonexistent/t.in"}, (), SettingError)
        self.assertIn("cannot read the template /nonexistent/t.in", str(error))
        self.assertSettingError("x", "not UTF-8", {"x": "t.in"}, text=b"\xff\xfe")
        self.assertSettingError("x", "larger than", {"x": "t.in"},
                                text=b"x" * (templates.MAX_TEMPLATE_BYTES + 1))


class RenderTests(unittest.TestCase):

    def setUp(self):
        path = self.mktemp()
        with open(path, "w") as handle:
            handle.write(GRUB)
        self.files = templates.build({"grub/grub.cfg": path, "var.role": "default-role",
                                      "var.role.arm1": "storage", "clients": "hosts"},
                                     hosts(), SettingError)
        self.logged = []
        globalLogPublisher.addObserver(self.logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.logged.append)

    def get(self, path, peer_ip, boot_request):
        return self.files.get_reader(ReadRequest(path, (peer_ip, 1000), {"tsize": "0"}, boot_request))

    def test_per_machine_content(self):
        first = self.get("grub/grub.cfg", "10.99.0.115", request(MAC_A, (7,)))
        second = self.get("GRUB/grub.cfg", "10.99.0.116", request(MAC_B, (11,)))
        # Both open before either is read, as with two machines fetching at once.
        a = reader_text(self.successResultOf(first))
        b = reader_text(self.successResultOf(second))
        self.assertEqual(a.splitlines()[0],
                         "# sb1.lab 52:54:00:99:00:10 10.99.0.115 arch 7 (EFI x64, x86_64) via 10.99.0.1")
        self.assertIn("source /marker-sb1.lab-default-role$sb # mail root@example.org, user@host", a)
        self.assertEqual(b.splitlines()[0],
                         "# arm1.lab 52:54:00:99:00:11 10.99.0.116 arch 11 (ARM 64-bit UEFI, arm64) via 10.99.0.1")
        self.assertIn("/marker-arm1.lab-storage$sb", b)
        rendered = [e for e in self.logged if e.get("log_format", "").startswith("template {path} rendered")]
        self.assertEqual([e["mac"] for e in rendered], [MAC_A, MAC_B])

    def test_size_is_exact(self):
        reader = self.successResultOf(self.get("grub/grub.cfg", "10.99.0.115", request()))
        self.assertEqual(reader.size, len(reader.read(1 << 20)))

    def test_unknown_client_is_refused_with_a_reason(self):
        failure = self.failureResultOf(self.get("grub/grub.cfg", "10.99.0.200", None), FileNotFound)
        self.assertTrue(failure.value.final)
        [line] = [e for e in self.logged if e.get("log_format", "").startswith("template {path}: not served")]
        self.assertEqual(line["peer"], "10.99.0.200")
        self.assertIn("no DHCP request known from 10.99.0.200", line["why"])

    def test_missing_arch_at_boot_is_refused_not_empty(self):
        failure = self.failureResultOf(self.get("grub/grub.cfg", "10.99.0.115", request(arch=())), FileNotFound)
        self.assertIn("@arch@ has no value for 52:54:00:99:00:10", str(failure.value))

    def test_other_names_pass(self):
        failure = self.failureResultOf(self.get("grub/other.cfg", "10.99.0.115", request()), FileNotFound)
        self.assertFalse(getattr(failure.value, "final", False))

    def test_proxy_mode_finds_the_client_by_mac_through_arp(self):
        recent = RecentRequests(arp_table=lambda: {"192.168.1.50": MAC_B})
        recent.remember_mac(request(MAC_B, (11,), phase="proxy"))
        boot_request = recent.get("192.168.1.50")
        text = reader_text(self.successResultOf(self.get("grub/grub.cfg", "192.168.1.50", boot_request)))
        self.assertIn("# arm1.lab 52:54:00:99:00:11 192.168.1.50 arch 11", text)


class PluginTests(unittest.TestCase):
    """From an INI file through the loader into the served file chain."""

    def setUp(self):
        self.dir = os.path.abspath(self.mktemp())
        self.root = os.path.join(self.dir, "root")
        os.makedirs(os.path.join(self.root, "grub"))
        os.makedirs(os.path.join(self.dir, "templates"))
        with open(os.path.join(self.root, "grub", "grub.cfg"), "w") as handle:
            handle.write("on disk\n")
        with open(os.path.join(self.dir, "templates", "grub.cfg.in"), "w") as handle:
            handle.write("set host=@hostname@\n")

    def load(self, extra=""):
        path = os.path.join(self.dir, "site.ini")
        with open(path, "w") as handle:
            handle.write("[tftp]\nroot = %s\n[boot]\nselectors = host, template, arch\narch.7 = efi/shimx64.efi\n"
                         "[host:sb1]\nmac = %s\nhostname = sb1\n"
                         "[selector:template]\ngrub/grub.cfg = templates/grub.cfg.in\n%s" % (self.root, MAC_A, extra))
        config = configuration.load(path, known_interfaces=set())
        return config, load_selectors(config, Clock())

    def test_template_shadows_the_file_on_disk_and_never_falls_through(self):
        config, selectors = self.load("clients = hosts\n")
        backend = build_backend(config, selectors)
        ours = self.successResultOf(backend.get_reader(
            ReadRequest("grub/grub.cfg", ("10.99.0.115", 1), {}, request(MAC_A))))
        self.assertEqual(reader_text(ours), "set host=sb1\n")
        self.failureResultOf(backend.get_reader(
            ReadRequest("grub/grub.cfg", ("10.99.0.116", 1), {}, request(MAC_B))), FileNotFound)
        self.failureResultOf(backend.get_reader(
            ReadRequest("grub/grub.cfg", ("10.99.0.117", 1), {}, None)), FileNotFound)

    def test_start_up_error_names_section_and_key(self):
        error = self.assertRaises(ConfigError, self.load)
        self.assertIn("[selector:template] grub/grub.cfg:", str(error))
        self.assertIn("@hostname@ has no value for a machine without a [host:NAME] section", str(error))

    def test_examples_with_templates_load(self):
        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        for name in ("secure-boot.example.ini", "arm64.example.ini"):
            config = configuration.load(os.path.join(here, "conf", name), known_interfaces={"eth0"})
            selectors = load_selectors(config, Clock())
            [files] = [s for s in selectors if s.name == "template"]
            self.assertIn("grub/grub.cfg", files.templates)
