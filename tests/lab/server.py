"""
Servers under test in the lab: ownsocket configs for the iPXE, fleet and
IPv6 flows, the command line and environment that run the checkout's
ownsocket under twistd, and dnsmasq set up the same way as the reference.
"""

import os
import sys
from dataclasses import dataclass

from tests.lab.namespace import NETWORK6, POOL6, SERVER6, SERVER_ADDRESS, SERVER_NETWORK

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@dataclass(frozen=True)
class FleetHost:
    """One machine of the fleet config: its [host:NAME] section."""

    name: str
    mac: str
    address: str
    bootfile: "str | None" = None


def _dhcp_lines(workdir, interface, proxy):
    """The [dhcp] section, and the lab's [subnet:lab] unless another server
    hands out the addresses (proxyDHCP: no subnet)."""
    lines = ["[dhcp]", "interfaces = %s" % interface,
             "leases = %s" % os.path.join(workdir, "leases.sqlite")]
    if proxy:
        return lines + ["mode = proxy"]
    return lines + ["", "[subnet:lab]", "network = %s" % SERVER_NETWORK,
                    "pool = 10.99.0.100-10.99.0.200", "router = %s" % SERVER_ADDRESS]


def fleet_config(path, workdir, tftp_root, hosts, interface="br0", tftp_settings=(), ipxe_mode="stateful",
                 proxy=False):
    """
    One ownsocket config for every kind of machine: iPXE chain-loading for
    BIOS and plain UEFI (per-host ``bootfile = snponly.efi``: OVMF with and
    without Secure Boot send identical DHCP, FIRMWARE-FACTS 6b), shim for
    arch 7, GRUB for arch 11, and ``grub/grub.cfg`` and ``boot.ipxe``
    rendered per machine by the ``template`` selector for the ``hosts``
    only.  ``ipxe`` comes before ``host`` so that a host's first stage is
    not handed to its chained iPXE again.
    """
    templates = os.path.join(os.path.dirname(tftp_root), "templates")
    lines = _dhcp_lines(workdir, interface, proxy) + ["", "[tftp]", "root = %s" % tftp_root] + ["%s = %s" % item for item in tftp_settings] + [
             "", "[http]", "enabled = false",
             "", "[boot]", "selectors = template, ipxe, host, arch",
             "default = undionly.kpxe", "arch.0 = undionly.kpxe",
             "arch.7 = efi/shimx64.efi", "arch.11 = grubaa64.efi",
             "", "[selector:ipxe]", "script = boot.ipxe", "mode = %s" % ipxe_mode,
             "", "[selector:template]",
             "grub/grub.cfg = %s" % os.path.join(templates, "grub.cfg.in"),
             "boot.ipxe = %s" % os.path.join(templates, "boot.ipxe.in"),
             "clients = hosts"]
    for host in hosts:
        lines += ["", "[host:%s]" % host.name, "mac = %s" % host.mac, "hostname = %s" % host.name]
        if not proxy:  # another server hands out the addresses
            lines.append("address = %s" % host.address)
        if host.bootfile:
            lines.append("bootfile = %s" % host.bootfile)
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def ownsocket_config(path, workdir, tftp_root, *, mode="server", interface="br0", http=True,
                     ipxe_mode="stateful", script="boot.ipxe"):
    """
    Write an ownsocket config for the iPXE flow on ``interface``; return ``path``.

    ``mode="proxy"``: proxyDHCP, no subnet (another server owns the addresses).
    """
    lines = _dhcp_lines(workdir, interface, mode == "proxy") + [
              "", "[tftp]", "root = %s" % tftp_root,
              "", "[http]", "enabled = %s" % ("true" if http else "false"), "port = 80",
              "", "[boot]", "default = undionly.kpxe", "arch.0 = undionly.kpxe", "arch.7 = snponly.efi",
              "", "[selector:ipxe]", "script = %s" % script, "mode = %s" % ipxe_mode, ""]
    with open(path, "w") as f:
        f.write("\n".join(lines))
    return path


def ownsocket_argv(config, logfile):
    """twistd running the checkout's ownsocket with this interpreter, in the foreground."""
    return [sys.executable, "-c", "import sys; from twisted.scripts.twistd import run; "
            "sys.argv[0] = 'twistd'; run()",
            "-n", "--pidfile=", "--logfile=%s" % logfile, "ownsocket", "--config", config]


def ownsocket_env():
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO_ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def dnsmasq_base_argv(interface, workdir, *, dhcp_range="10.99.0.100,10.99.0.200,255.255.255.0"):
    """dnsmasq as a DHCP server only (no DNS), logging every exchange to stderr."""
    return ["dnsmasq", "-d", "--conf-file=/dev/null", "--port=0",
            "--log-facility=-", "--log-dhcp",
            "--dhcp-leasefile=%s" % os.path.join(workdir, "dnsmasq.leases"),
            "--interface=%s" % interface, "--bind-interfaces",
            "--dhcp-range=%s" % dhcp_range,
            "--dhcp-option=3,%s" % SERVER_ADDRESS]


def dnsmasq6_boot_argv(workdir, tftp_root, scenario, interface="br0", dual_stack=False):
    """
    dnsmasq as the IPv6 reference (FIRMWARE-FACTS 8f): DHCPv6 with RAs on
    ``interface``, iPXE (user class) gets boot.ipxe, OVMF gets snponly.efi
    by TFTP (``scenario`` "pxe6") or by HTTP (the URL and vendor class of
    HTTPv6, "http6"; dnsmasq serves no HTTP: run ``python3 -m http.server``
    next to it).  C{dual_stack} also serves DHCPv4 on the link, set up as
    L{dnsmasq_boot_argv} does for iPXE (the script by TFTP, no-pxedhcp), so
    iPXE's DHCPv4 ends at once as with ownsocket's dual-stack config.
    """
    url = "tftp://[%s]" % SERVER6
    argv = ["dnsmasq", "-d", "--conf-file=/dev/null", "--port=0", "--log-facility=-", "--log-dhcp",
            "--dhcp-leasefile=%s" % os.path.join(workdir, "dnsmasq.leases"),
            "--interface=%s" % interface, "--bind-interfaces",
            "--dhcp-range=%s,%s,64,10m" % tuple(POOL6.split("-")), "--enable-ra", "--dhcp-authoritative",
            "--dhcp-match=set:efi64,option6:61,7", "--dhcp-match=set:efi64http,option6:61,16",
            "--dhcp-userclass=set:ipxe,iPXE", "--tag-if=set:chained,tag:ipxe",
            "--dhcp-option=tag:chained,option6:bootfile-url,%s/boot.ipxe" % url,
            "--enable-tftp", "--tftp-root=%s" % tftp_root]
    if dual_stack:
        argv += ["--dhcp-range=10.99.0.100,10.99.0.200,255.255.255.0",
                 "--dhcp-match=set:ipxe4,175", "--dhcp-option=tag:ipxe4,encap:175,176,1b",
                 "--dhcp-boot=tag:ipxe4,boot.ipxe"]
    if scenario == "pxe6":
        return argv + ["--dhcp-option=tag:efi64,tag:!chained,option6:bootfile-url,%s/snponly.efi" % url]
    return argv + [
        "--dhcp-option=tag:efi64http,tag:!chained,option6:bootfile-url,http://[%s]/snponly.efi" % SERVER6,
        "--dhcp-option-force=tag:efi64http,tag:!chained,option6:16,PX,HTTPClient"]


def dnsmasq_boot_argv(interface, workdir, tftp_root, http_url=None):
    """
    dnsmasq set up for the same iPXE flow as ownsocket, the way it is usually
    done: option 175 tags iPXE (``dhcp-match=set:ipxe,175``), iPXE gets the
    script, everyone else a first stage by architecture (``tag:!ipxe``), and
    no-pxedhcp (175.176) for iPXE as in dnsmasq's example config.

    dnsmasq cannot tell the iPXE *ROM* from the chained iPXE (FIRMWARE-FACTS
    1b), so a BIOS guest whose ROM is iPXE gets ``boot.ipxe`` straight away
    and never fetches undionly.kpxe (no loop: the script is not a first stage).
    ``http_url``: the first stage for UEFI HTTP boot (dnsmasq serves no HTTP;
    run ``python3 -m http.server`` next to it).
    """
    argv = dnsmasq_base_argv(interface, workdir) + [
        "--enable-tftp", "--tftp-root=%s" % tftp_root,
        "--dhcp-match=set:ipxe,175",
        "--dhcp-match=set:efi64,option:client-arch,7",
        "--dhcp-match=set:efihttp,option:client-arch,16",
        "--dhcp-option=tag:ipxe,encap:175,176,1b",
        "--dhcp-boot=tag:ipxe,boot.ipxe",
        "--dhcp-boot=tag:!ipxe,tag:efi64,snponly.efi",
        "--dhcp-boot=tag:!ipxe,tag:!efi64,tag:!efihttp,undionly.kpxe",
    ]
    if http_url:
        argv += ["--dhcp-option-force=tag:efihttp,60,HTTPClient",
                 "--dhcp-boot=tag:!ipxe,tag:efihttp,%s" % http_url]
    return argv


def ownsocket6_config(path, workdir, tftp_root, scenario, dual_stack=False, interface="br0"):
    """
    ownsocket for the IPv6 iPXE chain: OVMF PXEv6 gets snponly.efi by TFTP
    (pxe6) or OVMF HTTPv6 gets it from ownsocket's HTTP (http6, where the
    PXEv6 attempt before it gets no file), iPXE then gets boot.ipxe (the
    stateful iPXE selector).  C{dual_stack} also serves DHCPv4 on the link.
    """
    lines = ["[dhcp]", "interfaces = %s" % interface, "leases = %s/leases.sqlite" % workdir, ""]
    if dual_stack:
        lines += ["[subnet:lab]", "network = %s" % SERVER_NETWORK, "pool = 10.99.0.100-10.99.0.200", ""]
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
