"""
ownsocket runs under PyPy: the whole server (twistd, SQLite leases, the
admin listener) in a PyPy process answers real DHCP exchanges.

PyPy is a supported way to run ownsocket (README, "Running under PyPy"), and
it broke twice without anyone noticing: C{socket.if_nameindex} is missing
there, and PyPy's sqlite3 kept a statement open after a PRAGMA whose result
was not read, so every COMMIT failed and the server answered no REQUEST.
Both only show up in a real process, hence this test.

The interpreter is C{$OWNSOCKET_PYPY}, else the virtual environment CI
builds (.ci/setup.d/60-pypy.sh), else C{pypy3} on PATH; it must have
ownsocket's dependencies installed, or the test skips and says so.
"""

import os
import shutil
import subprocess

from twisted.trial import unittest

from tests import netns
from tests.test_dhcp_integration import LAN, SERVER_KIND, NamespaceTestCase, ServerProcess, scripted

CI_VENV = "/opt/ownsocket/pypy-venv/bin/python"
REQUIRED = "import twisted, zope.interface, dhcppython, prometheus_client"


def find_pypy():
    """(interpreter, None) or (None, why there is none usable)."""
    candidates = [os.environ.get("OWNSOCKET_PYPY"), CI_VENV, shutil.which("pypy3")]
    tried = []
    for python in filter(None, candidates):
        if not os.path.exists(python):
            continue
        try:
            done = subprocess.run([python, "-c", "import sys; print(sys.implementation.name); " + REQUIRED],
                                  capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired) as error:
            tried.append(f"{python}: {error}")
            continue
        if done.returncode == 0 and done.stdout.split()[:1] == ["pypy"]:
            return python, None
        last = (done.stderr.strip().splitlines() or [done.stdout.strip()])[-1]
        tried.append(f"{python}: {last}")
    if not tried:
        return None, "no PyPy found (set OWNSOCKET_PYPY, or install Debian pypy3 and run .ci/setup.d/60-pypy.sh)"
    return None, "no PyPy with ownsocket's dependencies: " + "; ".join(tried)


class PypyServer(ServerProcess):
    python = None

    def argv(self):
        argv = super().argv()
        return [self.python] + argv[1:]


class PypyDhcpTests(NamespaceTestCase):
    timeout = 300  # PyPy starts slowly on a loaded machine

    def setUp(self):
        if SERVER_KIND != "ownsocket":
            raise unittest.SkipTest("runs ownsocket itself, not the reference server")
        self.python, reason = find_pypy()
        if self.python is None:
            raise unittest.SkipTest(reason)
        super().setUp()

    def test_pypy_server_acks_and_keeps_leases(self):
        """
        Two clients each get an ACK (the lease committed to SQLite first), and
        one of them asking again gets the same address back from the store.
        """
        topology = netns.server_client(self.lab)
        server = PypyServer(topology.server, self.directory, ["srv0"], [LAN])
        server.python = self.python
        self.addCleanup(server.stop)
        server.start(timeout=90)
        self.servers = [server]
        exe = os.path.realpath(f"/proc/{server.process.pid}/exe")
        self.assertIn("pypy", os.path.basename(exe), f"the server runs {exe}, not PyPy")

        first = {}
        for mac in ("02:00:00:77:01:01", "02:00:00:77:01:02"):
            result = scripted(topology.client, "dora", "--iface", topology.client_if, "--mac", mac,
                              "--timeout", "20", timeout=60)[0]
            if result["ack"] is None:
                self.fail_with_log(f"no ACK under PyPy for {mac}: {result}")
            self.assertWellFormed(result["ack"], "ACK")
            self.assertTrue(LAN.in_pool(result["ack"]["yiaddr"]), result["ack"])
            first[mac] = result["ack"]["yiaddr"]
        self.assertEqual(len(set(first.values())), 2, first)

        again = scripted(topology.client, "dora", "--iface", topology.client_if,
                         "--mac", "02:00:00:77:01:01", "--timeout", "20", timeout=60)[0]
        if again["ack"] is None:
            self.fail_with_log(f"no ACK on the second exchange: {again}")
        self.assertEqual(again["ack"]["yiaddr"], first["02:00:00:77:01:01"])
        self.assertNotIn("Traceback", server.log())
