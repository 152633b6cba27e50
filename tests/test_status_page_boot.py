"""
The admin listener during a real boot: QEMU firmware boots from ownsocket in
a throw-away network namespace (L{tests.lab}) while

  - headless chromium, inside the namespace, renders the status page and the
    test asserts from its DOM that the booting MAC and its stage are shown
    (a screenshot is saved for a person to look at);
  - once the guest printed its marker, the trail of the boot is fetched from
    /api/boots/<mac> and must hold every phase, in order, with timings;
  - C{python -m ownsocket trail} prints that trail; /metrics moved by what
    the boot did.

Needs root, ip netns, qemu-system-x86_64 with the iPXE ROMs and boot files,
OVMF for the UEFI scenario, curl and chromium; skips with the reason otherwise.
Screenshots go to C{$OWNSOCKET_SCREENSHOT_DIR} (default: the temp dir).

    sudo PYTHONPATH=. python3 -m twisted.trial tests.test_status_page_boot
"""

import json
import os
import re
import shutil
import sys
import tempfile
import uuid

from twisted.trial import unittest

from tests import lab, netns
from tests.test_status_page import SCREENSHOT_DIR, chromium, parse

BOOT_TIMEOUT = 150
#: [admin] stall_after of the BIOS scenario, which waits for the boot's summary line: long enough for
#: iPXE to start under a loaded CI machine (5-8 s here), short enough to keep the test lean.
STALL_AFTER = 20
ADMIN_PORT = 9067
GUEST_MAC = lab.DEFAULT_MAC
ADMIN = "http://127.0.0.1:%d" % ADMIN_PORT


def _missing():
    ok, why = netns.available()
    if not ok:
        return why
    for tool in (lab.QEMU, "ss", "curl"):
        if shutil.which(tool) is None:
            return "%s is not installed" % tool
    if chromium() is None:
        return "chromium is not installed (apt-get install chromium)"
    try:
        lab.ipxe_rom("pxe-e1000.rom")
        for name in lab.FIRST_STAGES:
            lab.ipxe_file(name)
    except lab.LabError as e:
        return str(e)
    try:
        from ownsocket.config import AdminConfig  # noqa: F401  (the [admin] section)
    except ImportError:
        return "this checkout has no [admin] configuration section yet"
    return None


SKIP = _missing()


class _Boot:
    """One scenario: namespace, ownsocket with its admin listener, a guest."""

    def __init__(self, test, name):
        self.test = test
        self.dir = tempfile.mkdtemp(prefix="ownsocket-status-%s-" % name)
        os.chmod(self.dir, 0o755)
        self.root = os.path.join(self.dir, "tftpboot")
        self.markers = lab.write_boot_root(self.root, uuid.uuid4().hex[:8])
        self.log = os.path.join(self.dir, "ownsocket.log")
        self.serial = os.path.join(self.dir, "serial.log")
        self.ns = lab.NetNamespace()
        self.ns.__enter__()
        self.failed = True
        test.addCleanup(self.cleanup)
        self.ns.start_router_advertiser(log=os.path.join(self.dir, "ra.log"))

    def cleanup(self):
        self.ns.destroy()
        if not self.failed:
            shutil.rmtree(self.dir, ignore_errors=True)

    def start_ownsocket(self, mode="server", http=True, stall_after=30):
        config = lab.ownsocket_config(os.path.join(self.dir, "ownsocket.ini"), self.dir, self.root,
                                        mode=mode, http=http)
        with open(config, "a") as f:
            f.write("\n[admin]\nenabled = true\naddresses = 127.0.0.1\nport = %d\nstall_after = %s\n"
                    % (ADMIN_PORT, stall_after))
        self.server = self.ns.start(lab.ownsocket_argv(config, self.log), name="ownsocket",
                                    log=os.path.join(self.dir, "ownsocket.out"),
                                    env=lab.ownsocket_env(), cwd=self.dir)
        udp = (67, 69) + ((4011,) if mode == "proxy" else ())
        tcp = ((80,) if http else ()) + (ADMIN_PORT,)
        if not lab.wait_until(lambda: lab.listening(self.ns, udp=udp, tcp=tcp), 30,
                                interval=0.3, watch=[self.server]):
            self.fail("ownsocket did not open its ports")

    def start_address_server(self):
        """dnsmasq handing out addresses only, on a leg of the bridge (for proxyDHCP)."""
        if shutil.which("dnsmasq") is None:
            raise unittest.SkipTest("dnsmasq is not installed (apt-get install dnsmasq)")
        leg = self.ns.add_leg("dh", "10.99.0.2/24")
        log = os.path.join(self.dir, "dnsmasq.log")
        dnsmasq = leg.start(lab.dnsmasq_base_argv(leg.ifname, self.dir), name="dnsmasq", log=log)
        if not lab.wait_until(lambda: lab.listening(self.ns, udp=(67,), netns=leg.name), 20,
                                interval=0.3, watch=[dnsmasq]):
            self.fail("dnsmasq did not start:\n" + lab.read_text(log))
        return dnsmasq

    def wait_for_trail(self, vm, platform, watch=()):
        """Until the marker is on the console and the trail saw the file after the script; the boot."""
        marker = self.markers[platform]

        def done():
            if marker not in lab.read_text(self.serial):
                return False
            boots = self.boots()
            return bool(boots) and boots[0]["files_after_script"] >= 1
        if not lab.wait_until(done, BOOT_TIMEOUT, interval=0.5, watch=[self.server, vm] + list(watch)):
            self.fail("the guest never printed its marker, or the trail never saw the file after the "
                      "script; trail: %s" % json.dumps(self.boots(), indent=1)[-4000:])
        return self.boots()[0]

    def get(self, path):
        """A GET to the admin listener from inside the namespace (it listens on its loopback)."""
        r = self.ns.run(["curl", "-s", "-m", "10", "-w", "\n%{http_code}", ADMIN + path], check=False, timeout=20)
        body, _, code = r.stdout.rpartition("\n")
        return (int(code) if code.isdigit() else 0), body

    def boots(self):
        code, body = self.get("/api/boots/" + GUEST_MAC)
        return json.loads(body)["boots"] if code == 200 else []

    def browse(self, name):
        """Headless chromium in the namespace: (DOM, screenshot path)."""
        profile = tempfile.mkdtemp(prefix="chromium-", dir=self.dir)
        shot = os.path.join(self.dir, "%s.png" % name)
        base = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                "--user-data-dir=%s" % profile, "--window-size=1400,900"]
        dom = self.ns.run(base + ["--dump-dom", ADMIN + "/"], check=False, timeout=120)
        if dom.returncode != 0:
            self.fail("chromium --dump-dom failed: %s" % dom.stderr[-2000:])
        shotrun = self.ns.run(base + ["--screenshot=%s" % shot, ADMIN + "/"], check=False, timeout=120)
        if shotrun.returncode != 0 or not os.path.exists(shot):
            self.fail("chromium --screenshot failed: %s" % shotrun.stderr[-2000:])
        kept = os.path.join(SCREENSHOT_DIR, "ownsocket-status-%s.png" % name)
        shutil.copy(shot, kept)
        return dom.stdout, kept

    def fail(self, message):
        self.test.fail("%s\n--- ownsocket log (tail) ---\n%s\n--- serial ---\n%s" % (
            message, lab.read_text(self.log)[-4000:],
            lab.console_text(lab.read_text(self.serial))[-2000:]))


class StatusPageDuringBootTests(unittest.TestCase):
    if SKIP:
        skip = SKIP
    timeout = BOOT_TIMEOUT + 240

    def test_bios_boot_on_the_status_page_and_in_the_trail(self):
        run = _Boot(self, "bios")
        run.start_ownsocket(stall_after=STALL_AFTER)
        vm = run.ns.start_guest(lab.bios_ipxe(), serial_log=run.serial, log=os.path.join(run.dir, "qemu.log"))

        # 1. While it boots: the page in a real browser shows the MAC and its stage.
        def booting():
            boots = run.boots()
            return boots and boots[0]["outcome"] is None and boots[0]["stage"] != "dhcp"
        if not lab.wait_until(booting, BOOT_TIMEOUT, interval=0.5, watch=[run.server, vm]):
            run.fail("the trail never showed the guest past DHCP")
        dom, screenshot = run.browse("bios-booting")
        rows = {attrs.get("data-mac"): (attrs, cells) for attrs, cells in parse(dom).boots()}
        if GUEST_MAC not in rows:
            run.fail("the status page does not show %s:\n%s" % (GUEST_MAC, dom[-3000:]))
        attrs, cells = rows[GUEST_MAC]
        self.assertEqual(cells["mac"], GUEST_MAC)
        self.assertIn(cells["stage"], ("first-stage", "ipxe-dhcp", "script", "files"))
        self.assertEqual(cells["stage"], attrs["data-stage"])
        self.assertIn(cells["firmware"], ("BIOS",))
        self.assertTrue(os.path.getsize(screenshot) > 5000)
        sys.stderr.write("[status-page] screenshot during the boot (stage %s): %s\n" % (cells["stage"], screenshot))

        # 2. After the marker: the whole trail, in order, with timings.
        boot = run.wait_for_trail(vm, "pcbios")
        self.check_trail(run, boot, "dhcp", "undionly.kpxe", "tftp", "pcbios")

        # 3. The trail command prints it, talking to the running server.
        r = run.ns.run([sys.executable, "-m", "ownsocket", "trail", "--admin", ADMIN, GUEST_MAC], check=False,
                       timeout=30)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("[first-stage]", r.stdout)
        self.assertIn("TFTP undionly.kpxe sent", r.stdout)
        self.assertIn("marker-pcbios.ipxe", r.stdout)

        # 4. The metrics moved by what the boot did.
        code, text = run.get("/metrics")
        self.assertEqual(code, 200)
        def sample(pattern):
            return float(re.search("^" + pattern + r" (\S+)$", text, re.M).group(1))
        discovers = sample(r'ownsocket_dhcp_received_total\{message="discover",service="dhcp"\}')
        self.assertGreaterEqual(discovers, 2)  # the ROM and the chained iPXE
        ok = sample(r'ownsocket_tftp_requests_total\{result="ok"\}')
        self.assertEqual(ok, 3)  # undionly.kpxe, boot.ipxe, marker-pcbios.ipxe
        sent = sample("ownsocket_tftp_sent_bytes_total")
        self.assertEqual(sent, sum(os.path.getsize(os.path.join(run.root, name)) for name in
                                   ("undionly.kpxe", "boot.ipxe", "marker-pcbios.ipxe")))
        # 5. Once nothing happened for stall_after seconds, the boot ends with one summary line.
        pattern = re.compile(r"boot of %s complete after [0-9.]+ s: undionly\.kpxe over TFTP, script boot\.ipxe, "
                             r"1 file\(s\) after it \[dhcp \+0\.0 s, first-stage \+[0-9.]+ s, ipxe-dhcp "
                             r"\+[0-9.]+ s, script \+[0-9.]+ s, files \+[0-9.]+ s\]" % re.escape(GUEST_MAC))
        if not lab.wait_until(lambda: pattern.search(lab.read_text(run.log)), STALL_AFTER + 30, interval=0.5):
            run.fail("no summary line for the boot")
        self.assertEqual(len(re.findall(r"boot of %s " % re.escape(GUEST_MAC), lab.read_text(run.log))), 1)
        self.assertEqual(run.boots()[0]["outcome"], "complete")
        run.ns.stop(vm)
        run.failed = False

    def check_trail(self, run, boot, service, first_stage, protocol, platform, offered=None):
        """Every phase present, in order, with timings, and what each phase did."""
        phases = [p["phase"] for p in boot["phases"]]
        self.assertEqual(phases, ["dhcp", "first-stage", "ipxe-dhcp", "script", "files"], boot)
        starts = [p["since_start"] for p in boot["phases"]]
        self.assertEqual(starts, sorted(starts))
        self.assertTrue(all(p["seconds"] >= 0 for p in boot["phases"]))
        self.assertGreater(starts[-1], 0)
        events = boot["events"]
        self.assertEqual([e["since_start"] for e in events], sorted(e["since_start"] for e in events))
        self.assertTrue(all(e["since_previous"] >= 0 for e in events))
        dhcp = [(e["service"], e["kind"], e["fields"].get("message")) for e in events if e["phase"] == "dhcp"]
        self.assertEqual(dhcp[0], (service, "received", "discover"), dhcp)
        offers = [e for e in events if e["phase"] == "dhcp" and e["kind"] == "sent"]
        self.assertTrue(offers, dhcp)
        self.assertEqual(offers[0]["fields"]["file"], offered or first_stage)
        self.assertTrue(offers[0]["fields"]["selector"])
        self.assertTrue(offers[0]["fields"]["reason"])
        if service == "dhcp":
            self.assertEqual([m for _, k, m in dhcp if k == "sent"][:2], ["offer", "ack"], dhcp)
        first = boot["first_stage"]
        self.assertEqual((first["file"].lstrip("/"), first["protocol"], first["result"]),
                         (first_stage, protocol, "ok"), first)
        self.assertEqual(first["bytes"], os.path.getsize(os.path.join(run.root, first_stage)))
        self.assertIsNotNone(first["seconds"])
        if protocol == "tftp":
            self.assertGreater(first["blksize"], 512)
        chained = [e for e in events if e["phase"] == "ipxe-dhcp" and e["kind"] == "sent"]
        self.assertTrue(chained, "no DHCP reply to the chain-loaded iPXE in the trail")
        self.assertEqual(chained[-1]["fields"]["file"], "boot.ipxe")
        self.assertEqual(chained[-1]["fields"]["selector"], "ipxe")
        self.assertEqual(boot["script"], "boot.ipxe")
        files = [e["fields"]["file"] for e in events if e["phase"] == "files" and e["kind"] == "finished"]
        self.assertEqual(files, ["marker-%s.ipxe" % platform])
        self.assertEqual(boot["mac"], GUEST_MAC)
        sys.stderr.write("[trail] %s: %s\n" % (run.dir, ", ".join(
            "%s +%.2f s" % (p["phase"], p["since_start"]) for p in boot["phases"])))

    def test_uefi_pxe_trail(self):
        """OVMF's PXE client: the size probe and the download of snponly.efi are one first stage."""
        if not self._ovmf():
            raise unittest.SkipTest("OVMF is not installed (apt-get install ovmf)")
        run = _Boot(self, "uefi-pxe")
        run.start_ownsocket()
        vm = run.ns.start_guest(lab.uefi_pxe(), serial_log=run.serial, log=os.path.join(run.dir, "qemu.log"))
        boot = run.wait_for_trail(vm, "efi")
        self.check_trail(run, boot, "dhcp", "snponly.efi", "tftp", "efi")
        self.assertEqual(boot["first_stage"]["windowsize"], 4)
        self.assertEqual(boot["firmware"], "UEFI")
        run.ns.stop(vm)
        run.failed = False

    def test_uefi_http_trail(self):
        """OVMF HTTP boot: the first stage over HTTP, then iPXE over TFTP."""
        if not self._ovmf():
            raise unittest.SkipTest("OVMF is not installed (apt-get install ovmf)")
        run = _Boot(self, "uefi-http")
        run.start_ownsocket(http=True)
        vm = run.ns.start_guest(lab.uefi_http(), serial_log=run.serial, log=os.path.join(run.dir, "qemu.log"))
        boot = run.wait_for_trail(vm, "efi")
        self.check_trail(run, boot, "dhcp", "snponly.efi", "http", "efi",
                         offered="http://%s/snponly.efi" % lab.SERVER_ADDRESS)
        run.ns.stop(vm)
        run.failed = False

    def test_proxydhcp_uefi_pxe_trail(self):
        """proxyDHCP next to dnsmasq: the proxy's offer and the TFTP transfers (mapped to the MAC
        through the ARP table) are one boot."""
        if not self._ovmf():
            raise unittest.SkipTest("OVMF is not installed (apt-get install ovmf)")
        run = _Boot(self, "proxy")
        dnsmasq = run.start_address_server()
        run.start_ownsocket(mode="proxy", http=False)
        vm = run.ns.start_guest(lab.uefi_pxe(), serial_log=run.serial, log=os.path.join(run.dir, "qemu.log"))
        boot = run.wait_for_trail(vm, "efi", watch=[dnsmasq])
        self.check_trail(run, boot, "proxy", "snponly.efi", "tftp", "efi")
        run.ns.stop(vm)
        run.failed = False

    @staticmethod
    def _ovmf():
        try:
            lab.ovmf_firmware()
            return True
        except lab.LabError:
            return False
