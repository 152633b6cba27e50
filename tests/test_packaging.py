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
                       "ownsocket/tftp/service.py", "ownsocket/plugins/__init__.py"):
            self.assertIn(module, names)
