"""Selector plugins: discovery on sys.path, dotted paths, and every way a
plugin can be wrong stopping start-up with a line that names it."""

import importlib
import os
import sys
import textwrap

from twisted.internet.task import Clock
from twisted.trial import unittest
from zope.interface.verify import verifyObject

import ownsocket.plugins
from ownsocket import config as configuration
from ownsocket.boot.loader import available_plugins, load_selectors
from ownsocket.boot.request import BootRequest
from ownsocket.interfaces import ISelectorFactory

BASE = "[boot]\ndefault = undionly.kpxe\n"


class PluginDirTestCase(unittest.TestCase):
    """Puts a temporary directory with an ownsocket/plugins/ folder (no
    __init__.py, like a site's own plugin directory) on sys.path."""

    def setUp(self):
        self.site = os.path.abspath(self.mktemp())
        self.plugins = os.path.join(self.site, "ownsocket", "plugins")
        os.makedirs(self.plugins)
        sys.path.insert(0, self.site)
        saved_path = list(ownsocket.plugins.__path__)
        importlib.reload(ownsocket.plugins)
        self.addCleanup(self._restore, saved_path)

    def _restore(self, saved_path):
        sys.path.remove(self.site)
        ownsocket.plugins.__path__[:] = saved_path
        for name in list(sys.modules):
            if name.startswith("ownsocket.plugins.site_") or name.startswith("sitesel"):
                del sys.modules[name]

    def write(self, name, text, where=None):
        with open(os.path.join(where or self.plugins, name), "w") as handle:
            handle.write(textwrap.dedent(text))

    def load(self, text):
        config = configuration.load(text=text, known_interfaces=set())
        return load_selectors(config, Clock())

    def error(self, text):
        with self.assertRaises(configuration.ConfigError) as caught:
            self.load(text)
        return str(caught.exception)


class DiscoveryTests(PluginDirTestCase):
    def test_builtins_are_plugins(self):
        factories, _ = available_plugins()
        self.assertEqual({"host", "mac", "arch", "vendor", "ipxe", "uefi-http", "rpi"} - set(factories), set())
        for factory in factories.values():
            verifyObject(ISelectorFactory, factory)

    def test_site_plugin_found_on_sys_path(self):
        self.write("site_lab.py", """
            from zope.interface import implementer, provider
            from twisted.plugin import IPlugin
            from ownsocket.interfaces import IBootFileSelector
            from ownsocket.boot.request import BootDecision

            @implementer(IPlugin, IBootFileSelector)
            class Lab:
                name = "lab"
                def select(self, request):
                    if request.mac.startswith("52:54:00"):
                        return BootDecision("lab.efi", reason="a lab VM")

            lab = Lab()
            """)
        selectors = self.load(BASE + "selectors = lab, arch\n")
        self.assertEqual([s.name for s in selectors], ["lab", "arch"])
        self.assertEqual(selectors[0].select(BootRequest(mac="52:54:00:00:00:01")).filename, "lab.efi")

    def test_site_factory_gets_its_settings(self):
        self.write("site_rooms.py", """
            from zope.interface import implementer
            from twisted.plugin import IPlugin
            from ownsocket.interfaces import IBootFileSelector, ISelectorFactory
            from ownsocket.boot.request import BootDecision
            from ownsocket.boot.loader import SettingError

            @implementer(IBootFileSelector)
            class Room:
                name = "room"
                def __init__(self, file):
                    self.file = file
                def select(self, request):
                    return BootDecision(self.file, reason="room")

            @implementer(IPlugin, ISelectorFactory)
            class RoomFactory:
                name = "room"
                def build(self, settings, context):
                    if "file" not in settings:
                        raise SettingError("file", "is required")
                    return Room(settings["file"])

            room = RoomFactory()
            """)
        [room] = self.load(BASE + "selectors = room\n[selector:room]\nfile = r.efi\n")
        self.assertEqual(room.select(BootRequest(mac="00:00:00:00:00:01")).filename, "r.efi")
        self.assertEqual(self.error(BASE + "selectors = room\n"), "<text>: [selector:room] file: is required")

    def test_dotted_path(self):
        self.write("sitesel.py", """
            from zope.interface import implementer
            from ownsocket.interfaces import IBootFileSelector

            @implementer(IBootFileSelector)
            class Inventory:
                name = "inventory"
                def __init__(self, settings, context):
                    self.settings = settings
                def select(self, request):
                    return None
            """, where=self.site)
        [inventory] = self.load(BASE + "selectors = sitesel.Inventory\n[selector:sitesel.Inventory]\nx = 1\n")
        self.assertEqual(inventory.settings, {"x": "1"})


class BrokenPluginTests(PluginDirTestCase):
    def test_unknown_name(self):
        message = self.error(BASE + "selectors = host, nosuch\n")
        self.assertIn("[boot] selectors: unknown selector 'nosuch' (known: arch, host, ipxe, mac, rpi,", message)

    def test_missing_dotted_module(self):
        self.assertIn("selector 'nosuch.module.Thing' cannot be imported: ObjectNotFound",
                      self.error(BASE + "selectors = nosuch.module.Thing\n"))

    def test_plugin_module_that_does_not_import(self):
        self.write("site_broken.py", "import this_module_does_not_exist\n")
        message = self.error(BASE + "selectors = arch\n")
        self.assertIn("plugin module ownsocket.plugins.site_broken", message)
        self.assertIn("ModuleNotFoundError", message)

    def test_plugin_without_select(self):
        self.write("sitesel.py", """
            from zope.interface import implementer
            from ownsocket.interfaces import IBootFileSelector

            @implementer(IBootFileSelector)
            class NoSelect:
                name = "noselect"

            thing = NoSelect()
            """, where=self.site)
        message = self.error(BASE + "selectors = sitesel.thing\n")
        self.assertIn("selector 'sitesel.thing' does not provide IBootFileSelector", message)

    def test_factory_that_crashes(self):
        self.write("sitesel.py", """
            def make(settings, context):
                raise RuntimeError("inventory database unreachable")
            """, where=self.site)
        self.assertIn("selector 'sitesel.make' failed to start: RuntimeError: inventory database unreachable",
                      self.error(BASE + "selectors = sitesel.make\n"))

    def test_settings_for_unlisted_selector(self):
        self.assertIn("[selector:mac]: 'mac' is not listed in [boot] selectors",
                      self.error(BASE + "selectors = arch\n[selector:mac]\n52:54:00 = x.efi\n"))

    def test_bad_builtin_settings(self):
        self.assertEqual(self.error(BASE + "selectors = ipxe\n[selector:ipxe]\nmode = sometimes\n"),
                         "<text>: [selector:ipxe] mode: 'sometimes' is neither stateful nor stateless")
        self.assertIn("[selector:mac] 52:54:zz: is not a MAC address",
                      self.error(BASE + "selectors = mac\n[selector:mac]\n52:54:zz = x.efi\n"))
        self.assertIn("[selector:uefi-http] arch.16: 'tftp://x' is not an http",
                      self.error(BASE + "selectors = uefi-http\n[selector:uefi-http]\narch.16 = tftp://x\n"))
        self.assertIn("[selector:arch] foo: unknown key",
                      self.error(BASE + "selectors = arch\n[selector:arch]\nfoo = 1\n"))

    def test_listed_twice(self):
        self.assertIn("'arch' is listed twice", self.error(BASE + "selectors = arch, arch\n"))

    def test_twistd_names_broken_plugin(self):
        import subprocess
        self.write("site_broken.py", "raise ImportError('half-installed plugin')\n")
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as handle:
            handle.write("[dhcp]\nenabled = false\n[tftp]\nenabled = false\n")
        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([here, self.site]))
        result = subprocess.run(
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
             "-n", "--pidfile=", "ownsocket", "--config", path],
            capture_output=True, text=True, env=env, cwd=here, timeout=60)
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("plugin module ownsocket.plugins.site_broken", result.stderr)
        self.assertIn("half-installed plugin", result.stderr)
        self.assertNotIn("Traceback", result.stderr)
