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
    """
    One client's boot-relevant DHCP facts, as a selector sees them.

    Built once per DHCP/proxyDHCP/4011 request by the server (and kept by
    L{ownsocket.boot.recent.RecentRequests} for TFTP and HTTP backends), so
    every selector decides on the same, already-validated values.
    """

    mac: str
    """The client hardware address (chaddr), lower case with colons: the key
    for leases, hosts and per-machine state (option 61 is not used)."""
    xid: int = 0
    """The transaction id, for log lines only (firmware reuses xids across
    boots, FIRMWARE-FACTS 8b: never a key)."""
    message_type: Optional[int] = None
    """Option 53 (1 DISCOVER, 3 REQUEST, 8 INFORM ...); None for a BOOTP
    request, which has no option 53."""
    arch: Tuple[int, ...] = ()
    """Option 93, client system architectures in the client's order (usually
    one: 0 BIOS, 7 EFI x64, 11 ARM64 UEFI, 16 x64 UEFI HTTP ...; see
    L{ARCH_NAMES}); empty when the client sent none."""
    nic_version: Optional[bytes] = None
    """Option 94, the UNDI type and version (C{01 03 00} = UNDI 3.0 for
    OVMF, C{01 03 0a} for iPXE's snponly.efi), raw."""
    vendor_class: Optional[bytes] = None
    """Option 60 as sent (C{PXEClient:Arch:00007:UNDI:003000},
    C{HTTPClient:...}); carries the architecture for clients without 93."""
    user_class: Tuple[bytes, ...] = ()
    """Option 77 entries: iPXE sends the raw bytes C{iPXE}, RFC 3004
    clients length-framed lists; both arrive here as a tuple of entries."""
    client_uuid: Optional[bytes] = None
    """Option 97 (type byte + 16-byte UUID), raw; all zeros under QEMU
    without C{-uuid}, so never unique by itself."""
    has_ipxe_options: bool = False
    """Option 175 was present: the client is iPXE (also iPXE in a NIC ROM,
    which is why "is iPXE" is not "already chain-loaded", FIRMWARE-FACTS 1b)."""
    relay_info: Tuple[Tuple[int, bytes], ...] = ()
    """Option 82 sub-options (circuit id, remote id ...) in wire order, from
    a relay agent; empty for a client on a local segment."""
    giaddr: Optional[IPv4Address] = None
    """The relay agent's address, or None when the request was not relayed."""
    interface: Optional[str] = None
    """The interface the request came in on (None when relayed or unknown),
    so rules can differ per segment."""
    phase: str = "dhcp"
    """Which exchange asks: C{dhcp} (our own DHCP server), C{proxy}
    (proxyDHCP on port 67, the address comes from another server) or
    C{4011} (the PXE boot-server request)."""
    server_address: Optional[IPv4Address] = None
    """The address of ours the client talks to, for C{@server@} in file
    names and URLs (differs per interface and subnet)."""
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
    """
    What a selector tells the client to boot, and why (the why goes into
    the DHCP log line and C{explain}'s output).
    """

    filename: Optional[str]
    """The boot file: a name under the TFTP root (put in the BOOTP C{file}
    field always, which shim needs, and in option 67 when asked) or an
    C{http://} URL for UEFI HTTP boot and iPXE; None for no file (a
    Raspberry Pi reads only options 43/66)."""
    reason: str
    """Why this file, in words a sysadmin understands (C{arch 7 (EFI x64) ->
    [boot] arch.7}); logged with every reply."""
    next_server: Optional[IPv4Address] = None
    """The TFTP server (C{siaddr}, option 66) when it is not this server."""
    sname: Optional[str] = None
    """The server host name for the BOOTP C{sname} field, if any."""
    extra_options: Tuple[Tuple[int, bytes], ...] = field(default=())
    """Further (code, value) options for the reply; they replace ours of
    the same code (e.g. C{(60, b"HTTPClient")}, which OVMF's HTTP boot
    requires)."""
    selector: Optional[str] = None
    """The name of the selector that decided; the chain fills it in."""
