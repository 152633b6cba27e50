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
from twisted.logger import Logger

_PERMISSION = "permission denied (run as root or grant CAP_NET_BIND_SERVICE)"


def bind_hint(error_number, in_use, permission=_PERMISSION):
    """
    What a sysadmin should read when binding a port failed, or None when
    the system's own message says it best.  One table for DHCP, TFTP, HTTP
    and the admin listener, so the advice stays the same everywhere.
    """
    return {
        errno.EACCES: permission,
        errno.EPERM: permission,
        errno.EADDRINUSE: in_use,
        errno.EADDRNOTAVAIL: "address not available (no interface has this address)",
        errno.ENODEV: "no such interface",
    }.get(error_number)


class BindError(Exception):
    """A listening port could not be opened; the message is one log line."""

    def __init__(self, host: str, port: int, reason: str, transport: str = "UDP"):
        self.host, self.port, self.reason = host, port, reason
        where = f"[{host}]" if ":" in host else host
        super().__init__(f"cannot bind {transport} {where}:{port}: {reason}")


def _overlaps(error, port):
    """Whether the open C{port} is what stops C{error}'s address from opening
    (the "::" listeners are IPv6-only, so they never clash with IPv4 ones)."""
    host = port.getHost()
    if host.port != error.port or (":" in host.host) != (":" in error.host):
        return False
    return bool({"0.0.0.0", "::"} & {host.host, error.host}) or host.host == error.host


class ListeningService(service.Service):
    """
    Subclasses set C{transport} ("UDP"/"TCP") and C{in_use_hint}, have
    C{config.addresses} and C{config.port}, and implement L{_listen}.
    """

    transport = "UDP"
    in_use_hint = "address already in use"
    log = Logger()

    #: With no addresses configured, listen on "::" (IPv6 only) as well as
    #: on 0.0.0.0; tap.py sets it when a [subnet6:...] is configured, and a
    #: reload when the first one comes or the last one goes (L{rebind}
    #: then opens or closes the "::" port and leaves the others alone).
    listen_ipv6 = False

    def __init__(self):
        self.ports = []
        #: the (host, port) each of C{ports} was opened for, in step with it,
        #: and the L{listen_ipv6} they were opened with
        self._bound = []
        self._bound_ipv6 = False

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
        try:
            self._bound_ipv6 = self.listen_ipv6
            for endpoint in self._endpoints(self.config):
                self.ports.append(self._listen_one(endpoint[0]))
                self._bound.append(endpoint)
        except BindError:
            self._close_ports()
            raise

    def _bind_error(self, host: str, error: CannotListenError) -> BindError:
        cause = error.socketError
        reason = (bind_hint(getattr(cause, "errno", None), self.in_use_hint)
                  or getattr(cause, "strerror", None) or str(cause))
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
        ports, self.ports, self._bound = self.ports, [], []
        return self._stop(ports)

    def _endpoints(self, config, ipv6=None):
        """(host, port) of each listener C{config} asks for: one per
        address, or 0.0.0.0 ("") and, with C{ipv6} (by default
        L{listen_ipv6}), "::" too."""
        ipv6 = self.listen_ipv6 if ipv6 is None else ipv6
        hosts = [str(address) for address in config.addresses] or (["", "::"] if ipv6 else [""])
        return [(host, config.port) for host in hosts]

    def rebind(self, config):
        """
        Adopt C{config} (same shape as C{self.config}) and the current
        L{listen_ipv6} on a reload.

        Listening ports whose host and port stay the same are kept (clients
        connecting through them never notice); the others are opened before
        the old ones close, so there is no moment without a listener.  When
        a new port overlaps an old one (0.0.0.0 -> one address on the same
        port) the old one has to close first; if the new one still cannot be
        opened the old ones are opened again.

        @return: a Deferred that fires when the old ports are closed, or
            fails with L{BindError} with C{self.config}, L{listen_ipv6} and
            the ports as they were.
        """
        old_config, old_ipv6 = self.config, self._bound_ipv6
        wanted = self._endpoints(config)
        if not self.running or self._bound == wanted:
            self.config, self._bound_ipv6 = config, self.listen_ipv6
            return defer.succeed(None)
        current = dict(zip(self._bound, self.ports))
        self.config = config
        opened, ports = [], []
        try:
            for endpoint in wanted:
                if endpoint in current:
                    ports.append(current.pop(endpoint))
                else:
                    port = self._listen_one(endpoint[0])
                    opened.append(port)
                    ports.append(port)
        except BindError as error:
            for port in opened:
                port.stopListening()
            if not any(_overlaps(error, port) for port in current.values()):
                self.config, self.listen_ipv6 = old_config, old_ipv6
                return defer.fail(error)
            return self._rebind_after_closing(old_config, old_ipv6, config)
        old_endpoints = self._bound
        self.ports, self._bound, self._bound_ipv6 = ports, wanted, self.listen_ipv6
        self._log_rebind(old_endpoints, wanted)
        return self._stop(list(current.values()))

    @defer.inlineCallbacks
    def _rebind_after_closing(self, old_config, old_ipv6, config):
        """The slow path of L{rebind}: close everything, then open the new set."""
        old_endpoints = self._bound
        yield self._close_ports()
        self.config = config
        try:
            self._bind()
        except BindError as error:
            self.config, self.listen_ipv6 = old_config, old_ipv6
            self._bind()
            raise error
        self._log_rebind(old_endpoints, self._bound)

    def _listen_one(self, host):
        try:
            return self._listen(host)
        except CannotListenError as error:
            raise self._bind_error(host, error) from None

    def _log_rebind(self, old_endpoints, new_endpoints):
        where = lambda endpoints: ", ".join(
            f"[{host}]:{port}" if ":" in host else f"{host or '0.0.0.0'}:{port}" for host, port in endpoints)
        self.log.info("{service}: now listening on {new} (was {old})", service=self.name,
                      new=where(new_endpoints), old=where(old_endpoints))

    @staticmethod
    def _stop(ports):
        return defer.gatherResults(
            [defer.maybeDeferred(port.stopListening) for port in ports], consumeErrors=True
        ).addCallback(lambda _: None)

    def listening_addresses(self):
        """(host, port) of each listener: tests bind port 0 and ask."""
        return [(port.getHost().host, port.getHost().port) for port in self.ports]
