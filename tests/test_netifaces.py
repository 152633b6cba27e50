"""ownsocket.netifaces: interface names with and without socket.if_nameindex."""

import os
from twisted.trial import unittest

from ownsocket import netifaces


class InterfaceNamesTests(unittest.TestCase):
    def fake_sysfs(self, interfaces):
        root = self.mktemp()
        for name, index in interfaces.items():
            os.makedirs(os.path.join(root, name))
            if index is not None:
                with open(os.path.join(root, name, "ifindex"), "w") as handle:
                    handle.write(f"{index}\n")
        return root

    def test_sysfs_when_if_nameindex_is_missing(self):
        """PyPy has no socket.if_nameindex: the names come from sysfs, in
        index order (an entry without ifindex last)."""
        self.patch(netifaces, "if_nameindex", None)
        root = self.fake_sysfs({"eth1": 3, "lo": 1, "eth0": 2, "odd": None})
        self.assertEqual(netifaces.interface_names(root), ["lo", "eth0", "eth1", "odd"])

    def test_no_sysfs_is_an_oserror(self):
        self.patch(netifaces, "if_nameindex", None)
        self.assertRaises(OSError, netifaces.interface_names, self.mktemp())

    def test_if_nameindex_when_present(self):
        self.patch(netifaces, "if_nameindex", lambda: [(1, "lo"), (7, "br0")])
        self.assertEqual(netifaces.interface_names(self.mktemp()), ["lo", "br0"])

    def test_this_host_agrees(self):
        """Both ways list the same interfaces here (Linux)."""
        if netifaces.if_nameindex is None or not os.path.isdir(netifaces.SYS_CLASS_NET):
            raise unittest.SkipTest("needs socket.if_nameindex and /sys/class/net (Linux, CPython)")
        expected = netifaces.interface_names()
        self.patch(netifaces, "if_nameindex", None)
        self.assertEqual(sorted(netifaces.interface_names()), sorted(expected))
