"""The plugin example in README.md works as written."""

import os
import re

from twisted.internet.task import Clock

from ownsocket import config as configuration
from ownsocket.boot.loader import load_selectors
from ownsocket.boot.request import BootRequest
from tests.test_plugins import PluginDirTestCase

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def readme_example():
    with open(README, encoding="utf-8") as handle:
        text = handle.read()
    match = re.search(r"<!-- plugin-example[^>]*-->\s*```python\n(.*?)```", text, re.S)
    assert match, "README.md lost its plugin example"
    return match.group(1)


class ReadmePluginTests(PluginDirTestCase):
    def test_example_plugin(self):
        code = readme_example()
        self.assertLessEqual(len([l for l in code.splitlines() if l.strip()]), 25)
        self.write("site_inventory.py", code)
        inventory = os.path.join(self.site, "inventory.csv")
        with open(inventory, "w") as handle:
            handle.write("mac,file\n52:54:00:AA:BB:01,rack1/snponly.efi\n")
        config = configuration.load(text=f"""
[boot]
selectors = host, inventory, ipxe, uefi-http, arch
default = undionly.kpxe
arch.7 = snponly.efi
[selector:inventory]
csv = {inventory}
""", known_interfaces=set())
        chain = load_selectors(config, Clock())
        self.assertEqual([s.name for s in chain], ["host", "inventory", "ipxe", "uefi-http", "arch"])
        listed = chain[1].select(BootRequest(mac="52:54:00:aa:bb:01", arch=(7,)))
        self.assertEqual(listed.filename, "rack1/snponly.efi")
        self.assertIsNone(chain[1].select(BootRequest(mac="52:54:00:aa:bb:02", arch=(7,))))
