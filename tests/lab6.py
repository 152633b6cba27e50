"""
Small helpers of the IPv6 tests: the captured fixtures in tests/fixtures6/
and (for the namespace tests) what a lab with fd99::1/64 needs.
"""

import os

FIXTURES6 = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures6")


def load_hex6(name):
    """Payload bytes of tests/fixtures6/NAME.hex (# lines are comments)."""
    path = os.path.join(FIXTURES6, name if name.endswith(".hex") else name + ".hex")
    with open(path, encoding="ascii") as handle:
        text = "".join("".join(line.split()) for line in handle if not line.lstrip().startswith("#"))
    return bytes.fromhex(text)


def fixture6_names():
    return sorted(n[:-4] for n in os.listdir(FIXTURES6) if n.endswith(".hex"))


# ---------------------------------------------------------------------------
# IPv6 boot labs (tests/test_boot6_e2e.py): a tests.vmnet namespace whose
# bridge also holds fd99::1/64, ownsocket configured for it, OVMF told by
# fw_cfg to try IPv6 first.

SERVER6 = "fd99::1"
NETWORK6 = "fd99::/64"
POOL6 = "fd99::100-fd99::1ff"

#: OVMF fw_cfg knobs (FIRMWARE-FACTS §8): "pxe6" removes the IPv4 PXE boot
#: option, so PXEv6 is tried first; "http6" removes the whole IPv4 stack, so
#: PXEv6 comes first and, answered without a boot file, falls through to
#: HTTPv6 (HTTPv6 cannot be the very first option: its link-local is not
#: ready yet).
FW_CFG = {
    "pxe6": ("-fw_cfg", "name=opt/org.tianocore/IPv4PXESupport,string=no"),
    "http6": ("-fw_cfg", "name=opt/org.tianocore/IPv4Support,string=no"),
}


def add_ipv6(ns):
    """fd99::1/64 on the bridge, no DAD, no MLD snooping (the guests'
    multicast to ff02::1:2 must reach the server's socket at once)."""
    ns.run(["sysctl", "-qw", "net.ipv6.conf.%s.accept_dad=0" % ns.bridge])
    ns.run(["ip", "link", "set", ns.bridge, "type", "bridge", "mcast_snooping", "0"])
    ns.run(["ip", "addr", "add", "%s/64" % SERVER6, "dev", ns.bridge, "nodad"])


def ovmf_ipv6_guest(scenario):
    """OVMF without a NIC ROM (EDK2's own PXE/HTTP), IPv6 first."""
    from tests import vmnet
    return vmnet.GuestSpec(name="uefi-" + scenario, nic="virtio-net-pci", romfile="",
                           machine_args=("-bios", vmnet.ovmf_firmware()) + FW_CFG[scenario])


def ownsocket6_config(path, workdir, tftp_root, scenario, dual_stack=False, interface="br0"):
    """
    ownsocket for the IPv6 iPXE chain: OVMF PXEv6 gets snponly.efi by TFTP
    (pxe6) or OVMF HTTPv6 gets it from ownsocket's HTTP (http6, where the
    PXEv6 attempt before it gets no file), iPXE then gets boot.ipxe (the
    stateful iPXE selector).  C{dual_stack} also serves DHCPv4 on the link.
    """
    lines = ["[dhcp]", "interfaces = %s" % interface, "leases = %s/leases.sqlite" % workdir, ""]
    if dual_stack:
        lines += ["[subnet:lab]", "network = 10.99.0.0/24", "pool = 10.99.0.100-10.99.0.200", ""]
    lines += ["[subnet6:lab]", "network = %s" % NETWORK6, "pool = %s" % POOL6,
              "interface = %s" % interface, "lease_time = 600", "",
              "[tftp]", "root = %s" % tftp_root, "",
              "[http]", "enabled = %s" % ("true" if scenario == "http6" else "false"), "",
              "[boot]"]
    if scenario == "pxe6":
        lines += ["arch.7 = snponly.efi"]
    else:
        lines += ["selectors = host, ipxe, uefi-http", "",
                  "[selector:uefi-http]", "arch.16 = http://@server@/snponly.efi"]
    lines += ["", "[selector:ipxe]", "script = boot.ipxe", "mode = stateful", ""]
    with open(path, "w") as handle:
        handle.write("\n".join(lines))
    return path
