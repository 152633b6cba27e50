"""
The typed facts a selector decides on, and the decision it returns.

Both are frozen: a selector cannot change what the next selector sees, and a
decision can be logged and remembered without copying.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Address
from typing import Optional, Tuple

#: IANA "Processor Architecture Types" (option 93) that ownsocket names in logs.
ARCH_NAMES = {
    0: "x86 BIOS",
    1: "NEC/PC98",
    2: "EFI Itanium",
    3: "DEC Alpha",
    4: "Arc x86",
    5: "Intel Lean Client",
    6: "EFI IA32",
    7: "EFI x64",
    8: "EFI Xscale",
    9: "EFI x64 (BC)",
    10: "ARM 32-bit UEFI",
    11: "ARM 64-bit UEFI",
    12: "PowerPC Open Firmware",
    13: "PowerPC ePAPR",
    14: "POWER OPAL v3",
    15: "x86 UEFI HTTP",
    16: "x64 UEFI HTTP",
    17: "EBC HTTP",
    18: "ARM 32-bit UEFI HTTP",
    19: "ARM 64-bit UEFI HTTP",
    20: "x86 BIOS HTTP",
    21: "ARM 32-bit U-Boot",
    22: "ARM 64-bit U-Boot",
    23: "ARM 32-bit U-Boot HTTP",
    24: "ARM 64-bit U-Boot HTTP",
    25: "RISC-V 32-bit UEFI",
    26: "RISC-V 32-bit UEFI HTTP",
    27: "RISC-V 64-bit UEFI",
    28: "RISC-V 64-bit UEFI HTTP",
    29: "RISC-V 128-bit UEFI",
    30: "RISC-V 128-bit UEFI HTTP",
    31: "s390 Basic",
    32: "s390 Extended",
    33: "MIPS 32-bit UEFI",
    34: "MIPS 64-bit UEFI",
    35: "Sunway 32-bit UEFI",
    36: "Sunway 64-bit UEFI",
    37: "LoongArch 32-bit UEFI",
    38: "LoongArch 32-bit UEFI HTTP",
    39: "LoongArch 64-bit UEFI",
    40: "LoongArch 64-bit UEFI HTTP",
    41: "ARM rpiboot",
}

HTTP_ARCHES = frozenset({15, 16, 17, 18, 19, 20, 23, 24, 26, 28, 30, 38, 40})
BIOS_ARCHES = frozenset({0})


@dataclass(frozen=True)
class BootRequest:
    mac: str
    xid: int = 0
    message_type: Optional[int] = None  # None: a BOOTP request
    arch: Tuple[int, ...] = ()
    nic_version: Optional[bytes] = None
    vendor_class: Optional[bytes] = None
    user_class: Tuple[bytes, ...] = ()
    client_uuid: Optional[bytes] = None
    has_ipxe_options: bool = False  # option 175 present
    relay_info: Tuple[Tuple[int, bytes], ...] = ()
    giaddr: Optional[IPv4Address] = None
    interface: Optional[str] = None
    phase: str = "dhcp"  # dhcp / proxy / 4011
    server_address: Optional[IPv4Address] = None  # where the client reaches us (IPv6Address for DHCPv6)
    # DHCPv6 facts (defaults for DHCPv4, so selectors written for it work
    # unchanged).  Over DHCPv6, arch comes from option 61, vendor_class is
    # the first string of option 16, user_class the items of option 15,
    # client_uuid a DUID-UUID as option 97 would carry it (type 0 + 16 bytes),
    # and message_type the DHCPv4 number of the same step (Solicit ->
    # DISCOVER 1, Request/Renew/Rebind -> REQUEST 3, Information-Request
    # -> INFORM 8).
    family: int = 4
    duid: Optional[bytes] = None
    iaid: Optional[int] = None

    @property
    def is_ipxe(self) -> bool:
        return self.has_ipxe_options or b"iPXE" in self.user_class

    @property
    def firmware(self) -> str:
        """bios / uefi / uefi-http / unknown, from option 93 (or 60)."""
        arches = self.arch
        if not arches and self.vendor_class:
            arches = _arch_from_vendor_class(self.vendor_class)
        if not arches:
            return "bios" if self.vendor_class and self.vendor_class.startswith(b"PXEClient") else "unknown"
        first = arches[0]
        if first in BIOS_ARCHES:
            return "bios"
        if first in HTTP_ARCHES:
            return "uefi-http"
        if first in ARCH_NAMES and first >= 6:
            return "uefi"
        return "unknown"


def _arch_from_vendor_class(vendor_class: bytes) -> Tuple[int, ...]:
    """C{PXEClient:Arch:00007:...} carries the architecture when 93 is absent."""
    parts = vendor_class.split(b":")
    if len(parts) >= 3 and parts[1] == b"Arch" and parts[2].isdigit():
        return (int(parts[2]),)
    return ()


@dataclass(frozen=True)
class BootDecision:
    filename: Optional[str]
    reason: str
    next_server: Optional[IPv4Address] = None
    sname: Optional[str] = None
    extra_options: Tuple[Tuple[int, bytes], ...] = field(default=())
    selector: Optional[str] = None
