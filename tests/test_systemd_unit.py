"""
conf/ownsocket.service: systemd accepts it, and what it grants is enough.

systemd-analyze verify checks the syntax and every directive.  Nothing here
can start systemd itself (CI runs in a container), so the part that could
break at run time is checked directly: ownsocket started as an unprivileged
user holding only the unit's capabilities, with no-new-privileges, inside a
network namespace the test creates, binds DHCP (SO_BINDTODEVICE), TFTP and
HTTP on their real ports and reloads on SIGHUP, as `systemctl reload` does.
"""

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from twisted.trial import unittest

from tests import netns

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UNIT = os.path.join(HERE, "conf", "ownsocket.service")
TWISTD = ["-c", "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"]


def read_unit(path=UNIT):
    """section -> key -> [values] (systemd allows a key more than once)."""
    unit, section = {}, None
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            line = line.strip()
            if not line or line.startswith(("#", ";")):
                continue
            if line.startswith("["):
                section = unit.setdefault(line.strip("[]"), {})
                continue
            key, _, value = line.partition("=")
            section.setdefault(key.strip(), []).append(value.strip())
    return unit


class UnitContentTests(unittest.TestCase):
    """What the issue asks of the unit, so an edit cannot drop it unnoticed."""

    def setUp(self):
        self.service = read_unit()["Service"]

    def one(self, key):
        [value] = self.service[key]
        return value

    def test_runs_the_installed_server_in_the_foreground_to_the_journal(self):
        start = self.one("ExecStart").split()
        self.assertEqual(start[0], "/opt/ownsocket/venv/bin/twistd")
        self.assertIn("--nodaemon", start)
        self.assertIn("--logfile=-", start)
        self.assertEqual(start[start.index("ownsocket") + 1:],
                         ["--config", "/etc/ownsocket/ownsocket.ini"])

    def test_plugin_caches_refreshed_with_rights_to_write(self):
        self.assertEqual(self.one("ExecStartPre"),
                         "+/opt/ownsocket/venv/bin/python -m ownsocket.plugincache")

    def test_reload_restart_state(self):
        self.assertEqual(self.one("ExecReload"), "/bin/kill -HUP $MAINPID")
        self.assertEqual(self.one("Restart"), "on-failure")
        self.assertEqual(self.one("StateDirectory"), "ownsocket")
        self.assertEqual(self.one("WorkingDirectory"), "/var/lib/ownsocket")

    def test_dedicated_user_and_only_the_two_capabilities(self):
        self.assertEqual(self.one("DynamicUser"), "yes")
        self.assertNotIn("User", self.service)
        wanted = {"CAP_NET_BIND_SERVICE", "CAP_NET_RAW"}
        self.assertEqual(set(self.one("AmbientCapabilities").split()), wanted)
        self.assertEqual(set(self.one("CapabilityBoundingSet").split()), wanted)
        self.assertEqual(self.one("NoNewPrivileges"), "yes")

    def test_hardening(self):
        for key, value in [("ProtectSystem", "strict"), ("ProtectHome", "yes"),
                           ("PrivateTmp", "yes"), ("PrivateDevices", "yes")]:
            self.assertEqual(self.one(key), value, key)
        families = set(self.one("RestrictAddressFamilies").split())
        self.assertIn("AF_INET", families)
        self.assertIn("AF_NETLINK", families)  # socket.if_nameindex() at start-up
        self.assertNotIn("AF_PACKET", families)


class VerifyTests(unittest.TestCase):

    def test_systemd_analyze_verify(self):
        analyze = shutil.which("systemd-analyze")
        if analyze is None:
            raise unittest.SkipTest("systemd-analyze is not installed (Debian package systemd)")
        # verify also checks that ExecStart exists; before the README's
        # install it does not, so point it at this interpreter's twistd
        # (or any executable) in a copy.
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory)
        copy = os.path.join(directory, "ownsocket.service")
        with open(UNIT, encoding="utf-8") as handle:
            text = handle.read()
        for program in ("twistd", "python"):
            if not os.access(f"/opt/ownsocket/venv/bin/{program}", os.X_OK):
                text = text.replace(f"/opt/ownsocket/venv/bin/{program}", sys.executable)
        with open(copy, "w", encoding="utf-8") as handle:
            handle.write(text)
        done = subprocess.run([analyze, "verify", copy], capture_output=True, text=True, timeout=120)
        output = (done.stdout + done.stderr).strip()
        self.assertEqual(done.returncode, 0, output)
        # unknown or misspelt directives are only warnings: fail on any
        self.assertEqual(output, "", output)

    def test_verify_can_fail(self):
        """The check above is not vacuous: a typo is reported."""
        analyze = shutil.which("systemd-analyze")
        if analyze is None:
            raise unittest.SkipTest("systemd-analyze is not installed (Debian package systemd)")
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory)
        copy = os.path.join(directory, "typo.service")
        with open(copy, "w") as handle:
            handle.write(f"[Service]\nExecStart={sys.executable}\nAmbientCapabilites=CAP_NET_RAW\n")
        done = subprocess.run([analyze, "verify", copy], capture_output=True, text=True, timeout=120)
        self.assertIn("AmbientCapabilites", done.stdout + done.stderr)


def _capability_names(unit):
    caps = unit["Service"]["AmbientCapabilities"][0].split()
    return ",".join("+" + cap.lower().removeprefix("cap_") for cap in caps)


def _setpriv(caps, uid=65534):
    return ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
            f"--inh-caps=-all,{caps}" if caps else "--inh-caps=-all",
            f"--ambient-caps=-all,{caps}" if caps else "--ambient-caps=-all",
            f"--bounding-set=-all,{caps}" if caps else "--bounding-set=-all",
            "--no-new-privs"]


class UnprivilegedRunTests(unittest.TestCase):
    """The unit's capabilities, as another user, on the real ports."""

    def setUp(self):
        ok, why = netns.available()
        if not ok:
            raise unittest.SkipTest(why)
        if shutil.which("setpriv") is None:
            raise unittest.SkipTest("setpriv (util-linux) is not installed")
        probe = subprocess.run(_setpriv("") + [sys.executable, "-c", "import twisted.scripts.twistd, ownsocket.tap"],
                               capture_output=True, text=True, timeout=60,
                               env=dict(os.environ, PYTHONPATH=HERE), cwd="/")
        if probe.returncode != 0:
            raise unittest.SkipTest(
                f"{sys.executable} with this checkout cannot be run by user nobody "
                f"(run the tests from the README's virtual environment): {probe.stderr.strip()[-200:]}")
        self.dir = tempfile.mkdtemp(prefix="ownsocket-unit-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        os.chmod(self.dir, 0o777)
        self.root = os.path.join(self.dir, "tftp")
        os.makedirs(self.root)
        with open(os.path.join(self.root, "undionly.kpxe"), "wb") as handle:
            handle.write(b"x" * 1000)
        os.chmod(self.root, 0o755)
        self.lab = netns.Lab()
        self.addCleanup(self.lab.close)
        self.topology = netns.server_client(self.lab, network="10.93.0")

    def write_config(self, default):
        path = os.path.join(self.dir, "ownsocket.ini")
        with open(path, "w") as handle:
            handle.write(f"""
[dhcp]
interfaces = {self.topology.server_if}
leases = {self.dir}/leases.sqlite
[subnet:lab]
network = 10.93.0.0/24
pool = 10.93.0.100-10.93.0.110
[tftp]
root = {self.root}
[http]
enabled = true
[boot]
default = {default}
[admin]
enabled = false
""")
        os.chmod(path, 0o644)
        return path

    def start(self, caps):
        config = self.write_config("first.efi")
        log = os.path.join(self.dir, "twistd.log")
        argv = _setpriv(caps) + [sys.executable, *TWISTD, "--nodaemon", "--pidfile=",
                                 f"--logfile={log}", "ownsocket", "--config", config]
        env = dict(os.environ, PYTHONPATH=HERE)
        process = self.topology.server.spawn(argv, cwd=self.dir, env=env,
                                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        return process, config, log

    def wait_for(self, log, pattern, process, timeout=60):
        deadline = time.monotonic() + timeout
        text = ""
        while time.monotonic() < deadline:
            if os.path.exists(log):
                with open(log, errors="replace") as handle:
                    text = handle.read()
                if re.search(pattern, text):
                    return text
            if process.poll() is not None:
                break
            time.sleep(0.1)
        output = process.stdout.read().decode(errors="replace") if process.poll() is not None else ""
        self.fail(f"no {pattern!r} in the log (exit {process.poll()}):\n{text[-3000:]}\n{output[-2000:]}")

    def test_unit_capabilities_are_enough(self):
        process, config, log = self.start(_capability_names(read_unit()))
        text = self.wait_for(log, r"ownsocket .* with ", process)
        self.assertIn("DHCP listening on srv0 (10.93.0.1) port 67", text)
        listening = self.topology.server.run(["ss", "-Hlntup"]).stdout
        for port in ("0.0.0.0%srv0:67", "0.0.0.0:69", "0.0.0.0:80"):
            self.assertIn(f" {port} ", listening)
        with open(f"/proc/{process.pid}/status") as handle:
            status = handle.read()
        self.assertRegex(status, r"Uid:\s+65534\s")
        self.assertRegex(status, r"NoNewPrivs:\s+1")
        self.assertRegex(status, r"CapEff:\s+0000000000002400")  # NET_BIND_SERVICE | NET_RAW
        # systemctl reload: kill -HUP $MAINPID, as the unprivileged user
        with open(config, "w") as handle:
            handle.write(open(config).read().replace("first.efi", "second.efi"))
        os.kill(process.pid, signal.SIGHUP)
        self.wait_for(log, r"reloaded .*ownsocket\.ini", process)
        self.assertIsNone(process.poll())
        netns.stop(process)

    def test_without_capabilities_start_up_fails_in_one_line(self):
        process, config, log = self.start("")
        code = process.wait(60)
        output = process.stdout.read().decode(errors="replace")
        self.assertNotEqual(code, 0)
        text = open(log, errors="replace").read() if os.path.exists(log) else ""
        self.assertIn("permission denied", output + text)
        self.assertNotIn("Traceback", output)


class PluginCacheTests(unittest.TestCase):
    """python -m ownsocket.plugincache leaves caches the service's user can read."""

    def test_caches_written_readable_under_umask_077(self):
        import ownsocket.plugins
        [directory] = [d for d in ownsocket.plugins.__path__ if d.startswith(HERE)]
        cache = os.path.join(directory, "dropin.cache")
        if os.path.exists(cache):
            os.remove(cache)
        done = subprocess.run(
            ["sh", "-c", f"umask 077 && exec {sys.executable} -m ownsocket.plugincache"],
            cwd=HERE, env=dict(os.environ, PYTHONPATH=HERE), capture_output=True, text=True,
            timeout=120)
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertTrue(os.path.exists(cache))
        self.assertEqual(os.stat(cache).st_mode & 0o777, 0o644)
