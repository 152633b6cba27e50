"""
Throw-away virtual networks with real network-boot firmware on them.

Unit tests with fakes can only check what we *think* firmware sends; this
package lets a test (or a fixture capture script, or bench/boot_bench.py)
put real firmware - SeaBIOS with the iPXE NIC ROM, OVMF's EDK2 PXE and HTTP
boot, OVMF with Secure Boot, AAVMF - on a private Ethernet segment next to a
server under test, and watch the packets.

One module a job:

- :mod:`tests.lab.namespace`: the namespace, its bridge, taps, veth legs,
  addresses (IPv4 and IPv6) and the Router Advertisement sender;
- :mod:`tests.lab.vm`: QEMU guest specs for each firmware, serial console text;
- :mod:`tests.lab.process`: processes started inside, stopped by PID;
- :mod:`tests.lab.capture`: live capture (dumpcap or tcpdump) decoded here;
- :mod:`tests.lab.waits`: bounded waits, listening checks, "did it boot?";
- :mod:`tests.lab.server`: ownsocket and dnsmasq command lines and configs;
- :mod:`tests.lab.roots`: TFTP roots with first stages and marker files;
- :mod:`tests.lab.usage`: CPU time of the guests, the server and the machine, sampled.

The names a test needs are importable from the package itself
(``from tests import lab; lab.NetNamespace()``).  Needs root, ``ip``
(iproute2), ``qemu-system-x86_64``; OVMF (Debian ``ovmf``) and the iPXE ROMs
(``ipxe-qemu``) for the firmware scenarios; ``dumpcap`` (``tshark``) or
``tcpdump`` for :meth:`NetNamespace.capture`.  Standard library only, no
test framework.

Typical use::

    with lab.NetNamespace() as ns:
        cap = ns.capture("udp")
        ns.start(["dnsmasq", "-d", ...], name="dnsmasq", log="/tmp/dnsmasq.log")
        vm = ns.start_guest(lab.uefi_pxe(), serial_log="/tmp/serial.log")
        lab.wait_until(lambda: any(p.dhcp_type == 3 for p in cap.udp(dport=67)), 90)
    # here every process is stopped and the namespace is gone

For veth topologies without guests (real DHCP clients against a server, the
DHCP and PostgreSQL benches) see :mod:`tests.netns`.
"""

from tests.lab.capture import Capture, Packet, decode_frame
from tests.lab.errors import LabError
from tests.lab.namespace import (
    NETWORK6, POOL6, SERVER6, SERVER_ADDRESS, SERVER_NETWORK, Leg, NetNamespace)
from tests.lab.process import Process
from tests.lab.roots import (
    ARM64_GRUB_DIR, FIRST_STAGES, GRUB_TEMPLATE, IPXE_TEMPLATE, PLATFORM_OF, SIGNED_FILES,
    grub_marker_text, ipxe_file, ipxe_marker_text, marker_text, signed_boot_file, write_boot_root,
    write_grub_root)
from tests.lab.server import (
    REPO_ROOT, FleetHost, dnsmasq6_boot_argv, dnsmasq_base_argv, dnsmasq_boot_argv, fleet_config, ownsocket6_config,
    ownsocket_argv, ownsocket_config, ownsocket_env)
from tests.lab.vm import (
    AAVMF_CODE, AAVMF_VARS, DEFAULT_MAC, FW_CFG, OVMF_SB_CODE, OVMF_SB_VARS, QEMU, QEMU_ARM64,
    GuestSpec, arm64_uefi, bios_ipxe, console_text, ipxe_rom, missing, ovmf_firmware, ovmf_ipv6_guest,
    uefi_http, uefi_pxe, uefi_secure_boot)
from tests.lab.usage import Usage
from tests.lab.waits import listening, read_text, wait_for_boot, wait_until

__all__ = [
    "AAVMF_CODE", "AAVMF_VARS", "ARM64_GRUB_DIR", "Capture", "DEFAULT_MAC", "FIRST_STAGES",
    "FW_CFG", "FleetHost", "GRUB_TEMPLATE", "GuestSpec", "IPXE_TEMPLATE", "LabError", "Leg",
    "NETWORK6", "NetNamespace", "OVMF_SB_CODE", "OVMF_SB_VARS", "PLATFORM_OF", "POOL6", "Packet",
    "Process", "QEMU", "QEMU_ARM64", "REPO_ROOT", "SERVER6", "SERVER_ADDRESS", "SERVER_NETWORK",
    "SIGNED_FILES", "arm64_uefi", "bios_ipxe", "console_text", "decode_frame", "dnsmasq_base_argv",
    "dnsmasq6_boot_argv", "dnsmasq_boot_argv", "fleet_config", "grub_marker_text", "ipxe_file", "ipxe_marker_text",
    "ipxe_rom", "listening", "marker_text", "missing", "ovmf_firmware", "ovmf_ipv6_guest", "ownsocket6_config",
    "ownsocket_argv", "ownsocket_config", "ownsocket_env", "read_text", "signed_boot_file",
    "uefi_http", "uefi_pxe", "uefi_secure_boot", "Usage", "wait_for_boot", "wait_until", "write_boot_root",
    "write_grub_root",
]
