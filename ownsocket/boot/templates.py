"""
Per-machine files (a GRUB config, an iPXE script) rendered from templates.

Debian's signed network GRUB asks every machine for the same name,
C{/grub/grub.cfg}, and for no per-MAC or per-IP name (FIRMWARE-FACTS §6e),
so the only way to give machines different configs is to answer that one
name per client.  TFTP and HTTP only know the peer address; the client's
last DHCP request (L{ownsocket.boot.recent.RecentRequests}, by address, or
by MAC through ARP in proxy mode) says who it is.

Placeholders are C{@name@} (C{@@} is a literal C{@}): GRUB and iPXE both use
C{$name} and C{${name}} themselves, and the boot-file names in C{[boot]}
already use C{@mac@}.  Rendering is plain substitution of values ownsocket
computed (MAC, addresses, the architecture number) or that the config
gives; nothing a client sends is copied in and nothing is evaluated.
Every placeholder is checked at start-up against the values that can exist
for every client the file may be served to, so a typo or a host without a
hostname stops start-up instead of handing a machine an empty string.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from ownsocket.boot.request import ARCH_NAMES, BootRequest
from ownsocket.files import BytesReader, normalise
from ownsocket.interfaces import AccessViolation, FileNotFound, IBootFileSelector, IFileBackend

#: C{@@} or C{@name@}; a lone C{@} (an e-mail address in a comment) stays text.
PLACEHOLDER = re.compile(r"@@|@([A-Za-z][A-Za-z0-9_-]*)@")

#: Largest template accepted; configs and scripts are a few KiB.
MAX_TEMPLATE_BYTES = 1024 * 1024

#: GRUB's name for the CPU of each option 93 architecture (its C{$grub_cpu}).
GRUB_CPU = {0: "i386", 6: "i386", 7: "x86_64", 9: "x86_64", 10: "arm", 11: "arm64",
            15: "i386", 16: "x86_64", 18: "arm", 19: "arm64", 25: "riscv32", 27: "riscv64",
            39: "loongarch64"}


class TemplateError(ValueError):
    """A template that cannot be served as configured (raised at start-up)."""


class Unavailable(FileNotFound):
    """
    The name is a template's, but this client cannot have it (no DHCP request
    known, no host entry, a value missing).  C{final}: the file chain must not
    fall through to a file of the same name on disk, which was never meant
    for this machine.
    """

    final = True


@dataclass(frozen=True)
class Client:
    """What a template may be filled with for one request."""

    request: BootRequest
    ip: str
    host: Optional[object]  # the HostConfig of this MAC, if any


def _arch(client: Client) -> Optional[int]:
    from ownsocket.boot.selectors import client_arches
    arches = client_arches(client.request)
    return arches[0] if arches else None


def _text(value) -> Optional[str]:
    return None if value is None else str(value)


#: The values every client with a known DHCP request has (or, for the
#: architecture of a client that sent none, that make the file unavailable
#: with a log line): name -> (meaning, how to get it).
BUILTIN: Dict[str, Tuple[str, Callable[[Client], Optional[str]]]] = {
    "mac": ("the client's MAC, 52:54:00:99:00:10", lambda c: c.request.mac),
    "mac-hyphen": ("the MAC with hyphens, 52-54-00-99-00-10", lambda c: c.request.mac.replace(":", "-")),
    "mac-hex": ("the MAC as 12 hex digits, 525400990010", lambda c: c.request.mac.replace(":", "")),
    "ip": ("the client's IPv4 address (where the request came from)", lambda c: c.ip),
    "server": ("the server address the client talks to", lambda c: _text(c.request.server_address)),
    "arch": ("option 93 architecture number (7, 11 ...)", lambda c: _text(_arch(c))),
    "arch-name": ("its name (EFI x64, ARM 64-bit UEFI ...)",
                  lambda c: ARCH_NAMES.get(_arch(c)) if _arch(c) is not None else None),
    "grub-cpu": ("GRUB's CPU name for it (x86_64, arm64 ...)", lambda c: GRUB_CPU.get(_arch(c))),
    "firmware": ("bios, uefi, uefi-http or unknown", lambda c: c.request.firmware),
}

#: Values that come from the machine's [host:NAME] section.
HOST_FIELDS = {
    "host": ("the NAME of its [host:NAME] section", lambda host: host.name),
    "hostname": ("its [host:NAME] hostname", lambda host: host.hostname),
    "host-address": ("its [host:NAME] address", lambda host: _text(host.address)),
}


def parse(text: str) -> List[Tuple[str, Optional[str]]]:
    """Split a template into (literal text, placeholder name or None) pieces."""
    pieces = []
    position = 0
    for match in PLACEHOLDER.finditer(text):
        literal = text[position:match.start()]
        if match.group(0) == "@@":
            pieces.append((literal + "@", None))
        else:
            pieces.append((literal, match.group(1).lower()))
        position = match.end()
    pieces.append((text[position:], None))
    return pieces


def _line_of(text: str, name: str) -> int:
    match = re.search("@%s@" % re.escape(name), text, re.I)
    return text.count("\n", 0, match.start()) + 1 if match else 0


@dataclass(frozen=True)
class Template:
    path: str  # the normalised name clients ask for
    source: str  # the template file, for messages
    pieces: Tuple[Tuple[str, Optional[str]], ...]
    text: str

    @property
    def names(self) -> Tuple[str, ...]:
        return tuple(dict.fromkeys(name for _, name in self.pieces if name))


@implementer(IBootFileSelector, IFileBackend)
class TemplateFiles:
    """
    Generated per-machine files, riding the selector chain only to be built
    from C{[selector:template]} and placed in front of the files on disk; as
    a selector it never decides anything.

    @param templates: the L{Template}s, by normalised lower-case path.
    @param hosts: the config's HostConfig objects.
    @param values: C{{name: {host name or None: value}}}; C{None} holds the
        default for every client.
    @param hosts_only: serve only machines that have a [host:NAME] section.
    """

    name = "template"
    log = Logger()

    def __init__(self, templates: Mapping[str, Template], hosts: Sequence, values=None,
                 hosts_only: bool = False):
        self.templates = dict(templates)
        self._hosts = {host.mac: host for host in hosts}
        self._values: Dict[str, Dict[Optional[str], str]] = {k: dict(v) for k, v in (values or {}).items()}
        self.hosts_only = hosts_only
        for template in self.templates.values():
            self._check(template)

    def add(self, template: Template) -> None:
        """Check C{template} against the values that exist, then serve it."""
        self._check(template)
        self.templates[template.path] = template

    # -- start-up checks ---------------------------------------------------

    def _value_for(self, name: str, host) -> Optional[str]:
        """A host field, a per-host value or a default; None when missing."""
        per_host = self._values.get(name, {})
        if host is not None:
            if host.name in per_host:
                return per_host[host.name]
            if name in HOST_FIELDS:
                value = HOST_FIELDS[name][1](host)
                if value is not None:
                    return value
        return per_host.get(None)

    def _check(self, template: Template) -> None:
        known = set(BUILTIN) | set(HOST_FIELDS) | set(self._values)
        for name in template.names:
            where = f"{template.source} line {_line_of(template.text, name)}"
            if name not in known:
                raise TemplateError(
                    f"{where}: unknown placeholder @{name}@ (known: "
                    f"{', '.join('@%s@' % n for n in sorted(known))}; a literal @ is written @@)")
            if name in BUILTIN:
                continue
            if not self.hosts_only and self._value_for(name, None) is None:
                raise TemplateError(
                    f"{where}: @{name}@ has no value for a machine without a [host:NAME] section: "
                    f"set var.{name} (a default) or clients = hosts")
            for host in self._hosts.values():
                if self._value_for(name, host) is None:
                    raise TemplateError(
                        f"{where}: @{name}@ has no value for [host:{host.name}]: give it "
                        f"{'a ' + name + ' key' if name in ('hostname', 'host-address') else 'var.' + name + '.' + host.name} "
                        f"or set var.{name} (a default)")

    # -- IBootFileSelector -------------------------------------------------

    def select(self, request):
        return None

    # -- IFileBackend ------------------------------------------------------

    def get_reader(self, read_request):
        template = self.templates.get(read_request.path.lower())
        if template is None:
            return defer.fail(FileNotFound("not a template"))
        try:
            data = self.render(template, read_request)
        except Unavailable as error:
            self.log.warn("template {path}: not served to {peer}: {why}",
                          path=template.path, peer=read_request.peer[0], why=str(error))
            return defer.fail(error)
        return defer.succeed(BytesReader(data))

    def render(self, template: Template, read_request) -> bytes:
        """The file for the client behind C{read_request}, or L{Unavailable}."""
        request = read_request.boot_request
        if request is None:
            raise Unavailable(
                f"no DHCP request known from {read_request.peer[0]} (the client did not get its "
                "address or boot file from this server since it started; in proxy mode its MAC "
                "was not in the ARP table), so there is no machine to render it for")
        host = self._hosts.get(request.mac)
        if self.hosts_only and host is None:
            raise Unavailable(f"{request.mac} has no [host:NAME] section and [selector:template] "
                              "clients = hosts")
        client = Client(request, read_request.peer[0], host)
        out = []
        for literal, name in template.pieces:
            out.append(literal)
            if name is None:
                continue
            if name in BUILTIN:
                value = BUILTIN[name][1](client)
            else:
                value = self._value_for(name, host)
            if value is None:
                raise Unavailable(f"@{name}@ has no value for {request.mac} "
                                  f"({BUILTIN.get(name, ('',))[0] or 'no value configured'})")
            out.append(value)
        self.log.info("template {path} rendered for {mac} at {peer}{host}",
                      path=template.path, mac=request.mac, peer=read_request.peer[0],
                      host=f" ([host:{host.name}])" if host is not None else "")
        return "".join(out).encode("utf-8")

    def describe(self, path: str) -> Optional[str]:
        """For explain: what serves C{path}, or None when no template does."""
        template = self.templates.get(path.lower().lstrip("/"))
        if template is None:
            return None
        return f"generated per machine by 'template' from {template.source}"


# -- building from [selector:template] ------------------------------------

#: Keys of [selector:template] that are settings, not file names.
OPTION_KEYS = ("clients",)
_VALUE_NAME = re.compile(r"^[a-z][a-z0-9_-]*$")


def load_template(path_key: str, source: str, read=None) -> Template:
    """Read and parse one template file; L{TemplateError} names the problem."""
    try:
        path = normalise(path_key)
    except AccessViolation as error:
        raise TemplateError(f"{path_key!r} is not a file name clients can ask for: {error}") from None
    try:
        if read is not None:
            data = read(source)
        else:
            with open(source, "rb") as handle:
                data = handle.read(MAX_TEMPLATE_BYTES + 1)
    except OSError as error:
        raise TemplateError(f"cannot read the template {source}: {error.strerror}") from None
    if len(data) > MAX_TEMPLATE_BYTES:
        raise TemplateError(f"the template {source} is larger than {MAX_TEMPLATE_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise TemplateError(f"the template {source} is not UTF-8 text (byte {error.start})") from None
    return Template(path.lower(), source, tuple(parse(text)), text)


def build(settings: Mapping[str, str], hosts: Sequence, setting_error, read=None,
          base: str = "") -> TemplateFiles:
    """
    C{[selector:template]} -> L{TemplateFiles}.

    Keys: C{NAME = TEMPLATE FILE} for each generated file; C{var.KEY = value}
    (a default) and C{var.KEY.HOST = value} (for C{[host:HOST]}) for values
    of one's own; C{clients = any | hosts}.

    @param setting_error: the exception class to raise as
        C{setting_error(key, message)}.
    @param base: the directory relative template file names start from (the
        config file's).
    """
    host_names = {host.name for host in hosts}
    values: Dict[str, Dict[Optional[str], str]] = {}
    files = []
    hosts_only = False
    for key, value in settings.items():
        if key == "clients":
            choice = value.strip().lower()
            if choice not in ("any", "hosts"):
                raise setting_error(key, f"{value!r} is neither any nor hosts")
            hosts_only = choice == "hosts"
        elif key.startswith("var."):
            name, _, host = key[len("var."):].partition(".")
            if not _VALUE_NAME.match(name):
                raise setting_error(key, f"{name!r} is not a value name (letters, digits, - and _)")
            if name in BUILTIN:
                raise setting_error(key, f"@{name}@ is built in and cannot be set")
            if host and host not in host_names:
                raise setting_error(key, f"there is no [host:{host}] section")
            values.setdefault(name, {})[host or None] = value
        else:
            if not value:
                raise setting_error(key, "needs a template file")
            files.append((key, os.path.join(base, value) if base else value))
    if not files:
        raise setting_error(next(iter(settings), "(none)"),
                            "names no file: add NAME = TEMPLATE FILE, e.g. grub/grub.cfg = /etc/ownsocket/grub.cfg.in")
    templates = {}
    for key, source in files:
        try:
            template = load_template(key, source, read)
        except TemplateError as error:
            raise setting_error(key, str(error)) from None
        if template.path in templates:
            raise setting_error(key, f"{template.path} is named twice")
        templates[template.path] = template
    generated = TemplateFiles({}, hosts, values, hosts_only)
    for key, source in files:
        template = templates[normalise(key).lower()]
        try:
            generated.add(template)
        except TemplateError as error:
            raise setting_error(key, str(error)) from None
    return generated
