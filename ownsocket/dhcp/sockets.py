"""
One DHCP socket per interface.

A single socket bound to 0.0.0.0:67 sends every broadcast reply out of the
default-route interface (or fails with ENETUNREACH without one), so a server
on several LANs answers the wrong one.  Binding one socket per interface with
SO_BINDTODEVICE makes the kernel deliver each broadcast to the socket of the
interface it came in on and send each reply out of that same interface.
Windows has no SO_BINDTODEVICE; there one socket is bound to each interface
address instead.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
import sys
from typing import List, Optional, Tuple

from ownsocket import netifaces
from ownsocket.listening import bind_hint

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

SIOCGIFADDR = 0x8915
# PyPy's socket module lacks the constant although Linux has the option;
# without it the fallback below binds the interface address, which never
# sees a broadcast DISCOVER (only relayed, unicast requests).
SO_BINDTODEVICE = getattr(socket, "SO_BINDTODEVICE", 25 if sys.platform.startswith("linux") else None)


class SocketError(Exception):
    """A DHCP socket cannot be opened; the message says what to do about it."""


def interface_address(name: str) -> Optional[ipaddress.IPv4Address]:
    """The primary IPv4 address of an interface, or None if it has none."""
    if fcntl is None:
        return None
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        request = struct.pack("256s", name.encode()[:15])
        answer = fcntl.ioctl(probe.fileno(), SIOCGIFADDR, request)
        return ipaddress.IPv4Address(answer[20:24])
    except OSError:
        return None
    finally:
        probe.close()


def candidate_interfaces(names=()) -> List[Tuple[str, Optional[ipaddress.IPv4Address]]]:
    """The configured interfaces, or every interface, with their addresses."""
    if not names:
        try:
            names = netifaces.interface_names()
        except OSError:
            names = []  # no way to list interfaces here: nothing to serve
    return [(name, interface_address(name)) for name in names]


def open_interface_socket(name: str, port: int, address: Optional[ipaddress.IPv4Address] = None,
                          shared: bool = False) -> socket.socket:
    """
    A non-blocking UDP socket on C{port} that sees only interface C{name}.

    Sockets bound to different devices do not conflict on Linux, so no
    SO_REUSEADDR is needed for one socket per interface, and leaving it off
    makes a second DHCP server on the same interface (another ownsocket, a
    dnsmasq) a clear start-up error instead of two servers answering.
    C{shared} (proxyDHCP, which is meant to run beside a DHCP server) sets
    it.  Where the platform has no SO_BINDTODEVICE the socket is bound to
    the interface's address instead (C{address}), which is how Windows tells
    interfaces apart; that path is untested here.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        if shared:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        if SO_BINDTODEVICE is not None:
            sock.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, name.encode() + b"\0")
            sock.bind(("", port))
        else:
            sock.bind((str(address) if address else "", port))
        sock.setblocking(False)
    except OSError as error:
        sock.close()
        raise SocketError(_explain(error, f"UDP port {port} on interface {name}")) from None
    return sock


def _explain(error: OSError, what: str) -> str:
    hint = bind_hint(
        error.errno, in_use="address in use (is another DHCP server such as dnsmasq running?)",
        permission=("permission denied (run as root, with twistd --uid/--gid to drop privileges, "
                    "or grant CAP_NET_BIND_SERVICE and CAP_NET_RAW)"))
    return f"cannot bind {what}: {hint or error.strerror}"
