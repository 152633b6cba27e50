"""
The built-in boot-file selectors that the config file drives.

Each is a plain object providing IBootFileSelector, so a site's own plugin
sits in the same chain with the same powers.
"""

from __future__ import annotations

from typing import Dict, Optional

from zope.interface import implementer

from ownsocket.boot.request import ARCH_NAMES, BootDecision, BootRequest, _arch_from_vendor_class
from ownsocket.interfaces import IBootFileSelector


@implementer(IBootFileSelector)
class HostSelector:
    """A [host:NAME] section with a bootfile overrides every other rule."""

    name = "host"

    def __init__(self, hosts):
        self._by_mac = {host.mac: host for host in hosts if host.bootfile or host.next_server}

    def select(self, request: BootRequest) -> Optional[BootDecision]:
        host = self._by_mac.get(request.mac)
        if host is None or host.bootfile is None:
            return None
        return BootDecision(filename=host.bootfile, next_server=host.next_server,
                            reason=f"[host:{host.name}] bootfile")


@implementer(IBootFileSelector)
class ArchTableSelector:
    """
    [boot] arch.N = FILE, keyed by the client's option 93 (or the Arch field
    of its vendor class when 93 is missing), with [boot] default as the
    answer for everyone else.  An unknown architecture falls through to the
    default, never to an error.
    """

    name = "arch"

    def __init__(self, boot_config):
        self._table: Dict[int, str] = dict(boot_config.arch)
        self._default = boot_config.default
        self._next_server = boot_config.next_server
        self._sname = boot_config.sname

    def select(self, request: BootRequest) -> Optional[BootDecision]:
        arches = request.arch or (_arch_from_vendor_class(request.vendor_class)
                                  if request.vendor_class else ())
        for arch in arches:
            filename = self._table.get(arch)
            if filename is not None:
                label = ARCH_NAMES.get(arch, "unknown")
                return self._decision(filename, f"arch {arch} ({label}) -> [boot] arch.{arch}")
        if self._default is not None:
            shown = ",".join(map(str, arches)) or "none"
            return self._decision(self._default, f"arch {shown} not in the table -> [boot] default")
        return None

    def _decision(self, filename, reason):
        return BootDecision(filename=filename, next_server=self._next_server,
                            sname=self._sname, reason=reason)
