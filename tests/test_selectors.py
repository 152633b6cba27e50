"""Built-in selectors, the chain, and the stateful iPXE flow end to end."""

import ipaddress
import os

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial import unittest
from zope.interface import implementer

from ownsocket import config as configuration
from ownsocket.boot import selectors
from ownsocket.boot.chain import SelectorChain
from ownsocket.boot.loader import load_selectors
from ownsocket.boot.recent import RecentRequests
from ownsocket.boot.request import BootDecision, BootRequest
from ownsocket.dhcp import wire
from ownsocket.dhcp.leases import SqliteLeaseStore
from ownsocket.dhcp.server import Arrival, DhcpServer
from ownsocket.files import ReadRequest
from ownsocket.interfaces import IBootFileSelector
from ownsocket.tap import build_backend, build_selector
from tests import packets
from tests.fixtures_loader import load_hex

IP = ipaddress.IPv4Address
SERVER = IP("10.99.0.1")


def request(**fields):
    fields.setdefault("mac", "52:54:00:99:00:10")
    fields.setdefault("server_address", SERVER)
    return BootRequest(**fields)


def load(text, clock=None):
    config = configuration.load(text=text, known_interfaces={"br0"})
    return config, load_selectors(config, clock or Clock())


class BuiltinTests(unittest.TestCase):
    def test_arch_table_and_default(self):
        arch = selectors.ArchTableSelector({0: "undionly.kpxe", 7: "snponly.efi"}, default="fallback.0")
        self.assertEqual(arch.select(request(arch=(7,))).filename, "snponly.efi")
        self.assertEqual(arch.select(request(arch=(0,))).filename, "undionly.kpxe")
        self.assertEqual(arch.select(request(arch=(31337,))).filename, "fallback.0")
        self.assertEqual(arch.select(request(vendor_class=b"PXEClient:Arch:00007:UNDI:003000")).filename,
                         "snponly.efi")
        self.assertIsNone(selectors.ArchTableSelector({7: "x"}).select(request(arch=(99,))))

    def test_every_iana_arch_is_handled(self):
        arch = selectors.ArchTableSelector({}, default=None)
        for code in list(range(0, 45)) + [255, 65535]:
            self.assertIsNone(arch.select(request(arch=(code,))))
            request(arch=(code,)).firmware  # never raises

    def test_firmware_property(self):
        self.assertEqual(request(arch=(0,)).firmware, "bios")
        self.assertEqual(request(arch=(7,)).firmware, "uefi")
        self.assertEqual(request(arch=(16,)).firmware, "uefi-http")
        self.assertEqual(request(arch=(4242,)).firmware, "unknown")
        self.assertEqual(request().firmware, "unknown")

    def test_mac_longest_prefix(self):
        mac = selectors.MacSelector({"52:54:00": "vm.efi", "52:54:00:99:00:10": "this-one.efi"})
        self.assertEqual(mac.select(request()).filename, "this-one.efi")
        self.assertEqual(mac.select(request(mac="52:54:00:01:02:03")).filename, "vm.efi")
        self.assertIsNone(mac.select(request(mac="00:11:22:33:44:55")))

    def test_vendor_patterns(self):
        vendor = selectors.VendorClassSelector([("PXEClient:Arch:00007*", "x64.efi"), ("pxeclient*", "bios.0")])
        self.assertEqual(vendor.select(request(vendor_class=b"PXEClient:Arch:00007:UNDI:003000")).filename,
                         "x64.efi")
        self.assertEqual(vendor.select(request(vendor_class=b"PXEClient:Arch:00000:UNDI:002001")).filename,
                         "bios.0")
        self.assertIsNone(vendor.select(request(vendor_class=b"MSFT 5.0")))
        self.assertIsNone(vendor.select(request()))

    def test_uefi_http_needs_httpclient_option(self):
        http = selectors.UefiHttpSelector({}, "http://@server@:8080/", {7: "snponly.efi"}, None)
        decision = http.select(request(arch=(16,), vendor_class=b"HTTPClient:Arch:00016:UNDI:003000"))
        self.assertEqual(decision.filename, "http://10.99.0.1:8080/snponly.efi")
        self.assertIn((60, b"HTTPClient"), decision.extra_options)
        self.assertIsNone(http.select(request(arch=(7,))))

    def test_uefi_http_explicit_url(self):
        http = selectors.UefiHttpSelector({19: "http://boot.example/arm.efi"}, None, {}, None)
        self.assertEqual(http.select(request(arch=(19,))).filename, "http://boot.example/arm.efi")
        self.assertIsNone(http.select(request(arch=(16,))))

    def test_rpi(self):
        rpi = selectors.RaspberryPiSelector()
        decision = rpi.select(request(mac="dc:a6:32:01:02:03", arch=(0,)))
        options = dict(decision.extra_options)
        self.assertIn(b"Raspberry Pi Boot", options[43])
        self.assertEqual(options[66], b"10.99.0.1")
        self.assertIsNone(decision.filename)
        self.assertIsNone(rpi.select(request(arch=(0,))))

    def test_ipxe_stateless(self):
        ipxe = selectors.IpxeChainSelector("boot.ipxe", stateful=False, clock=Clock())
        decision = ipxe.select(request(user_class=(b"iPXE",)))
        self.assertEqual(decision.filename, "boot.ipxe")
        self.assertIsNone(ipxe.select(request(arch=(7,))))

    def test_ipxe_stateful_remembers_for_a_while(self):
        clock = Clock()
        ipxe = selectors.IpxeChainSelector("boot.ipxe", stateful=True, remember=60, clock=clock)
        client = request(has_ipxe_options=True)
        self.assertIsNone(ipxe.select(client))
        ipxe.file_opened(ReadRequest("undionly.kpxe", ("10.99.0.5", 2000), {}, client))
        self.assertEqual(ipxe.select(client).filename, "boot.ipxe")
        clock.advance(61)
        self.assertIsNone(ipxe.select(client))
        ipxe.file_opened(ReadRequest("undionly.kpxe", ("10.99.0.5", 2000), {}, client))
        ipxe.file_opened(ReadRequest("boot.ipxe", ("10.99.0.5", 2001), {}, client))
        self.assertIsNone(ipxe.select(client))

    def test_ipxe_state_survives_a_reload(self):
        """A reload builds a new selector: a machine that fetched its first
        stage before it still gets the script after it."""
        clock = Clock()
        old = selectors.IpxeChainSelector("boot.ipxe", remember=60, clock=clock)
        client = request(has_ipxe_options=True)
        old.file_opened(ReadRequest("undionly.kpxe", ("10.99.0.5", 2000), {}, client))
        new = selectors.IpxeChainSelector("boot.ipxe", remember=60, clock=clock)
        self.assertIsNone(new.select(client))
        new.inherit(old)
        self.assertEqual(new.select(client).filename, "boot.ipxe")


@implementer(IBootFileSelector)
class Fixed:
    def __init__(self, name, result):
        self.name = name
        self.result = result
        self.calls = 0

    def select(self, request):
        self.calls += 1
        if isinstance(self.result, Exception):
            raise self.result
        return self.result


class ChainTests(unittest.TestCase):
    def test_first_decision_wins_and_is_stamped(self):
        second = Fixed("second", BootDecision("b", reason="r"))
        third = Fixed("third", BootDecision("c", reason="r"))
        chain = SelectorChain([Fixed("first", None), second, third], clock=Clock())
        decision = chain.select(request())
        self.assertEqual((decision.filename, decision.selector), ("b", "second"))
        self.assertEqual(third.calls, 0)

    def test_raising_selector_is_skipped(self):
        chain = SelectorChain([Fixed("broken", RuntimeError("no")), Fixed("ok", BootDecision("x", reason="r"))],
                              clock=Clock())
        self.assertEqual(chain.select(request()).filename, "x")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_deferred_then_next(self):
        slow = Fixed("slow", None)
        pending = defer.Deferred()
        slow.result = pending
        chain = SelectorChain([slow, Fixed("after", BootDecision("later", reason="r"))], clock=Clock())
        result = chain.select(request())
        self.assertNoResult(result)
        pending.callback(None)
        self.assertEqual(self.successResultOf(result).filename, "later")

    def test_timeout_moves_on(self):
        clock = Clock()
        slow = Fixed("slow", defer.Deferred())
        chain = SelectorChain([slow, Fixed("after", BootDecision("fallback", reason="r"))], clock=clock, timeout=2)
        result = chain.select(request())
        clock.advance(1.9)
        self.assertNoResult(result)
        clock.advance(0.2)
        decision = self.successResultOf(result)
        self.assertEqual((decision.filename, decision.selector), ("fallback", "after"))

    def test_clock_and_timeout_are_required(self):
        """A chain without a clock would wait for a hung selector forever,
        and the stateful iPXE selector must not measure on the wall clock."""
        self.assertRaises(TypeError, SelectorChain, [])
        self.assertRaises(ValueError, SelectorChain, [], clock=None)
        self.assertRaises(ValueError, SelectorChain, [], clock=Clock(), timeout=0)
        self.assertRaises(TypeError, selectors.IpxeChainSelector, "boot.ipxe")
        self.assertRaises(ValueError, selectors.IpxeChainSelector, "boot.ipxe", clock=None)

    def test_failed_deferred_moves_on(self):
        chain = SelectorChain([Fixed("bad", defer.fail(ValueError("db down"))),
                               Fixed("ok", BootDecision("y", reason="r"))], clock=Clock())
        self.assertEqual(self.successResultOf(chain.select(request())).filename, "y")

    def test_slow_selector_does_not_stall_other_clients(self):
        """While one client's selector waits, another client is answered
        by the DHCP server at once."""
        pending = {}

        @implementer(IBootFileSelector)
        class PerMacSlow:
            name = "slow-for-one"

            def select(self, req):
                if req.mac.endswith("01"):
                    pending[req.mac] = defer.Deferred()
                    return pending[req.mac]
                return BootDecision("quick.efi", reason="r")

        clock = Clock()
        config = configuration.load(text="[subnet:s]\nnetwork = 10.99.0.0/24\npool = 10.99.0.10-10.99.0.20\n",
                                    known_interfaces={"br0"})
        store = SqliteLeaseStore(":memory:")
        self.addCleanup(store.close)
        server = DhcpServer(config, store, SelectorChain([PerMacSlow()], clock=clock, timeout=2), clock)
        arrival = Arrival("br0", SERVER)
        slow = server.handle(wire.parse(packets.ovmf_pxe_discover(mac="52:54:00:00:00:01")), arrival)
        quick = server.handle(wire.parse(packets.ovmf_pxe_discover(mac="52:54:00:00:00:02")), arrival)
        self.assertEqual(packets.parse_reply(quick[0].data)["file"], b"quick.efi")
        self.assertNoResult(slow)
        clock.advance(2.5)  # the slow selector times out; no decision, still an offer
        [offer] = self.successResultOf(slow)
        self.assertEqual(packets.parse_reply(offer.data)["type"], wire.OFFER)


FLEET = """
[subnet:lab]
network = 10.99.0.0/24
pool = 10.99.0.100-10.99.0.200
[http]
enabled = true
port = 8080
[boot]
default = undionly.kpxe
arch.0 = undionly.kpxe
arch.7 = snponly.efi
[selector:ipxe]
script = boot.ipxe
"""


class FleetTests(unittest.TestCase):
    """The captured firmware packets through the default chain."""

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1000)
        self.root = self.mktemp()
        os.makedirs(self.root)
        for name in ("undionly.kpxe", "snponly.efi", "boot.ipxe"):
            with open(os.path.join(self.root, name), "wb") as handle:
                handle.write(b"x" * 1000)
        text = FLEET.replace("[http]", f"[tftp]\nroot = {self.root}\n[http]")
        self.config = configuration.load(text=text, known_interfaces={"br0"})
        built = load_selectors(self.config, self.clock)
        self.backend = build_backend(self.config, built)
        self.recent = RecentRequests()
        store = SqliteLeaseStore(":memory:")
        self.addCleanup(store.close)
        self.server = DhcpServer(self.config, store, build_selector(self.config, self.clock, built),
                                 self.clock, recent=self.recent)

    def offer(self, fixture):
        [outgoing] = self.server.handle(wire.parse(load_hex(fixture)), Arrival("br0", SERVER))
        return packets.parse_reply(outgoing.data)

    def fetch(self, offer, name):
        boot_request = self.recent.get(offer["yiaddr"])
        reader = self.successResultOf(self.backend.get_reader(
            ReadRequest(name, (offer["yiaddr"], 2070), {}, boot_request)))
        reader.finish()

    def test_bios_rom_then_undionly_then_script(self):
        rom = self.offer("seabios_ipxe_discover")
        self.assertEqual(rom["file"], b"undionly.kpxe")
        self.assertEqual(rom["options"][175], b"\xb0\x01\x01")  # the ROM is iPXE too
        self.fetch(rom, "undionly.kpxe")
        chained = self.offer("undionly_discover")
        self.assertEqual(chained["file"], b"boot.ipxe")
        self.assertEqual(chained["options"][175], b"\xb0\x01\x01")
        self.fetch(chained, "boot.ipxe")
        # The next reboot starts over with the ROM's first stage.
        self.assertEqual(self.offer("seabios_ipxe_discover")["file"], b"undionly.kpxe")

    def test_ovmf_pxe_then_snponly_then_script(self):
        ovmf = self.offer("ovmf_pxe_discover")
        self.assertEqual(ovmf["file"], b"snponly.efi")
        self.assertNotIn(175, ovmf["options"])  # EDK2 is not iPXE
        self.fetch(ovmf, "snponly.efi")
        self.assertEqual(self.offer("snponly_discover")["file"], b"boot.ipxe")

    def test_ovmf_http_gets_url_and_httpclient(self):
        http = self.offer("ovmf_http_discover")
        self.assertEqual(http["file"], b"http://10.99.0.1:8080/snponly.efi")
        self.assertEqual(http["options"][60], b"HTTPClient")
        self.fetch(http, "snponly.efi")
        self.assertEqual(self.offer("snponly_after_http_discover")["file"], b"boot.ipxe")
