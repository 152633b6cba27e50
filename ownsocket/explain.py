"""
ownsocket explain: why would this machine get that file?

Loads the same config and plugins as the server, describes one client (by
MAC/architecture/vendor class/user class, or a captured packet in hex), asks
every selector of the chain in order and prints what each said, which one
decided and why.  Nothing is sent on the network and no lease is touched.
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
    parser.add_argument("--server-address", default="192.0.2.1",
                        help="the server address the client talks to (for @server@ in URLs)")
    parser.add_argument("--phase", choices=("dhcp", "proxy", "4011"), default="dhcp")
    parser.add_argument("--packet", default=None,
                        help="a captured DHCP request (BOOTP payload) in hex, or @FILE with hex "
                             "(lines starting with # are ignored)")
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


def describe_request(args) -> BootRequest:
    server = ipaddress.IPv4Address(args.server_address)
    if args.packet:
        data = _read_packet(args.packet)
        try:
            message = wire.parse(data)
        except wire.MalformedPacket as error:
            raise ExplainError(f"the packet would be dropped: {error}") from None
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
    request = describe_request(args)
    if args.after_first_stage:
        for selector in selectors:
            if ITransferObserver.providedBy(selector):
                selector.file_opened(ReadRequest("first-stage", ("0.0.0.0", 0), {}, request))
    print(f"config     {config.source}", file=out)
    for line in summary(request):
        print(line, file=out)
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
    for line in _next_fetches(config, selectors, request, decision):
        print(line, file=out)
    stateful_ipxe = [s for s in selectors if s.name == "ipxe" and getattr(s, "stateful", False)]
    if request.is_ipxe and stateful_ipxe and selector not in stateful_ipxe and not args.after_first_stage:
        print("note: this client is iPXE; the stateful 'ipxe' selector gives it the script only after "
              "it fetched a first stage over TFTP/HTTP (see --after-first-stage)", file=out)
    return 0


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
