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
    def __init__(self):
        self.out = bytearray()
        self.done = defer.Deferred()

    def outReceived(self, data):
        self.out += data

    errReceived = outReceived

    def processEnded(self, reason):
        code = reason.value.exitCode if isinstance(reason.value, internet_error.ProcessTerminated) else 0
        self.done.callback((code, bytes(self.out)))


def run(argv, env=None):
    """(exit code, output) of a client process, without blocking the reactor."""
    collect = _Collect()
    reactor.spawnProcess(collect, argv[0], argv, env=env or {"PATH": os.environ.get("PATH", "")})
    return collect.done


class Server:
    """ownsocket under twistd, its config file rewritten between reloads."""

    def __init__(self, directory, render):
        self.directory = directory
        self.render = render
        self.config = os.path.join(directory, "ownsocket.ini")
        self.log_path = os.path.join(directory, "ownsocket.log")
        self.process = None

    def write(self, text):
        # written whole and renamed, as an editor or config management does:
        # a reload never reads half a file
        partial = self.config + ".new"
        with open(partial, "w") as handle:
            handle.write(text)
        os.replace(partial, self.config)

    def start(self, argv_prefix=(), popen=subprocess.Popen, timeout=60):
        argv = [*argv_prefix, sys.executable, *TWISTD, "--nodaemon", "--pidfile=",
                "--logfile", self.log_path, "ownsocket", "--config", self.config]
        env = dict(os.environ, PYTHONPATH=HERE)
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

    def reload_results(self):
        """'ok' or 'failed' for each reload the server finished, in order."""
        return ["ok" if match.group(1) else "failed"
                for match in re.finditer(r"(reloaded \S+ \(sha256)|reload of \S+ failed:", self.log())]

    @defer.inlineCallbacks
    def reload(self, timeout=20):
        """SIGHUP, then wait for the reload's log line; returns ok/failed."""
        before = len(self.reload_results())
        os.kill(self.process.pid, signal.SIGHUP)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            results = self.reload_results()
            if len(results) > before:
                return results[before]
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
        self.server = Server(self.directory, self.render)
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
                result = yield self.server.reload()
                self.assertEqual(result, "ok" if valid else "failed",
                                 f"reload {number}:\n{self.server.output()}")
                if not valid:
                    last = [line for line in self.server.log().splitlines()
                            if "reload of" in line][-1]
                    self.assertIn(named, last)
                    self.assertIn("the running configuration is kept", last)
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
