"""
The built-in boot-file selectors.

Each is a plain object providing IBootFileSelector, built from its settings by
a factory in L{ownsocket.plugins.builtin}, so a site's own plugin sits in the
same chain with exactly the same powers.  None of them raises on an unknown
architecture or vendor class: "not mine" is always None, and the chain asks
the next selector.
"""

from __future__ import annotations

import fnmatch
from typing import Dict, Mapping, Optional, Sequence, Tuple

from zope.interface import implementer

from ownsocket.boot.request import (ARCH_NAMES, HTTP_ARCHES, BootDecision, BootRequest,
                                    _arch_from_vendor_class)
from ownsocket.interfaces import IBootFileSelector, ITransferObserver

#: The non-HTTP architecture whose boot file an HTTP-boot client of each
#: HTTP architecture can run (the same binary, fetched over HTTP).
HTTP_TO_PXE_ARCH = {15: 6, 16: 7, 18: 10, 19: 11, 26: 25, 28: 27, 40: 39}


def client_arches(request: BootRequest) -> Tuple[int, ...]:
    """Option 93, or the Arch field of option 60 for clients without 93."""
    if request.arch:
        return request.arch
    if request.vendor_class:
        return _arch_from_vendor_class(request.vendor_class)
    return ()


def expand(template: str, request: BootRequest) -> str:
    """Fill C{@server@}, C{@mac@} and C{@arch@} into a file name or URL.

    '@' rather than '${...}' because iPXE scripts and URLs use '${...}'
    themselves."""
    if "@" not in template:
        return template  # the usual name: nothing to fill in
    arches = client_arches(request)
    return (template.replace("@server@", str(request.server_address or ""))
            .replace("@mac@", request.mac)
            .replace("@mac-hyphen@", request.mac.replace(":", "-"))
            .replace("@arch@", str(arches[0]) if arches else ""))


@implementer(IBootFileSelector)
class HostSelector:
    """A [host:NAME] section with a bootfile overrides every other rule."""

    name = "host"

    def __init__(self, hosts):
        self._by_mac = {host.mac: host for host in hosts if host.bootfile}

    def select(self, request: BootRequest) -> Optional[BootDecision]:
        host = self._by_mac.get(request.mac)
        if host is None:
            return None
        return BootDecision(filename=expand(host.bootfile, request), next_server=host.next_server,
                            reason=f"[host:{host.name}] bootfile")


@implementer(IBootFileSelector)
class MacSelector:
    """
    Per-MAC and per-MAC-prefix overrides (C{52:54:00:12:34:56 = file} or
    C{52:54:00 = file}); the longest matching prefix wins, so one machine can
    be carved out of its vendor's block.
    """

    name = "mac"

    def __init__(self, table: Mapping[str, str]):
        self._table = sorted(table.items(), key=lambda item: -len(item[0]))

    def select(self, request: BootRequest) -> Optional[BootDecision]:
        for prefix, filename in self._table:
            if request.mac.startswith(prefix):
                return BootDecision(filename=expand(filename, request),
                                    reason=f"MAC {request.mac} matches {prefix}")
        return None


@implementer(IBootFileSelector)
class ArchTableSelector:
    """
    [boot] arch.N = FILE, keyed by option 93 (or the Arch field of option 60
    when 93 is missing), with [boot] default for everyone else.
    """

    name = "arch"

    def __init__(self, table: Mapping[int, str], default: Optional[str] = None,
                 next_server=None, sname=None):
        self._table: Dict[int, str] = dict(table)
        self._default = default
        self._next_server = next_server
        self._sname = sname
        self._decisions: Dict[Tuple[int, ...], Optional[BootDecision]] = {}

    def select(self, request: BootRequest) -> Optional[BootDecision]:
        arches = client_arches(request)
        # Without '@' in the file names every client of one set of
        # architectures gets the same decision: a boot storm asks for it
        # thousands of times a second, so it is built once.
        if arches in self._decisions:
            return self._decisions[arches]
        decision, personal = self._decide(arches, request)
        if not personal:
            if len(self._decisions) >= 256:
                self._decisions.clear()  # made-up option 93 lists cannot grow it
            self._decisions[arches] = decision
        return decision

    def _decide(self, arches, request):
        """(decision, whether it depends on more than the architectures)."""
        for arch in arches:
            filename = self._table.get(arch)
            if filename is not None:
                label = ARCH_NAMES.get(arch, "unknown")
                return (self._decision(expand(filename, request),
                                       f"arch {arch} ({label}) -> [boot] arch.{arch}"),
                        "@" in filename)
        if self._default is not None:
            shown = ",".join(map(str, arches)) or "none"
            return (self._decision(expand(self._default, request),
                                   f"arch {shown} not in the table -> [boot] default"),
                    "@" in self._default)
        return None, False

    def _decision(self, filename, reason):
        return BootDecision(filename=filename, next_server=self._next_server,
                            sname=self._sname, reason=reason, selector=self.name)


@implementer(IBootFileSelector)
class VendorClassSelector:
    """
    Option 60 patterns (shell-style, case-insensitive), for clients that
    send no option 93 and for vendor-specific ROMs: C{PXEClient:Arch:00007* =
    snponly.efi}.  Patterns are tried in the order written.
    """

    name = "vendor"

    def __init__(self, patterns: Sequence[Tuple[str, str]]):
        self._patterns = [(pattern.lower(), filename) for pattern, filename in patterns]

    def select(self, request: BootRequest) -> Optional[BootDecision]:
        if not request.vendor_class:
            return None
        vendor = request.vendor_class.decode("ascii", "replace").lower()
        for pattern, filename in self._patterns:
            if fnmatch.fnmatchcase(vendor, pattern):
                return BootDecision(filename=expand(filename, request),
                                    reason=f"vendor class {vendor!r} matches {pattern!r}")
        return None


@implementer(IBootFileSelector, ITransferObserver)
class IpxeChainSelector:
    """
    Chain-loading iPXE without loops.

    An iPXE client (user class "iPXE" or option 175) gets the script.  Under
    QEMU and on many NICs the PXE ROM is itself iPXE and sends the same
    options as the chained iPXE (FIRMWARE-FACTS §1b), so in the stateful mode
    a client gets the script only after it was seen fetching a first stage
    (any file but the script) over TFTP or HTTP; until then this selector
    says "not mine" and the architecture table hands out the first stage.
    Fetching the script ends the cycle, so the next reboot starts over.
    """

    name = "ipxe"

    def __init__(self, script: Optional[str], *, clock, stateful: bool = True, remember: float = 300.0):
        """
        @param clock: an L{IReactorTime}; "fetched its first stage within
            C{remember} seconds" is measured on it, never on the wall clock.
        """
        if clock is None:
            raise ValueError("IpxeChainSelector needs a clock")
        self.script = script
        self.stateful = stateful
        self.remember = remember
        self._clock = clock
        self._fetched: Dict[str, float] = {}

    def _now(self) -> float:
        return self._clock.seconds()

    def inherit(self, old: "IpxeChainSelector") -> None:
        """
        A reload builds a new selector; machines between their first stage
        and their script must not forget where they are (they would load
        the first stage once more).  Called by L{ownsocket.reload}.
        """
        self._fetched.update(old._fetched)

    def select(self, request: BootRequest) -> Optional[BootDecision]:
        if not request.is_ipxe or not self.script:
            return None
        script = expand(self.script, request)
        if not self.stateful:
            return BootDecision(filename=script, reason="iPXE client -> script (stateless)")
        fetched = self._fetched.get(request.mac)
        if fetched is None or self._now() - fetched > self.remember:
            return None
        return BootDecision(filename=script,
                            reason="iPXE client that already fetched its first stage -> script")

    def file_opened(self, read_request) -> None:
        boot_request = read_request.boot_request
        if boot_request is None or not self.script:
            return
        script_name = self.script.rsplit("/", 1)[-1]
        if read_request.path.rsplit("/", 1)[-1] == script_name:
            self._fetched.pop(boot_request.mac, None)
        else:
            self._fetched[boot_request.mac] = self._now()
            if len(self._fetched) > 65536:
                oldest = min(self._fetched, key=self._fetched.get)
                del self._fetched[oldest]


@implementer(IBootFileSelector)
class UefiHttpSelector:
    """
    UEFI HTTP boot (option 93 = 15/16/18/19 ...): the boot file is a URL, and
    the reply must carry option 60 "HTTPClient" or OVMF ignores the offer
    (FIRMWARE-FACTS §2).  URLs come from C{arch.N} settings, else from the
    file the architecture table gives the matching PXE architecture, served
    by ownsocket's own HTTP service.
    """

    name = "uefi-http"

    def __init__(self, urls: Mapping[int, str], base_url: Optional[str],
                 pxe_table: Mapping[int, str], default: Optional[str]):
        self._urls = dict(urls)
        self._base_url = base_url
        self._pxe_table = dict(pxe_table)
        self._default = default

    def select(self, request: BootRequest) -> Optional[BootDecision]:
        arches = client_arches(request)
        is_http = bool(arches) and arches[0] in HTTP_ARCHES
        if not is_http and not (request.vendor_class or b"").startswith(b"HTTPClient"):
            return None
        for arch in arches:
            if arch in self._urls:
                url, why = self._urls[arch], f"[selector:uefi-http] arch.{arch}"
                break
        else:
            if self._base_url is None:
                return None
            arch = arches[0] if arches else None
            filename = self._pxe_table.get(HTTP_TO_PXE_ARCH.get(arch), self._default)
            if filename is None:
                return None
            url = self._base_url.rstrip("/") + "/" + filename.lstrip("/")
            why = f"HTTP arch {arch} -> same file as arch {HTTP_TO_PXE_ARCH.get(arch)} over HTTP"
        return BootDecision(filename=expand(url, request), extra_options=((60, b"HTTPClient"),),
                            reason=f"UEFI HTTP boot: {why}")


#: OUIs of Raspberry Pi boards (Foundation and Trading).
RASPBERRY_PI_OUIS = ("b8:27:eb", "dc:a6:32", "e4:5f:01", "d8:3a:dd", "28:cd:c1", "2c:cf:67")

#: Option 43 as the Pi bootloader expects it: PXE discovery control,
#: a menu prompt, and a boot menu entry whose text is "Raspberry Pi Boot".
RASPBERRY_PI_43 = (b"\x06\x01\x03"
                   b"\x0a\x04\x00PXE"
                   b"\x09\x14\x00\x00\x11Raspberry Pi Boot"
                   b"\xff")


@implementer(IBootFileSelector)
class RaspberryPiSelector:
    """
    The Raspberry Pi network bootloader looks for "Raspberry Pi Boot" in
    option 43 and takes the TFTP server from option 66 as plain text with no
    trailing NUL; it ignores the boot file name and fetches files named after
    its serial number.
    """

    name = "rpi"

    def __init__(self, ouis: Sequence[str] = RASPBERRY_PI_OUIS, tftp_server: Optional[str] = None):
        self._ouis = tuple(ouis)
        self._tftp_server = tftp_server

    def select(self, request: BootRequest) -> Optional[BootDecision]:
        is_pi = (41 in request.arch) or request.mac.startswith(self._ouis)
        if not is_pi:
            return None
        server = self._tftp_server or (str(request.server_address) if request.server_address else None)
        options = [(43, RASPBERRY_PI_43)]
        if server:
            options.append((66, server.encode("ascii")))
        return BootDecision(filename=None, extra_options=tuple(options),
                            reason="Raspberry Pi (by MAC OUI or arch 41): option 43 'Raspberry Pi Boot'")
