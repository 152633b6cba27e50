"""
The machines of the lab: QEMU command lines for real network-boot firmware.

A guest is described as data (L{GuestSpec}): which firmware, which NIC, which
ROM; L{tests.lab.namespace.NetNamespace.start_guest} adds what depends on the
namespace (tap, logs).  SeaBIOS with the iPXE NIC ROM, OVMF's EDK2 PXE and
HTTP boot, OVMF with Secure Boot, AAVMF on arm64; and OVMF told to try IPv6
first (FIRMWARE-FACTS 8).

All guests use TCG (C{-accel tcg}): on this host KVM is nested and both OVMF
and the iPXE ROM die with "emulation failure" under it (FIRMWARE-FACTS.md 5).
TCG is slow (tens of seconds to the first DHCP), so bound every wait.
"""

import os
import re
import shutil
from dataclasses import dataclass

from tests import netns
from tests.lab.errors import LabError

#: Fixed guest MAC so that captures and leases are reproducible.
DEFAULT_MAC = "52:54:00:99:00:10"

QEMU = "qemu-system-x86_64"

# Where Debian's ipxe-qemu puts the NIC ROMs (older releases used
# /usr/lib/ipxe/qemu only; QEMU's own copy is under /usr/share/qemu).
_ROM_DIRS = ("/usr/lib/ipxe/qemu", "/usr/share/qemu", "/usr/lib/ipxe")
_OVMF_PATHS = ("/usr/share/ovmf/OVMF.fd", "/usr/share/qemu/OVMF.fd")


def ipxe_rom(name="pxe-e1000.rom"):
    """Path of an iPXE NIC ROM, so that tests do not hard-code Debian's layout."""
    for d in _ROM_DIRS:
        path = os.path.join(d, name)
        if os.path.exists(path):
            return path
    raise LabError("iPXE ROM %s not found in %s (install ipxe-qemu)" % (name, ", ".join(_ROM_DIRS)))


def ovmf_firmware():
    """Path of a combined OVMF image usable with ``-bios`` (no NVRAM file to manage)."""
    for path in _OVMF_PATHS:
        if os.path.exists(path):
            return path
    raise LabError("OVMF.fd not found (install ovmf)")



@dataclass(frozen=True)
class GuestSpec:
    """
    One kind of network-booting machine.

    Kept as data (not a QEMU command line) so a test can say *which firmware*
    it boots and let :meth:`NetNamespace.start_guest` add the parts that depend
    on the namespace (tap name, logs).  ``nic`` gets ``netdev=...,mac=...``
    appended; ``romfile`` ``None`` keeps QEMU's default ROM for that NIC, ``""``
    removes it (so that the firmware's own network stack runs).
    """

    name: str
    nic: str
    romfile: "str | None" = None
    machine_args: tuple = ()
    memory: str = "256M"
    boot_args: tuple = ()
    qemu: str = QEMU

    def qemu_args(self, tap, mac=DEFAULT_MAC, serial_log=None, debugcon_log=None,
                  uuid=None, extra_args=()):
        """The full QEMU argv for this guest on ``tap``."""
        device = "%s,netdev=n0,mac=%s" % (self.nic, mac)
        if self.romfile is not None:
            device += ",romfile=%s" % self.romfile
        argv = [
            self.qemu,
            "-nodefaults",
            "-accel", "tcg",
            "-m", self.memory,
            "-display", "none",
            "-monitor", "none",
            "-serial", ("file:%s" % serial_log) if serial_log else "null",
            "-netdev", "tap,id=n0,ifname=%s,script=no,downscript=no" % tap,
            "-device", device,
        ]
        argv += list(self.machine_args)
        argv += list(self.boot_args)
        if debugcon_log:
            # SeaBIOS and debug builds of OVMF log to I/O port 0x402.
            argv += ["-chardev", "file,id=dbgcon,path=%s" % debugcon_log,
                     "-device", "isa-debugcon,iobase=0x402,chardev=dbgcon"]
        if uuid:
            argv += ["-uuid", uuid]
        argv += list(extra_args)
        return argv


def bios_ipxe(nic="e1000", rom="pxe-e1000.rom", serial_console=True):
    """
    Legacy BIOS PXE as QEMU has it: SeaBIOS runs the iPXE option ROM of the NIC.

    SeaBIOS has no network stack, so the DHCP client here is iPXE
    (FIRMWARE-FACTS.md 0): user class ``iPXE``, option 175, arch 0.

    The BIOS builds of iPXE print only through the BIOS video services, which
    go nowhere without a display.  ``serial_console`` adds ``-machine
    graphics=off``: QEMU then hands SeaBIOS ``etc/sercon-port`` and SeaBIOS
    copies text-mode output (its own, the ROM's, undionly.kpxe's) to the
    serial port, so ``serial_log`` shows what iPXE printed.
    """
    machine = ("-machine", "graphics=off") if serial_console else ()
    return GuestSpec(name="bios-ipxe-" + nic, nic=nic, romfile=ipxe_rom(rom),
                     machine_args=machine, boot_args=("-boot", "order=n"))


def uefi_pxe(nic="virtio-net-pci"):
    """
    UEFI PXE by EDK2's own PxeBcDxe (arch 7), the only non-iPXE PXE client QEMU has.

    The NIC ROM is removed: with it OVMF would start the iPXE EFI driver from
    the ROM instead and EDK2's PXE client would never run.
    """
    return GuestSpec(name="uefi-pxe", nic=nic, romfile="",
                     machine_args=("-bios", ovmf_firmware()))


def uefi_http(nic="virtio-net-pci"):
    """
    UEFI HTTP boot by EDK2's HttpBootDxe (arch 16, vendor class ``HTTPClient``).

    OVMF tries PXE first; switching IPv4 and IPv6 PXE off through fw_cfg makes
    "UEFI HTTPv4" the first boot option, so the guest goes to HTTP boot at once.
    """
    return GuestSpec(name="uefi-http", nic=nic, romfile="",
                     machine_args=(
                         "-bios", ovmf_firmware(),
                         "-fw_cfg", "name=opt/org.tianocore/IPv4PXESupport,string=no",
                         "-fw_cfg", "name=opt/org.tianocore/IPv6PXESupport,string=no",
                     ))

#: Secure Boot OVMF: the SMM build and a varstore with Microsoft's keys
#: enrolled (PK set: Secure Boot is on from the first boot, FIRMWARE-FACTS 6a).
OVMF_SB_CODE = "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd"
OVMF_SB_VARS = "/usr/share/OVMF/OVMF_VARS_4M.ms.fd"
#: ArmVirtQemu (Debian qemu-efi-aarch64); the empty varstore: no keys, SB off.
AAVMF_CODE = "/usr/share/AAVMF/AAVMF_CODE.fd"
AAVMF_VARS = "/usr/share/AAVMF/AAVMF_VARS.fd"
QEMU_ARM64 = "qemu-system-aarch64"


def _pflash(code, vars_copy, template):
    """A read-only CODE flash and a private writable copy of a VARS template
    (the firmware writes to it: shim sets SbatLevel, OVMF its boot options)."""
    for path in (code, template):
        if not os.path.exists(path):
            raise LabError("%s not found (install %s)" % (
                path, "ovmf" if "OVMF" in path else "qemu-efi-aarch64"))
    shutil.copyfile(template, vars_copy)
    return ("-drive", "if=pflash,format=raw,unit=0,readonly=on,file=%s" % code,
            "-drive", "if=pflash,format=raw,unit=1,file=%s" % vars_copy)


def uefi_secure_boot(vars_copy, nic="virtio-net-pci", vars_template=OVMF_SB_VARS):
    """
    OVMF with Secure Boot on (FIRMWARE-FACTS 6a): the SMM build, Microsoft's
    keys in a private copy of the varstore at ``vars_copy``, ``q35,smm=on``
    (the SMM build prints nothing without SMM).  The PXE client is EDK2's, as
    in :func:`uefi_pxe`, and byte-identical on the wire (6b).
    ``vars_template=OVMF_VARS_4M.fd`` (no keys) gives the same firmware with
    Secure Boot off, for controls.
    """
    return GuestSpec(name="uefi-sb", nic=nic, romfile="", memory="512M",
                     machine_args=("-machine", "q35,smm=on",
                                   "-global", "driver=cfi.pflash01,property=secure,value=on",
                                   "-global", "ICH9-LPC.disable_s3=1")
                     + _pflash(OVMF_SB_CODE, vars_copy, vars_template))


def arm64_uefi(vars_copy, nic="virtio-net-pci"):
    """
    AAVMF on ``qemu-system-aarch64 -M virt`` under TCG (FIRMWARE-FACTS 7):
    EDK2's PXE client with option 93 = 11.  The NIC's default ROM is x86
    code, so it is removed.
    """
    return GuestSpec(name="arm64", nic=nic, romfile="", memory="512M", qemu=QEMU_ARM64,
                     machine_args=("-machine", "virt", "-cpu", "cortex-a57")
                     + _pflash(AAVMF_CODE, vars_copy, AAVMF_VARS))


def missing(*needs, tools=(QEMU, "ss")):
    """
    Why a lab boot cannot run here, for a skip reason; None if it can.

    Checks that namespaces work, that ``tools`` are installed, and calls
    each of ``needs`` (e.g. :func:`ovmf_firmware`, ``lambda: ipxe_file(name)``),
    which raise :class:`LabError` naming the missing file and its package.
    """
    ok, why = netns.available()
    if not ok:
        return why
    for tool in tools:
        if shutil.which(tool) is None:
            return "%s is not installed (apt-get install qemu-system-x86 iproute2)" % tool
    try:
        for need in needs:
            need()
    except LabError as error:
        return str(error)
    return None


#: OVMF fw_cfg knobs for IPv6 (FIRMWARE-FACTS 8): "pxe6" removes the IPv4 PXE
#: boot option, so PXEv6 is tried first; "http6" removes the whole IPv4 stack,
#: so PXEv6 comes first and, answered without a boot file, falls through to
#: HTTPv6 (HTTPv6 cannot be the very first option: its link-local is not
#: ready yet).
FW_CFG = {
    "pxe6": ("-fw_cfg", "name=opt/org.tianocore/IPv4PXESupport,string=no"),
    "http6": ("-fw_cfg", "name=opt/org.tianocore/IPv4Support,string=no"),
}


def ovmf_ipv6_guest(scenario):
    """OVMF without a NIC ROM (EDK2's own PXE/HTTP), IPv6 first (L{FW_CFG})."""
    return GuestSpec(name="uefi-" + scenario, nic="virtio-net-pci", romfile="",
                     machine_args=("-bios", ovmf_firmware()) + FW_CFG[scenario])


_ANSI = re.compile(r"\x1b(\[[0-9;=?]*[A-Za-z]|[()][0-9A-Za-z])")


def console_text(raw):
    """Serial console bytes as plain lines: ANSI/VT escapes and CRs removed."""
    text = _ANSI.sub("", raw).replace("\r", "")
    return "\n".join(line.rstrip() for line in text.split("\n") if line.strip())
