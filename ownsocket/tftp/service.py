"""
The TFTP server as a Twisted service: binds in privilegedStartService (so
C{twistd --uid} can drop root after port 69 is open) and shuts transfers
down cleanly.

Addresses: Twisted cannot tell which local address a datagram arrived on
when the socket is bound to 0.0.0.0, yet each transfer's port should be
bound to that address so replies leave from the address the client talked
to.  So one listener is bound per address in C{[tftp] addresses}, and each
transfer's port is bound to its listener's address.  With no addresses
configured there is one listener on 0.0.0.0 and transfer ports are bound to
0.0.0.0 too: the kernel then picks the source address by route, which is the
right one on a host with one address per LAN, the usual PXE set-up.
"""

from __future__ import annotations

import dataclasses
import socket
from typing import Optional

from twisted.internet import defer
from twisted.logger import Logger

from ownsocket import listening
from ownsocket.events import EventBus
from ownsocket.files import FilesystemBackend
from ownsocket.tftp.options import Limits
from ownsocket.tftp.protocol import ListenerProtocol
from ownsocket.tftp.server import TFTPServer

# Kept under its old name: start-up code and tests catch it from here.
BindError = listening.BindError


#: Receive buffer of the request port.  A burst of a few hundred RRQs (a
#: boot storm, or a spoofed flood) overflows the default 208 KiB on Linux,
#: where each queued datagram costs a couple of KiB, and a dropped RRQ costs
#: the client its retransmission timeout (curl: 6 s).
LISTENER_RCVBUF = 4 * 1024 * 1024


def _enlarge_receive_buffer(port) -> None:
    """SO_RCVBUFFORCE while still root (it ignores net.core.rmem_max), else
    SO_RCVBUF, which the kernel silently caps."""
    sock = getattr(port, "socket", None)
    if sock is None:
        return
    for option in (getattr(socket, "SO_RCVBUFFORCE", None), socket.SO_RCVBUF):
        if option is None:
            continue
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, LISTENER_RCVBUF)
            return
        except OSError:
            continue


#: Descriptors one transfer may hold: two sockets (the lean ports keep a
#: connected and an unconnected one) and the file being read.
DESCRIPTORS_PER_TRANSFER = 3


def _ensure_descriptors(needed: int, resource_module=None) -> Optional[str]:
    """
    Raise the soft limit on open files towards C{needed} (as far as the
    hard limit allows): systemd and most shells start services with a soft
    limit of 1,024, which C{max_sessions} transfers could exhaust.  Returns
    a warning line when the limit stays below C{needed}, else None.
    """
    if resource_module is None:
        try:
            import resource as resource_module
        except ImportError:   # not POSIX
            return None
    soft, hard = resource_module.getrlimit(resource_module.RLIMIT_NOFILE)
    if soft == resource_module.RLIM_INFINITY or soft >= needed:
        return None
    target = needed if hard == resource_module.RLIM_INFINITY else min(needed, hard)
    try:
        resource_module.setrlimit(resource_module.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        target = soft
    if target < needed:
        return (f"open-file limit {target} is below the {needed} that max_sessions needs; "
                f"transfers beyond it are refused with an error (raise LimitNOFILE)")
    return None


def _server_settings(config) -> dict:
    """The L{TFTPServer} keywords a L{ownsocket.config.TftpConfig} sets."""
    return dict(
        limits=Limits(config.max_blksize, config.max_windowsize, config.max_bytes_in_flight),
        timeout=float(config.timeout), retries=config.retries,
        max_sessions=config.max_sessions,
        max_sessions_per_client=config.max_sessions_per_client)


class TFTPService(listening.ListeningService):
    """
    @param config: an L{ownsocket.config.TftpConfig}.
    @param backend: an L{ownsocket.interfaces.IFileBackend}; by default the
        files under C{config.root}.
    @param reactor: injected for tests; the global reactor otherwise.
    @param recent: L{ownsocket.boot.recent.RecentRequests} shared with DHCP.
    @param events: the L{ownsocket.events.EventBus} transfers are published on.
    """

    log = Logger()
    name = "tftp"
    transport = "UDP"
    in_use_hint = "address already in use (is another TFTP server, e.g. tftpd-hpa or dnsmasq, running?)"

    def __init__(self, config, backend=None, reactor=None, recent=None, events=None):
        listening.ListeningService.__init__(self)
        if reactor is None:
            from twisted.internet import reactor
        self.events = events if events is not None else EventBus(reactor)
        if backend is None:
            backend = FilesystemBackend(config.root, config.case_insensitive)
        self.config = config
        self.reactor = reactor
        self.backend = backend
        self.server = TFTPServer(backend, reactor, recent=recent, events=self.events,
                                 **_server_settings(config))

    def privilegedStartService(self):
        warning = _ensure_descriptors(self.config.max_sessions * DESCRIPTORS_PER_TRANSFER + 64)
        if warning:
            self.log.warn("tftp: {warning}", warning=warning)
        listening.ListeningService.privilegedStartService(self)

    def _listen(self, host):
        if ":" in host:  # IPv6: see ListeningService._ipv6_socket
            sock = self._ipv6_socket(host, socket.SOCK_DGRAM)
            try:
                port = self.reactor.adoptDatagramPort(sock.fileno(), socket.AF_INET6,
                                                      ListenerProtocol(self.server, host))
            finally:
                sock.close()
        else:
            port = self.reactor.listenUDP(self.config.port, ListenerProtocol(self.server, host), interface=host)
        _enlarge_receive_buffer(port)
        return port

    def stopService(self):
        self.server.stop()
        return listening.ListeningService.stopService(self)

    def transfers_in_flight(self):
        """
        One small dict per running transfer, oldest first: peer, port,
        file, bytes (sent), acked, block (last acknowledged), blksize,
        windowsize, started (reactor time), state (opening, wait-oack-ack,
        sending); then one per request waiting for a slot (state waiting).
        """
        return self.server.in_flight()

    def reconfigure(self, config, selector=None, backend=None):
        """
        Apply a reloaded config (the reload contract): the new root, backend
        and limits apply to transfers that start from now on; transfers in
        flight finish on the reader and limits they started with.  The
        listening ports are re-bound only when C{port} or C{addresses}
        changed, or L{listen_ipv6} did (the first or last C{[subnet6:...]}:
        then only the "::" port opens or closes); then a Deferred fires
        once they are open.  If they cannot be opened, the old ones stay
        (or are opened again), the old port and addresses stay in force,
        and the Deferred fails with the L{BindError}.

        @param config: the new L{ownsocket.config.Config} (its C{tftp}
            part is used), or a L{ownsocket.config.TftpConfig}.
        @param selector: unused: TFTP asks no selector (the backend chain
            may).
        @param backend: the new L{ownsocket.interfaces.IFileBackend}; None
            serves C{config.root} from the file system.
        """
        config = getattr(config, "tftp", config)
        if backend is None:
            backend = FilesystemBackend(config.root, config.case_insensitive)
        old = self.config
        self.backend = backend
        if config.max_sessions > old.max_sessions:
            warning = _ensure_descriptors(config.max_sessions * DESCRIPTORS_PER_TRANSFER + 64)
            if warning:
                self.log.warn("tftp: {warning}", warning=warning)
        self.server.configure(backend, **_server_settings(config))
        if not self.ports:
            self.config = config
            return defer.succeed(None)

        def failed(failure):
            failure.trap(BindError)
            self.log.error("tftp: reload could not re-bind ({error}); still listening on "
                           "{where}", error=str(failure.value), where=self._where())
            # everything else of the new config stays in force
            self.config = dataclasses.replace(config, port=old.port, addresses=old.addresses)
            return failure

        return self.rebind(config).addErrback(failed)

    def _where(self):
        return ", ".join(f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
                         for host, port in self.listening_addresses())
