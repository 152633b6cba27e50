"""
The status page: what it shows, that client text is escaped, and that a
real browser (headless Debian chromium) renders it.
"""

import os
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser

from twisted.internet import reactor, threads
from twisted.internet.task import Clock
from twisted.trial import unittest

from ownsocket.admin import make_admin_service
from ownsocket.admin.page import render_status
from ownsocket.admin.service import AdminService
from tests.test_admin_fakes import MAC, FakeDhcp, FakeRuntime, FakeTransfers, dhcp_exchange, tftp_transfer

HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)>'


class Rows(HTMLParser):
    """Collects the page's table rows: (row attributes, {cell class: text}), and every tag seen."""

    def __init__(self):
        super().__init__()
        self.rows = []
        self.tags = []
        self._row = None
        self._cell = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append(tag)
        if tag == "tr":
            self._row = (attrs, {})
            self.rows.append(self._row)
        elif tag == "td" and self._row is not None:
            self._cell = (attrs.get("class") or "").split(" ")[0]
            self._row[1].setdefault(self._cell, "")

    def handle_endtag(self, tag):
        if tag == "td":
            self._cell = None

    def handle_data(self, data):
        if self._row is not None and self._cell:
            self._row[1][self._cell] += data

    def boots(self):
        return [(attrs, cells) for attrs, cells in self.rows if attrs.get("class") == "boot"]


def parse(html):
    rows = Rows()
    rows.feed(html)
    return rows


class PageContentTests(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.runtime = FakeRuntime(reactor=self.clock, dhcp=FakeDhcp(), tftp=FakeTransfers(
            [{"peer": "10.0.0.100", "file": "snponly.efi", "bytes": 300000, "block": 210, "blksize": 1432,
              "windowsize": 4, "started": self.clock.seconds() - 2}]))
        self.runtime.started_at = self.clock.seconds() - 90
        self.service = AdminService(self.runtime)
        self.runtime.events.subscribe(self.service.trail)
        self.trail = self.service.trail

    def page(self):
        return render_status(self.runtime, self.trail).decode("utf-8")

    def test_booting_and_recent_machines_pools_transfers_config_and_uptime(self):
        bus = self.runtime.events
        dhcp_exchange(bus, file="snponly.efi", arch="efi-x64")
        bus.publish("tftp", "started", peer="10.0.0.100", file="snponly.efi", blksize=1432, windowsize=4,
                    size=1000000)
        dhcp_exchange(bus, mac="52:54:00:00:00:02", address="10.0.0.101", file="undionly.kpxe", arch="bios")
        self.clock.advance(31)
        html = self.page()
        rows = parse(html)
        boots = rows.boots()
        self.assertEqual([(a["data-mac"], a["data-stage"], a["data-outcome"]) for a, _ in boots],
                         [(MAC, "first-stage", "booting"), ("52:54:00:00:00:02", "dhcp", "stalled")])
        booting = boots[0][1]
        self.assertEqual(booting["firmware"], "UEFI")
        self.assertEqual(booting["arch"], "efi-x64")
        self.assertEqual(booting["file"], "snponly.efi")
        self.assertEqual(booting["elapsed"], "31.0 s")
        self.assertEqual(boots[1][1]["detail"], "offered undionly.kpxe, no TFTP request within 30 s")
        pool = [cells for attrs, cells in rows.rows if attrs.get("class") == "pool"]
        self.assertEqual(pool[0]["subnet"], "lab")
        self.assertEqual(pool[0]["used"], "10 %")
        self.assertIn('<td class="free num">90</td>', html)
        self.assertIn('<td class="bound num">7</td>', html)
        transfers = [cells for attrs, cells in rows.rows if attrs.get("class") == "transfer"]
        self.assertEqual(transfers[0]["mac"], MAC)
        self.assertEqual(transfers[0]["file"], "snponly.efi")
        self.assertIn("/etc/ownsocket/site.ini", html)
        self.assertIn("sha256:0123456789abcdef", html)
        self.assertIn("2 min 1 s", html)  # uptime: 90 s + 31 s
        self.assertIn('<meta http-equiv="refresh" content="2"', html)

    def test_missing_pull_methods_show_n_a(self):
        self.runtime.dhcp = object()
        self.runtime.tftp = object()
        html = self.page()
        self.assertIn("n/a (the DHCP service is off or cannot say)", html)
        self.assertIn("n/a for TFTP (the service cannot say)", html)

    def test_hostile_hostname_and_file_name_are_escaped(self):
        bus = self.runtime.events
        bus.publish("dhcp", "received", mac=MAC, message="discover", xid=1, interface="br0", hostname=HOSTILE)
        bus.publish("dhcp", "sent", mac=MAC, message="ack", xid=1, address="10.0.0.100", file=HOSTILE,
                    selector="host", arch="bios", reason=HOSTILE)
        tftp_transfer(bus, file=HOSTILE, result="not-found")
        self.runtime.tftp = FakeTransfers([{"peer": "10.0.0.100", "file": HOSTILE, "bytes": 1, "block": 1,
                                            "blksize": 512, "windowsize": 1, "started": 0}])
        html = self.page()
        rows = parse(html)
        self.assertNotIn("script", rows.tags)
        self.assertNotIn("img", rows.tags)
        self.assertNotIn("<script>", html)
        self.assertIn("&lt;script&gt;alert(\"x\")&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;", html)
        [(attrs, cells)] = rows.boots()
        self.assertEqual(cells["hostname"], HOSTILE)
        self.assertEqual(cells["file"], HOSTILE)


def chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def run_chromium(url, *extra, timeout=90):
    """Headless chromium on a loopback URL, with its own throw-away profile."""
    profile = tempfile.mkdtemp(prefix="ownsocket-chromium-")
    try:
        argv = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                "--user-data-dir=%s" % profile, "--window-size=1400,900"] + list(extra) + [url]
        return subprocess.run(argv, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def browse(url, screenshot):
    """(DOM as text, screenshot path): two chromium runs, in a thread so the reactor keeps serving."""
    dom = run_chromium(url, "--dump-dom")
    if dom.returncode != 0:
        raise AssertionError("chromium --dump-dom failed (%d): %s" % (dom.returncode, dom.stderr[-2000:]))
    shot = run_chromium(url, "--screenshot=%s" % screenshot)
    if shot.returncode != 0 or not os.path.exists(screenshot):
        raise AssertionError("chromium --screenshot failed (%d): %s" % (shot.returncode, shot.stderr[-2000:]))
    return dom.stdout.decode("utf-8", "replace"), screenshot


#: Where the browser tests leave their screenshots (kept for a person to look at).
SCREENSHOT_DIR = os.environ.get("OWNSOCKET_SCREENSHOT_DIR", tempfile.gettempdir())


class BrowserTests(unittest.TestCase):
    """The page as headless chromium renders it, from synthetic events."""

    if chromium() is None:
        skip = "chromium is not installed (apt-get install chromium)"
    timeout = 240

    def test_booting_machine_and_its_stage_are_shown(self):
        runtime = FakeRuntime(reactor=reactor, dhcp=FakeDhcp(), tftp=FakeTransfers(), http=FakeTransfers())
        service = make_admin_service(runtime)
        service.privilegedStartService()
        service.startService()
        self.addCleanup(service.stopService)
        bus = runtime.events
        dhcp_exchange(bus, file="snponly.efi", arch="efi-x64")
        tftp_transfer(bus, file="snponly.efi")
        dhcp_exchange(bus, file="boot.ipxe", selector="ipxe", arch="efi-x64")
        bus.publish("tftp", "started", peer="10.0.0.100", file="boot.ipxe", blksize=1432, windowsize=4, size=99)
        dhcp_exchange(bus, mac="52:54:00:00:00:02", address="10.0.0.101", file=HOSTILE, arch="bios")
        host, port = service.listening_addresses()[0]
        screenshot = os.path.join(SCREENSHOT_DIR, "ownsocket-status-synthetic.png")

        def check(result):
            dom, path = result
            rows = parse(dom)
            boots = {attrs["data-mac"]: cells for attrs, cells in rows.boots()}
            self.assertIn(MAC, boots, dom[-3000:])
            self.assertEqual(boots[MAC]["mac"], MAC)
            self.assertEqual(boots[MAC]["stage"], "script")
            self.assertEqual(boots[MAC]["outcome"], "booting")
            self.assertEqual(boots["52:54:00:00:00:02"]["file"], HOSTILE)
            self.assertNotIn("img", rows.tags)
            self.assertGreater(os.path.getsize(path), 5000)
        return threads.deferToThread(browse, "http://%s:%d/" % (host, port), screenshot).addCallback(check)
