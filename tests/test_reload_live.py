"""
Live reload of a real server: twistd in a subprocess, real signals, real
clients, while transfers run.

100 reloads alternate a valid file (a new generation of settings) and an
invalid one (a bad value, or a selector plugin that does not exist), while
20 TFTP transfers (curl) and 4 HTTP downloads run the whole time.  Expected:
no transfer aborted or corrupted, the new settings visible right after each
valid reload, the old ones kept after each invalid one.

Loopback high ports only (L{LoopbackReloadTests}).  The same run with DHCP
under a perfdhcp load of 1,000 exchanges/s in network namespaces
(L{DhcpReloadTests}) runs once the DHCP service implements C{reconfigure}.
"""

import hashlib
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

from twisted.internet import defer, error as internet_error, protocol, reactor
from twisted.internet.task import deferLater
from twisted.trial import unittest

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TWISTD = ["-c", "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"]
CURL = shutil.which("curl")

RELOADS = 100
TFTP_WORKERS = 20
HTTP_WORKERS = 4
TFTP_SIZE = 1024 * 1024
HTTP_SIZE = 8 * 1024 * 1024

#: How each invalid file is made from a valid one, and what its log line names.
INVALID = [
    # a bad value: the whole file is rejected
    (lambda text: re.sub(r"max_windowsize = \d+", "max_windowsize = 0", text),
     "[tftp] max_windowsize: 0 is out of range"),
    # a selector plugin that does not exist: found only by building the chain
    (lambda text: text.replace("[boot]\n", "[boot]\nselectors = host, ipxe, no-such-plugin, arch\n"),
     "[boot] selectors: unknown selector 'no-such-plugin'"),
    # a syntax error
    (lambda text: text + "[http\n", "cannot parse '[http'"),
    # a cross-field mistake
    (lambda text: text + "[subnet:x]\nnetwork = 10.9.0.0/24\npool = 10.9.1.1-10.9.1.9\n",
     "[subnet:x] pool: 10.9.1.1-10.9.1.9 is outside network 10.9.0.0/24"),
]


def free_port(kind=socket.SOCK_STREAM):
    probe = socket.socket(socket.AF_INET, kind)
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    return port


class _Collect(protocol.ProcessProtocol):
    def __init__(self, lines=None):
        self.out = bytearray()
        self.done = defer.Deferred()
        self.lines = lines  # (reactor time, line) of each complete stdout line, if wanted
        self._partial = b""

    def outReceived(self, data):
        self.out += data
        if self.lines is not None:
            data = self._partial + data
            *complete, self._partial = data.split(b"\n")
            now = reactor.seconds()
            self.lines.extend((now, line.decode(errors="replace")) for line in complete)

    errReceived = outReceived

    def processEnded(self, reason):
        code = reason.value.exitCode if isinstance(reason.value, internet_error.ProcessTerminated) else 0
        self.done.callback((code, bytes(self.out)))


def run(argv, env=None, started=None, lines=None):
    """(exit code, output) of a client process, without blocking the reactor;
    C{started} (a list) receives the process transport, for signals, and
    C{lines} (a list) each stdout line with the time it came."""
    collect = _Collect(lines)
    transport = reactor.spawnProcess(collect, argv[0], argv,
                                     env=env or {"PATH": os.environ.get("PATH", "")})
    if started is not None:
        started.append(transport)
    return collect.done


class Server:
    """
    ownsocket under twistd, its config file rewritten between reloads.

    It logs through ownsocket.logfile with a size that never rotates, so
    the reload lines can be followed by offset even at DHCP's log rate.
    """

    def __init__(self, directory):
        self.directory = directory
        self.config = os.path.join(directory, "ownsocket.ini")
        self.log_path = os.path.join(directory, "ownsocket.log")
        self.process = None
        self._offset = 0
        self._reloads = []  # (result, line)

    def write(self, text):
        # written whole and renamed, as an editor or config management does:
        # a reload never reads half a file
        partial = self.config + ".new"
        with open(partial, "w") as handle:
            handle.write(text)
        os.replace(partial, self.config)

    def start(self, popen=subprocess.Popen, timeout=60):
        argv = [sys.executable, *TWISTD, "--nodaemon", "--pidfile=", "--logger",
                "ownsocket.logfile.observer", "ownsocket", "--config", self.config]
        env = dict(os.environ, PYTHONPATH=HERE, OWNSOCKET_LOG=self.log_path,
                   OWNSOCKET_LOG_SIZE="64G", OWNSOCKET_LOG_KEEP="1")
        self.console = open(os.path.join(self.directory, "console.txt"), "w")
        self.process = popen(argv, cwd=self.directory, env=env, stdout=self.console,
                             stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited ({self.process.returncode}):\n{self.output()}")
            if re.search(r"ownsocket \S+ with ", self.log()):
                return
            time.sleep(0.1)
        raise AssertionError(f"server did not start in {timeout}s:\n{self.output()}")

    def log(self):
        try:
            with open(self.log_path, errors="replace") as handle:
                return handle.read()
        except OSError:
            return ""

    def output(self):
        try:
            with open(os.path.join(self.directory, "console.txt"), errors="replace") as handle:
                console = handle.read()
        except OSError:
            console = ""
        return f"--- log\n{self.log()[-6000:]}\n--- console\n{console[-3000:]}"

    def _scan(self):
        try:
            with open(self.log_path, "rb") as handle:
                handle.seek(self._offset)
                data = handle.read()
        except OSError:
            return
        end = data.rfind(b"\n") + 1
        self._offset += end
        for line in data[:end].decode(errors="replace").splitlines():
            if re.search(r"reloaded \S+ \(sha256", line):
                self._reloads.append(("ok", line))
            elif re.search(r"reload of \S+ failed:", line):
                self._reloads.append(("failed", line))

    def reload_results(self):
        """'ok' or 'failed' for each reload the server finished, in order."""
        self._scan()
        return [result for result, _ in self._reloads]

    @defer.inlineCallbacks
    def follow(self, seconds):
        """Read the log as L{reload} does while it waits, for C{seconds},
        without a SIGHUP: the test's own CPU in a sham window."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self._scan()
            yield deferLater(reactor, 0.01, lambda: None)

    @defer.inlineCallbacks
    def reload(self, timeout=30):
        """SIGHUP, then wait for the reload's log line; returns (ok/failed, line)."""
        self._scan()
        before = len(self._reloads)
        os.kill(self.process.pid, signal.SIGHUP)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._scan()
            if len(self._reloads) > before:
                return self._reloads[before]
            if self.process.poll() is not None:
                raise AssertionError(f"server died on SIGHUP:\n{self.output()}")
            yield deferLater(reactor, 0.01, lambda: None)
        raise AssertionError(f"no reload line within {timeout}s:\n{self.output()}")

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        if getattr(self, "console", None):
            self.console.close()


class Transfers:
    """Clients fetching files in a loop until told to stop; every result checked."""

    def __init__(self, testcase, directory):
        self.testcase = testcase
        self.directory = directory
        self.running = True
        self.in_flight = {"tftp": 0, "http": 0}
        self.done = {"tftp": 0, "http": 0}
        self.failures = []
        self.loops = []

    def start(self, kind, workers, url, digest, size, curl_args=()):
        for number in range(workers):
            target = os.path.join(self.directory, f"{kind}-{number}.bin")
            self.loops.append(self._loop(kind, url, target, digest, size, curl_args))

    @defer.inlineCallbacks
    def _loop(self, kind, url, target, digest, size, curl_args):
        while self.running:
            if os.path.exists(target):
                os.remove(target)
            self.in_flight[kind] += 1
            try:
                code, output = yield run([CURL, "-sS", "--max-time", "60", "--noproxy", "*",
                                          *curl_args, "-o", target, url])
            finally:
                self.in_flight[kind] -= 1
            if code != 0:
                self.failures.append(f"{kind} {url}: curl exit {code}: {output[-300:]!r}")
                continue
            with open(target, "rb") as handle:
                data = handle.read()
            if len(data) != size or hashlib.sha256(data).hexdigest() != digest:
                self.failures.append(f"{kind} {url}: got {len(data)} bytes, not the file")
                continue
            self.done[kind] += 1

    def stop(self):
        self.running = False
        return defer.DeferredList(self.loops)


class LoopbackReloadTests(unittest.TestCase):
    """TFTP and HTTP on 127.0.0.1, 100 alternating reloads."""

    timeout = 900

    def setUp(self):
        if CURL is None:
            raise unittest.SkipTest("curl is not installed")
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        self.tftp_port = free_port(socket.SOCK_DGRAM)
        self.http_port = free_port()
        self.tftp_data = os.urandom(TFTP_SIZE)
        self.http_data = os.urandom(HTTP_SIZE)
        shared = os.path.join(self.directory, "shared")
        os.makedirs(shared)
        for name, data in (("first-stage.efi", self.tftp_data), ("kernel", self.http_data)):
            with open(os.path.join(shared, name), "wb") as handle:
                handle.write(data)
        self.generations = RELOADS // 2 + 1
        for generation in range(self.generations):
            root = self.root(generation)
            os.makedirs(root)
            for name in ("first-stage.efi", "kernel"):
                os.link(os.path.join(shared, name), os.path.join(root, name))
            with open(os.path.join(root, "marker.txt"), "w") as handle:
                handle.write(f"generation {generation}\n")
        self.server = Server(self.directory)
        self.addCleanup(self.server.stop)

    def root(self, generation):
        return os.path.join(self.directory, f"root{generation}")

    def render(self, generation):
        return f"""\
# generation {generation}
[dhcp]
enabled = false

[tftp]
port = {self.tftp_port}
addresses = 127.0.0.1
root = {self.root(generation)}
max_sessions = 200
max_sessions_per_client = 64
max_windowsize = {4 + generation % 8}

[http]
enabled = true
port = {self.http_port}
addresses = 127.0.0.1
root = {self.root(generation)}

[boot]
default = gen{generation}.efi

[admin]
enabled = false
"""

    @defer.inlineCallbacks
    def marker(self, kind):
        if kind == "http":
            url = f"http://127.0.0.1:{self.http_port}/marker.txt"
        else:
            url = f"tftp://127.0.0.1:{self.tftp_port}/marker.txt"
        code, output = yield run([CURL, "-sS", "--max-time", "20", "--noproxy", "*", url])
        self.assertEqual(code, 0, output)
        return int(output.split()[-1])

    @defer.inlineCallbacks
    def test_alternating_reloads_during_transfers(self):
        from ownsocket.tftp.service import TFTPService
        tftp_reloads = hasattr(TFTPService, "reconfigure")
        self.server.write(self.render(0))
        self.server.start()
        transfers = Transfers(self, self.directory)
        transfers.start("tftp", TFTP_WORKERS, f"tftp://127.0.0.1:{self.tftp_port}/first-stage.efi",
                        hashlib.sha256(self.tftp_data).hexdigest(), TFTP_SIZE,
                        ("--tftp-blksize", "1468"))
        transfers.start("http", HTTP_WORKERS, f"http://127.0.0.1:{self.http_port}/kernel",
                        hashlib.sha256(self.http_data).hexdigest(), HTTP_SIZE, ("--limit-rate", "20M"))
        busy = []
        try:
            yield deferLater(reactor, 0.5, lambda: None)
            generation = 0
            for number in range(RELOADS):
                valid = number % 2 == 0
                if valid:
                    generation += 1
                    self.server.write(self.render(generation))
                else:
                    mistake, named = INVALID[(number // 2) % len(INVALID)]
                    self.server.write(mistake(self.render(generation)))
                busy.append(dict(transfers.in_flight))
                result, line = yield self.server.reload()
                self.assertEqual(result, "ok" if valid else "failed",
                                 f"reload {number}:\n{self.server.output()}")
                if not valid:
                    self.assertIn(named, line)
                    self.assertIn("the running configuration is kept", line)
                seen = yield self.marker("http")
                self.assertEqual(seen, generation, f"HTTP root after reload {number}")
                if tftp_reloads:
                    seen = yield self.marker("tftp")
                    self.assertEqual(seen, generation, f"TFTP root after reload {number}")
        finally:
            yield transfers.stop()
        self.assertEqual(transfers.failures, [], "\n".join(transfers.failures[:10]))
        self.assertEqual(self.server.reload_results(), ["ok", "failed"] * (RELOADS // 2))
        # transfers really were running through every reload
        self.assertTrue(all(entry["tftp"] > 0 for entry in busy), busy)
        self.assertTrue(all(entry["http"] > 0 for entry in busy), busy)
        self.assertGreater(transfers.done["tftp"], TFTP_WORKERS)
        self.assertGreater(transfers.done["http"], HTTP_WORKERS)
        log = self.server.log()
        self.assertNotRegex(log, r"tftp peer=\S+ file=\S+ result=(?!ok)")
        self.assertEqual(self.server.process.poll(), None)
        # what the run did, for the report (trial -e shows it)
        sys.stderr.write(f"\nlive reload: {RELOADS} reloads; {transfers.done['tftp']} TFTP and "
                         f"{transfers.done['http']} HTTP transfers, 0 failed; in flight at each "
                         f"SIGHUP: TFTP min {min(e['tftp'] for e in busy)}, HTTP min "
                         f"{min(e['http'] for e in busy)}; TFTP root checked: {tftp_reloads}\n")


# ---------------------------------------------------------------------------
# DHCP under load: network namespaces, perfdhcp at 1,000 exchanges/s.

PERF_RATE = 1000
#: Reloads come in bursts with quiet gaps between, so drops near a reload
#: can be compared with drops far from any, in the same run and load.  The
#: quiet gaps run the same probe client as the bursts (see L{step}).
BURSTS = 10
QUIET_SECONDS = 6.0
#: A second of perfdhcp's report counts as "near a reload" when a SIGHUP
#: came within it or up to this long before it (a lost packet is counted
#: as a drop only after perfdhcp's own wait).
NEAR = 2.0
#: The kernel's drop counter of the server's DHCP socket is read at a
#: SIGHUP and this long after the reload's log line (and around as long a
#: window with no SIGHUP): a reactor stall shows there as a full buffer.
WINDOW = 0.3
#: perfdhcp's simulated clients: fewer than the pool's addresses, so no NAK
#: or drop ever comes from an exhausted pool
PERF_CLIENTS = 10000
#: The first seconds, while every simulated client makes its first lease
#: (dearer than the renewals after), count neither as near nor as far.
WARMUP = PERF_CLIENTS / PERF_RATE
#: Near-reload seconds may drop this many percentage points more than quiet
#: ones: chance, on a shared machine.
#:
#: History: this was 10 for a while, because near-reload seconds dropped
#: about 3 points more (4.6 % against 1.4 % on a quiet machine).  Measured
#: cause: not the reload (read+build 1-17 ms and swap under 1 ms on the
#: reactor, logged with each reload; kernel drops in the window around a
#: SIGHUP no higher than in the same window without one) but the probe that
#: checks the boot file after each reload, a Python process start (about
#: 170 ms of CPU) that only near-reload seconds paid for: with the SIGHUPs
#: left out (at 400 exchanges/s on the shared machine), the kernel dropped
#: 91 packets/s on the server's DHCP socket during the probes against 30/s
#: in quiet seconds; with them, 28/s around a SIGHUP against 26/s quiet.  The quiet gaps now
#: run the same probes.  Full garbage collections (60-560 ms) were the
#: other stall; ownsocket.heap keeps them off the lease hint.
DROP_TOLERANCE_POINTS = 1.0


#: Kernel drops on the DHCP socket come in bursts: one stall of the
#: reactor long enough to fill the socket's receive buffer (about 100 ms at
#: this rate) drops dozens of packets at once, and such stalls also come
#: without any reload (automatic garbage collections of 70-105 ms every ~30
#: s, long batches; measured with a stall tracer in the server, 2026-11-30).
#: So what is compared is how many windows saw a burst, not how many packets:
#: if reloads cost nothing, a reload window sees a burst as often as a
#: sham window (same length, same probes, no SIGHUP), and the number of
#: reload windows with a burst is binomial with the shams' rate.  They may
#: exceed its mean by Z_BURSTS standard deviations plus BURST_SLACK windows.
#: The shams' rate is Laplace's (bursts + 1) / (windows + 2): at this load
#: bursts come in 0.4-1 % of windows without a reload (3 of 809 sham
#: windows, 4 of 400 reload windows in four quiet runs), and 200 sham
#: windows often see none of them; a rate of 0 would then allow only the
#: slack, and chance alone would fail about one run in twelve.
#: A reload that stalled the reactor every time would put a burst in most
#: of its windows; one in ten reloads, about 10 of 100: both fail.
#:
#: History: two quiet-machine runs before reloads ran in turns of their own
#: dropped 48 and 34 packets in reload windows and 0 in sham windows; the
#: first run after it, 20 packets in reload windows, 0 in their paired
#: shams and 9 in the other sham windows: one burst each, by their size.
Z_BURSTS = 3.0
BURST_SLACK = 2


def allowed_bursts(reload_windows, sham_windows, sham_bursts):
    """
    How many of C{reload_windows} windows may see a burst of kernel drops
    by chance, when C{sham_bursts} of C{sham_windows} sham windows did.
    """
    if reload_windows <= 0:
        return float(BURST_SLACK)
    rate = (sham_bursts + 1) / (sham_windows + 2)
    mean = reload_windows * rate
    return mean + Z_BURSTS * math.sqrt(reload_windows * rate * (1 - rate)) + BURST_SLACK


def periodic(lines):
    """perfdhcp -t 1 lines -> [(time, sent, drops)] cumulative, DO + RA."""
    points = []
    for when, line in lines:
        match = re.match(r"sent: (\d+)/(\d+); received: \d+/\d+; drops: (\d+)/(\d+)", line)
        if match:
            sent = int(match.group(1)) + int(match.group(2))
            drops = int(match.group(3)) + int(match.group(4))
            points.append((when, sent, drops))
    return points


def split_drops(points, reloads, near=NEAR, since=None):
    """(near sent, near drops, quiet sent, quiet drops) over perfdhcp's
    seconds, those that start before C{since} left out."""
    totals = [0, 0, 0, 0]
    for (start, sent0, drops0), (end, sent1, drops1) in zip(points, points[1:]):
        if since is not None and start < since:
            continue
        close = any(start - near < when <= end for when in reloads)
        base = 0 if close else 2
        totals[base] += sent1 - sent0
        totals[base + 1] += drops1 - drops0
    return tuple(totals)


def socket_drops(pid, ports=(67, 69)):
    """{port: packets the kernel dropped on process C{pid}'s UDP sockets bound
    to that port} (its network namespace's /proc/net/udp: a full receive
    buffer, i.e. a reactor that did not read in time)."""
    wanted = {f"{port:04X}": port for port in ports}
    drops = dict.fromkeys(ports, 0)
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
        with open(f"/proc/{pid}/net/udp") as handle:
            next(handle)
            for line in handle:
                fields = line.split()
                port = wanted.get(fields[1].rsplit(":", 1)[1])
                if port is not None and fields[9] in inodes:
                    drops[port] += int(fields[12])
    except OSError:
        pass
    return drops


def parse_perfdhcp(text):
    """sent/received/drops of perfdhcp's two exchange sections."""
    result = {}
    for name, section in re.findall(r"\*\*\*Statistics for: ([A-Z-]+)\*\*\*\n(.*?)(?=\n\*\*\*|\Z)",
                                    text, re.S):
        values = {}
        for key, pattern in (("sent", r"sent packets: (\d+)"), ("received", r"received packets: (\d+)"),
                             ("drops", r"drops: (\d+)")):
            match = re.search(pattern, section)
            if match:
                values[key] = int(match.group(1))
        result[name] = values
    return result


class DhcpReloadTests(unittest.TestCase):
    """
    The issue's full test: 100 alternating reloads during a perfdhcp load of
    1,000 exchanges/s and 20 concurrent TFTP transfers, DHCP's new boot file
    seen by a scripted client right after each valid reload.

    It needs the DHCP service's C{reconfigure} (another branch of issue 9);
    until then it skips.  OWNSOCKET_RELOAD_DHCP_UNCHANGED=1 runs it anyway
    with the DHCP file check reversed (the old file must stay), which is how
    the harness itself was checked.

    Drops: perfdhcp reports every second; the seconds near a reload may
    drop at most DROP_TOLERANCE_POINTS more than the seconds far from any
    (reloads come in BURSTS with quiet gaps), in the same run.  Each reload
    is followed by a probe (a scripted client that reads the boot file and
    waits up to 30 s for its OFFER, as PXE firmware would); the quiet gaps
    run the same probes without a SIGHUP (and check that the settings in
    force stay), so the probes' own cost falls on both sides alike.  The
    kernel's drop counter of the server's DHCP socket, read around each
    SIGHUP and around the sham window right after it (as long, the same
    probes, no SIGHUP): reload windows must not see a burst of drops more
    often than the sham windows' rate allows by chance (L{allowed_bursts});
    the counts are printed with the reactor time each reload took.
    """

    timeout = 900

    def setUp(self):
        from ownsocket.dhcp.service import DhcpService
        from tests import netns
        self.netns = netns
        self.dhcp_reloads = hasattr(DhcpService, "reconfigure")
        if not self.dhcp_reloads and not os.environ.get("OWNSOCKET_RELOAD_DHCP_UNCHANGED"):
            raise unittest.SkipTest("the DHCP service has no reconfigure() yet (issue 9, DHCP part)")
        ok, why = netns.available()
        if not ok:
            raise unittest.SkipTest(why)
        for tool, package in (("perfdhcp", "kea-admin"), ("curl", "curl"), ("ss", "iproute2")):
            if shutil.which(tool) is None:
                raise unittest.SkipTest(f"{tool} is not installed (Debian package {package})")
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        self.lab = netns.Lab()
        self.addCleanup(self.lab.close)
        self.topology = netns.server_client(self.lab, network="10.95.0", prefix=16,
                                            client_addr="10.95.0.2")
        self.tftp_data = os.urandom(TFTP_SIZE)
        root = os.path.join(self.directory, "root")
        os.makedirs(root)
        with open(os.path.join(root, "first-stage.efi"), "wb") as handle:
            handle.write(self.tftp_data)
        self.server = Server(self.directory)
        self.addCleanup(self.server.stop)

    def render(self, generation):
        return f"""\
# generation {generation}
[dhcp]
interfaces = {self.topology.server_if}
leases = {self.directory}/leases.sqlite

[subnet:load]
network = 10.95.0.0/16
pool = 10.95.1.0-10.95.250.255
router = 10.95.0.1
lease_time = 3600

[tftp]
root = {self.directory}/root
max_sessions = 200
max_sessions_per_client = 64
max_windowsize = {4 + generation % 8}

[boot]
default = gen{generation}.efi

[admin]
enabled = false
"""

    def in_client(self, argv):
        return self.topology.client.argv(argv)

    @defer.inlineCallbacks
    def perfdhcp(self, clients, started, lines):
        """perfdhcp until SIGINT (it prints its report then), a report a second."""
        argv = ["perfdhcp", "-4", "-t", "1", "-l", "10.95.0.2", "-r", str(PERF_RATE),
                "-R", str(clients), "-W", "500000", "-g", "single", "10.95.0.1"]
        code, output = yield run(self.in_client(argv), started=started, lines=lines)
        text = output.decode(errors="replace")
        stats = parse_perfdhcp(text)
        self.assertIn("DISCOVER-OFFER", stats, f"perfdhcp exit {code}: {text[-2000:]}")
        self.assertIn("REQUEST-ACK", stats, f"perfdhcp exit {code}: {text[-2000:]}")
        return stats

    @defer.inlineCallbacks
    def boot_file(self, number):
        mac = f"02:00:00:95:{number // 256:02x}:{number % 256:02x}"
        code, output = yield run(self.in_client([
            sys.executable, os.path.join(HERE, "tests", "dhcp_client.py"), "dora",
            "--iface", self.topology.client_if, "--mac", mac, "--timeout", "30"]))
        self.assertEqual(code, 0, output)
        import json
        [result] = json.loads(output)
        self.assertIsNone(result["nak"], output)
        # the OFFER carries the boot file; under this load the ACK may come
        # after the client's own timeout, which says nothing about reloads
        self.assertIsNotNone(result["offer"], output)
        return result["offer"]["file"]

    @defer.inlineCallbacks
    def test_reloads_under_dhcp_load(self):
        self.server.write(self.render(0))
        self.server.start(popen=lambda argv, **kwargs: self.topology.server.spawn(argv, **kwargs))
        transfers = Transfers(self, self.directory)
        url = "tftp://10.95.0.1/first-stage.efi"
        digest = hashlib.sha256(self.tftp_data).hexdigest()
        for number in range(TFTP_WORKERS):
            target = os.path.join(self.directory, f"tftp-{number}.bin")
            transfers.loops.append(self._tftp_loop(transfers, url, target, digest))
        started, lines, reloads = [], [], []
        # kernel drops on the server's DHCP socket in the window from a
        # SIGHUP to WINDOW after its reload line, and in as long a window
        # with no SIGHUP (same probes around it): packets, seconds, windows,
        # windows with any drop (a burst)
        windows = {"reload": [0, 0.0, 0, 0], "sham": [0, 0.0, 0, 0]}
        pid = self.server.process.pid
        load = None
        generation = 0
        probes = 0
        measured_from = float("inf")

        last_wait = 0.0
        pairs = []  # kernel drops of each reload window and of the sham window right after it

        @defer.inlineCallbacks
        def step(kind, valid=None, number=None):
            """One reload (or, for kind 'sham', the same without SIGHUP), then
            the probe's boot file: the new settings, or the old ones kept.
            Returns the kernel's drops in the window, or None before the
            measurement starts."""
            nonlocal probes, last_wait
            # catch up with the log first: seconds of DHCP lines to scan would
            # be test CPU inside the window (the window then scans only its own)
            self.server.reload_results()
            before, since = socket_drops(pid, (67,))[67], time.monotonic()
            if kind == "reload":
                reloads.append(reactor.seconds())
                result, line = yield self.server.reload()
                last_wait = time.monotonic() - since
                self.assertEqual(result, "ok" if valid else "failed", f"reload {number}: {line}")
            else:
                # as long as the last reload waited for its line, reading the log alike
                yield self.server.follow(last_wait)
            yield deferLater(reactor, WINDOW, lambda: None)
            after, end = socket_drops(pid, (67,))[67], time.monotonic()
            measured = reactor.seconds() >= measured_from
            if measured:
                windows[kind][0] += after - before
                windows[kind][1] += end - since
                windows[kind][2] += 1
                windows[kind][3] += after > before
            expected = generation if self.dhcp_reloads else 0
            seen = yield self.boot_file(probes)
            probes += 1
            self.assertEqual(seen, f"gen{expected}.efi", f"DHCP boot file after {kind} {number}")
            return after - before if measured else None

        try:
            load = self.perfdhcp(PERF_CLIENTS, started, lines)
            measured_from = reactor.seconds() + WARMUP
            while reactor.seconds() < measured_from:
                yield step("sham")
            for number in range(RELOADS):
                if number % (RELOADS // BURSTS) == 0:
                    # the quiet seconds: the same probes at the same pace,
                    # no SIGHUP (the probe is a Python process start: CPU
                    # that near-reload seconds must not be the only ones to pay)
                    until = reactor.seconds() + QUIET_SECONDS
                    while reactor.seconds() < until:
                        yield step("sham", number=number)
                valid = number % 2 == 0
                if valid:
                    generation += 1
                    self.server.write(self.render(generation))
                else:
                    mistake, named = INVALID[(number // 2) % len(INVALID)]
                    self.server.write(mistake(self.render(generation)))
                dropped = yield step("reload", valid, number)
                # its pair: the same window at the same moment of the run, no SIGHUP
                paired = yield step("sham", number=number)
                if dropped is not None and paired is not None:
                    pairs.append((dropped, paired))
            self.assertFalse(load.called, "perfdhcp ended before the last reload")
            started[0].signalProcess("INT")
            stats = yield load
        except BaseException:
            for pid in self.topology.client.pids():  # perfdhcp and curl: ours, in our namespace
                os.kill(pid, signal.SIGKILL)
            yield transfers.stop()
            if load is not None:
                yield load.addErrback(lambda failure: None)
            raise
        yield transfers.stop()
        log = self.server.log()
        naks = len(re.findall(r"-> NAK", log))
        near_sent, near_drops, quiet_sent, quiet_drops = split_drops(periodic(lines), reloads,
                                                                    since=measured_from)
        near_pct = 100.0 * near_drops / near_sent if near_sent else 0.0
        quiet_pct = 100.0 * quiet_drops / quiet_sent if quiet_sent else 0.0
        held = [float(ms) for ms in re.findall(r"reactor turns of at most ([\d.]+) ms", log)]
        swaps = [float(ms) for ms in re.findall(r"swapped in ([\d.]+) ms", log)]
        rate = {kind: packets / seconds if seconds else 0.0
                for kind, (packets, seconds, _, _) in windows.items()}
        reload_drops, sham_drops = sum(r for r, _ in pairs), sum(p for _, p in pairs)
        reload_bursts, sham_bursts = windows["reload"][3], windows["sham"][3]
        allowed = allowed_bursts(windows["reload"][2], windows["sham"][2], sham_bursts)
        sys.stderr.write(
            f"\nDHCP reload under load: perfdhcp {stats}; seconds near a reload: "
            f"{near_drops}/{near_sent} dropped ({near_pct:.3f} %), far from any: "
            f"{quiet_drops}/{quiet_sent} ({quiet_pct:.3f} %); kernel drops on :67 from SIGHUP to "
            f"{WINDOW} s after: {windows['reload'][0]} in {windows['reload'][1]:.1f} s "
            f"({rate['reload']:.1f}/s), same windows without SIGHUP: {windows['sham'][0]} in "
            f"{windows['sham'][1]:.1f} s ({rate['sham']:.1f}/s); valid reloads held the reactor "
            f"for at most {max(held, default=0):.1f} ms per read/build step, swap max "
            f"{max(swaps, default=0):.1f} ms; "
            f"NAKs {naks}; TFTP transfers {transfers.done['tftp']}, failed {len(transfers.failures)}; "
            f"paired windows: {len(pairs)} reloads dropped {reload_drops}, the sham window after each "
            f"{sham_drops}; windows with a burst of drops: {reload_bursts} of {windows['reload'][2]} "
            f"reload windows (allowed {allowed:.1f}), {sham_bursts} of {windows['sham'][2]} sham windows; "
            f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}\n")
        self.assertEqual(transfers.failures, [], "\n".join(transfers.failures[:10]))
        self.assertNotRegex(log, r"tftp peer=\S+ file=\S+ result=(?!ok)")
        self.assertEqual(naks, 0)
        self.assertGreater(stats["REQUEST-ACK"].get("received", 0), 0)
        self.assertGreater(near_sent, 0)
        self.assertGreater(quiet_sent, 0)
        self.assertLessEqual(near_pct, quiet_pct + DROP_TOLERANCE_POINTS)
        self.assertGreaterEqual(len(pairs), RELOADS * 0.9)
        self.assertLessEqual(reload_bursts, allowed,
                             f"the kernel dropped DHCP packets in {reload_bursts} of "
                             f"{windows['reload'][2]} reload windows ({reload_drops} packets), in "
                             f"{sham_bursts} of {windows['sham'][2]} sham windows")

    @defer.inlineCallbacks
    def _tftp_loop(self, transfers, url, target, digest):
        while transfers.running:
            if os.path.exists(target):
                os.remove(target)
            transfers.in_flight["tftp"] += 1
            try:
                # a DHCP storm on a busy machine can slow a lock-step TFTP
                # transfer to a crawl; only the server may end one, so the
                # client's own limit is far away
                code, output = yield run(self.in_client(
                    [CURL, "-sS", "--max-time", "600", "--tftp-blksize", "1468", "-o", target, url]))
            finally:
                transfers.in_flight["tftp"] -= 1
            if code != 0:
                transfers.failures.append(f"tftp: curl exit {code}: {output[-300:]!r}")
                continue
            with open(target, "rb") as handle:
                data = handle.read()
            if hashlib.sha256(data).hexdigest() != digest:
                transfers.failures.append(f"tftp: got {len(data)} bytes, not the file")
                continue
            transfers.done["tftp"] += 1


class DropSplitTests(unittest.TestCase):
    """The arithmetic that attributes perfdhcp's drops to reloads or not."""

    LINES = [(10.0, "sent: 1000/900; received: 900/890; drops: 100/10; rejected: 0/0"),
             (11.0, "sent: 2000/1800; received: 1800/1790; drops: 200/20; rejected: 0/0"),
             (12.0, "sent: 3000/2700; received: 2690/2680; drops: 350/40; rejected: 0/0"),
             (13.0, "Rate: 900 4-way exchanges/second")]

    def test_periodic(self):
        self.assertEqual(periodic(self.LINES), [(10.0, 1900, 110), (11.0, 3800, 220),
                                                (12.0, 5700, 390)])

    def test_allowed_bursts(self):
        # sham windows that never dropped: a rate of 1 in 252, not 0
        rate = 1 / 252
        self.assertAlmostEqual(allowed_bursts(100, 250, 0),
                               100 * rate + Z_BURSTS * math.sqrt(100 * rate * (1 - rate)) + BURST_SLACK)
        # shams with a burst in 5 of 250 windows: 6 in 252
        rate = 6 / 252
        self.assertAlmostEqual(allowed_bursts(100, 250, 5),
                               100 * rate + Z_BURSTS * math.sqrt(100 * rate * (1 - rate)) + BURST_SLACK)
        # a reload that stalls the reactor one time in ten is caught on a quiet machine
        self.assertLess(allowed_bursts(100, 250, 0), 10)
        # and one that always does is caught on a loaded one (shams: a burst in 30 %)
        self.assertLess(allowed_bursts(100, 250, 75), 100)
        self.assertEqual(allowed_bursts(0, 250, 5), BURST_SLACK)

    def test_split(self):
        points = periodic(self.LINES)
        # a SIGHUP at 11.5: the second (11, 12] is near it, (10, 11] is not
        self.assertEqual(split_drops(points, [11.5]), (1900, 170, 1900, 110))
        # one at 8.5 is within NEAR before (10, 11], not before (11, 12]
        self.assertEqual(split_drops(points, [8.5]), (1900, 110, 1900, 170))
        self.assertEqual(split_drops(points, []), (0, 0, 3800, 280))
        # the warm-up seconds count on neither side
        self.assertEqual(split_drops(points, [11.5], since=10.5), (1900, 170, 0, 0))
        self.assertEqual(split_drops(points, [], since=11.0), (0, 0, 1900, 170))
