"""Prometheus metrics from events: exact counts, bounded labels, promtool, a DISCOVER storm."""

import os
import shutil
import subprocess
import tempfile

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.trial import unittest

from ownsocket.admin.metrics import Metrics
from ownsocket.admin.service import AdminService
from tests.test_admin_fakes import (MAC, FakeDhcp, FakeRuntime, FakeTransfers, dhcp_exchange,
                                    tftp_transfer)


def series(registry):
    """Every sample line of the exposition: (name, sorted labels) -> value."""
    out = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


class CountingTests(unittest.TestCase):
    def setUp(self):
        self.runtime = FakeRuntime(dhcp=FakeDhcp(), tftp=FakeTransfers(
            [{"peer": "10.0.0.5", "file": "a"}, {"peer": "10.0.0.6", "file": "a", "state": "waiting"}]),
            http=FakeTransfers())
        self.service = AdminService(self.runtime)
        self.metrics = self.service.metrics
        self.bus = self.runtime.events
        self.bus.subscribe(self.metrics)
        self.bus.subscribe(self.service.trail)
        self.value = self.metrics.registry.get_sample_value

    def test_dhcp_exchange_counts_exactly(self):
        dhcp_exchange(self.bus)
        dhcp_exchange(self.bus, mac="52:54:00:00:00:02", address="10.0.0.101", file="snponly.efi",
                      arch="efi-x64")
        self.assertEqual(self.value("ownsocket_dhcp_received_total", {"service": "dhcp", "message": "discover"}), 2)
        self.assertEqual(self.value("ownsocket_dhcp_received_total", {"service": "dhcp", "message": "request"}), 2)
        self.assertEqual(self.value("ownsocket_dhcp_sent_total", {"service": "dhcp", "message": "offer"}), 2)
        self.assertEqual(self.value("ownsocket_dhcp_sent_total", {"service": "dhcp", "message": "ack"}), 2)
        self.assertEqual(self.value("ownsocket_dhcp_sent_total", {"service": "dhcp", "message": "nak"}), 0)
        self.assertEqual(self.value("ownsocket_selector_decisions_total", {"selector": "arch", "arch": "bios"}), 2)
        self.assertEqual(self.value("ownsocket_selector_decisions_total",
                                    {"selector": "arch", "arch": "efi-x64"}), 2)
        self.assertEqual(self.value("ownsocket_dhcp_lease_commit_seconds_count"), 2)
        self.assertAlmostEqual(self.value("ownsocket_dhcp_lease_commit_seconds_sum"), 0.004)
        self.assertEqual(self.value("ownsocket_dhcp_lease_commit_seconds_bucket", {"le": "0.0025"}), 2)
        self.assertEqual(self.value("ownsocket_dhcp_lease_commit_seconds_bucket", {"le": "0.001"}), 0)

    def test_drops_and_unknown_values_collapse_into_other(self):
        bus = self.bus
        bus.publish("dhcp", "dropped", reason="parse")
        bus.publish("dhcp", "dropped", reason="not-for-us")
        bus.publish("dhcp", "dropped", reason="pool-exhausted")
        bus.publish("proxy", "dropped", reason="overload")
        bus.publish("dhcp", "dropped", reason="52:54:00:12:34:56 said hello")
        bus.publish("dhcp", "received", mac=MAC, message="leasequery", xid=1, interface="eth0")
        bus.publish("dhcp", "allocation-failed", mac=MAC, subnet="lab", reason="pool-exhausted")
        self.assertEqual(self.value("ownsocket_dhcp_dropped_total", {"service": "dhcp", "reason": "parse"}), 1)
        self.assertEqual(self.value("ownsocket_dhcp_dropped_total", {"service": "dhcp", "reason": "not_for_us"}), 1)
        self.assertEqual(self.value("ownsocket_dhcp_dropped_total",
                                    {"service": "dhcp", "reason": "pool_exhausted"}), 1)
        self.assertEqual(self.value("ownsocket_dhcp_dropped_total", {"service": "proxy", "reason": "overload"}), 1)
        self.assertEqual(self.value("ownsocket_dhcp_dropped_total", {"service": "dhcp", "reason": "other"}), 1)
        self.assertEqual(self.value("ownsocket_dhcp_received_total", {"service": "dhcp", "message": "other"}), 1)
        self.assertEqual(self.value("ownsocket_dhcp_allocation_failures_total",
                                    {"subnet": "lab", "reason": "pool_exhausted"}), 1)

    def test_transfers_count_results_bytes_retransmissions_and_durations(self):
        bus = self.bus
        bus.publish("tftp", "finished", peer="10.0.0.5", file="a", result="ok", bytes=1000, seconds=0.3,
                    retransmits=3, block=1, blksize=1432, windowsize=4, error=None)
        bus.publish("tftp", "finished", peer="10.0.0.5", file="b", result="not-found", bytes=0, seconds=0.0,
                    retransmits=0, block=0, blksize=512, windowsize=1, error="File not found")
        bus.publish("tftp", "finished", peer="10.0.0.5", file="a", result="size-probe", bytes=0, seconds=0.0,
                    retransmits=0, block=0, blksize=1468, windowsize=4, error=None)
        bus.publish("tftp", "finished", peer="10.0.0.5", file="a", result="timeout", bytes=14320, seconds=7,
                    retransmits=6, block=10, blksize=1432, windowsize=1, error="no ACK")
        bus.publish("http", "finished", peer="10.0.0.5", file="a", result="ok", bytes=5000, seconds=1.5,
                    status=200)
        bus.publish("http", "finished", peer="10.0.0.5", file="/etc/passwd", result="denied", bytes=14,
                    seconds=0.0, status=403)
        for result, n in (("ok", 1), ("not_found", 1), ("size_probe", 1), ("timeout", 1), ("denied", 0)):
            self.assertEqual(self.value("ownsocket_tftp_requests_total", {"result": result}), n, result)
        self.assertEqual(self.value("ownsocket_tftp_sent_bytes_total"), 15320)
        self.assertEqual(self.value("ownsocket_tftp_retransmissions_total"), 9)
        self.assertEqual(self.value("ownsocket_tftp_transfer_duration_seconds_count"), 1)
        self.assertEqual(self.value("ownsocket_tftp_transfer_duration_seconds_bucket", {"le": "0.5"}), 1)
        self.assertEqual(self.value("ownsocket_http_requests_total", {"result": "ok"}), 1)
        self.assertEqual(self.value("ownsocket_http_requests_total", {"result": "denied"}), 1)
        self.assertEqual(self.value("ownsocket_http_sent_bytes_total"), 5000)
        self.assertEqual(self.value("ownsocket_http_transfer_duration_seconds_sum"), 1.5)

    def test_every_address_state_is_a_series_even_at_zero(self):
        self.runtime.dhcp.counts = {("lab", "free"): 5}
        self.assertEqual(self.value("ownsocket_dhcp_addresses", {"subnet": "lab", "state": "declined"}), 0)
        self.assertEqual(self.value("ownsocket_dhcp_addresses", {"subnet": "lab", "state": "free"}), 5)

    def test_state_is_asked_at_scrape_time(self):
        self.assertEqual(self.value("ownsocket_dhcp_addresses", {"subnet": "lab", "state": "bound"}), 7)
        self.runtime.dhcp.counts[("lab", "bound")] = 8
        self.assertEqual(self.value("ownsocket_dhcp_addresses", {"subnet": "lab", "state": "bound"}), 8)
        self.assertEqual(self.value("ownsocket_tftp_transfers_in_flight"), 1)
        self.assertEqual(self.value("ownsocket_http_transfers_in_flight"), 0)
        self.assertEqual(self.value("ownsocket_build_info", {"version": "0.1.0", "python": __import__(
            "platform").python_version(), "implementation": __import__("platform").python_implementation()}), 1)
        self.assertEqual(self.value("ownsocket_config_info", {"hash": "sha256:0123456789abcdef"}), 1)

    def test_services_without_pull_methods_leave_the_gauges_out(self):
        runtime = FakeRuntime(dhcp=object(), tftp=None)
        metrics = Metrics(runtime)
        names = {name for name, _ in series(metrics.registry)}
        self.assertNotIn("ownsocket_tftp_transfers_in_flight", names)
        self.assertNotIn("ownsocket_dhcp_addresses", names)
        self.assertIn("ownsocket_build_info", names)

    def test_dhcpv6_replies_and_drops(self):
        self.bus.publish("dhcp6", "sent", mac=MAC, peer="fd00::5", message="advertise", xid=1, address="fd00::5",
                         file="http://[fd00::1]/a.efi", selector="uefi-http", arch="16 x64 UEFI HTTP", reason="r")
        self.bus.publish("dhcp6", "sent", mac=MAC, peer="fd00::5", message="reply", xid=1, address="fd00::5",
                         file=None, selector=None, arch="16 x64 UEFI HTTP", reason="r")
        self.bus.publish("dhcp6", "dropped", mac=MAC, reason="not-for-us")
        self.assertEqual(self.value("ownsocket_dhcp_sent_total", {"service": "dhcp6", "message": "advertise"}), 1)
        self.assertEqual(self.value("ownsocket_dhcp_sent_total", {"service": "dhcp6", "message": "reply"}), 1)
        self.assertEqual(self.value("ownsocket_dhcp_dropped_total", {"service": "dhcp6", "reason": "not_for_us"}), 1)
        self.assertEqual(self.value("ownsocket_selector_decisions_total",
                                    {"selector": "uefi-http", "arch": "other"}), 1)

    def test_boots_and_reloads(self):
        dhcp_exchange(self.bus, file="snponly.efi", arch="efi-x64")
        self.runtime.reactor.advance(31)
        self.bus.publish("server", "reload", result="ok", error=None, source="SIGHUP")
        self.bus.publish("server", "reload", result="failed", error="bad", source="SIGHUP")
        self.bus.publish("server", "reload", result="failed", error="bad", source="SIGHUP")
        self.assertEqual(self.value("ownsocket_boots_total", {"outcome": "stalled"}), 1)
        self.assertEqual(self.value("ownsocket_boots_total", {"outcome": "complete"}), 0)
        self.assertEqual(self.value("ownsocket_config_reloads_total", {"result": "ok"}), 1)
        self.assertEqual(self.value("ownsocket_config_reloads_total", {"result": "failed"}), 2)

    def test_selector_and_arch_labels_are_capped(self):
        for n in range(100):
            self.bus.publish("dhcp", "sent", mac=MAC, message="offer", xid=n, address="10.0.0.1",
                             file="f", selector="sel%d" % n, arch="arch%d" % n, reason="r")
        decisions = [labels for name, labels in series(self.metrics.registry)
                     if name == "ownsocket_selector_decisions_total"]
        selectors = {dict(labels)["selector"] for labels in decisions}
        self.assertEqual(len(selectors), 33)  # 32 names + other
        self.assertIn("other", selectors)
        self.assertEqual(self.value("ownsocket_selector_decisions_total",
                                    {"selector": "other", "arch": "other"}), 68)

    def test_no_label_ever_holds_a_mac_address_or_file(self):
        dhcp_exchange(self.bus)
        tftp_transfer(self.bus)
        text = generate_latest(self.metrics.registry).decode()
        for value in (MAC, "10.0.0.100", "undionly.kpxe"):
            self.assertNotIn(value, text)


def storm(bus, macs):
    for n in range(macs):
        mac = "02:00:%02x:%02x:%02x:%02x" % (n >> 24, (n >> 16) & 255, (n >> 8) & 255, n & 255)
        bus.publish("dhcp", "received", mac=mac, message="discover", xid=n, interface="br0")
        bus.publish("dhcp", "sent", mac=mac, message="offer", xid=n,
                    address="10.%d.%d.%d" % ((n >> 16) & 255, (n >> 8) & 255, n & 255),
                    file="undionly.kpxe", selector="arch", arch="bios", reason="arch.0")


class StormTests(unittest.TestCase):
    #: Samples in the exposition (counters' _created included) with one
    #: subnet, both transfer services and one (selector, arch) pair seen:
    #: 222 fixed + 4 per subnet + 2 per (selector, arch) pair.  The README
    #: states it.
    SERIES = 228

    def test_5000_mac_discover_storm_leaves_a_bounded_number_of_series(self):
        runtime = FakeRuntime(dhcp=FakeDhcp(), tftp=FakeTransfers(), http=FakeTransfers())
        service = AdminService(runtime)
        runtime.events.subscribe(service.metrics)
        runtime.events.subscribe(service.trail)
        storm(runtime.events, 10)
        after_ten = len(series(service.metrics.registry))
        storm(runtime.events, 5000)
        after_storm = series(service.metrics.registry)
        self.assertEqual(len(after_storm), after_ten)
        self.assertEqual(len(after_storm), self.SERIES)
        self.assertEqual(after_storm[("ownsocket_dhcp_received_total",
                                      (("message", "discover"), ("service", "dhcp")))], 5010)
        self.assertEqual(len(service.trail), 1000)


class PromtoolTests(unittest.TestCase):
    def test_exposition_passes_promtool(self):
        promtool = shutil.which("promtool")
        if promtool is None:
            raise unittest.SkipTest("promtool is not installed (apt-get install prometheus)")
        runtime = FakeRuntime(dhcp=FakeDhcp(), tftp=FakeTransfers(), http=FakeTransfers())
        service = AdminService(runtime)
        runtime.events.subscribe(service.metrics)
        runtime.events.subscribe(service.trail)
        dhcp_exchange(runtime.events)
        tftp_transfer(runtime.events)
        runtime.events.publish("server", "reload", result="ok", error=None, source="SIGHUP")
        text = generate_latest(service.metrics.registry)
        with tempfile.NamedTemporaryFile(suffix=".prom") as handle:
            handle.write(text)
            handle.flush()
            with open(handle.name, "rb") as stdin:
                result = subprocess.run([promtool, "check", "metrics"], stdin=stdin, capture_output=True,
                                        timeout=60)
        self.assertEqual(result.returncode, 0, (result.stdout + result.stderr).decode(errors="replace"))
        self.assertEqual(os.path.basename(promtool), "promtool")
