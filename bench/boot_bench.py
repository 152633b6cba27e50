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
  uefi-sb    OVMF Secure Boot: shim -> efi/grubx64.efi (signed network GRUB)
             -> /grub/grub.cfg -> /marker-sb1-sb (a GRUB script)
  arm64      AAVMF (qemu-system-aarch64 -M virt): grubaa64.efi -> /grub/grub.cfg
             -> /marker-arm1
  fleet      the four machines bios1 (SeaBIOS iPXE), pxe1 (OVMF PXE, iPXE),
             sb1 (Secure Boot) and arm1 (arm64) started at once on one bridge;
             the time is the last of the four markers
  pxe6       IPv6 only: OVMF PXEv6 (fw_cfg IPv4PXESupport=no) -> DHCPv6 with
             option 59 tftp://[fd99::1]/snponly.efi -> iPXE over IPv6 (its
             own RA-triggered DHCPv6) -> boot.ipxe -> marker (FIRMWARE-FACTS
             §8a, the flow of tests/test_boot6_e2e.py)
  http6      IPv6 only: OVMF (IPv4Support=no) PXEv6 answered without a file,
             then HTTPv6 -> http://[fd99::1]/snponly.efi -> iPXE -> marker
  pxe6-dual, http6-dual
             the same on a dual-stack link: the server also serves DHCPv4
             there, so iPXE's DHCPv4 ends at once instead of timing out
             (15 s of dnsmasq's 27.5 s IPv6-only run, FIRMWARE-FACTS §8a)

For the GRUB scenarios ownsocket renders /grub/grub.cfg and boot.ipxe per
machine from templates (tests.lab.fleet_config).  dnsmasq cannot generate
files: it gets ``dhcp-no-override`` (the boot file in the BOOTP file field,
where shim looks), ``dhcp-host`` entries with the same addresses and names,
one static grub.cfg that picks the marker by ``$net_default_mac`` and one
static boot.ipxe that chains ``marker-${hostname}.ipxe`` (option 12 from
dhcp-host): the same files on the wire, the per-machine part done by GRUB
and iPXE instead.

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

For the IPv6 scenarios each server sends its own Router Advertisements
(ownsocket from its [subnet6]; dnsmasq with ``enable-ra``) and no other RA
sender runs.  dnsmasq gets FIRMWARE-FACTS §8f's configuration
(``dhcp-authoritative`` for preference 255, ``option6:bootfile-url``, its
``PX,HTTPClient`` work-around for the vendor class) and, on the dual-stack
link, the usual DHCPv4 iPXE set-up as above; python's http.server serves
its HTTPv6 files.

By default a Router Advertisement sender runs on the bridge, which ends
iPXE's ~13 s IPv6 autoconfiguration wait per iPXE stage (the same for both
servers); ``--no-ra`` measures without it, i.e. with that fixed delay.

Only one QEMU runs at a time (the fleet's four at once); runs of the two
servers are interleaved so that they see the same machine load.
``--paired`` instead boots each scenario for every server at the same
moment, each in its own namespace: on a machine that others load
unpredictably both then share the same load (each guest gets less CPU, so
absolute times are longer).  Needs root (network namespaces), QEMU, OVMF,
ipxe, ipxe-qemu and dnsmasq.  Usage:

    sudo python3 bench/boot_bench.py            # 3 runs each, median
    sudo python3 bench/boot_bench.py --quick    # 1 run each
    sudo python3 bench/boot_bench.py --runs 3 --scenarios bios --no-ra --keep /tmp/bb
    sudo python3 bench/boot_bench.py --runs 2 --pcap --scenarios pxe6,http6,pxe6-dual,http6-dual
    sudo python3 bench/boot_bench.py --runs 4 --pcap --paired --scenarios pxe6,arm64,fleet

``--pcap`` keeps a capture of each run's bridge and adds a table of the
seconds from the guest's first DHCP/DHCPv6 message or Router Solicitation
to its marker (the firmware's start-up before it varies by seconds under
TCG on a busy machine, whatever the server).  It also samples the CPU time
of each QEMU, of the server and of the whole machine (tests.lab.usage) and
reports the start-up window, QEMU start to the guest's first frame: its
length, the CPU the firmware used in it (the same work whichever server
runs), the server's CPU meanwhile and everyone else's.  ``run.json`` in
each run's folder keeps the harness's own timeline (capture, server start,
listening, QEMU start; wall clock, as the pcap's timestamps), the QEMU
command line and these figures.  The IPv6 scenarios always run ownsocket's
stateful iPXE selector (``ownsocket-stateless`` is the same there).

Runs alternate which server boots first (ownsocket, dnsmasq in odd runs;
dnsmasq, ownsocket in even ones), and the QEMU binaries and firmware
images are read once before the first run, so no server pays alone for a
cold page cache.
"""

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

from tests import lab  # noqa: E402

SCENARIOS = {
    "bios": (lab.bios_ipxe, "pcbios"),
    "uefi-pxe": (lab.uefi_pxe, "efi"),
    "uefi-http": (lab.uefi_http, "efi"),
}
GRUB_SCENARIOS = ("uefi-sb", "arm64", "fleet")
#: IPv6 scenarios: the OVMF flow (FIRMWARE-FACTS 8, lab.ovmf_ipv6_guest) and
#: whether the link is dual stack.
IPV6_SCENARIOS = {"pxe6": ("pxe6", False), "http6": ("http6", False),
                  "pxe6-dual": ("pxe6", True), "http6-dual": ("http6", True)}
SERVERS = ("ownsocket", "dnsmasq", "ownsocket-stateless")
FLEET = {
    "bios1": lab.FleetHost("bios1", "52:54:00:99:01:01", "10.99.0.11"),
    "pxe1": lab.FleetHost("pxe1", "52:54:00:99:01:02", "10.99.0.12", bootfile="snponly.efi"),
    "sb1": lab.FleetHost("sb1", "52:54:00:99:01:03", "10.99.0.13"),
    "arm1": lab.FleetHost("arm1", "52:54:00:99:01:04", "10.99.0.14"),
}
#: Which machines each GRUB scenario boots, and the marker each must reach.
GRUB_GUESTS = {"uefi-sb": ("sb1",), "arm64": ("arm1",), "fleet": ("bios1", "pxe1", "sb1", "arm1")}
MARKER_KIND = {"bios1": "ipxe", "pxe1": "ipxe", "sb1": "sb", "arm1": "grub"}
MARKER_FILE = {"bios1": "marker-bios1.ipxe", "pxe1": "marker-pxe1.ipxe", "sb1": "marker-sb1-sb",
               "arm1": "marker-arm1"}
HTTP_URL = "http://%s/snponly.efi" % lab.SERVER_ADDRESS


def fetched_files(server, workdir):
    """Files the guest fetched, in order, with how (for the notes column)."""
    out = []
    if server.startswith("ownsocket"):
        for line in lab.read_text(os.path.join(workdir, "ownsocket.log")).splitlines():
            m = re.search(r"tftp peer=\S+ file=(\S+) result=ok", line)
            if m:
                out.append(m.group(1))
            m = re.search(r"http peer=\S+ method=GET path=/(\S+) status=200", line)
            if m:
                out.append(m.group(1) + "(http)")
    else:
        # In these flows HTTP only ever carries the first stage: list it first.
        for line in lab.read_text(os.path.join(workdir, "http.log")).splitlines():
            m = re.search(r'"GET /(\S+) HTTP/[\d.]+" 200', line)
            if m:
                out.append(m.group(1) + "(http)")
        aborted = False
        for line in lab.read_text(os.path.join(workdir, "dnsmasq.log")).splitlines():
            if "dnsmasq-tftp" not in line:
                continue
            m = re.search(r"dnsmasq-tftp\[\d+\]: sent \S*/([^/\s]+) to", line)
            if m:
                # dnsmasq logs OVMF's aborted size probe ("error 8 User aborted")
                # as "sent" too.
                out.append(m.group(1) + ("(size probe)" if aborted else ""))
            aborted = "error 8 " in line
    return out


def asks_for_configuration(packet):
    """A DHCPv4 or DHCPv6 client message, or an ICMPv6 Router Solicitation:
    the guest's first question to the network (IPv6 without extension
    headers, as these messages are sent)."""
    if packet.ethertype == 0x0800:
        return packet.dport == 67
    frame = packet.frame
    if packet.ethertype != 0x86DD or len(frame) < 58:
        return False
    if frame[20] == 58:  # ICMPv6
        return frame[54] == 133
    return frame[20] == 17 and frame[56:58] == b"\x02\x23"  # UDP to 547


def network_seconds(cap, mac, seconds, wall_start):
    """
    Seconds from the guest's first DHCP/DHCPv6 message or Router
    Solicitation to its marker: the part of the boot that a server can
    change.  Under TCG on a shared machine the firmware's start-up before
    that varies by seconds from run to run, the same for both servers;
    this leaves it out.  None without a capture or a marker.
    """
    if cap is None or seconds is None:
        return None
    first = min((p.time for p in cap.snapshot() if p.src_mac == mac.lower() and asks_for_configuration(p)),
                default=None)
    return None if first is None else seconds - (first - wall_start)


class RunRecord:
    """
    What ``--pcap`` keeps of one run besides the capture (``run.json`` in
    its folder): when the harness captured, started the server, saw it
    listen and started each QEMU (wall clock, comparable with the pcap's
    timestamps), and the CPU the guests, the server and everything else on
    the machine used meanwhile (L{lab.Usage}).  From these, the start-up
    window from QEMU's start to the guest's first frame can be compared
    between servers without trusting wall-clock time alone on a shared
    machine.  Without ``--pcap`` it records nothing.
    """

    def __init__(self, ns, workdir, args):
        self.workdir = workdir
        self.events = {}
        self.cap = ns.capture(pcap=os.path.join(workdir, "bridge.pcap")) if args.pcap else None
        self.usage = lab.Usage() if args.pcap else None
        self.mark("capture")

    def mark(self, name, when=None):
        self.events[name] = time.time() if when is None else when

    def watch(self, name, proc):
        """Sample ``proc``'s CPU time as ``name``."""
        if self.usage is not None:
            self.usage.watch(name, proc.pid)

    def started(self, name, proc):
        """``proc`` (a QEMU guest, a server) started now."""
        self.mark(name, proc.started_wall)
        self.watch(name, proc)

    def stop(self):
        if self.cap is not None:
            self.cap.stop()
        if self.usage is not None:
            self.usage.stop()

    def startup(self, guest, mac):
        """
        The start-up window of ``guest`` (its name in L{started}): seconds
        from its QEMU's start to its first frame on the bridge, the CPU
        seconds its QEMU, the server and all other processes used in that
        window, and the frames others sent on the bridge meanwhile.  None
        without a capture or if the guest sent nothing.
        """
        if self.cap is None or guest not in self.events:
            return None
        start, frames = self.events[guest], self.cap.snapshot()
        first = min((p.time for p in frames if p.src_mac == mac.lower()), default=None)
        if first is None:
            return None
        used = self.usage.between(start, first)
        return {"first_frame": first - start, "qemu_cpu": used.get(guest), "server_cpu": used.get("server"),
                "other_guests_cpu": sum(v for k, v in used.items()
                                        if k not in ("wall", "machine", "others", guest, "server")),
                "others_cpu": used["others"], "machine_cpu": used["machine"],
                "frames_before": sum(1 for p in frames if start <= p.time < first and p.src_mac != mac.lower()),
                "load": open("/proc/loadavg").read().split()[0]}

    def save(self, **facts):
        """run.json: the timeline, C{facts}, and the CPU samples (every
        0.25 s: wall time, the machine's busy CPU s, each process's CPU s)."""
        if self.cap is None:
            return
        samples, last = [], None
        for sample in self.usage.samples:
            if last is None or sample[0] - last >= 0.25:
                samples.append(sample)
                last = sample[0]
        with open(os.path.join(self.workdir, "run.json"), "w") as f:
            json.dump({"events": self.events, "cpu_samples": samples, **facts}, f, indent=1, sort_keys=True)


def one_boot(scenario, server, args, keep_root, ready=lambda: None):
    """Boot once; return (seconds to the marker or None, fetched files, workdir)."""
    spec_factory, platform = SCENARIOS[scenario]
    workdir = tempfile.mkdtemp(prefix="boot-%s-%s-" % (scenario, server), dir=keep_root)
    os.chmod(workdir, 0o755)
    root = os.path.join(workdir, "tftpboot")
    markers = lab.write_boot_root(root, uuid.uuid4().hex[:8])
    serial = os.path.join(workdir, "serial.log")
    with lab.NetNamespace() as ns:
        record = RunRecord(ns, workdir, args)
        if not args.no_ra:
            ns.start_router_advertiser(log=os.path.join(workdir, "ra.log"))
        if server.startswith("ownsocket"):
            log = os.path.join(workdir, "ownsocket.log")
            cfg = lab.ownsocket_config(os.path.join(workdir, "ownsocket.ini"), workdir, root,
                                       ipxe_mode="stateless" if server.endswith("stateless") else "stateful")
            proc = ns.start(lab.ownsocket_argv(cfg, log), name="ownsocket",
                            log=os.path.join(workdir, "ownsocket.out"), env=lab.ownsocket_env(), cwd=workdir)
            watch = [proc]
            tcp = (80,)
            pattern = re.compile(r"tftp peer=\S+ file=marker-%s\.ipxe result=ok" % platform)
            server_log = log
        else:
            log = os.path.join(workdir, "dnsmasq.log")
            http_url = HTTP_URL if scenario == "uefi-http" else None
            proc = ns.start(lab.dnsmasq_boot_argv(ns.bridge, workdir, root, http_url),
                            name="dnsmasq", log=log)
            watch = [proc]
            tcp = ()
            if http_url:
                watch.append(ns.start([sys.executable, "-m", "http.server", "--bind", lab.SERVER_ADDRESS,
                                       "--directory", root, "80"], name="http.server",
                                      log=os.path.join(workdir, "http.log")))
                tcp = (80,)
            pattern = re.compile(r"dnsmasq-tftp\[\d+\]: sent \S*/marker-%s\.ipxe to" % platform)
            server_log = log
        record.started("server", watch[0])
        if not lab.wait_until(lambda: lab.listening(ns, udp=(67, 69), tcp=tcp), 30,
                              interval=0.3, watch=watch):
            raise SystemExit("%s did not start:\n%s" % (server, lab.read_text(watch[0].log)[-3000:]))
        record.mark("listening")
        ready()
        vm = ns.start_guest(spec_factory(), serial_log=serial, log=os.path.join(workdir, "qemu.log"))
        record.started("guest", vm)
        seconds, server_ok = lab.wait_for_boot(
            vm, serial, markers[platform], lambda: pattern.search(lab.read_text(server_log)),
            args.timeout, watch=watch)
        net, startup = _record_boot(record, vm, seconds)
    return _outcome(scenario, server, args, keep_root, workdir, serial, seconds, server_ok, net, startup)


def _record_boot(record, vm, seconds):
    """Stop the capture and keep the run's figures: (network seconds,
    start-up window) of the one guest."""
    record.stop()
    net = network_seconds(record.cap, lab.DEFAULT_MAC, seconds, vm.started_wall)
    startup = record.startup("guest", lab.DEFAULT_MAC)
    record.save(seconds=seconds, network_seconds=net, startup=startup, argv=vm.argv)
    return net, startup


def _outcome(scenario, server, args, keep_root, workdir, serial, seconds, server_ok, net, startup):
    """(seconds, files, workdir, network seconds, start-up window) of one
    boot, or a report of why it did not boot (its folder kept); one_boot
    and one_boot6 alike."""
    files = fetched_files(server, workdir)
    if seconds is None or not server_ok:
        tail = "\n".join(lab.console_text(lab.read_text(serial)).splitlines()[-15:])
        print("  !! %s/%s: no boot (marker %s, server log %s); files %s; serial tail:\n%s\n  (kept in %s)"
              % (scenario, server, seconds, server_ok, files, tail, workdir), flush=True)
        return None, files, workdir, None, startup
    if not keep_root and not args.pcap:
        shutil.rmtree(workdir, ignore_errors=True)
    return seconds, files, workdir, net, startup


def one_boot6(scenario, server, args, keep_root, ready=lambda: None):
    """
    One IPv6 boot (see IPV6_SCENARIOS); returns what L{one_boot} returns.
    The namespace, guest and server configs are tests/lab's, the same as
    tests/test_boot6_e2e.py uses.
    """
    flow, dual_stack = IPV6_SCENARIOS[scenario]
    workdir = tempfile.mkdtemp(prefix="boot-%s-%s-" % (scenario, server), dir=keep_root)
    os.chmod(workdir, 0o755)
    root = os.path.join(workdir, "tftpboot")
    marker = lab.write_boot_root(root, uuid.uuid4().hex[:8])["efi"]
    serial = os.path.join(workdir, "serial.log")
    udp = (69, 547) + ((67,) if dual_stack else ())
    tcp = (80,) if flow == "http6" else ()
    with lab.NetNamespace() as ns:
        ns.add_ipv6()
        record = RunRecord(ns, workdir, args)
        if server.startswith("ownsocket"):
            log = os.path.join(workdir, "ownsocket.log")
            cfg = lab.ownsocket6_config(os.path.join(workdir, "ownsocket.ini"), workdir, root, flow,
                                        dual_stack=dual_stack)
            watch = [ns.start(lab.ownsocket_argv(cfg, log), name="ownsocket", env=lab.ownsocket_env(),
                              log=os.path.join(workdir, "ownsocket.out"), cwd=workdir)]
            pattern = re.compile(r"tftp peer=\S+ file=marker-efi\.ipxe result=ok")
        else:
            log = os.path.join(workdir, "dnsmasq.log")
            watch = [ns.start(lab.dnsmasq6_boot_argv(workdir, root, flow, dual_stack=dual_stack),
                              name="dnsmasq", log=log)]
            if flow == "http6":
                watch.append(ns.start([sys.executable, "-m", "http.server", "--bind", lab.SERVER6,
                                       "--directory", root, "80"], name="http.server",
                                      log=os.path.join(workdir, "http.log")))
            pattern = re.compile(r"dnsmasq-tftp\[\d+\]: sent \S*/marker-efi\.ipxe to")
        record.started("server", watch[0])
        if not lab.wait_until(lambda: lab.listening(ns, udp=udp, tcp=tcp), 30, interval=0.3, watch=watch):
            raise SystemExit("%s did not start:\n%s" % (server, lab.read_text(watch[0].log)[-3000:]))
        record.mark("listening")
        ready()
        vm = ns.start_guest(lab.ovmf_ipv6_guest(flow), serial_log=serial, log=os.path.join(workdir, "qemu.log"))
        record.started("guest", vm)
        seconds, server_ok = lab.wait_for_boot(vm, serial, marker, lambda: pattern.search(lab.read_text(log)),
                                               args.timeout, watch=watch)
        net, startup = _record_boot(record, vm, seconds)
    return _outcome(scenario, server, args, keep_root, workdir, serial, seconds, server_ok, net, startup)


def dnsmasq_grub_argv(interface, workdir, tftp_root):
    """dnsmasq for the shim/GRUB/iPXE fleet flows (see the module docstring)."""
    argv = lab.dnsmasq_base_argv(interface, workdir) + [
        "--enable-tftp", "--tftp-root=%s" % tftp_root,
        "--dhcp-no-override",
        "--dhcp-match=set:ipxe,175",
        "--dhcp-option=tag:ipxe,encap:175,176,1b",
        "--dhcp-match=set:efi64,option:client-arch,7",
        "--dhcp-match=set:arm64,option:client-arch,11",
        "--dhcp-boot=tag:ipxe,boot.ipxe",
        "--dhcp-boot=tag:!ipxe,tag:pxe1,snponly.efi",
        "--dhcp-boot=tag:!ipxe,tag:efi64,tag:!pxe1,efi/shimx64.efi",
        "--dhcp-boot=tag:!ipxe,tag:arm64,grubaa64.efi",
        "--dhcp-boot=tag:!ipxe,tag:!efi64,tag:!arm64,undionly.kpxe",
    ]
    for host in FLEET.values():
        tag = "set:%s," % host.name if host.name == "pxe1" else ""
        argv.append("--dhcp-host=%s,%s%s,%s" % (host.mac, tag, host.address, host.name))
    return argv


def write_static_fleet_files(root):
    """What dnsmasq serves instead of the generated files (one for everyone)."""
    os.makedirs(os.path.join(root, "grub"), exist_ok=True)
    with open(os.path.join(root, "grub", "grub.cfg"), "w") as f:
        for host in FLEET.values():
            f.write('if [ "$net_default_mac" = "%s" ]; then set host=%s; fi\n' % (host.mac, host.name))
        f.write('set sb=\nif [ "$shim_lock" = "y" ]; then set sb=-sb; fi\nsource /marker-${host}$sb\n')
    with open(os.path.join(root, "boot.ipxe"), "w") as f:
        f.write("#!ipxe\nchain marker-${hostname}.ipxe\n")


def one_grub_boot(scenario, server, args, keep_root, ready=lambda: None):
    """
    Boot the scenario's machines at once; return ({host: seconds to its
    marker or None}, fetched files per host, workdir).
    """
    hosts = GRUB_GUESTS[scenario]
    workdir = tempfile.mkdtemp(prefix="boot-%s-%s-" % (scenario, server), dir=keep_root)
    os.chmod(workdir, 0o755)
    root = os.path.join(workdir, "tftpboot")
    markers = lab.write_grub_root(root, uuid.uuid4().hex[:8], list(FLEET), arm64="arm1" in hosts)
    with lab.NetNamespace(taps=len(hosts)) as ns:
        record = RunRecord(ns, workdir, args)
        if not args.no_ra:
            ns.start_router_advertiser(log=os.path.join(workdir, "ra.log"))
        if server.startswith("ownsocket"):
            log = os.path.join(workdir, "ownsocket.log")
            cfg = lab.fleet_config(os.path.join(workdir, "ownsocket.ini"), workdir, root, FLEET.values(),
                                   ipxe_mode="stateless" if server.endswith("stateless") else "stateful")
            proc = ns.start(lab.ownsocket_argv(cfg, log), name="ownsocket",
                            log=os.path.join(workdir, "ownsocket.out"), env=lab.ownsocket_env(), cwd=workdir)

            def sent(host):
                return re.compile(r"tftp peer=%s:\d+ file=/?%s result=ok" % (
                    re.escape(FLEET[host].address), re.escape(MARKER_FILE[host])))
        else:
            log = os.path.join(workdir, "dnsmasq.log")
            write_static_fleet_files(root)
            proc = ns.start(dnsmasq_grub_argv(ns.bridge, workdir, root), name="dnsmasq", log=log)

            def sent(host):
                return re.compile(r"dnsmasq-tftp\[\d+\]: sent \S*/%s to %s\b" % (
                    re.escape(MARKER_FILE[host]), re.escape(FLEET[host].address)))
        record.started("server", proc)
        if not lab.wait_until(lambda: lab.listening(ns, udp=(67, 69)), 30, interval=0.3, watch=[proc]):
            raise SystemExit("%s did not start:\n%s" % (server, lab.read_text(proc.log)[-3000:]))
        record.mark("listening")
        guests = {}
        specs = {}
        for host in hosts:
            if host == "bios1":
                specs[host] = lab.bios_ipxe()
            elif host == "pxe1":
                specs[host] = lab.uefi_pxe()
            elif host == "sb1":
                specs[host] = lab.uefi_secure_boot(os.path.join(workdir, "vars-sb1.fd"))
            else:
                specs[host] = lab.arm64_uefi(os.path.join(workdir, "vars-arm1.fd"))
        ready()
        for tap, host in zip(ns.taps, hosts):
            spec = specs[host]
            serial = os.path.join(workdir, "serial-%s.log" % host)
            guests[host] = (ns.start_guest(spec, tap=tap, mac=FLEET[host].mac, serial_log=serial,
                                           log=os.path.join(workdir, "qemu-%s.log" % host)), serial)
            record.started(host, guests[host][0])
        done = {}

        def check():
            text = lab.read_text(log)
            for host, (vm, serial) in guests.items():
                if host not in done and markers[(host, MARKER_KIND[host])] in lab.read_text(serial) \
                        and sent(host).search(text):
                    done[host] = vm.elapsed()
            return len(done) == len(guests)

        lab.wait_until(check, args.timeout, interval=0.1, watch=[proc])
        check()
        record.stop()
    files = fetched_files(server, workdir)
    times = {host: done.get(host) for host in hosts}
    net = {host: network_seconds(record.cap, FLEET[host].mac, done.get(host), guests[host][0].started_wall)
           for host in hosts}
    startup = {host: record.startup(host, FLEET[host].mac) for host in hosts}
    record.save(seconds=times, network_seconds=net, startup=startup,
                argv={host: guests[host][0].argv for host in hosts})
    if len(done) < len(hosts):
        for host in hosts:
            if host not in done:
                tail = "\n".join(lab.console_text(lab.read_text(guests[host][1])).splitlines()[-12:])
                print("  !! %s/%s: %s reached no marker; serial tail:\n%s" % (scenario, server, host, tail),
                      flush=True)
        print("  (kept in %s)" % workdir, flush=True)
        return times, files, workdir, net, startup
    if not keep_root and not args.pcap:
        shutil.rmtree(workdir, ignore_errors=True)
    return times, files, workdir, net, startup


def boot_together(boot, scenario, servers):
    """
    ``--paired``: boot ``scenario`` once per server at the same moment,
    each in its own namespace (threads; a barrier holds every QEMU until
    every server listens).  On a shared machine both then see the same
    load at the same time, which interleaved runs only approximate.
    Returns {server: what boot() returned}; a failure in one aborts the
    others' wait and is raised here.
    """
    barrier = threading.Barrier(len(servers), timeout=120)
    outcomes = {}

    def worker(server):
        try:
            outcomes[server] = boot(scenario, server, barrier.wait)
        except BaseException as error:  # SystemExit from a server that did not start, too
            barrier.abort()
            outcomes[server] = error

    threads = [threading.Thread(target=worker, args=(server,), name="boot-" + server) for server in servers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    errors = [outcome for outcome in outcomes.values() if isinstance(outcome, BaseException)]
    first = [e for e in errors if not isinstance(e, threading.BrokenBarrierError)] or errors
    if first:
        raise first[0]
    return outcomes


def startup_fields(startup):
    """(seconds to the first frame, QEMU CPU seconds meanwhile) for the results table."""
    if not startup:
        return (None, None)
    return (startup["first_frame"], startup["qemu_cpu"])


def describe_startup(startup):
    """The start-up window of one run, for its line of output ('' without --pcap)."""
    if not startup:
        return ""
    return ("\n      QEMU start -> first frame %.2f s: QEMU %.2f CPU s, server %.2f, other guests %.2f, rest of "
            "the machine %.2f; %d frames from others meanwhile; load %s" % (
                startup["first_frame"], startup["qemu_cpu"] or 0, startup["server_cpu"] or 0,
                startup["other_guests_cpu"], startup["others_cpu"], startup["frames_before"], startup["load"]))


def warm_page_cache(scenarios):
    """
    Read the QEMU binaries and firmware images the scenarios use once, so
    that the first boot of the invocation (always the same server's) does
    not pay alone for reading them from disk.
    """
    paths = [shutil.which(lab.QEMU), lab.ovmf_firmware()]
    if any(s in GRUB_SCENARIOS for s in scenarios):
        paths += [shutil.which(lab.QEMU_ARM64), lab.OVMF_SB_CODE, lab.OVMF_SB_VARS, lab.AAVMF_CODE,
                  lab.AAVMF_VARS]
    for path in paths:
        if path and os.path.exists(path):
            with open(path, "rb") as f:
                while f.read(1 << 20):
                    pass


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="one run per scenario and server")
    ap.add_argument("--runs", type=int, default=3, help="runs per scenario and server (median shown)")
    every = list(SCENARIOS) + list(GRUB_SCENARIOS) + list(IPV6_SCENARIOS)
    ap.add_argument("--scenarios", default=",".join(every), help="comma separated: %s" % ", ".join(every))
    ap.add_argument("--servers", default="ownsocket,dnsmasq", help="comma separated: %s" % ", ".join(SERVERS))
    ap.add_argument("--no-ra", action="store_true",
                    help="no IPv6 Router Advertisement on the bridge (iPXE then waits ~13 s per stage)")
    ap.add_argument("--timeout", type=float, default=150, help="seconds per boot before giving up")
    ap.add_argument("--paired", action="store_true",
                    help="boot the servers' runs of a scenario at the same moment (each in its own namespace), "
                         "so that they share the machine's load; on a busy machine fairer than interleaving, "
                         "but each guest gets less CPU")
    ap.add_argument("--keep", help="keep every run's logs, configs and serial consoles under this folder")
    ap.add_argument("--pcap", action="store_true",
                    help="capture the bridge of each run to bridge.pcap in its folder (kept; see --keep) "
                         "and also report the seconds from the guest's first DHCP/DHCPv6 message or Router "
                         "Solicitation to its marker")
    args = ap.parse_args()
    runs = 1 if args.quick else args.runs
    scenarios = [s for s in args.scenarios.split(",") if s]
    servers = [s for s in args.servers.split(",") if s]
    for s in scenarios:
        if s not in every:
            ap.error("unknown scenario %s" % s)
    for s in servers:
        if s not in SERVERS:
            ap.error("unknown server %s" % s)
    if os.geteuid() != 0:
        raise SystemExit("needs root (network namespaces, tap devices, ports 67/69/80)")
    for tool in (lab.QEMU, "dnsmasq", "ss"):
        if shutil.which(tool) is None:
            raise SystemExit("missing %s: apt-get install qemu-system-x86 ovmf ipxe ipxe-qemu dnsmasq iproute2"
                             % tool)
    if any(s in GRUB_SCENARIOS for s in scenarios):
        try:
            for name in lab.SIGNED_FILES:
                lab.signed_boot_file(name)
        except lab.LabError as error:
            raise SystemExit("%s (GRUB scenarios; also apt-get install shim-signed grub-efi-amd64-signed "
                             "qemu-system-arm qemu-efi-aarch64)" % error)
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
        else "Router Advertisement on the bridge (IPv6 scenarios: only the servers' own)",
        " ".join(open("/proc/loadavg").read().split()[:3])))
    print("  %s; %s; TCG" % (version(["dnsmasq", "--version"]), version([lab.QEMU, "--version"])))
    warm_page_cache(scenarios)
    results = {}

    def boot(scenario, server, ready=lambda: None):
        if scenario in GRUB_SCENARIOS:
            return one_grub_boot(scenario, server, args, args.keep, ready)
        if scenario in IPV6_SCENARIOS:
            return one_boot6(scenario, server, args, args.keep, ready)
        return one_boot(scenario, server, args, args.keep, ready)

    for run in range(runs):
        for scenario in scenarios:
            # Alternate which server boots first: the first boot of a
            # scenario may pay for what the second finds cached.
            order = servers if run % 2 == 0 else servers[::-1]
            if args.paired:
                outcomes = boot_together(boot, scenario, order)
            else:
                outcomes = {server: boot(scenario, server) for server in order}
            for server in order:
                outcome = outcomes[server]
                if scenario in GRUB_SCENARIOS:
                    times, files, _, nets, startups = outcome
                    # The scenario's time is its slowest machine's (the fleet is
                    # done when the last one is).
                    seconds = None if None in times.values() else max(times.values())
                    net = None if None in nets.values() else max(nets.values())
                    startup = None if None in startups.values() else max(
                        startups.values(), key=lambda facts: facts["first_frame"])
                    for host, value in times.items():
                        if len(times) > 1:
                            results.setdefault(("%s:%s" % (scenario, host), server), []).append(
                                (value, [], nets[host]) + startup_fields(startups[host]))
                    shown = ", ".join("%s %s" % (h, "%.1f" % v if v is not None else "FAIL")
                                      for h, v in times.items()) if len(times) > 1 else " -> ".join(files)
                else:
                    seconds, files, _, net, startup = outcome
                    shown = " -> ".join(files)
                results.setdefault((scenario, server), []).append((seconds, files, net) + startup_fields(startup))
                print("  run %d %-10s %-19s %s%s  %s%s" % (
                    run + 1, scenario, server, "%6.1f s" % seconds if seconds is not None else "  FAIL  ",
                    " (%.1f s from its first DHCP/RS)" % net if net is not None else "", shown,
                    describe_startup(startup)), flush=True)

    def median(key, field=0):
        times = [r[field] for r in results.get(key, []) if r[field] is not None]
        if len(times) < len(results.get(key, [])) or not times:
            return None
        return statistics.median(times)

    rows = []
    for scenario in scenarios:
        rows.append(scenario)
        if scenario == "fleet":
            rows += ["fleet:%s" % host for host in GRUB_GUESTS["fleet"]]

    def table(field):
        print()
        header = "| scenario   | " + " | ".join("%s (s)" % s for s in servers)
        if "ownsocket" in servers and "dnsmasq" in servers:
            header += " | ownsocket/dnsmasq"
        print(header + " |")
        print("|" + "---|" * header.count("|"))
        for scenario in rows:
            cells = []
            for server in servers:
                m = median((scenario, server), field)
                cells.append("FAIL" if m is None else "%.1f" % m)
            row = "| %-10s | " % scenario + " | ".join(cells)
            if "ownsocket" in servers and "dnsmasq" in servers:
                a, b = median((scenario, "ownsocket"), field), median((scenario, "dnsmasq"), field)
                row += " | " + ("%.2f" % (a / b) if a and b else "-")
            print(row + " |")

    table(0)
    print("\nseconds = median over %d run(s), from QEMU start to the marker line on the serial console "
          "(fleet: the last of the four; fleet:HOST each machine)." % runs)
    if args.pcap:
        table(2)
        print("\nseconds = median over %d run(s), from the guest's first DHCP/DHCPv6 message or Router "
              "Solicitation on the bridge to the marker (the firmware's start-up before it, which a "
              "server cannot change, left out)." % runs)
        table(3)
        print("\nseconds = median over %d run(s), from QEMU start to the guest's first frame of any kind "
              "on the bridge (fleet: the machine that took longest)." % runs)
        table(4)
        print("\nCPU seconds the guest's QEMU used from its start to its first frame (median over %d "
              "run(s)): the firmware's own work, whatever the machine's load." % runs)
    print("files each server sent (last run):")
    for scenario in scenarios:
        for server in servers:
            runs_ = results.get((scenario, server), [])
            if runs_:
                print("  %-10s %-19s %s" % (scenario, server, " -> ".join(runs_[-1][1])))


if __name__ == "__main__":
    main()
