"""
End to end: real BIOS and UEFI firmware in QEMU boots from ownsocket.

Each scenario builds a throw-away network namespace (bridge 10.99.0.1/24 and
a tap, see L{tests.lab}), starts ownsocket in it with a TFTP root holding
Debian's iPXE builds, boots a QEMU guest (TCG) on the tap and waits until
both

  - ownsocket's log shows the guest fetching C{marker-<platform>.ipxe}, the
    file named after iPXE's own C{${platform}} (pcbios or efi), and
  - the guest's serial console shows the line that file echoes (a token
    unique to the run).

The chain is firmware -> first stage (undionly.kpxe / snponly.efi, over TFTP
or HTTP) -> iPXE -> boot.ipxe -> marker-${platform}.ipxe, so a pass means
ownsocket's DHCP, stateful iPXE selection, TFTP and HTTP all did their part
for that firmware.  On failure the message holds ownsocket's DHCP/TFTP/HTTP
lines, the serial console and QEMU's stderr, and the working directory is
kept.

Needs root, working C{ip netns}, C{qemu-system-x86_64}, OVMF (Debian
C{ovmf}), the iPXE ROMs (C{ipxe-qemu}) and boot files (C{ipxe}), C{ss}, and
dnsmasq for the proxyDHCP scenario; skips with the reason otherwise.

L{SignedBootTests} adds shim and GRUB: OVMF with Secure Boot on (shim ->
signed network GRUB -> a grub.cfg generated for that machine -> a marker
whose name says GRUB saw shim_lock), the refusal of an unsigned loader,
arm64 (AAVMF, signed arm64 GRUB), and the whole fleet (BIOS iPXE, UEFI PXE,
Secure Boot, arm64) booting at once from one config.  They also need
C{shim-signed}, C{grub-efi-amd64-signed}, C{qemu-system-arm},
C{qemu-efi-aarch64} and the arm64 GRUB that C{.ci/setup.d/50-arm64-grub.sh}
unpacks.

A Router Advertisement sender runs on the bridge (see
L{tests.lab.NetNamespace.start_router_advertiser}): without one iPXE spends
~13 s per stage waiting for IPv6 autoconfiguration.  Set
C{OWNSOCKET_E2E_RA=0} to boot without it (each scenario then takes 15-30 s
longer).  C{OWNSOCKET_E2E_KEEP=1} keeps every working directory.

    sudo PYTHONPATH=. python3 -m twisted.trial tests.test_boot_e2e
"""

import os
import re
import shutil
import sys
import tempfile
import uuid

from twisted.trial import unittest

from tests import lab

#: Seconds from QEMU start until both signs of success must be there.
BOOT_TIMEOUT = 150
GUEST_MAC = lab.DEFAULT_MAC


#: Why the scenarios cannot run here, or None.
SKIP = lab.missing(lab.ovmf_firmware, lambda: lab.ipxe_rom("pxe-e1000.rom"),
                   *[lambda name=name: lab.ipxe_file(name) for name in lab.FIRST_STAGES])


def _server_lines(text):
    """ownsocket's per-exchange lines (DHCP, proxy, TFTP, HTTP), message part only."""
    out = []
    for line in text.splitlines():
        if re.search(r"(DISCOVER|REQUEST|INFORM|RELEASE|DECLINE) from |proxy \w+ from |tftp peer=|http peer=", line):
            out.append(line.split("] ", 1)[-1])
    return out


class _Run:
    """One scenario's working directory, namespace, processes and evidence."""

    def __init__(self, test, name, taps=1):
        self.test = test
        self.name = name
        self.dir = tempfile.mkdtemp(prefix="ownsocket-e2e-%s-" % name)
        os.chmod(self.dir, 0o755)
        self.root = os.path.join(self.dir, "tftpboot")
        self.token = uuid.uuid4().hex[:8]
        self.markers = self.write_root()
        self.log = os.path.join(self.dir, "ownsocket.log")
        self.serial = os.path.join(self.dir, "serial.log")
        self.qemu_log = os.path.join(self.dir, "qemu.log")
        self.extra_logs = {}
        self.ns = lab.NetNamespace(taps=taps)
        self.ns.__enter__()
        test.addCleanup(self.cleanup)
        self.failed = True
        self.seconds = None
        if os.environ.get("OWNSOCKET_E2E_RA", "1") != "0":
            self.ns.start_router_advertiser(log=os.path.join(self.dir, "ra.log"))

    def write_root(self):
        return lab.write_boot_root(self.root, self.token)

    def start_address_server(self):
        """
        dnsmasq handing out the addresses only, in its own namespace on a
        veth leg of the bridge (10.99.0.2), for the proxyDHCP scenarios.
        """
        if shutil.which("dnsmasq") is None:
            raise unittest.SkipTest("dnsmasq is not installed (apt-get install dnsmasq)")
        leg = self.ns.add_leg("dh", "10.99.0.2/24")
        self.dnsmasq_log = os.path.join(self.dir, "dnsmasq.log")
        self.extra_logs["dnsmasq (address-only DHCP server)"] = self.dnsmasq_log
        self.dnsmasq = leg.start(lab.dnsmasq_base_argv(leg.ifname, self.dir), name="dnsmasq",
                                 log=self.dnsmasq_log)
        if not lab.wait_until(lambda: lab.listening(self.ns, udp=(67,), netns=leg.name), 20,
                              interval=0.3, watch=[self.dnsmasq]):
            self.test.fail("dnsmasq did not start:\n" + lab.read_text(self.dnsmasq_log))
        return self.dnsmasq

    def cleanup(self):
        self.ns.destroy()
        if not self.failed and os.environ.get("OWNSOCKET_E2E_KEEP") != "1":
            shutil.rmtree(self.dir, ignore_errors=True)

    def start_ownsocket(self, **config):
        cfg = lab.ownsocket_config(os.path.join(self.dir, "ownsocket.ini"), self.dir, self.root, **config)
        self.server = self.ns.start(lab.ownsocket_argv(cfg, self.log), name="ownsocket",
                                    log=os.path.join(self.dir, "ownsocket.out"),
                                    env=lab.ownsocket_env(), cwd=self.dir)
        tcp = (80,) if config.get("http", True) else ()
        udp = (67, 69) + ((4011,) if config.get("mode") == "proxy" else ())
        if not lab.wait_until(lambda: lab.listening(self.ns, udp=udp, tcp=tcp), 30,
                              interval=0.3, watch=[self.server]):
            self.test.fail("ownsocket did not open UDP %s / TCP %s within 30 s:\n%s\n%s" % (
                udp, tcp, lab.read_text(self.server.log)[-3000:], lab.read_text(self.log)[-3000:]))
        return self.server

    def boot(self, spec, platform, server_done, watch=()):
        self.vm = self.ns.start_guest(spec, serial_log=self.serial, log=self.qemu_log)
        self.seconds, self.server_ok = lab.wait_for_boot(
            self.vm, self.serial, self.markers[platform], server_done, BOOT_TIMEOUT,
            watch=[self.server] + list(watch))
        self.guest_exit = self.vm.returncode  # None: still running, as it should be
        self.ns.stop(self.vm)  # nothing in the guest powers it off
        return self.seconds

    def ownsocket_text(self):
        return lab.read_text(self.log)

    def evidence(self):
        """Everything a person needs to see why a boot failed, as text."""
        parts = ["scenario %s, working directory %s (kept), marker %r" % (
            self.name, self.dir, self.markers)]
        vm = getattr(self, "vm", None)
        if vm is not None:
            parts.append("QEMU pid %s, exit code before the test stopped it: %s (None = still running); "
                         "marker after %s s; server side seen: %s" % (
                             vm.pid, getattr(self, "guest_exit", None), self.seconds, getattr(self, "server_ok", None)))
        lines = _server_lines(self.ownsocket_text())
        parts.append("--- ownsocket exchanges (%d) ---\n%s" % (
            len(lines), "\n".join(lines[-60:]) or lab.read_text(self.log)[-4000:]))
        out = lab.read_text(os.path.join(self.dir, "ownsocket.out")).strip()
        if out:
            parts.append("--- ownsocket stdout/stderr ---\n" + out[-2000:])
        for title, path in self.extra_logs.items():
            # dnsmasq --log-dhcp is verbose: keep the exchange lines.
            lines = [line for line in lab.read_text(path).splitlines()
                     if re.search(r"DHCP[A-Z]+\(|next server|sent |failed|error", line)]
            parts.append("--- %s ---\n%s" % (title, "\n".join(lines[-40:])))
        serial = lab.console_text(lab.read_text(self.serial))
        parts.append("--- guest serial console (last 40 lines) ---\n" + "\n".join(serial.splitlines()[-40:]))
        qemu = lab.read_text(self.qemu_log).strip()
        if qemu:
            parts.append("--- QEMU stderr ---\n" + qemu[-2000:])
        return "\n".join(parts)

    def check(self, condition, what):
        if not condition:
            self.test.fail("%s\n%s" % (what, self.evidence()))

    def passed(self):
        self.failed = False
        sys.stderr.write("[boot-e2e] %s: marker on the serial console %.1f s after QEMU start\n"
                         % (self.name, self.seconds))


def _tftp_ok(name):
    return re.compile(r"tftp peer=\S+ file=%s result=ok" % re.escape(name))


class FirmwareBootTests(unittest.TestCase):
    """BIOS (SeaBIOS + iPXE ROM), UEFI PXE and UEFI HTTP boot from ownsocket."""

    if SKIP:
        skip = SKIP
    timeout = BOOT_TIMEOUT + 120

    def _marker_fetched(self, run, platform):
        pattern = _tftp_ok("marker-%s.ipxe" % platform)
        return lambda: pattern.search(run.ownsocket_text())

    def _common_checks(self, run, platform):
        text = run.ownsocket_text()
        other = "efi" if platform == "pcbios" else "pcbios"
        run.check(run.seconds is not None, "the guest never printed its marker %r" % run.markers[platform])
        run.check(run.server_ok, "ownsocket's log never showed marker-%s.ipxe being sent" % platform)
        run.check(len(_tftp_ok("boot.ipxe").findall(text)) == 1, "boot.ipxe was not fetched exactly once")
        run.check(re.search(r"boot 'boot\.ipxe' by ipxe \(", text),
                  "the chained iPXE was not given the script by the ipxe selector")
        run.check(not re.search(r"file=marker-%s\.ipxe" % other, text),
                  "the guest fetched the other platform's marker")
        run.check(run.markers[other] not in lab.read_text(run.serial), "the other platform's marker printed")

    def test_bios_ipxe_rom_tftp(self):
        """
        SeaBIOS + iPXE NIC ROM (option 93 = 0) -> undionly.kpxe over TFTP ->
        chained iPXE -> boot.ipxe -> marker-pcbios.ipxe.  The ROM and the
        chained iPXE send identical options, so undionly.kpxe being fetched
        shows that the stateful selector gave the ROM the first stage.
        """
        run = _Run(self, "bios")
        run.start_ownsocket()
        run.boot(lab.bios_ipxe(), "pcbios", self._marker_fetched(run, "pcbios"))
        text = run.ownsocket_text()
        run.check(re.search(r"DISCOVER from %s via br0 .*arch \[0 x86 BIOS\] -> OFFER \S+ boot 'undionly\.kpxe'"
                            % GUEST_MAC, text), "the ROM's DISCOVER was not offered undionly.kpxe")
        run.check(len(_tftp_ok("undionly.kpxe").findall(text)) == 1,
                  "undionly.kpxe (first stage) was not fetched exactly once (never: the ROM got the script; "
                  "more: a chain-loading loop)")
        self._common_checks(run, "pcbios")
        run.check(text.index("file=undionly.kpxe") < text.index("file=boot.ipxe"),
                  "boot.ipxe was fetched before the first stage")
        run.passed()

    def test_uefi_pxe_tftp(self):
        """
        OVMF's own PXE client (virtio-net, no ROM; option 93 = 7) ->
        snponly.efi over TFTP with windowsize 4 -> iPXE -> boot.ipxe ->
        marker-efi.ipxe.
        """
        run = _Run(self, "uefi-pxe")
        run.start_ownsocket()
        run.boot(lab.uefi_pxe(), "efi", self._marker_fetched(run, "efi"))
        text = run.ownsocket_text()
        run.check(re.search(r"DISCOVER from %s via br0 .*arch \[7 EFI x64\] -> OFFER \S+ boot 'snponly\.efi'"
                            % GUEST_MAC, text), "OVMF's DISCOVER was not offered snponly.efi")
        run.check(re.search(r"tftp peer=\S+ file=snponly\.efi result=ok .*windowsize=4 ", text),
                  "snponly.efi was not sent with the windowsize 4 OVMF asks for")
        self._common_checks(run, "efi")
        run.passed()

    def test_uefi_http_boot(self):
        """
        OVMF HTTP boot (option 93 = 16; IPv4/IPv6 PXE off through fw_cfg) ->
        snponly.efi over ownsocket's HTTP -> iPXE -> boot.ipxe ->
        marker-efi.ipxe.
        """
        run = _Run(self, "uefi-http")
        run.start_ownsocket(http=True)
        run.boot(lab.uefi_http(), "efi", self._marker_fetched(run, "efi"))
        text = run.ownsocket_text()
        run.check(re.search(r"DISCOVER from %s via br0 .*arch \[16 [^]]*\] -> OFFER \S+ boot "
                            r"'http://%s/snponly\.efi' by uefi-http" % (GUEST_MAC, lab.SERVER_ADDRESS), text),
                  "OVMF's HTTP-boot DISCOVER was not offered the snponly.efi URL")
        run.check(re.search(r"http peer=\S+ method=GET path=/snponly\.efi status=200 .*UefiHttpBoot", text),
                  "OVMF did not GET snponly.efi over HTTP")
        run.check(not re.search(r"file=snponly\.efi", text), "snponly.efi went over TFTP, not HTTP")
        self._common_checks(run, "efi")
        run.passed()

    def _proxy_run(self, name, spec, platform, first_stage, arch_label):
        """
        proxyDHCP with a real client: dnsmasq (in its own namespace, on a veth
        leg of the bridge, 10.99.0.2) hands out the address and nothing else;
        ownsocket in proxy mode on 10.99.0.1 gives the boot file over its TFTP.
        """
        run = _Run(self, name)
        dnsmasq = run.start_address_server()
        run.start_ownsocket(mode="proxy", http=False)
        run.boot(spec, platform, self._marker_fetched(run, platform), watch=[dnsmasq])
        text = run.ownsocket_text()
        dtext = lab.read_text(run.dnsmasq_log)
        run.check(re.search(r"DHCPACK\(eth0\) 10\.99\.0\.\d+ %s" % GUEST_MAC, dtext),
                  "dnsmasq never gave the guest its address")
        run.check(re.search(r"proxy DISCOVER from %s via br0:67 arch \[%s\] -> OFFER: boot '%s'"
                            % (GUEST_MAC, re.escape(arch_label), re.escape(first_stage)), text),
                  "ownsocket made no proxy offer of %s" % first_stage)
        run.check(_tftp_ok(first_stage).search(text), "%s was not fetched from ownsocket's TFTP" % first_stage)
        run.check(not re.search(r"-> (OFFER|ACK) 10\.99\.", text), "ownsocket handed out an address in proxy mode")
        self._common_checks(run, platform)
        return run

    def test_proxydhcp_uefi_pxe(self):
        """
        proxyDHCP next to dnsmasq, OVMF's PXE client: address from dnsmasq,
        snponly.efi from ownsocket's TFTP (OVMF takes the boot file from the
        proxy offer, option 43 discovery control 8, without port 4011), then
        the chained iPXE gets the script from the proxy.
        """
        run = self._proxy_run("proxy-uefi-pxe", lab.uefi_pxe(), "efi", "snponly.efi", "7 EFI x64")
        run.passed()

    def test_proxydhcp_bios_ipxe_rom(self):
        """
        proxyDHCP next to dnsmasq, SeaBIOS + iPXE ROM: address from dnsmasq,
        undionly.kpxe and then the script from ownsocket, so the stateful
        iPXE selection also works from proxy offers.  (iPXE 1.0.0 used the
        proxy offer as it was: no ProxyDHCP REQUEST to port 4011 was seen.)
        """
        run = self._proxy_run("proxy-bios", lab.bios_ipxe(), "pcbios", "undionly.kpxe", "0 x86 BIOS")
        run.passed()


# ---------------------------------------------------------------------------
# Secure Boot, arm64 and the whole fleet: shim -> GRUB -> per-machine grub.cfg
# ---------------------------------------------------------------------------

#: The machines of the fleet config; each test boots some of them.  Fixed
#: addresses make every TFTP line (peer=address) attributable to one guest.
FLEET = {
    "bios1": lab.FleetHost("bios1", "52:54:00:99:01:01", "10.99.0.11"),
    "pxe1": lab.FleetHost("pxe1", "52:54:00:99:01:02", "10.99.0.12", bootfile="snponly.efi"),
    "sb1": lab.FleetHost("sb1", "52:54:00:99:01:03", "10.99.0.13"),
    "arm1": lab.FleetHost("arm1", "52:54:00:99:01:04", "10.99.0.14"),
    "reject1": lab.FleetHost("reject1", "52:54:00:99:01:05", "10.99.0.15", bootfile="snponly.efi"),
}
#: Seconds for the four guests of the fleet to boot at once on two shared cores.
FLEET_TIMEOUT = 420


def _grub_missing():
    if SKIP:
        return SKIP
    if shutil.which(lab.QEMU_ARM64) is None:
        return "%s is not installed (apt-get install qemu-system-arm)" % lab.QEMU_ARM64
    for path in (lab.OVMF_SB_CODE, lab.OVMF_SB_VARS, lab.AAVMF_CODE, lab.AAVMF_VARS):
        if not os.path.exists(path):
            return "%s not found (apt-get install ovmf qemu-efi-aarch64)" % path
    try:
        for name in lab.SIGNED_FILES:
            lab.signed_boot_file(name)
    except lab.LabError as e:
        return str(e)
    return None


GRUB_SKIP = _grub_missing()


class _FleetRun(_Run):
    """A namespace with one tap per guest and ownsocket on the fleet config."""

    def __init__(self, test, name, taps=1, proxy=False):
        self.guests = {}
        super().__init__(test, name, taps)
        udp = (67, 69)
        if proxy:
            self.start_address_server()
            udp = (67, 69, 4011)
        cfg = lab.fleet_config(os.path.join(self.dir, "ownsocket.ini"), self.dir, self.root, FLEET.values(),
                               proxy=proxy)
        self.server = self.ns.start(lab.ownsocket_argv(cfg, self.log), name="ownsocket",
                                    log=os.path.join(self.dir, "ownsocket.out"),
                                    env=lab.ownsocket_env(), cwd=self.dir)
        if not lab.wait_until(lambda: lab.listening(self.ns, udp=udp), 30,
                              interval=0.3, watch=[self.server]):
            test.fail("ownsocket did not start:\n%s\n%s" % (
                lab.read_text(self.server.log)[-3000:], lab.read_text(self.log)[-3000:]))

    def write_root(self):
        return lab.write_grub_root(self.root, self.token, list(FLEET))

    def start(self, host, spec, tap):
        serial = os.path.join(self.dir, "serial-%s.log" % host)
        vm = self.ns.start_guest(spec, tap=tap, mac=FLEET[host].mac, serial_log=serial,
                                 log=os.path.join(self.dir, "qemu-%s.log" % host))
        self.guests[host] = (vm, serial)
        return vm

    def vars_copy(self, host):
        return os.path.join(self.dir, "vars-%s.fd" % host)

    def serial_text(self, host):
        return lab.console_text(lab.read_text(self.guests[host][1]))

    def evidence(self):
        parts = ["scenario %s, working directory %s (kept)" % (self.name, self.dir)]
        lines = [line.split("] ", 1)[-1] for line in self.ownsocket_text().splitlines()
                 if re.search(r" from \S+ via |tftp peer=|template ", line)]
        parts.append("--- ownsocket (%d lines) ---\n%s" % (len(lines), "\n".join(lines[-80:])))
        out = lab.read_text(os.path.join(self.dir, "ownsocket.out")).strip()
        if out:
            parts.append("--- ownsocket stdout/stderr ---\n" + out[-2000:])
        if getattr(self, "dnsmasq_log", None):
            lines = [line for line in lab.read_text(self.dnsmasq_log).splitlines() if "DHCP" in line]
            parts.append("--- dnsmasq (address server) ---\n" + "\n".join(lines[-30:]))
        for host, (vm, serial) in self.guests.items():
            parts.append("--- %s: QEMU pid %s exit %s; serial (last 25 lines) ---\n%s" % (
                host, vm.pid, vm.returncode, "\n".join(self.serial_text(host).splitlines()[-25:])))
            qemu = lab.read_text(os.path.join(self.dir, "qemu-%s.log" % host)).strip()
            if qemu:
                parts.append("--- %s: QEMU stderr ---\n%s" % (host, qemu[-1500:]))
        return "\n".join(parts)

    def passed(self, what):
        self.failed = False
        sys.stderr.write("[boot-e2e] %s: %s\n" % (self.name, what))


def _tftp_line(host, name, result="ok"):
    """ownsocket's TFTP line for ``name`` sent to ``host``'s fixed address."""
    return re.compile(r"tftp peer=%s:\d+ file=%s result=%s " % (
        re.escape(FLEET[host].address), re.escape(name), re.escape(result)))


class SignedBootTests(unittest.TestCase):
    """
    shim and Debian's signed GRUB with OVMF Secure Boot, the unsigned-loader
    refusal, arm64 with AAVMF, and the whole fleet at once; each machine's
    /grub/grub.cfg (or boot.ipxe) is generated for it by the 'template'
    selector.
    """

    if GRUB_SKIP:
        skip = GRUB_SKIP
    timeout = FLEET_TIMEOUT + 120

    def _wait_markers(self, run, pending, timeout):
        """Wait until each host's serial shows its marker and ownsocket logged
        its marker fetch; ``pending``: {host: (marker text, server regex)}.
        Returns {host: seconds after QEMU start} for the hosts that made it."""
        done = {}

        def check():
            text = run.ownsocket_text()
            for host, (marker, server) in pending.items():
                vm, serial = run.guests[host]
                if host not in done and marker in lab.read_text(serial) and server.search(text):
                    done[host] = vm.elapsed()
            return len(done) == len(pending)

        lab.wait_until(check, timeout, interval=0.25, watch=[run.server])
        check()
        return done

    def _grub_stages(self, run, host, loader, lst_dir, marker_file, text):
        """The stages ownsocket must have seen for a GRUB machine, in order."""
        mac, address = FLEET[host].mac, FLEET[host].address
        run.check(re.search(r"DISCOVER from %s via br0 .*-> OFFER %s boot '%s'" % (
            mac, re.escape(address), re.escape(loader)), text), "%s was not offered %s" % (host, loader))
        stages = []
        if loader == "efi/shimx64.efi":
            stages.append(_tftp_line(host, "efi/shimx64.efi"))
            for probe in ("efi/revocations_sku.efi", "efi/revocations_sbat.efi", "efi/shim_certificate_0.efi"):
                stages.append(_tftp_line(host, probe, "expected-probe"))
            stages.append(_tftp_line(host, "efi/grubx64.efi"))
        else:
            stages.append(_tftp_line(host, loader))
        for name in ("command", "fs", "crypto", "terminal"):
            stages.append(_tftp_line(host, "/grub/%s/%s.lst" % (lst_dir, name), "expected-probe"))
        stages.append(re.compile(r"template grub/grub.cfg rendered for %s at %s \(\[host:%s\]\)" % (
            mac, re.escape(address), host)))
        stages.append(_tftp_line(host, "/grub/grub.cfg"))
        stages.append(_tftp_line(host, marker_file))
        position = 0
        for stage in stages:
            match = stage.search(text, position)
            run.check(match, "%s: stage %r missing from ownsocket's log (or out of order)" % (host, stage.pattern))
            position = match.end()
        run.check(not re.search(r"tftp peer=%s:\d+ \S+ result=error" % re.escape(address), text),
                  "%s: a TFTP request was answered with an error that was not an expected probe" % host)
        run.check("grub.cfg for %s %s %s arch " % (host, mac, address) in run.serial_text(host),
                  "%s: GRUB did not run the grub.cfg rendered for it" % host)

    def _ipxe_stages(self, run, host, first_stage, text):
        address = FLEET[host].address
        for stage in (_tftp_line(host, first_stage), _tftp_line(host, "boot.ipxe"),
                      _tftp_line(host, "marker-%s.ipxe" % host)):
            run.check(stage.search(text), "%s: %r missing from ownsocket's log" % (host, stage.pattern))
        run.check(re.search(r"template boot.ipxe rendered for %s at %s" % (FLEET[host].mac, re.escape(address)),
                            text), "%s: boot.ipxe was not rendered for it" % host)
        run.check(len(_tftp_line(host, first_stage).findall(text)) == 1,
                  "%s: %s fetched more than once (chain-loading loop)" % (host, first_stage))

    def _sb_spec(self, run, host):
        return lab.uefi_secure_boot(run.vars_copy(host))

    def test_secure_boot_shim_grub_per_machine_config(self):
        """
        OVMF with Secure Boot on -> shim (Microsoft-signed) from efi/ ->
        efi/grubx64.efi (Debian-signed network GRUB; shim found it through
        the BOOTP file field) -> /grub/grub.cfg rendered for sb1 ->
        /marker-sb1-sb, which the config names only when GRUB sees
        shim_lock.
        """
        run = _FleetRun(self, "uefi-sb")
        run.start("sb1", self._sb_spec(run, "sb1"), run.ns.taps[0])
        done = self._wait_markers(run, {"sb1": (run.markers[("sb1", "sb")], _tftp_line("sb1", "/marker-sb1-sb"))},
                          BOOT_TIMEOUT)
        text = run.ownsocket_text()
        run.check("sb1" in done, "sb1 never printed its Secure Boot marker")
        self._grub_stages(run, "sb1", "efi/shimx64.efi", "x86_64-efi", "/marker-sb1-sb", text)
        run.check("shim_lock=y" in run.serial_text("sb1"), "GRUB did not report shim_lock=y")
        run.check(not re.search(r"file=/marker-sb1 ", text), "the Secure-Boot-off marker was fetched")
        run.passed("Secure Boot marker %.1f s after QEMU start" % done["sb1"])

    def test_secure_boot_refuses_unsigned_loader(self):
        """
        The same Secure Boot firmware given unsigned snponly.efi: the whole
        file is sent, OVMF refuses to load it ("Access Denied",
        FIRMWARE-FACTS 6f), no iPXE ever asks for an address, no marker.
        """
        run = _FleetRun(self, "uefi-sb-reject")
        vm = run.start("reject1", self._sb_spec(run, "reject1"), run.ns.taps[0])
        lab.wait_until(lambda: "Access Denied" in run.serial_text("reject1"), BOOT_TIMEOUT,
                       interval=0.25, watch=[vm, run.server])
        # OVMF moves on to HTTP boot at once; give an iPXE that did start time to ask.
        lab.wait_until(lambda: False, 3)
        serial = run.serial_text("reject1")
        text = run.ownsocket_text()
        run.check(re.search(r'failed to load Boot\d+ "UEFI PXEv4 [^\n]*: Access Denied', serial),
                  "OVMF did not refuse snponly.efi with Access Denied")
        run.check(_tftp_line("reject1", "snponly.efi").search(text), "snponly.efi was not sent in full")
        # iPXE would ask again with option 93 = 7; OVMF's next try is HTTP boot (16).
        after = text[_tftp_line("reject1", "snponly.efi").search(text).end():]
        run.check(not re.search(r"DISCOVER from %s via br0 .*arch \[7 " % FLEET["reject1"].mac, after)
                  and "iPXE initialising" not in serial,
                  "iPXE ran although Secure Boot should have refused it")
        run.check(not re.search(r"file=(boot\.ipxe|marker-)", text), "the refused loader fetched further files")
        run.passed("unsigned snponly.efi refused (Access Denied)")

    def test_arm64_grub_per_machine_config(self):
        """
        AAVMF on qemu-system-aarch64 -M virt (TCG, option 93 = 11) ->
        Debian's signed arm64 network GRUB -> /grub/grub.cfg rendered for
        arm1 -> /marker-arm1 (no keys in AAVMF_VARS.fd: no shim_lock).
        """
        run = _FleetRun(self, "arm64")
        run.start("arm1", lab.arm64_uefi(run.vars_copy("arm1")), run.ns.taps[0])
        done = self._wait_markers(run, {"arm1": (run.markers[("arm1", "grub")], _tftp_line("arm1", "/marker-arm1"))},
                          BOOT_TIMEOUT)
        text = run.ownsocket_text()
        run.check("arm1" in done, "arm1 never printed its marker")
        run.check(re.search(r"DISCOVER from %s via br0 .*arch \[11 ARM 64-bit UEFI\]" % FLEET["arm1"].mac, text),
                  "the DISCOVER did not carry option 93 = 11")
        self._grub_stages(run, "arm1", "grubaa64.efi", "arm64-efi", "/marker-arm1", text)
        run.passed("arm64 marker %.1f s after QEMU start" % done["arm1"])

    def test_whole_fleet_at_once(self):
        """
        One ownsocket, one config, four guests started together on one
        bridge: SeaBIOS + iPXE ROM, OVMF PXE (iPXE chain), OVMF Secure Boot
        (shim -> GRUB) and arm64 (GRUB).  Each gets its own first stage and
        its own generated config or script, and reaches its own marker.
        """
        run = _FleetRun(self, "fleet", taps=4)
        run.start("bios1", lab.bios_ipxe(), run.ns.taps[0])
        run.start("pxe1", lab.uefi_pxe(), run.ns.taps[1])
        run.start("sb1", self._sb_spec(run, "sb1"), run.ns.taps[2])
        run.start("arm1", lab.arm64_uefi(run.vars_copy("arm1")), run.ns.taps[3])
        pending = {
            "bios1": (run.markers[("bios1", "ipxe")], _tftp_line("bios1", "marker-bios1.ipxe")),
            "pxe1": (run.markers[("pxe1", "ipxe")], _tftp_line("pxe1", "marker-pxe1.ipxe")),
            "sb1": (run.markers[("sb1", "sb")], _tftp_line("sb1", "/marker-sb1-sb")),
            "arm1": (run.markers[("arm1", "grub")], _tftp_line("arm1", "/marker-arm1")),
        }
        done = self._wait_markers(run, pending, FLEET_TIMEOUT)
        for host in list(run.guests):
            run.ns.stop(run.guests[host][0])
        text = run.ownsocket_text()
        run.check(len(done) == 4, "only %s reached their markers" % sorted(done))
        self._ipxe_stages(run, "bios1", "undionly.kpxe", text)
        self._ipxe_stages(run, "pxe1", "snponly.efi", text)
        self._grub_stages(run, "sb1", "efi/shimx64.efi", "x86_64-efi", "/marker-sb1-sb", text)
        self._grub_stages(run, "arm1", "grubaa64.efi", "arm64-efi", "/marker-arm1", text)
        for host in pending:
            others = [h for h in FLEET if h != host]
            serial = run.serial_text(host)
            run.check(not any(run.markers[(o, k)] in serial for o in others for k in ("sb", "grub", "ipxe")),
                      "%s printed another machine's marker" % host)
        run.passed("all four markers; seconds after QEMU start: %s" % ", ".join(
            "%s %.1f" % (host, done[host]) for host in pending))

    def test_proxydhcp_per_machine_ipxe_script(self):
        """
        Proxy mode: dnsmasq gives the address, ownsocket (proxyDHCP) the boot
        file; OVMF PXE -> snponly.efi -> iPXE -> boot.ipxe rendered for pxe1,
        whose DHCP request ownsocket finds by MAC through the ARP table ->
        marker-pxe1.ipxe.
        """
        run = _FleetRun(self, "proxy-template", proxy=True)
        run.start("pxe1", lab.uefi_pxe(), run.ns.taps[0])
        marker = re.compile(r"tftp peer=10\.99\.0\.\d+:\d+ file=marker-pxe1\.ipxe result=ok ")
        done = self._wait_markers(run, {"pxe1": (run.markers[("pxe1", "ipxe")], marker)}, BOOT_TIMEOUT)
        text = run.ownsocket_text()
        mac = FLEET["pxe1"].mac
        run.check("pxe1" in done, "pxe1 never printed its marker")
        ack = re.search(r"DHCPACK\(eth0\) (10\.99\.0\.\d+) %s" % mac, lab.read_text(run.dnsmasq_log))
        run.check(ack, "dnsmasq never gave pxe1 its address")
        run.check(re.search(r"proxy DISCOVER from %s via br0:67 .*-> OFFER: boot 'snponly\.efi'" % mac, text),
                  "ownsocket made no proxy offer of snponly.efi")
        run.check(re.search(r"template boot.ipxe rendered for %s at %s \(\[host:pxe1\]\)" % (
            mac, re.escape(ack.group(1))), text), "boot.ipxe was not rendered for pxe1 at its dnsmasq address")
        run.check(not re.search(r"-> (OFFER|ACK) 10\.99\.", text), "ownsocket handed out an address in proxy mode")
        run.passed("per-machine boot.ipxe in proxy mode, marker %.1f s after QEMU start" % done["pxe1"])
