"""The per-boot trail: phases in order, named stalls, bounded memory."""

from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.trial import unittest

from ownsocket.admin.trail import (BootTrail, CHAINED_DHCP, DHCP, FILES, FIRST_STAGE, SCRIPT,
                                   normalise_mac)
from ownsocket.events import EventBus
from tests.test_admin_fakes import MAC, FakeAdminConfig, dhcp_exchange, tftp_transfer


class Harness:
    def __init__(self, test, arp=None, **settings):
        self.clock = Clock()
        self.clock.advance(1000)
        self.settings = FakeAdminConfig(**settings)
        self.ended = []
        self.trail = BootTrail(lambda: self.settings, self.clock, on_end=self.ended.append,
                               arp_table=lambda: dict(arp or {}))
        self.bus = EventBus(self.clock)
        self.bus.subscribe(self.trail)
        self.lines = []

        def keep(event):
            if event.get("boot_outcome"):
                from twisted.logger import formatEvent
                self.lines.append(formatEvent(event))
        globalLogPublisher.addObserver(keep)
        test.addCleanup(globalLogPublisher.removeObserver, keep)


class FullBootTests(unittest.TestCase):
    def _chain_boot(self, h):
        clock, bus = h.clock, h.bus
        dhcp_exchange(bus, clock=clock, step=0.1)
        clock.advance(1)
        tftp_transfer(bus, clock=clock, seconds=0.8)
        clock.advance(4)
        dhcp_exchange(bus, file="boot.ipxe", selector="ipxe", reason="iPXE: script", clock=clock, step=0.1)
        clock.advance(0.5)
        tftp_transfer(bus, file="boot.ipxe", size=120, clock=clock, seconds=0.01)
        tftp_transfer(bus, file="marker-pcbios.ipxe", size=60, clock=clock, seconds=0.01)

    def test_chain_loading_boot_has_every_phase_in_order(self):
        h = Harness(self)
        self._chain_boot(h)
        [boot] = h.trail.boots_of(MAC)
        data = boot.as_dict(h.clock.seconds())
        self.assertEqual([p["phase"] for p in data["phases"]],
                         [DHCP, FIRST_STAGE, CHAINED_DHCP, SCRIPT, FILES])
        kinds = [(e["service"], e["kind"], e["fields"].get("message") or e["fields"].get("file"))
                 for e in data["events"]]
        self.assertEqual(kinds[:5], [("dhcp", "received", "discover"), ("dhcp", "sent", "offer"),
                                     ("dhcp", "received", "request"), ("dhcp", "sent", "ack"),
                                     ("dhcp", "committed", None)])
        self.assertEqual(kinds[5:7], [("tftp", "started", "undionly.kpxe"), ("tftp", "finished", "undionly.kpxe")])
        self.assertEqual(kinds[-2:], [("tftp", "started", "marker-pcbios.ipxe"),
                                      ("tftp", "finished", "marker-pcbios.ipxe")])
        # times: monotonic, and the gap between phases is what the clock did
        times = [e["since_start"] for e in data["events"]]
        self.assertEqual(times, sorted(times))
        self.assertAlmostEqual(data["phases"][1]["since_start"], 1.3, places=3)
        self.assertAlmostEqual(data["phases"][0]["seconds"], 1.3, places=3)
        self.assertAlmostEqual(data["events"][6]["since_previous"], 0.8, places=3)
        self.assertEqual(data["first_stage"]["bytes"], 70000)
        self.assertEqual(data["first_stage"]["blksize"], 1432)
        self.assertEqual(data["first_stage"]["windowsize"], 4)
        self.assertEqual(data["script"], "boot.ipxe")
        self.assertEqual(data["files_after_script"], 1)
        self.assertEqual(data["selector"], "ipxe")
        self.assertEqual(data["firmware"], "BIOS")
        self.assertIsNone(data["outcome"])
        h.clock.advance(29.9)
        self.assertEqual(h.ended, [])
        h.clock.advance(0.2)
        self.assertEqual(h.ended, [boot])
        self.assertEqual(boot.outcome, "complete")
        self.assertEqual(len(h.lines), 1)
        self.assertIn("boot of %s complete" % MAC, h.lines[0])
        self.assertIn("script boot.ipxe", h.lines[0])

    def test_new_discover_after_finished_boot_starts_a_new_boot(self):
        h = Harness(self)
        self._chain_boot(h)
        h.clock.advance(5)   # not yet quiet: the DISCOVER itself ends the boot
        dhcp_exchange(h.bus)
        boots = h.trail.boots_of(MAC)
        self.assertEqual(len(boots), 2)
        self.assertEqual(boots[1].outcome, "complete")
        self.assertIsNone(boots[0].outcome)
        self.assertEqual(boots[0].phase, DHCP)
        self.assertEqual(len(h.lines), 1)

    def test_retransmitted_discover_stays_in_the_same_boot(self):
        h = Harness(self)
        h.bus.publish("dhcp", "received", mac=MAC, message="discover", xid=1, interface="br0")
        h.clock.advance(4)
        dhcp_exchange(h.bus)
        self.assertEqual(len(h.trail.boots_of(MAC)), 1)

    def test_mac_lookup_accepts_other_spellings_and_the_address(self):
        h = Harness(self)
        dhcp_exchange(h.bus)
        for key in ("52-54-00-12-34-56", "525400123456", "52:54:00:12:34:56".upper(), "10.0.0.100"):
            self.assertEqual(len(h.trail.boots_of(key)), 1, key)
        self.assertEqual(h.trail.boots_of("52:54:00:00:00:99"), [])
        self.assertIsNone(normalise_mac("<script>"))


class StallTests(unittest.TestCase):
    def test_offered_file_never_requested(self):
        h = Harness(self)
        dhcp_exchange(h.bus, file="snponly.efi", arch="efi-x64")
        h.clock.advance(30.01)
        [boot] = h.ended
        self.assertEqual(boot.outcome, "stalled")
        self.assertEqual(boot.summary, "offered snponly.efi, no TFTP request within 30 s")
        self.assertIn("stalled after", h.lines[0])
        self.assertIn("offered snponly.efi, no TFTP request within 30 s", h.lines[0])

    def test_http_url_offered_never_fetched(self):
        h = Harness(self, stall_after=10)
        dhcp_exchange(h.bus, file="http://10.0.0.1/snponly.efi", arch="efi-x64-http")
        h.clock.advance(10.01)
        self.assertEqual(h.ended[0].summary,
                         "offered http://10.0.0.1/snponly.efi, no HTTP request within 10 s")
        self.assertEqual(h.ended[0].firmware, "UEFI HTTP")

    def test_offer_without_request(self):
        h = Harness(self)
        h.bus.publish("dhcp", "received", mac=MAC, message="discover", xid=1, interface="br0")
        h.bus.publish("dhcp", "sent", mac=MAC, message="offer", xid=1, address="10.0.0.7", file="a.efi",
                      selector="arch", arch="efi-x64", reason="r")
        h.clock.advance(31)
        self.assertEqual(h.ended[0].summary, "offered 10.0.0.7 (a.efi), no REQUEST within 30 s")

    def test_dropped_discover(self):
        h = Harness(self)
        h.bus.publish("dhcp", "received", mac=MAC, message="discover", xid=1, interface="br0")
        h.bus.publish("dhcp", "dropped", mac=MAC, reason="pool-exhausted")
        h.clock.advance(31)
        self.assertEqual(h.ended[0].summary, "DHCP request not answered (dropped: pool-exhausted)")

    def test_aborted_transfer_names_the_block(self):
        h = Harness(self)
        dhcp_exchange(h.bus, file="snponly.efi", arch="efi-x64")
        tftp_transfer(h.bus, file="snponly.efi", result="aborted", block=812, error="client gone",
                      clock=h.clock, seconds=3)
        self.assertEqual(h.ended, [])
        h.clock.advance(30.01)
        [boot] = h.ended
        self.assertEqual(boot.outcome, "failed")
        self.assertEqual(boot.summary, "TFTP snponly.efi: aborted at block 812: client gone")

    def test_failed_then_retried_transfer_is_not_a_failure(self):
        h = Harness(self)
        dhcp_exchange(h.bus, file="snponly.efi", arch="efi-x64")
        tftp_transfer(h.bus, file="snponly.efi", result="size-probe", size=0)
        tftp_transfer(h.bus, file="snponly.efi", result="timeout", block=3)
        tftp_transfer(h.bus, file="snponly.efi")
        self.assertEqual(h.trail.boots_of(MAC)[0].first_stage["result"], "ok")
        h.clock.advance(31)
        self.assertEqual(h.ended[0].summary, "snponly.efi loaded, no DHCP from iPXE within 30 s")

    def test_size_probe_only(self):
        h = Harness(self)
        dhcp_exchange(h.bus, file="snponly.efi", arch="efi-x64")
        tftp_transfer(h.bus, file="snponly.efi", result="size-probe", size=0)
        h.clock.advance(31)
        self.assertEqual(h.ended[0].summary, "snponly.efi: size probe only, no transfer within 30 s")

    def test_no_timer_while_a_transfer_runs(self):
        h = Harness(self)
        dhcp_exchange(h.bus)
        h.bus.publish("tftp", "started", peer="10.0.0.100", file="undionly.kpxe", blksize=1432,
                      windowsize=1, size=10 ** 9)
        h.clock.advance(3600)
        self.assertEqual(h.ended, [])
        self.assertEqual(h.trail.boots_of(MAC)[0].in_flight, 1)
        self.assertEqual(h.trail.boots_of(MAC)[0].file, "undionly.kpxe")

    def test_script_not_found_fails(self):
        h = Harness(self)
        dhcp_exchange(h.bus)
        tftp_transfer(h.bus)
        dhcp_exchange(h.bus, file="boot.ipxe", selector="ipxe")
        tftp_transfer(h.bus, file="boot.ipxe", result="not-found")
        h.clock.advance(31)
        self.assertEqual(h.ended[0].outcome, "failed")
        self.assertEqual(h.ended[0].summary, "TFTP boot.ipxe: not found")

    def test_stall_after_is_read_from_the_current_settings(self):
        h = Harness(self)
        h.settings = FakeAdminConfig(stall_after=5)
        dhcp_exchange(h.bus, file="snponly.efi", arch="efi-x64")
        h.clock.advance(5.01)
        self.assertEqual(h.ended[0].summary, "offered snponly.efi, no TFTP request within 5 s")

    def test_plain_address_client_is_complete(self):
        h = Harness(self)
        dhcp_exchange(h.bus, file=None, selector=None, arch=None, reason=None)
        h.clock.advance(31)
        self.assertEqual(h.ended[0].outcome, "complete")


class ProxyTests(unittest.TestCase):
    def test_proxy_offer_is_tied_to_the_transfer_through_arp(self):
        h = Harness(self, arp={"10.99.0.150": MAC})
        h.bus.publish("proxy", "received", mac=MAC, message="discover", xid=1, interface="br0")
        h.bus.publish("proxy", "sent", mac=MAC, message="offer", xid=1, address=None, file="snponly.efi",
                      selector="arch", arch="efi-x64", reason="arch.7")
        tftp_transfer(h.bus, peer="10.99.0.150", file="snponly.efi")
        [boot] = h.trail.boots_of(MAC)
        self.assertEqual(boot.phase, FIRST_STAGE)
        self.assertEqual(boot.first_stage["result"], "ok")

    def test_proxy_without_arp_matches_the_one_boot_awaiting_that_file(self):
        h = Harness(self)
        h.bus.publish("proxy", "sent", mac=MAC, message="offer", xid=1, address=None, file="snponly.efi",
                      selector="arch", arch="efi-x64", reason="arch.7")
        h.bus.publish("proxy", "sent", mac="52:54:00:00:00:02", message="offer", xid=1, address=None,
                      file="undionly.kpxe", selector="arch", arch="bios", reason="arch.0")
        tftp_transfer(h.bus, peer="10.99.0.150", file="snponly.efi")
        self.assertEqual(h.trail.boots_of(MAC)[0].phase, FIRST_STAGE)
        self.assertEqual(h.trail.mac_for_peer("10.99.0.150"), MAC)

    def test_unknown_peer_gets_a_boot_of_its_own(self):
        h = Harness(self)
        tftp_transfer(h.bus, peer="10.99.0.9", file="pxelinux.0")
        [boot] = h.trail.boots_of("10.99.0.9")
        self.assertIsNone(boot.mac)
        self.assertEqual(boot.peer, "10.99.0.9")
        self.assertEqual(boot.phases[0][0], FIRST_STAGE)
        h.clock.advance(31)
        self.assertIn("10.99.0.9 (MAC unknown) complete", h.lines[0])


class BoundTests(unittest.TestCase):
    def test_mac_flood_keeps_memory_bounded(self):
        h = Harness(self, boots=100, events_per_boot=8)
        for n in range(5000):
            mac = "02:00:00:%02x:%02x:%02x" % (n >> 16, (n >> 8) & 255, n & 255)
            dhcp_exchange(h.bus, mac=mac, address="10.%d.%d.%d" % (n >> 16, (n >> 8) & 255, n & 255))
        boots, events, addresses = h.trail.memory_bound()
        self.assertEqual(boots, 100)
        self.assertLessEqual(events, 100 * 8)
        self.assertLessEqual(addresses, 400)
        self.assertEqual(h.trail.evicted, 4900)
        self.assertEqual(len(h.clock.getDelayedCalls()), 1)  # one quiet timer, whatever the number of boots
        self.assertEqual(h.trail.all_boots()[0].mac, "02:00:00:00:13:87")

    def test_one_chatty_boot_keeps_its_first_and_latest_events(self):
        h = Harness(self, events_per_boot=10)
        for xid in range(200):
            h.bus.publish("dhcp", "received", mac=MAC, message="discover", xid=xid, interface="br0")
        [boot] = h.trail.boots_of(MAC)
        data = boot.as_dict(h.clock.seconds())
        self.assertEqual(len(data["events"]), 10)
        self.assertEqual(data["events_dropped"], 190)
        xids = [e["fields"]["xid"] for e in data["events"]]
        self.assertEqual(xids, [0, 1, 2, 3, 4, 195, 196, 197, 198, 199])

    def test_long_client_text_is_truncated(self):
        h = Harness(self)
        dhcp_exchange(h.bus)
        tftp_transfer(h.bus, file="x" * 5000, result="not-found")
        entry = h.trail.boots_of(MAC)[0].entries()[-1]
        self.assertLess(len(entry.fields["file"]), 300)
        self.assertLess(len(entry.text), 300)

    def test_boots_per_mac_are_bounded(self):
        h = Harness(self)
        for _ in range(20):
            dhcp_exchange(h.bus)
            h.clock.advance(31)
        self.assertEqual(len(h.trail.boots_of(MAC)), 4)


class RefusedTransferTests(unittest.TestCase):
    def test_first_stage_refused_before_it_started(self):
        """The TFTP service publishes only 'finished' for an RRQ it refuses (not found, denied)."""
        h = Harness(self)
        dhcp_exchange(h.bus, file="snponly.efi", arch="efi-x64")
        h.bus.publish("tftp", "finished", peer="10.0.0.100", file="snponly.efi", result="not-found", bytes=0,
                      seconds=0.0, retransmits=0, block=0, blksize=0, windowsize=0, error="1 File not found")
        [boot] = h.trail.boots_of(MAC)
        self.assertEqual(boot.phase, FIRST_STAGE)
        self.assertEqual(boot.first_stage["result"], "not-found")
        self.assertEqual(boot.in_flight, 0)
        h.clock.advance(31)
        self.assertEqual(boot.outcome, "failed")
        self.assertEqual(boot.summary, "TFTP snponly.efi: not found")


class HttpBootTests(unittest.TestCase):
    def test_uefi_http_boot_size_request_then_download_is_one_first_stage(self):
        h = Harness(self)
        url = "http://10.0.0.1/snponly.efi"
        dhcp_exchange(h.bus, file=url, selector="uefi-http", arch="efi-x64-http")
        tftp_transfer(h.bus, file="/snponly.efi", service="http", size=0)      # HEAD
        tftp_transfer(h.bus, file="/snponly.efi", service="http", size=200000)  # GET
        [boot] = h.trail.boots_of(MAC)
        self.assertEqual([p for p, _ in boot.phases], [DHCP, FIRST_STAGE])
        self.assertEqual(boot.first_stage["bytes"], 200000)
        self.assertEqual(boot.first_stage["protocol"], "http")
        dhcp_exchange(h.bus, file="boot.ipxe", selector="ipxe", arch="efi-x64")
        tftp_transfer(h.bus, file="boot.ipxe", size=100)
        self.assertEqual([p for p, _ in boot.phases], [DHCP, FIRST_STAGE, CHAINED_DHCP, SCRIPT])

    def test_event_mac_is_used_when_the_service_knows_it(self):
        h = Harness(self)
        h.bus.publish("http", "started", mac=MAC, peer="10.0.0.77", file="/a", size=1)
        self.assertEqual(h.trail.mac_for_peer("10.0.0.77"), MAC)
        self.assertEqual(len(h.trail.boots_of(MAC)), 1)


class MacLimitTests(unittest.TestCase):
    def test_boots_counts_macs_and_the_least_recent_mac_goes_first(self):
        h = Harness(self, boots=3)
        macs = ["52:54:00:00:00:%02x" % n for n in range(4)]
        for mac in macs[:3]:
            dhcp_exchange(h.bus, mac=mac)
            h.clock.advance(31)
        dhcp_exchange(h.bus, mac=macs[0])  # a second boot of the first MAC: it is recent again
        dhcp_exchange(h.bus, mac=macs[3])
        self.assertEqual([len(h.trail.boots_of(mac)) for mac in macs], [2, 0, 1, 1])
        self.assertEqual(len(h.trail), 4)


class Dhcp6Tests(unittest.TestCase):
    def test_dhcpv6_http_boot_is_one_boot(self):
        """DHCPv6 publishes only its replies: the ADVERTISE starts the boot, the address maps HTTP to it."""
        h = Harness(self)
        url = "http://[fd00::1]/snponly.efi"
        for message in ("advertise", "reply"):
            h.bus.publish("dhcp6", "sent", mac=MAC, peer="fd00::100", message=message, xid=7,
                          address="fd00::100", file=url, selector="uefi-http", arch="16 x64 UEFI HTTP",
                          reason="new address")
        tftp_transfer(h.bus, peer="fd00::100", file="/snponly.efi", service="http")
        h.bus.publish("dhcp6", "sent", mac=MAC, peer="fd00::100", message="advertise", xid=8,
                      address="fd00::100", file="boot.ipxe", selector="ipxe", arch="16 x64 UEFI HTTP",
                      reason="lease")
        [boot] = h.trail.boots_of(MAC)
        self.assertEqual([p for p, _ in boot.phases], [DHCP, FIRST_STAGE, CHAINED_DHCP])
        self.assertEqual(boot.first_stage["protocol"], "http")
        self.assertIn("DHCPv6 ADVERTISE fd00::100", boot.entries()[0].text)

    def test_advertise_without_reply_is_a_named_stall(self):
        h = Harness(self)
        h.bus.publish("dhcp6", "sent", mac=MAC, peer="fd00::100", message="advertise", xid=7,
                      address="fd00::100", file="http://[fd00::1]/a.efi", selector="uefi-http",
                      arch="16 x64 UEFI HTTP", reason="new address")
        h.clock.advance(31)
        self.assertEqual(h.ended[0].summary, "offered fd00::100 (http://[fd00::1]/a.efi), no REQUEST within 30 s")


class QuietTimerTests(unittest.TestCase):
    def test_flood_then_quiet_ends_exactly_the_kept_boots(self):
        h = Harness(self, boots=100)
        for n in range(1000):
            dhcp_exchange(h.bus, mac="02:00:00:00:%02x:%02x" % (n >> 8, n & 255), address="10.1.%d.%d" % (
                n >> 8, n & 255))
            h.clock.advance(0.01)
        h.clock.advance(30)
        self.assertEqual(len(h.ended), 100)
        self.assertEqual({b.outcome for b in h.ended}, {"stalled"})
        self.assertEqual(h.clock.getDelayedCalls(), [])

    def test_each_boot_ends_stall_after_its_own_last_event(self):
        h = Harness(self)
        first, second = MAC, "52:54:00:00:00:02"
        dhcp_exchange(h.bus, mac=first, file="snponly.efi", arch="efi-x64")
        h.clock.advance(10)
        dhcp_exchange(h.bus, mac=second, address="10.0.0.101", file="snponly.efi", arch="efi-x64")
        h.clock.advance(10)
        h.bus.publish("dhcp", "received", mac=first, message="request", xid=1, interface="br0")  # first: +20 s
        h.clock.advance(20.01)   # t = 40: second's deadline (40) passed, first's (50) not
        self.assertEqual([b.mac for b in h.ended], [second])
        h.clock.advance(10)
        self.assertEqual([b.mac for b in h.ended], [second, first])
        self.assertLess(abs(h.ended[1].ended - h.ended[1].last - 30), 0.02)
