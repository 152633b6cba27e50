"""
What TFTP and HTTP share as services: one listening port per configured
address (or one on all addresses), opened in privilegedStartService so that
twistd --uid/--gid can drop root afterwards, and a failure to open one
turned into a single readable line.
"""

from __future__ import annotations

import errno
import socket

from twisted.application import service
from twisted.internet import defer
from twisted.internet.error import CannotListenError

_PERMISSION = "permission denied (run as root or grant CAP_NET_BIND_SERVICE)"


class BindError(Exception):
    """A listening port could not be opened; the message is one log line."""

    def __init__(self, host: str, port: int, reason: str, transport: str = "UDP"):
        self.host, self.port, self.reason = host, port, reason
        super().__init__(f"cannot bind {transport} {host}:{port}: {reason}")


class ListeningService(service.Service):
    """
    Subclasses set C{transport} ("UDP"/"TCP") and C{in_use_hint}, have
    C{config.addresses} and C{config.port}, and implement L{_listen}.
    """

    transport = "UDP"
    in_use_hint = "address already in use"
    #: With no addresses configured, listen on "::" (IPv6 only) as well as
    #: on 0.0.0.0; tap.py sets it when a [subnet6:...] is configured.
    listen_ipv6 = False

    def __init__(self):
        self.ports = []

    def _listen(self, host: str):
        """Open one listening port on C{host} ("" for all); return it."""
        raise NotImplementedError

    def privilegedStartService(self):
        self._bind()
        super().privilegedStartService()

    def startService(self):
        self._bind()
        super().startService()

    def _bind(self) -> None:
        if self.ports:
            return
        hosts = [str(address) for address in self.config.addresses] or (["", "::"] if self.listen_ipv6 else [""])
        try:
            for host in hosts:
                try:
                    self.ports.append(self._listen(host))
                except CannotListenError as error:
                    raise self._bind_error(host, error) from None
        except BindError:
            self._close_ports()
            raise

    def _bind_error(self, host: str, error: CannotListenError) -> BindError:
        cause = error.socketError
        hints = {
            errno.EACCES: _PERMISSION,
            errno.EPERM: _PERMISSION,
            errno.EADDRINUSE: self.in_use_hint,
            errno.EADDRNOTAVAIL: "address not available (no interface has this address)",
        }
        reason = hints.get(getattr(cause, "errno", None)) or getattr(cause, "strerror", None) or str(cause)
        return BindError(host or "0.0.0.0", self.config.port, reason, self.transport)

    def stopService(self):
        super().stopService()
        return self._close_ports()

    def _ipv6_socket(self, host: str, kind: int) -> socket.socket:
        """
        A bound, non-blocking IPv6 socket for C{reactor.adoptDatagramPort}
        or C{adoptStreamPort}.  Twisted's listenUDP/listenTCP on "::" make
        a dual-stack socket, which collides with the IPv4 listener on the
        same port (and would show IPv4 peers as ::ffff:a.b.c.d): this one is
        IPV6_V6ONLY.
        """
        sock = socket.socket(socket.AF_INET6, kind)
        try:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if kind == socket.SOCK_STREAM:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, self.config.port))
            if kind == socket.SOCK_STREAM:
                sock.listen(50)
            sock.setblocking(False)
        except OSError as error:
            sock.close()
            raise CannotListenError(host, self.config.port, error) from None
        return sock

    def _close_ports(self):
        ports, self.ports = self.ports, []
        return defer.gatherResults(
            [defer.maybeDeferred(port.stopListening) for port in ports], consumeErrors=True)

    def listening_addresses(self):
        """(host, port) of each listener: tests bind port 0 and ask."""
        return [(port.getHost().host, port.getHost().port) for port in self.ports]
