"""
The INI configuration, parsed once at start-up into frozen dataclasses.

Everything a sysadmin can get wrong is checked here, before any socket is
opened, and reported as one L{ConfigError} line that names the file, the
section and the key: a DHCP server that starts with a half-understood config
hands out wrong addresses, which is worse than not starting.
"""

from __future__ import annotations

import ast
import configparser
import ipaddress
import re
from dataclasses import dataclass, field
from typing import Callable, Dict, Optional, Tuple

from ownsocket import netifaces

IPv4 = ipaddress.IPv4Address

#: The configuration used when no --config is given.  It is harmless on any
#: LAN: no subnet is named, so the DHCP server hands out no address at all.
EMBEDDED_DEFAULTS = """\
# ownsocket's built-in defaults (the same text ships as conf/ownsocket.ini).
# No [subnet:...] section is present, so the DHCP server answers nobody:
# name a subnet before it hands out any address.

[dhcp]
enabled = true
mode = server
port = 67
interfaces =
leases = ownsocket-leases.sqlite
decline_time = 600
bootp_dynamic = false
bootp_compat_offer = false

[tftp]
enabled = true
port = 69
root = tftpboot
addresses =
max_blksize = 1468
max_windowsize = 64
max_bytes_in_flight = 65536
max_sessions = 512
max_sessions_per_client = 256
timeout = 1
retries = 6
case_insensitive = false

[http]
enabled = false
port = 80
addresses =

[boot]
default = undionly.kpxe
arch.0 = undionly.kpxe
arch.6 = ipxe-ia32.efi
arch.7 = snponly.efi
arch.9 = snponly.efi

[admin]
# Metrics, the per-boot trail and the status page, for this host only.
enabled = true
addresses = 127.0.0.1
port = 9067
boots = 1000
events_per_boot = 64
stall_after = 30
"""


class ConfigError(Exception):
    """A configuration mistake, worded for the person who made it."""

    def __init__(self, source: str, section: Optional[str], key: Optional[str], message: str):
        self.source, self.section, self.key, self.message = source, section, key, message
        where = source
        if section is not None:
            where += f": [{section}]"
        if key is not None:
            where += f" {key}"
        super().__init__(f"{where}: {message}")


@dataclass(frozen=True)
class AddressRange:
    first: IPv4
    last: IPv4

    def __contains__(self, address: IPv4) -> bool:
        return self.first <= address <= self.last

    def __len__(self) -> int:
        return int(self.last) - int(self.first) + 1

    def addresses(self):
        for value in range(int(self.first), int(self.last) + 1):
            yield IPv4(value)

    def __str__(self) -> str:
        return f"{self.first}-{self.last}"


@dataclass(frozen=True)
class DhcpConfig:
    enabled: bool = True
    mode: str = "server"  # or "proxy": boot information only, never an address
    proxy_port: int = 4011
    port: int = 67
    client_port: int = 68
    interfaces: Tuple[str, ...] = ()
    leases: str = "ownsocket-leases.sqlite"
    decline_time: int = 600
    bootp_compat_offer: bool = False
    bootp_dynamic: bool = False
    offer_hold: int = 60
    server_address: Optional[IPv4] = None


@dataclass(frozen=True)
class SubnetConfig:
    name: str
    network: ipaddress.IPv4Network
    pools: Tuple[AddressRange, ...] = ()
    routers: Tuple[IPv4, ...] = ()
    dns: Tuple[IPv4, ...] = ()
    domain: Optional[str] = None
    lease_time: int = 3600
    interface: Optional[str] = None
    next_server: Optional[IPv4] = None
    server_address: Optional[IPv4] = None

    def in_pool(self, address: IPv4) -> bool:
        return any(address in pool for pool in self.pools)


@dataclass(frozen=True)
class Subnet6Config:
    """A [subnet6:NAME] section: DHCPv6 (IA_NA) addresses and Router
    Advertisements on one link.  OVMF ignores stateless answers, so a
    boot link needs a pool."""

    name: str
    network: ipaddress.IPv6Network
    pools: Tuple[AddressRange, ...] = ()  # of IPv6Address
    interface: Optional[str] = None
    lease_time: int = 3600  # valid lifetime; preferred = valid, T1/T2 = 1/2, 4/5
    dns: Tuple[ipaddress.IPv6Address, ...] = ()
    domain: Tuple[str, ...] = ()
    #: false when a router on the link already sends RAs (with M=1)
    router_advertisements: bool = True
    #: RA router lifetime.  Not 0 by default: OVMF's PXEv6 waits 10 s for a
    #: route it only finds as a default route (FIRMWARE-FACTS §8d)
    router_lifetime: int = 1800
    #: the address put in option-59 URLs; by default the interface's own
    #: address inside C{network}
    server_address: Optional[ipaddress.IPv6Address] = None

    def in_pool(self, address) -> bool:
        return any(address in pool for pool in self.pools)


@dataclass(frozen=True)
class HostConfig:
    name: str
    mac: str
    address: Optional[IPv4] = None
    hostname: Optional[str] = None
    bootfile: Optional[str] = None
    next_server: Optional[IPv4] = None


@dataclass(frozen=True)
class TftpConfig:
    enabled: bool = True
    port: int = 69
    root: str = "tftpboot"
    addresses: Tuple[IPv4, ...] = ()
    max_blksize: int = 1468
    max_windowsize: int = 64
    max_bytes_in_flight: int = 65536
    max_sessions: int = 512
    max_sessions_per_client: int = 256
    timeout: float = 1.0
    retries: int = 6
    case_insensitive: bool = False


@dataclass(frozen=True)
class HttpConfig:
    enabled: bool = False
    port: int = 80
    addresses: Tuple[IPv4, ...] = ()
    root: Optional[str] = None  # None: the TFTP root


@dataclass(frozen=True)
class AdminConfig:
    """The admin listener (metrics, trail, status page): loopback by default,
    because what it shows (MACs, files, addresses) is for the operator."""

    enabled: bool = True
    addresses: Tuple[IPv4, ...] = (IPv4("127.0.0.1"),)
    port: int = 9067
    boots: int = 1000  # MACs kept in the per-boot trail
    events_per_boot: int = 64
    stall_after: float = 30.0  # seconds without progress before a boot is called stalled

    @property
    def loopback_only(self) -> bool:
        return bool(self.addresses) and all(address.is_loopback for address in self.addresses)


DEFAULT_SELECTORS = ("host", "mac", "ipxe", "uefi-http", "rpi", "vendor", "arch")


@dataclass(frozen=True)
class BootConfig:
    default: Optional[str] = None
    arch: Tuple[Tuple[int, str], ...] = ()
    next_server: Optional[IPv4] = None
    sname: Optional[str] = None
    selectors: Tuple[str, ...] = DEFAULT_SELECTORS
    selector_timeout: float = 2.0


@dataclass(frozen=True)
class Config:
    source: str
    dhcp: DhcpConfig = field(default_factory=DhcpConfig)
    subnets: Tuple[SubnetConfig, ...] = ()
    subnets6: Tuple[Subnet6Config, ...] = ()
    hosts: Tuple[HostConfig, ...] = ()
    tftp: TftpConfig = field(default_factory=TftpConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    boot: BootConfig = field(default_factory=BootConfig)
    admin: AdminConfig = field(default_factory=AdminConfig)
    #: Raw [selector:NAME] sections: each selector's factory checks its own keys.
    selector_settings: Tuple[Tuple[str, Tuple[Tuple[str, str], ...]], ...] = ()

    def settings_for(self, name: str) -> Dict[str, str]:
        for section_name, items in self.selector_settings:
            if section_name == name:
                return dict(items)
        return {}


# ---------------------------------------------------------------------------
# Value parsers: each takes the raw string and returns a value or raises
# ValueError with a message that reads well after "section key: ".

def parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "yes", "true", "on"):
        return True
    if lowered in ("0", "no", "false", "off"):
        return False
    raise ValueError(f"{text!r} is not a yes/no value (use true or false)")


def _int_between(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text.strip(), 10)
        except ValueError:
            raise ValueError(f"{text!r} is not a whole number") from None
        if not low <= value <= high:
            raise ValueError(f"{value} is out of range ({low} to {high})")
        return value
    return parse


def _float_between(low: float, high: float) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text.strip())
        except ValueError:
            raise ValueError(f"{text!r} is not a number") from None
        if not low <= value <= high:
            raise ValueError(f"{value} is out of range ({low} to {high})")
        return value
    return parse


def parse_address(text: str) -> IPv4:
    try:
        return IPv4(text.strip())
    except ValueError:
        raise ValueError(f"{text.strip()!r} is not an IPv4 address") from None


def parse_optional_address(text: str) -> Optional[IPv4]:
    return parse_address(text) if text.strip() else None


def parse_address_list(text: str) -> Tuple[IPv4, ...]:
    return tuple(parse_address(part) for part in _split_list(text))


def parse_any_address_list(text: str):
    """[tftp]/[http] addresses: IPv4 or IPv6 literals."""
    values = []
    for part in _split_list(text):
        try:
            values.append(ipaddress.ip_address(part))
        except ValueError:
            raise ValueError(f"{part!r} is not an IPv4 or IPv6 address") from None
    return tuple(values)


def parse_address6(text: str) -> ipaddress.IPv6Address:
    try:
        return ipaddress.IPv6Address(text.strip())
    except ValueError:
        raise ValueError(f"{text.strip()!r} is not an IPv6 address") from None


def parse_optional_address6(text: str):
    return parse_address6(text) if text.strip() else None


def parse_address6_list(text: str):
    return tuple(parse_address6(part) for part in _split_list(text))


def parse_network6(text: str) -> ipaddress.IPv6Network:
    try:
        return ipaddress.IPv6Network(text.strip(), strict=True)
    except ValueError as error:
        raise ValueError(f"{text.strip()!r} is not an IPv6 network such as fd99::/64 ({error})") from None


def parse_ranges6(text: str) -> Tuple[AddressRange, ...]:
    ranges = []
    for part in _split_list(text):
        first, sep, last = part.partition("-")
        if not sep:
            raise ValueError(f"{part!r} is not a range such as fd99::100-fd99::1ff")
        start, end = parse_address6(first), parse_address6(last)
        if end < start:
            raise ValueError(f"range {part!r} ends before it starts")
        ranges.append(AddressRange(start, end))
    return tuple(ranges)


def parse_network(text: str) -> ipaddress.IPv4Network:
    try:
        return ipaddress.IPv4Network(text.strip(), strict=True)
    except ValueError as error:
        raise ValueError(f"{text.strip()!r} is not an IPv4 network such as 10.0.0.0/24 ({error})") from None


def parse_ranges(text: str) -> Tuple[AddressRange, ...]:
    ranges = []
    for part in _split_list(text):
        first, sep, last = part.partition("-")
        if not sep:
            raise ValueError(f"{part!r} is not a range such as 10.0.0.100-10.0.0.200")
        start, end = parse_address(first), parse_address(last)
        if end < start:
            raise ValueError(f"range {part!r} ends before it starts")
        ranges.append(AddressRange(start, end))
    return tuple(ranges)


_MAC = re.compile(r"^[0-9a-f]{2}([:-][0-9a-f]{2}){5}$")


def parse_mac(text: str) -> str:
    lowered = text.strip().lower()
    if not _MAC.match(lowered):
        raise ValueError(f"{text.strip()!r} is not a MAC address such as 52:54:00:12:34:56")
    return lowered.replace("-", ":")


def parse_text(text: str) -> str:
    return text.strip()


def parse_optional_text(text: str) -> Optional[str]:
    return text.strip() or None


def parse_name_list(text: str) -> Tuple[str, ...]:
    return tuple(_split_list(text))


def _split_list(text: str):
    return [part for part in re.split(r"[,\s]+", text.strip()) if part]


# ---------------------------------------------------------------------------
# Section schemas: key -> (dataclass field, parser).

def parse_mode(text: str) -> str:
    mode = text.strip().lower()
    if mode not in ("server", "proxy"):
        raise ValueError(f"{text.strip()!r} is neither server nor proxy")
    return mode


def parse_leases(text: str) -> str:
    """A SQLite file, or a PostgreSQL database several servers share
    (C{postgresql://...}); the error never repeats the text (a password)."""
    value = text.strip()
    if not value:
        raise ValueError("is empty (a SQLite file or a postgresql:// connection string)")
    if value.startswith(("postgresql://", "postgres://")):
        try:
            from psycopg.conninfo import conninfo_to_dict
        except ImportError:
            raise ValueError("a PostgreSQL store needs psycopg 3 (pip install 'psycopg[binary]')") from None
        try:
            conninfo_to_dict(value)
        except Exception:
            raise ValueError("is not a valid postgresql:// connection string") from None
    return value


_DHCP_KEYS: Dict[str, Tuple[str, Callable]] = {
    "enabled": ("enabled", parse_bool),
    "mode": ("mode", parse_mode),
    "proxy_port": ("proxy_port", _int_between(1, 65535)),
    "port": ("port", _int_between(1, 65535)),
    "client_port": ("client_port", _int_between(1, 65535)),
    "interfaces": ("interfaces", parse_name_list),
    "leases": ("leases", parse_leases),
    "decline_time": ("decline_time", _int_between(0, 86400 * 7)),
    "bootp_compat_offer": ("bootp_compat_offer", parse_bool),
    "bootp_dynamic": ("bootp_dynamic", parse_bool),
    "offer_hold": ("offer_hold", _int_between(1, 3600)),
    "server_address": ("server_address", parse_optional_address),
}

_SUBNET_KEYS: Dict[str, Tuple[str, Callable]] = {
    "network": ("network", parse_network),
    "pool": ("pools", parse_ranges),
    "router": ("routers", parse_address_list),
    "routers": ("routers", parse_address_list),
    "dns": ("dns", parse_address_list),
    "domain": ("domain", parse_optional_text),
    "lease_time": ("lease_time", _int_between(60, 2**31 - 1)),
    "interface": ("interface", parse_optional_text),
    "next_server": ("next_server", parse_optional_address),
    "server_address": ("server_address", parse_optional_address),
}

_SUBNET6_KEYS: Dict[str, Tuple[str, Callable]] = {
    "network": ("network", parse_network6),
    "pool": ("pools", parse_ranges6),
    "interface": ("interface", parse_optional_text),
    "lease_time": ("lease_time", _int_between(60, 2**31 - 1)),
    "dns": ("dns", parse_address6_list),
    "domain": ("domain", parse_name_list),
    "router_advertisements": ("router_advertisements", parse_bool),
    "router_lifetime": ("router_lifetime", _int_between(0, 9000)),
    "server_address": ("server_address", parse_optional_address6),
}

_HOST_KEYS: Dict[str, Tuple[str, Callable]] = {
    "mac": ("mac", parse_mac),
    "address": ("address", parse_optional_address),
    "hostname": ("hostname", parse_optional_text),
    "bootfile": ("bootfile", parse_optional_text),
    "next_server": ("next_server", parse_optional_address),
}

_TFTP_KEYS: Dict[str, Tuple[str, Callable]] = {
    "enabled": ("enabled", parse_bool),
    "port": ("port", _int_between(1, 65535)),
    "root": ("root", parse_text),
    "addresses": ("addresses", parse_any_address_list),
    "max_blksize": ("max_blksize", _int_between(8, 65464)),
    "max_windowsize": ("max_windowsize", _int_between(1, 65535)),
    "max_bytes_in_flight": ("max_bytes_in_flight", _int_between(512, 16 * 1024 * 1024)),
    "max_sessions": ("max_sessions", _int_between(1, 100000)),
    "max_sessions_per_client": ("max_sessions_per_client", _int_between(1, 10000)),
    "timeout": ("timeout", _float_between(0.05, 255)),
    "retries": ("retries", _int_between(1, 100)),
    "case_insensitive": ("case_insensitive", parse_bool),
}

_HTTP_KEYS: Dict[str, Tuple[str, Callable]] = {
    "enabled": ("enabled", parse_bool),
    "port": ("port", _int_between(1, 65535)),
    "addresses": ("addresses", parse_any_address_list),
    "root": ("root", parse_optional_text),
}

_ADMIN_KEYS: Dict[str, Tuple[str, Callable]] = {
    "enabled": ("enabled", parse_bool),
    "addresses": ("addresses", parse_address_list),
    "port": ("port", _int_between(1, 65535)),
    "boots": ("boots", _int_between(1, 1_000_000)),
    "events_per_boot": ("events_per_boot", _int_between(1, 10_000)),
    "stall_after": ("stall_after", _float_between(1, 86400)),
}

_BOOT_KEYS: Dict[str, Tuple[str, Callable]] = {
    "default": ("default", parse_optional_text),
    "next_server": ("next_server", parse_optional_address),
    "sname": ("sname", parse_optional_text),
    "selectors": ("selectors", parse_name_list),
    "selector_timeout": ("selector_timeout", _float_between(0.01, 60)),
}


def _fields(source, section_name, section, schema, prefixed=None):
    """Parse the keys of one section against its schema."""
    values: Dict[str, object] = {}
    extra: Dict[str, str] = {}
    for key, raw in section.items():
        if key in schema:
            attribute, parser = schema[key]
            try:
                values[attribute] = parser(raw)
            except ValueError as error:
                raise ConfigError(source, section_name, key, str(error)) from None
        elif prefixed and key.startswith(prefixed):
            extra[key] = raw
        else:
            known = ", ".join(sorted(schema))
            raise ConfigError(source, section_name, key, f"unknown key (known keys: {known})")
    return values, extra


class AnyInterface:
    """For tools that read a config meant for another host or namespace
    (explain): every interface name is accepted."""

    def __contains__(self, name):
        return True

    def __iter__(self):
        return iter(())


def _known_interfaces():
    try:
        return set(netifaces.interface_names())
    except OSError:
        return None


def load(path: Optional[str] = None, text: Optional[str] = None,
         known_interfaces: Optional[set] = None) -> Config:
    """
    Read the config from C{path} (or C{text}; or the embedded defaults).

    @param known_interfaces: the interface names that exist; looked up on this
        host when not given (tests pass their own).
    @raise ConfigError: on the first mistake found.
    """
    if text is None and path is None:
        text, source = EMBEDDED_DEFAULTS, "<embedded defaults>"
    elif text is None:
        source = path
        try:
            with open(path, encoding="utf-8") as handle:
                text = handle.read()
        except OSError as error:
            raise ConfigError(source, None, None, f"cannot read: {error.strerror}") from None
        except UnicodeDecodeError:
            raise ConfigError(source, None, None, "is not UTF-8 text") from None
    else:
        source = path or "<text>"

    # Only '=' separates keys from values: MAC addresses and vendor classes
    # (PXEClient:Arch:00007) are keys in [selector:...] sections.
    parser = configparser.ConfigParser(
        interpolation=None, inline_comment_prefixes=(";", "#"), strict=True,
        delimiters=("=",), default_section="\x00no default section")
    parser.optionxform = str.lower  # keys are case-insensitive, values are not
    try:
        parser.read_string(text, source=source)
    except configparser.DuplicateSectionError as error:
        raise ConfigError(source, error.section, None, f"section appears twice (line {error.lineno})") from None
    except configparser.DuplicateOptionError as error:
        raise ConfigError(source, error.section, error.option, f"key appears twice (line {error.lineno})") from None
    except configparser.MissingSectionHeaderError as error:
        raise ConfigError(source, None, None, f"line {error.lineno}: text before the first [section]") from None
    except configparser.ParsingError as error:
        lineno, line = error.errors[0]
        try:
            line = ast.literal_eval(line)  # configparser keeps the repr()
        except (ValueError, SyntaxError):
            pass
        raise ConfigError(source, None, None, f"line {lineno}: cannot parse {line.strip()!r} "
                          "(expected [section], key = value or a comment)") from None
    except configparser.Error as error:
        raise ConfigError(source, None, None, str(error).splitlines()[0]) from None

    dhcp = DhcpConfig()
    tftp = TftpConfig()
    http = HttpConfig()
    boot = BootConfig()
    admin = AdminConfig()
    subnets, subnets6, hosts, selector_settings = [], [], [], []
    for name in parser.sections():
        section = parser[name]
        kind, _, label = name.partition(":")
        if name == "dhcp":
            values, _ = _fields(source, name, section, _DHCP_KEYS)
            dhcp = DhcpConfig(**values)
        elif name == "tftp":
            values, _ = _fields(source, name, section, _TFTP_KEYS)
            tftp = TftpConfig(**values)
        elif name == "http":
            values, _ = _fields(source, name, section, _HTTP_KEYS)
            http = HttpConfig(**values)
        elif name == "admin":
            values, _ = _fields(source, name, section, _ADMIN_KEYS)
            admin = AdminConfig(**values)
        elif name == "boot":
            values, extra = _fields(source, name, section, _BOOT_KEYS, prefixed="arch.")
            values["arch"] = _arch_table(source, name, extra)
            boot = BootConfig(**values)
        elif kind == "subnet" and label:
            values, _ = _fields(source, name, section, _SUBNET_KEYS)
            if "network" not in values:
                raise ConfigError(source, name, "network", "is required (e.g. network = 10.0.0.0/24)")
            subnets.append(SubnetConfig(name=label, **values))
        elif kind == "subnet6" and label:
            values, _ = _fields(source, name, section, _SUBNET6_KEYS)
            if "network" not in values:
                raise ConfigError(source, name, "network", "is required (e.g. network = fd99::/64)")
            subnets6.append(Subnet6Config(name=label, **values))
        elif kind == "host" and label:
            values, _ = _fields(source, name, section, _HOST_KEYS)
            if "mac" not in values:
                raise ConfigError(source, name, "mac", "is required (e.g. mac = 52:54:00:12:34:56)")
            hosts.append(HostConfig(name=label, **values))
        elif kind == "selector" and label:
            selector_settings.append((label, tuple((key, value.strip()) for key, value in section.items())))
        else:
            raise ConfigError(source, name, None,
                              "unknown section (known: [dhcp], [tftp], [http], [boot], [admin], [subnet:NAME], "
                              "[host:NAME], [selector:NAME])")

    config = Config(source=source, dhcp=dhcp, subnets=tuple(subnets), subnets6=tuple(subnets6),
                    hosts=tuple(hosts), tftp=tftp, http=http, boot=boot, admin=admin,
                    selector_settings=tuple(selector_settings))
    if known_interfaces is None:
        known_interfaces = _known_interfaces()
    _check(config, known_interfaces)
    return config


def _arch_table(source, section, extra):
    table = []
    for key, raw in extra.items():
        code_text = key[len("arch."):]
        try:
            code = _int_between(0, 65535)(code_text)
        except ValueError as error:
            raise ConfigError(source, section, key,
                              f"the architecture must be a number from option 93 ({error})") from None
        if not raw.strip():
            raise ConfigError(source, section, key, "needs a boot file name")
        if code in dict(table):
            raise ConfigError(source, section, key, f"architecture {code} appears twice")
        table.append((code, raw.strip()))
    return tuple(sorted(table))


def _check(config: Config, known_interfaces) -> None:
    """Cross-field checks: the mistakes no single value shows."""
    source = config.source
    if known_interfaces is not None:
        for name in config.dhcp.interfaces:
            if name not in known_interfaces:
                raise ConfigError(source, "dhcp", "interfaces",
                                  f"no interface named {name!r} on this host (have: {', '.join(sorted(known_interfaces))})")
    if config.dhcp.mode == "proxy":
        for subnet in config.subnets:
            if subnet.pools:
                raise ConfigError(source, f"subnet:{subnet.name}", "pool",
                                  "[dhcp] mode = proxy hands out no addresses: remove the pool "
                                  "(the network's own DHCP server owns the addresses)")
    seen_pools = []
    for subnet in config.subnets:
        section = f"subnet:{subnet.name}"
        if known_interfaces is not None and subnet.interface and subnet.interface not in known_interfaces:
            raise ConfigError(source, section, "interface", f"no interface named {subnet.interface!r} on this host")
        for pool in subnet.pools:
            if pool.first not in subnet.network or pool.last not in subnet.network:
                raise ConfigError(source, section, "pool", f"{pool} is outside network {subnet.network}")
            if pool.first == subnet.network.network_address or pool.last == subnet.network.broadcast_address:
                raise ConfigError(source, section, "pool",
                                  f"{pool} includes the network or broadcast address of {subnet.network}")
            for other_name, other in seen_pools:
                if pool.first <= other.last and other.first <= pool.last:
                    raise ConfigError(source, section, "pool", f"{pool} overlaps {other} of [subnet:{other_name}]")
            seen_pools.append((subnet.name, pool))
        for router in subnet.routers:
            if router not in subnet.network:
                raise ConfigError(source, section, "router", f"{router} is outside network {subnet.network}")
    for index, subnet in enumerate(config.subnets):
        for other in config.subnets[:index]:
            if subnet.network.overlaps(other.network):
                raise ConfigError(source, f"subnet:{subnet.name}", "network",
                                  f"{subnet.network} overlaps {other.network} of [subnet:{other.name}]")
    _check_subnets6(config, known_interfaces)
    macs, addresses = {}, {}
    for host in config.hosts:
        section = f"host:{host.name}"
        if host.mac in macs:
            raise ConfigError(source, section, "mac", f"{host.mac} is also the MAC of [host:{macs[host.mac]}]")
        macs[host.mac] = host.name
        if host.address is not None:
            if host.address in addresses:
                raise ConfigError(source, section, "address",
                                  f"{host.address} is also reserved for [host:{addresses[host.address]}]")
            addresses[host.address] = host.name
            if not any(host.address in subnet.network for subnet in config.subnets):
                raise ConfigError(source, section, "address", f"{host.address} is in no configured [subnet:...]")
    tftp = config.tftp
    if tftp.max_bytes_in_flight < tftp.max_blksize:
        raise ConfigError(source, "tftp", "max_bytes_in_flight",
                          f"must be at least max_blksize ({tftp.max_blksize})")


def _check_subnets6(config: Config, known_interfaces) -> None:
    source = config.source
    if config.subnets6 and config.dhcp.mode == "proxy":
        raise ConfigError(source, f"subnet6:{config.subnets6[0].name}", None,
                          "DHCPv6 has no proxy mode: remove the [subnet6:...] sections or set [dhcp] mode = server")
    # (DHCPv6 leases go to the same store as DHCPv4's: the SQLite file's
    # leases6 table, or the PostgreSQL database's ownsocket_leases6.)
    seen_pools = []
    for index, subnet in enumerate(config.subnets6):
        section = f"subnet6:{subnet.name}"
        if known_interfaces is not None and subnet.interface and subnet.interface not in known_interfaces:
            raise ConfigError(source, section, "interface", f"no interface named {subnet.interface!r} on this host")
        if subnet.network.network_address.is_link_local or subnet.network.is_multicast:
            raise ConfigError(source, section, "network", f"{subnet.network} is not a network to hand out addresses in")
        for pool in subnet.pools:
            if pool.first not in subnet.network or pool.last not in subnet.network:
                raise ConfigError(source, section, "pool", f"{pool} is outside network {subnet.network}")
            if pool.first == subnet.network.network_address:
                raise ConfigError(source, section, "pool",
                                  f"{pool} includes {pool.first}, the subnet-router anycast address")
            for other_name, other in seen_pools:
                if pool.first <= other.last and other.first <= pool.last:
                    raise ConfigError(source, section, "pool", f"{pool} overlaps {other} of [subnet6:{other_name}]")
            seen_pools.append((subnet.name, pool))
        if subnet.server_address is not None and subnet.server_address not in subnet.network:
            raise ConfigError(source, section, "server_address",
                              f"{subnet.server_address} is outside network {subnet.network}")
        for other in config.subnets6[:index]:
            if subnet.network.overlaps(other.network):
                raise ConfigError(source, section, "network",
                                  f"{subnet.network} overlaps {other.network} of [subnet6:{other.name}]")
        for domain in subnet.domain:
            labels = domain.strip(".").split(".")
            if not all(0 < len(label) < 64 for label in labels) or not domain.isascii():
                raise ConfigError(source, section, "domain", f"{domain!r} is not a domain name")


