"""
/metrics after real client traffic: dhclient, tftp (tftp-hpa) and curl talk
to ownsocket in a throw-away network namespace (L{tests.lab}), and the
counters must have moved by exactly what was sent: the DHCP messages are
counted on the wire with a packet capture, the transfers are known.

Needs root, ip netns, dhclient (isc-dhcp-client), tftp (tftp-hpa), curl and
dumpcap or tcpdump; skips with the reason otherwise.
"""

import os
import re
import shutil
import sys
import tempfile

from twisted.trial import unittest

from tests import lab, netns

ADMIN = "http://127.0.0.1:9067"
SERVER = lab.SERVER_ADDRESS

DISCOVER, OFFER, REQUEST, ACK = 1, 2, 3, 5


def _missing():
    ok, why = netns.available()
    if not ok:
        return why
    for tool, package in (("dhclient", "isc-dhcp-client"), ("tftp", "tftp-hpa"), ("curl", "curl"),
                          ("ss", "iproute2")):
        if shutil.which(tool) is None:
            return "%s is not installed (apt-get install %s)" % (tool, package)
    if shutil.which("dumpcap") is None and shutil.which("tcpdump") is None:
        return "neither dumpcap (tshark) nor tcpdump is installed"
    try:
        from ownsocket.config import AdminConfig  # noqa: F401
    except ImportError:
        return "this checkout has no [admin] configuration section yet"
    return None


SKIP = _missing()


def samples(text):
    """{'name{labels}': value} of an exposition."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


class RealTrafficTests(unittest.TestCase):
    if SKIP:
        skip = SKIP
    timeout = 300

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="ownsocket-metrics-")
        os.chmod(self.dir, 0o755)
        self.root = os.path.join(self.dir, "tftpboot")
        os.makedirs(self.root)
        self.files = {"small.bin": os.urandom(1000), "big.bin": os.urandom(300_000)}
        for name, data in self.files.items():
            with open(os.path.join(self.root, name), "wb") as f:
                f.write(data)
        os.chmod(self.root, 0o755)
        self.ns = lab.NetNamespace()
        self.ns.__enter__()
        self.addCleanup(self.ns.destroy)
        self.addCleanup(shutil.rmtree, self.dir, True)
        config = lab.ownsocket_config(os.path.join(self.dir, "ownsocket.ini"), self.dir, self.root)
        with open(config, "a") as f:
            f.write("\n[admin]\nenabled = true\naddresses = 127.0.0.1\nport = 9067\n")
        self.log = os.path.join(self.dir, "ownsocket.log")
        self.server = self.ns.start(lab.ownsocket_argv(config, self.log), name="ownsocket",
                                    log=os.path.join(self.dir, "ownsocket.out"), env=lab.ownsocket_env(),
                                    cwd=self.dir)
        if not lab.wait_until(lambda: lab.listening(self.ns, udp=(67, 69), tcp=(80, 9067)), 30,
                                interval=0.3, watch=[self.server]):
            self.fail("ownsocket did not start:\n" + lab.read_text(self.log)[-3000:])
        self.leg = self.ns.add_leg("cl", "10.99.0.50/24")

    def scrape(self):
        r = self.ns.run(["curl", "-s", "-m", "10", ADMIN + "/metrics"], timeout=20)
        return samples(r.stdout)

    def client(self, argv, timeout=60):
        """Run a client in the leg's namespace (its own address, 10.99.0.50) and wait for it."""
        return self.leg.run(list(argv), check=False, timeout=timeout)

    def test_counters_move_by_exactly_what_was_sent(self):
        before = self.scrape()
        capture = self.ns.capture("udp port 67 or udp port 68")

        # DHCP: dhclient (in the foreground, with a no-op script) gets one lease; then it is stopped.
        lease_file = os.path.join(self.dir, "dhclient.leases")
        dhclient_log = os.path.join(self.dir, "dhclient.log")
        dhclient = self.leg.start(["dhclient", "-1", "-d", "-v", "-sf", "/bin/true", "-lf", lease_file,
                                   "-pf", os.path.join(self.dir, "dhclient.pid"), "eth0"],
                                  name="dhclient", log=dhclient_log)
        bound = lab.wait_until(lambda: "fixed-address" in lab.read_text(lease_file), 60, interval=0.2,
                                 watch=[dhclient])
        self.ns.stop(dhclient)
        self.assertTrue(bound, lab.read_text(dhclient_log)[-2000:])

        # TFTP: 3 x small, 2 x big, 1 missing file.
        got = os.path.join(self.dir, "got")
        for name in ["small.bin"] * 3 + ["big.bin"] * 2:
            r = self.client(["tftp", SERVER, "-m", "binary", "-c", "get", name, got])
            with open(got, "rb") as f:
                self.assertEqual(f.read(), self.files[name], r.stdout + r.stderr)
            os.unlink(got)
        self.client(["tftp", SERVER, "-m", "binary", "-c", "get", "missing.bin", got])
        # HTTP: 2 x big, 1 x small, 1 missing.
        for name in ["big.bin", "big.bin", "small.bin"]:
            r = self.client(["curl", "-s", "-f", "-o", got, "http://%s/%s" % (SERVER, name)])
            self.assertEqual(r.returncode, 0, r.stderr)
        r = self.client(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "http://%s/missing.bin" % SERVER])
        self.assertEqual(r.stdout, "404")

        capture.stop()
        sent = {kind: 0 for kind in (DISCOVER, OFFER, REQUEST, ACK)}
        for packet in capture.udp():
            if packet.dhcp_type in sent and packet.dport in (67, 68):
                sent[packet.dhcp_type] += 1
        self.assertGreaterEqual(sent[DISCOVER], 1)
        self.assertGreaterEqual(sent[ACK], 1)
        sys.stderr.write("[metrics] on the wire: %d DISCOVER, %d OFFER, %d REQUEST, %d ACK; "
                         "5 TFTP ok + 1 not found, 3 HTTP ok + 1 not found\n"
                         % (sent[DISCOVER], sent[OFFER], sent[REQUEST], sent[ACK]))

        # the last TFTP "finished" is published as the transfer ends: give the server a moment
        def settled():
            after = self.scrape()
            return after.get('ownsocket_tftp_requests_total{result="not_found"}', 0) > \
                before.get('ownsocket_tftp_requests_total{result="not_found"}', 0)
        lab.wait_until(settled, 10, interval=0.2)
        after = self.scrape()

        def moved(key):
            return after.get(key, 0) - before.get(key, 0)
        self.assertEqual(moved('ownsocket_dhcp_received_total{message="discover",service="dhcp"}'), sent[DISCOVER])
        self.assertEqual(moved('ownsocket_dhcp_received_total{message="request",service="dhcp"}'), sent[REQUEST])
        self.assertEqual(moved('ownsocket_dhcp_sent_total{message="offer",service="dhcp"}'), sent[OFFER])
        self.assertEqual(moved('ownsocket_dhcp_sent_total{message="ack",service="dhcp"}'), sent[ACK])
        self.assertEqual(moved("ownsocket_dhcp_lease_commit_seconds_count"), sent[ACK])
        self.assertEqual(moved('ownsocket_tftp_requests_total{result="ok"}'), 5)
        self.assertEqual(moved('ownsocket_tftp_requests_total{result="not_found"}'), 1)
        self.assertEqual(moved("ownsocket_tftp_sent_bytes_total"), 3 * 1000 + 2 * 300_000)
        self.assertEqual(moved("ownsocket_tftp_transfer_duration_seconds_count"), 5)
        self.assertEqual(moved('ownsocket_http_requests_total{result="ok"}'), 3)
        self.assertEqual(moved('ownsocket_http_requests_total{result="not_found"}'), 1)
        self.assertEqual(moved("ownsocket_http_sent_bytes_total"), 2 * 300_000 + 1000)
        self.assertEqual(moved("ownsocket_http_transfer_duration_seconds_count"), 3)
        bound = [v for k, v in after.items() if k.startswith("ownsocket_dhcp_addresses{") and 'state="bound"' in k]
        self.assertEqual(sum(bound), 1)
        self.assertFalse(any(re.search(r"10\.99\.|[0-9a-f]{2}:[0-9a-f]{2}:[0-9a-f]{2}|\.bin", key)
                             for key in after), "a label holds an address, MAC or file name")
