"""
ownsocket explain: why would this machine get that file?

Loads the same config and plugins as the server, describes one client (by
MAC/architecture/vendor class/user class, or a captured packet in hex), asks
every selector of the chain in order and prints what each said, which one
decided and why.  Nothing is sent on the network and no lease is touched.

With C{--v6} (or a captured DHCPv6 message as C{--packet}) the client is a
DHCPv6 one: option 61 for the architecture, 16 vendor class, 15 user class
and the DUID go through the same chain as the DHCPv4 facts do, and the
answer is shown as the server would send it: the option-59 URL with the
server's IPv6 literal, and option 16 C{HTTPClient} for UEFI HTTP boot.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
from typing import List, Optional

from twisted.internet import defer, task

from ownsocket import config as configuration
from ownsocket.boot.loader import load_selectors
from ownsocket.boot.request import ARCH_NAMES, BootRequest
from ownsocket.dhcp import wire
from ownsocket.dhcp.server import Arrival, make_boot_request
from ownsocket.dhcp6 import server as server6
from ownsocket.dhcp6 import wire as wire6
from ownsocket.files import ReadRequest
from ownsocket.boot.selectors import client_arches
from ownsocket.interfaces import IFileBackend, ITransferObserver
from ownsocket.probes import describe_next


def build_parser():
    parser = argparse.ArgumentParser(
        prog="ownsocket explain",
        description="Show which boot file ownsocket would hand a client, which selector chose it and why.")
    parser.add_argument("--config", "-c", help="INI configuration file (default: the embedded defaults)")
    parser.add_argument("--mac", default="00:00:00:00:00:00", help="client MAC address")
    parser.add_argument("--arch", default="", help="option 93 architecture(s), e.g. 7 or 0,7")
    parser.add_argument("--vendor-class", default=None, help="option 60, e.g. PXEClient:Arch:00007:UNDI:003000")
    parser.add_argument("--user-class", default=None, help="option 77, e.g. iPXE")
    parser.add_argument("--ipxe", action="store_true", help="the client sends option 175 (it is iPXE)")
    parser.add_argument("--interface", default=None, help="receiving interface name")
    parser.add_argument("--giaddr", default=None, help="relay agent address")
    parser.add_argument("--server-address", default=None,
                        help="the server address the client talks to (for @server@ in URLs); default "
                             "192.0.2.1, or with --v6 the [subnet6] server_address, else the first "
                             "address of the first [subnet6] network")
    parser.add_argument("--phase", choices=("dhcp", "proxy", "4011"), default="dhcp")
    parser.add_argument("--packet", default=None,
                        help="a captured DHCP request (BOOTP payload) in hex, or @FILE with hex "
                             "(lines starting with # are ignored)")
    v6 = parser.add_argument_group(
        "DHCPv6", "--v6 explains a DHCPv6 client: --arch is then option 61, --vendor-class option 16 "
        "(enterprise 343), --user-class option 15 (comma separated entries); --packet takes a captured "
        "DHCPv6 message (UDP payload from port 546, or a Relay-forw) and is recognised as DHCPv6 by itself")
    v6.add_argument("--v6", action="store_true", help="the client speaks DHCPv6 (Solicit)")
    v6.add_argument("--duid", default=None,
                    help="option 1 client DUID in hex (default: a DUID-LL of --mac)")
    v6.add_argument("--iaid", type=lambda text: int(text, 0), default=None, help="the IA_NA's IAID")
    v6.add_argument("--source", default=None,
                    help="the client's link-local source address (its MAC, as the server derives it, "
                         "when the DUID holds none)")
    parser.add_argument("--after-first-stage", action="store_true",
                        help="answer as if the client had already fetched its first stage "
                             "(for the stateful iPXE selector)")
    return parser


class ExplainError(Exception):
    pass


def _read_packet(text: str) -> bytes:
    if text.startswith("@"):
        try:
            with open(text[1:], encoding="ascii", errors="replace") as handle:
                text = "".join(line for line in handle if not line.lstrip().startswith("#"))
        except OSError as error:
            raise ExplainError(f"cannot read {text[1:]}: {error.strerror}") from None
    try:
        return bytes.fromhex("".join(text.split()))
    except ValueError:
        raise ExplainError("--packet is not hex") from None


def is_dhcp6_packet(data: bytes) -> bool:
    """A BOOTP message is at least 236 bytes with the DHCP magic cookie
    after them (or plain BOOTP: 300 bytes); a DHCPv6 client message is
    usually much shorter and has no cookie."""
    if len(data) >= 240 and data[236:240] == wire.MAGIC_COOKIE:
        return False
    return len(data) < 236 and bool(data) and data[0] in wire6.CLIENT_MESSAGES | {wire6.RELAY_FORW}


def _server_address6(args, config) -> ipaddress.IPv6Address:
    if args.server_address:
        try:
            return ipaddress.IPv6Address(args.server_address)
        except ValueError:
            raise ExplainError(f"--server-address {args.server_address!r} is not an IPv6 address "
                               "(a DHCPv6 client gets an IPv6 literal in its boot URL)") from None
    for subnet in config.subnets6:
        if subnet.server_address is not None:
            return subnet.server_address
    if config.subnets6:
        return next(config.subnets6[0].network.hosts())
    return ipaddress.IPv6Address("2001:db8::1")


def _parsed_packet(path, codec, what):
    """The packet in C{path} as C{codec} (wire or wire6) parses it; one
    line, never a traceback, when the server would drop it."""
    try:
        return codec.parse(_read_packet(path))
    except codec.MalformedPacket as error:
        raise ExplainError(f"{what} would be dropped: {error}") from None


def describe_request6(args, config):
    """(BootRequest, the parsed or built DHCPv6 message, server address)."""
    server = _server_address6(args, config)
    if args.packet:
        message = _parsed_packet(args.packet, wire6, "the DHCPv6 packet")
        if message.message_type not in wire6.CLIENT_MESSAGES:
            raise ExplainError(f"a DHCPv6 {message.name} is not a client message")
        mac = server6.client_mac(message, args.source)
        if not mac and args.mac != "00:00:00:00:00:00":
            mac = args.mac
    else:
        try:
            arches = tuple(int(part) for part in args.arch.replace(" ", "").split(",") if part)
            mac = configuration.parse_mac(args.mac)
            duid = bytes.fromhex(args.duid.replace(":", "")) if args.duid else wire6.duid_ll(mac)
        except ValueError as error:
            raise ExplainError(f"bad --arch, --mac or --duid: {error}") from None
        if any(not 0 <= arch <= 0xFFFF for arch in arches):
            raise ExplainError(f"--arch {args.arch!r}: option 61 holds 16-bit numbers")
        options = [wire6.option(wire6.OPT_CLIENTID, duid),
                   wire6.ia_na(args.iaid if args.iaid is not None else 1, 0, 0),
                   wire6.option(wire6.OPT_ORO, b"".join(code.to_bytes(2, "big") for code in
                                                        (wire6.OPT_BOOTFILE_URL, wire6.OPT_BOOTFILE_PARAM)))]
        if args.vendor_class:
            options.append(wire6.vendor_class(wire6.ENTERPRISE_PXE, [args.vendor_class.encode()]))
        if arches:
            options.append(wire6.option(wire6.OPT_CLIENT_ARCH, b"".join(a.to_bytes(2, "big") for a in arches)))
        if args.user_class:
            entries = [part.encode() for part in args.user_class.split(",") if part]
            options.append(wire6.option(wire6.OPT_USER_CLASS, b"".join(
                len(entry).to_bytes(2, "big") + entry for entry in entries)))
        try:
            message = wire6.parse(wire6.build(wire6.SOLICIT, 0, options))
        except wire6.MalformedPacket as error:
            raise ExplainError(f"these values make no valid Solicit: {error}") from None
    link = server6.Link(args.interface, (server,), b"")
    return server6.make_boot_request6(message, mac, link, server), message, server


def describe_request(args) -> BootRequest:
    server = ipaddress.IPv4Address(args.server_address or "192.0.2.1")
    if args.packet:
        message = _parsed_packet(args.packet, wire, "the packet")
        return make_boot_request(message, Arrival(args.interface, None), server, args.phase)
    try:
        arches = tuple(int(part) for part in args.arch.replace(" ", "").split(",") if part)
    except ValueError:
        raise ExplainError(f"--arch {args.arch!r} is not a list of numbers") from None
    try:
        mac = configuration.parse_mac(args.mac)
        giaddr = ipaddress.IPv4Address(args.giaddr) if args.giaddr else None
    except ValueError as error:
        raise ExplainError(str(error)) from None
    user_class = wire.parse_user_class(args.user_class.encode()) if args.user_class else ()
    return BootRequest(
        mac=mac, message_type=wire.DISCOVER, arch=arches,
        vendor_class=args.vendor_class.encode() if args.vendor_class else None,
        user_class=user_class, has_ipxe_options=args.ipxe, giaddr=giaddr,
        interface=args.interface, phase=args.phase, server_address=server)


def summary6(request: BootRequest, message) -> List[str]:
    arches = ", ".join(f"{a} ({ARCH_NAMES.get(a, 'unknown')})" for a in request.arch) or "none"
    oro = ", ".join(str(code) for code in message.oro) or "none"
    return [
        f"client     {request.mac or 'MAC unknown (give --source or --mac)'}, DHCPv6 {message.name}",
        f"DUID (1)   {(request.duid or b'').hex() or '-'}" + (f", IAID {request.iaid:#010x}"
                                                              if request.iaid is not None else ""),
        f"arch (61)  {arches}",
        f"vendor(16) {request.vendor_class.decode('ascii', 'replace') if request.vendor_class else '-'}",
        f"user (15)  {', '.join(u.decode('ascii', 'replace') for u in request.user_class) or '-'}",
        f"asks (6)   {oro}",
        f"iPXE       {'yes' if request.is_ipxe else 'no'}",
        f"firmware   {request.firmware}",
    ]


def summary(request: BootRequest) -> List[str]:
    arches = ", ".join(f"{a} ({ARCH_NAMES.get(a, 'unknown')})" for a in request.arch) or "none"
    lines = [
        f"client     {request.mac}",
        f"arch (93)  {arches}",
        f"vendor(60) {request.vendor_class.decode('ascii', 'replace') if request.vendor_class else '-'}",
        f"user (77)  {', '.join(u.decode('ascii', 'replace') for u in request.user_class) or '-'}",
        f"iPXE       {'yes' if request.is_ipxe else 'no'} (option 175: {'yes' if request.has_ipxe_options else 'no'})",
        f"firmware   {request.firmware}",
        f"phase      {request.phase}" + (f", relay {request.giaddr}" if request.giaddr else ""),
    ]
    return lines


def _show_decision(decision) -> str:
    if decision is None:
        return "no decision (not mine)"
    parts = [repr(decision.filename) if decision.filename else "no file"]
    if decision.next_server:
        parts.append(f"next-server {decision.next_server}")
    if decision.extra_options:
        parts.append("options " + ", ".join(f"{code}={value!r}" for code, value in decision.extra_options))
    return f"{' '.join(parts)}  -- {decision.reason}"


@defer.inlineCallbacks
def explain(args, out=sys.stdout, clock=None):
    from twisted.internet import reactor
    clock = clock or reactor
    # The config may be meant for another host or namespace (its interfaces
    # need not exist here): explain only asks the selectors.
    config = configuration.load(args.config, known_interfaces=configuration.AnyInterface())
    selectors = load_selectors(config, clock)
    message6 = None
    if args.v6 or (args.packet and is_dhcp6_packet(_read_packet(args.packet))):
        request, message6, server6_address = describe_request6(args, config)
    else:
        request = describe_request(args)
    if args.after_first_stage:
        for selector in selectors:
            if ITransferObserver.providedBy(selector):
                selector.file_opened(ReadRequest("first-stage", ("0.0.0.0", 0), {}, request))
    print(f"config     {config.source}", file=out)
    for line in (summary6(request, message6) if message6 is not None else summary(request)):
        print(line, file=out)
    if args.packet and message6 is None:
        # what the captured packet said, option by option (decoded by dhcppython)
        described = wire.describe_options(wire.parse(_read_packet(args.packet)))
        for index, (code, name, value) in enumerate(described):
            if isinstance(value, dict) and len(value) == 1:
                (value,) = value.values()
            print(f"{'options' if index == 0 else '':<10} {code:>3} {name}: {value}", file=out)
    print("", file=out)
    print(f"selectors, in the order of [boot] selectors ({', '.join(config.boot.selectors)}):", file=out)
    chosen = None
    for selector in selectors:
        try:
            result = yield defer.maybeDeferred(selector.select, request).addTimeout(
                config.boot.selector_timeout, clock)
            text = _show_decision(result)
        except defer.TimeoutError:
            result, text = None, f"timed out after {config.boot.selector_timeout}s (skipped)"
        except Exception as error:
            result, text = None, f"raised {type(error).__name__}: {error} (skipped)"
        marker = "   "
        if chosen is None and result is not None:
            chosen = (selector, result)
            marker = "==>"
        elif chosen is not None and result is not None:
            text += "  [not used: an earlier selector decided]"
        print(f" {marker} {selector.name:<10} {text}", file=out)
    print("", file=out)
    if chosen is None:
        print("decision: none -- the reply carries no boot file", file=out)
        return 1
    selector, decision = chosen
    print(f"decision: {decision.filename or 'no file'} (by {selector.name!r}: {decision.reason})", file=out)
    if message6 is not None:
        for line in _answer6(config, request, message6, decision, server6_address):
            print(line, file=out)
    for line in _next_fetches(config, selectors, request, decision):
        print(line, file=out)
    stateful_ipxe = [s for s in selectors if s.name == "ipxe" and getattr(s, "stateful", False)]
    if request.is_ipxe and stateful_ipxe and selector not in stateful_ipxe and not args.after_first_stage:
        print("note: this client is iPXE; the stateful 'ipxe' selector gives it the script only after "
              "it fetched a first stage over TFTP/HTTP (see --after-first-stage)", file=out)
    return 0


def _answer6(config, request, message, decision, server_address) -> List[str]:
    """The boot part of the Advertise/Reply, built as the DHCPv6 server builds it."""
    wants = wire6.OPT_BOOTFILE_URL in message.oro or bool(message.client_arch)
    if not wants:
        return ["option 59: none -- the client neither asks for option 59 (ORO) nor sends option 61, "
                "so the server answers it without a boot URL"]
    http = server6.is_http_client(request, decision)
    url = server6.boot_url(decision.filename, server_address, http, config.http.port) \
        if decision.filename else None
    if not url:
        return ["option 59: none"]
    lines = [f"option 59: {url}"]
    if http:
        lines.append("option 16: enterprise 343 'HTTPClient' (UEFI HTTP boot needs it; FIRMWARE-FACTS §8c)")
    if url.startswith("http") and not config.http.enabled:
        lines.append("warning: the URL is http:// but [http] is not enabled in this config")
    return lines


def _next_fetches(config, selectors, request, decision) -> List[str]:
    """What shim and GRUB will ask for after the boot file, and whether each
    needed file is there (FIRMWARE-FACTS §6d, §6e)."""
    arches = client_arches(request)
    generators = [s for s in selectors if hasattr(s, "describe") and IFileBackend.providedBy(s)]

    def generated(path):
        for generator in generators:
            found = generator.describe(path)
            if found:
                return found
        return None

    lines = describe_next(decision.filename, arches[0] if arches else None,
                          os.path.abspath(config.tftp.root), generated)
    return (["", "next, over TFTP:"] + ["  " + line for line in lines]) if lines else []


def main(argv: Optional[List[str]] = None) -> int:
    """Exit status: 0 a decision, 1 no decision, 2 a usage or config error."""
    args = build_parser().parse_args(argv)
    status = {"code": 2}

    def run(reactor):
        def done(code):
            status["code"] = code

        def failed(failure):
            if failure.check(configuration.ConfigError, ExplainError):
                print(f"ownsocket explain: {failure.value}", file=sys.stderr)
                return None
            return failure

        return explain(args).addCallbacks(done, failed)

    try:
        task.react(run)
    except SystemExit as exit_:
        if exit_.code not in (0, None):
            return 2
    return status["code"]


if __name__ == "__main__":
    sys.exit(main())
