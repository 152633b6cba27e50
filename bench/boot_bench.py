#!/usr/bin/env python3
"""
Boot time: real firmware in QEMU booting from ownsocket and from dnsmasq.

For each scenario the clock runs from QEMU's start to the moment the guest's
serial console shows the line printed by ``marker-${platform}.ipxe``, the
last file of the chain firmware -> first stage -> iPXE -> boot.ipxe ->
marker (the same flow as tests/test_boot_e2e.py):

  bios       SeaBIOS + iPXE NIC ROM (e1000), TFTP
  uefi-pxe   OVMF's own PXE client (virtio-net, no ROM), TFTP
  uefi-http  OVMF HTTP boot (fw_cfg: IPv4/IPv6 PXE off), first stage over HTTP

ownsocket runs with its stateful iPXE selector (a MAC gets the script only
after it fetched a first stage) and serves HTTP itself.  dnsmasq 2.90 runs the
usual set-up: ``dhcp-match=set:ipxe,175``, ``dhcp-boot=tag:ipxe,boot.ipxe``,
``tag:!ipxe`` first stages per architecture, ``encap:175,176,1b``
(no-pxedhcp) for iPXE, ``dhcp-option-force=60,HTTPClient`` plus an http://
boot URL for HTTP boot.  dnsmasq has no HTTP server: for uefi-http its runs
use ``python3 -m http.server`` in the namespace.  dnsmasq cannot tell the
iPXE ROM from the chained iPXE, so its BIOS guest gets boot.ipxe straight
from the ROM and never loads undionly.kpxe (one iPXE stage fewer than
ownsocket's stateful flow; ``--servers ...,ownsocket-stateless`` adds
ownsocket with ``[selector:ipxe] mode = stateless``, the same shortcut).

By default a Router Advertisement sender runs on the bridge, which ends
iPXE's ~13 s IPv6 autoconfiguration wait per iPXE stage (the same for both
servers); ``--no-ra`` measures without it, i.e. with that fixed delay.

Only one QEMU runs at a time; runs of the two servers alternate so that they
see the same machine load.  Needs root (network namespaces), QEMU, OVMF,
ipxe, ipxe-qemu and dnsmasq.  Usage:

    sudo python3 bench/boot_bench.py            # 3 runs each, median
    sudo python3 bench/boot_bench.py --quick    # 1 run each
    sudo python3 bench/boot_bench.py --runs 3 --scenarios bios --no-ra --keep /tmp/bb
"""

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

from tests import vmnet  # noqa: E402

SCENARIOS = {
    "bios": (vmnet.bios_ipxe, "pcbios"),
    "uefi-pxe": (vmnet.uefi_pxe, "efi"),
    "uefi-http": (vmnet.uefi_http, "efi"),
}
SERVERS = ("ownsocket", "dnsmasq", "ownsocket-stateless")
HTTP_URL = "http://%s/snponly.efi" % vmnet.SERVER_ADDRESS


def fetched_files(server, workdir):
    """Files the guest fetched, in order, with how (for the notes column)."""
    out = []
    if server.startswith("ownsocket"):
        for line in vmnet.read_text(os.path.join(workdir, "ownsocket.log")).splitlines():
            m = re.search(r"tftp peer=\S+ file=(\S+) result=ok", line)
            if m:
                out.append(m.group(1))
            m = re.search(r"http peer=\S+ method=GET path=/(\S+) status=200", line)
            if m:
                out.append(m.group(1) + "(http)")
    else:
        # In these flows HTTP only ever carries the first stage: list it first.
        for line in vmnet.read_text(os.path.join(workdir, "http.log")).splitlines():
            m = re.search(r'"GET /(\S+) HTTP/[\d.]+" 200', line)
            if m:
                out.append(m.group(1) + "(http)")
        aborted = False
        for line in vmnet.read_text(os.path.join(workdir, "dnsmasq.log")).splitlines():
            if "dnsmasq-tftp" not in line:
                continue
            m = re.search(r"dnsmasq-tftp\[\d+\]: sent \S*/([^/\s]+) to", line)
            if m:
                # dnsmasq logs OVMF's aborted size probe ("error 8 User aborted")
                # as "sent" too.
                out.append(m.group(1) + ("(size probe)" if aborted else ""))
            aborted = "error 8 " in line
    return out


def one_boot(scenario, server, args, keep_root):
    """Boot once; return (seconds to the marker or None, fetched files, workdir)."""
    spec_factory, platform = SCENARIOS[scenario]
    workdir = tempfile.mkdtemp(prefix="boot-%s-%s-" % (scenario, server), dir=keep_root)
    os.chmod(workdir, 0o755)
    root = os.path.join(workdir, "tftpboot")
    markers = vmnet.write_boot_root(root, uuid.uuid4().hex[:8])
    serial = os.path.join(workdir, "serial.log")
    with vmnet.NetNamespace() as ns:
        if not args.no_ra:
            ns.start_router_advertiser(log=os.path.join(workdir, "ra.log"))
        if server.startswith("ownsocket"):
            log = os.path.join(workdir, "ownsocket.log")
            cfg = vmnet.ownsocket_config(os.path.join(workdir, "ownsocket.ini"), workdir, root,
                                         ipxe_mode="stateless" if server.endswith("stateless") else "stateful")
            proc = ns.start(vmnet.ownsocket_argv(cfg, log), name="ownsocket",
                            log=os.path.join(workdir, "ownsocket.out"), env=vmnet.ownsocket_env(), cwd=workdir)
            watch = [proc]
            tcp = (80,)
            pattern = re.compile(r"tftp peer=\S+ file=marker-%s\.ipxe result=ok" % platform)
            server_log = log
        else:
            log = os.path.join(workdir, "dnsmasq.log")
            http_url = HTTP_URL if scenario == "uefi-http" else None
            proc = ns.start(vmnet.dnsmasq_boot_argv(ns.bridge, workdir, root, http_url),
                            name="dnsmasq", log=log)
            watch = [proc]
            tcp = ()
            if http_url:
                watch.append(ns.start([sys.executable, "-m", "http.server", "--bind", vmnet.SERVER_ADDRESS,
                                       "--directory", root, "80"], name="http.server",
                                      log=os.path.join(workdir, "http.log")))
                tcp = (80,)
            pattern = re.compile(r"dnsmasq-tftp\[\d+\]: sent \S*/marker-%s\.ipxe to" % platform)
            server_log = log
        if not vmnet.wait_until(lambda: vmnet.listening(ns, udp=(67, 69), tcp=tcp), 30,
                                interval=0.3, watch=watch):
            raise SystemExit("%s did not start:\n%s" % (server, vmnet.read_text(watch[0].log)[-3000:]))
        vm = ns.start_guest(spec_factory(), serial_log=serial, log=os.path.join(workdir, "qemu.log"))
        seconds, server_ok = vmnet.wait_for_boot(
            vm, serial, markers[platform], lambda: pattern.search(vmnet.read_text(server_log)),
            args.timeout, watch=watch)
    files = fetched_files(server, workdir)
    if seconds is None or not server_ok:
        tail = "\n".join(vmnet.console_text(vmnet.read_text(serial)).splitlines()[-15:])
        print("  !! %s/%s: no boot (marker %s, server log %s); files %s; serial tail:\n%s\n  (kept in %s)"
              % (scenario, server, seconds, server_ok, files, tail, workdir), flush=True)
        return None, files, workdir
    if not keep_root:
        shutil.rmtree(workdir, ignore_errors=True)
    return seconds, files, workdir


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="one run per scenario and server")
    ap.add_argument("--runs", type=int, default=3, help="runs per scenario and server (median shown)")
    ap.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma separated: %s" % ", ".join(SCENARIOS))
    ap.add_argument("--servers", default="ownsocket,dnsmasq", help="comma separated: %s" % ", ".join(SERVERS))
    ap.add_argument("--no-ra", action="store_true",
                    help="no IPv6 Router Advertisement on the bridge (iPXE then waits ~13 s per stage)")
    ap.add_argument("--timeout", type=float, default=150, help="seconds per boot before giving up")
    ap.add_argument("--keep", help="keep every run's logs, configs and serial consoles under this folder")
    args = ap.parse_args()
    runs = 1 if args.quick else args.runs
    scenarios = [s for s in args.scenarios.split(",") if s]
    servers = [s for s in args.servers.split(",") if s]
    for s in scenarios:
        if s not in SCENARIOS:
            ap.error("unknown scenario %s" % s)
    for s in servers:
        if s not in SERVERS:
            ap.error("unknown server %s" % s)
    if os.geteuid() != 0:
        raise SystemExit("needs root (network namespaces, tap devices, ports 67/69/80)")
    for tool in (vmnet.QEMU, "dnsmasq", "ss"):
        if shutil.which(tool) is None:
            raise SystemExit("missing %s: apt-get install qemu-system-x86 ovmf ipxe ipxe-qemu dnsmasq iproute2"
                             % tool)
    if args.keep:
        os.makedirs(args.keep, exist_ok=True)
        os.chmod(args.keep, 0o755)

    def version(cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.splitlines()[0]
        except Exception:
            return "?"

    print("boot bench: %s, %d run(s) each, %s, load average %s" % (
        time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), runs,
        "no Router Advertisement (iPXE waits ~13 s for IPv6 per stage)" if args.no_ra
        else "Router Advertisement on the bridge", " ".join(open("/proc/loadavg").read().split()[:3])))
    print("  %s; %s; TCG" % (version(["dnsmasq", "--version"]), version([vmnet.QEMU, "--version"])))
    results = {}
    for run in range(runs):
        for scenario in scenarios:
            for server in servers:
                seconds, files, _ = one_boot(scenario, server, args, args.keep)
                results.setdefault((scenario, server), []).append((seconds, files))
                print("  run %d %-9s %-19s %s  %s" % (run + 1, scenario, server,
                                                       "%6.1f s" % seconds if seconds is not None else "  FAIL  ",
                                                       " -> ".join(files)), flush=True)

    def median(key):
        times = [s for s, _ in results.get(key, []) if s is not None]
        if len(times) < len(results.get(key, [])) or not times:
            return None
        return statistics.median(times)

    print()
    header = "| scenario  | " + " | ".join("%s (s)" % s for s in servers)
    if "ownsocket" in servers and "dnsmasq" in servers:
        header += " | ownsocket/dnsmasq"
    print(header + " |")
    print("|" + "---|" * (header.count("|")))
    for scenario in scenarios:
        cells = []
        for server in servers:
            m = median((scenario, server))
            cells.append("FAIL" if m is None else "%.1f" % m)
        row = "| %-9s | " % scenario + " | ".join(cells)
        if "ownsocket" in servers and "dnsmasq" in servers:
            a, b = median((scenario, "ownsocket")), median((scenario, "dnsmasq"))
            row += " | " + ("%.2f" % (a / b) if a and b else "-")
        print(row + " |")
    print("\nseconds = median over %d run(s), from QEMU start to the marker line on the serial console." % runs)
    print("files each server sent (last run):")
    for scenario in scenarios:
        for server in servers:
            runs_ = results.get((scenario, server), [])
            if runs_:
                print("  %-9s %-19s %s" % (scenario, server, " -> ".join(runs_[-1][1])))


if __name__ == "__main__":
    main()
