"""The twistd dropin is found, and the built wheel ships it."""

import os
import shutil
import subprocess
import sys
import zipfile

from twisted.application.service import IServiceMaker
from twisted.plugin import getPlugins
from twisted.trial import unittest

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class DropinTests(unittest.TestCase):
    def test_getplugins_finds_ownsocket(self):
        makers = {maker.tapname: maker for maker in getPlugins(IServiceMaker)}
        self.assertIn("ownsocket", makers)
        self.assertEqual(makers["ownsocket"].module, "ownsocket.tap")

    def test_no_init_under_twisted(self):
        self.assertFalse(os.path.exists(os.path.join(HERE, "twisted", "__init__.py")))
        self.assertFalse(os.path.exists(os.path.join(HERE, "twisted", "plugins", "__init__.py")))


class WheelTests(unittest.TestCase):
    def test_wheel_contents(self):
        if shutil.which("git") is None:
            raise unittest.SkipTest("git is needed to copy the tracked sources")
        out = os.path.abspath(self.mktemp())
        result = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", out, HERE],
            capture_output=True, text=True, timeout=300)
        if result.returncode != 0:
            self.fail(f"pip wheel failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
        [wheel] = [name for name in os.listdir(out) if name.endswith(".whl")]
        names = set(zipfile.ZipFile(os.path.join(out, wheel)).namelist())
        self.assertIn("twisted/plugins/ownsocket_plugin.py", names)
        self.assertNotIn("twisted/__init__.py", names)
        self.assertNotIn("twisted/plugins/__init__.py", names)
        for module in ("ownsocket/tap.py", "ownsocket/dhcp/wire.py", "ownsocket/dhcp/server.py",
                       "ownsocket/tftp/service.py", "ownsocket/plugins/__init__.py",
                       "ownsocket/runtime.py", "ownsocket/reload.py", "ownsocket/logfile.py"):
            self.assertIn(module, names)
        # every module of every ownsocket package ships, without being listed
        for directory, _, files in os.walk(os.path.join(HERE, "ownsocket")):
            if "__pycache__" in directory:
                continue
            for name in files:
                if name.endswith(".py"):
                    relative = os.path.relpath(os.path.join(directory, name), HERE)
                    self.assertIn(relative.replace(os.sep, "/"), names)
        self.assertFalse([name for name in names if "__pycache__" in name or name.startswith("tests/")])


def readme_command(title):
    """The one-line shell command in the README's fenced block after C{title}."""
    with open(os.path.join(HERE, "README.md"), encoding="utf-8") as handle:
        text = handle.read()
    block = text[text.index(title):].split("```sh\n", 1)[1].split("```", 1)[0]
    [line] = [line for line in block.splitlines() if line.strip()]
    return line


class ReadmeInstallTests(unittest.TestCase):
    """
    The README's first set-up command, as a new user on Debian 12 runs it,
    in a throw-away place: Debian's own python3 (PEP 668: no pip install
    outside a virtual environment), a fresh virtual environment, pip install
    from the package index, then twistd finds ownsocket.
    """

    def test_first_command(self):
        command = readme_command("**Run the server on the embedded defaults**")
        steps = command.split(" && ")
        self.assertEqual(steps[0], "apt-get install -y python3-venv")
        self.assertEqual(steps[1:], ["python3 -m venv /opt/ownsocket/venv",
                                     "/opt/ownsocket/venv/bin/pip install .",
                                     "/opt/ownsocket/venv/bin/twistd -n ownsocket"])
        python = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else shutil.which("python3")
        check = subprocess.run([python, "-c", "import venv, ensurepip"], capture_output=True)
        if check.returncode != 0:
            raise unittest.SkipTest(f"{python} has no venv/ensurepip (apt-get install python3-venv)")
        venv = os.path.join(os.path.abspath(self.mktemp()), "venv")
        for step in steps[1:3]:
            argv = step.replace("/opt/ownsocket/venv", venv).split()
            if argv[0] == "python3":
                argv[0] = python
            done = subprocess.run(argv, cwd=HERE, capture_output=True, text=True, timeout=900)
            output = done.stdout + done.stderr
            if done.returncode != 0 and any(sign in output for sign in (
                    "NewConnectionError", "Temporary failure in name resolution",
                    "No matching distribution found")):
                raise unittest.SkipTest(f"no package index reachable: {output.strip()[-300:]}")
            self.assertEqual(done.returncode, 0, f"{step}:\n{output[-3000:]}")
        # the last step, without binding port 69 of this host: twistd knows ownsocket
        twistd = steps[3].split()[0].replace("/opt/ownsocket/venv", venv)
        done = subprocess.run([twistd, "ownsocket", "--help"], cwd="/", capture_output=True,
                              text=True, timeout=120)
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertIn("--config", done.stdout)
        done = subprocess.run([os.path.join(venv, "bin", "python"), "-c",
                               "import ownsocket.tap, ownsocket.runtime, prometheus_client"],
                              cwd="/", capture_output=True, text=True, timeout=120)
        self.assertEqual(done.returncode, 0, done.stderr)
