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

import socket

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


class TFTPService(listening.ListeningService):
    """
    @param config: an L{ownsocket.config.TftpConfig}.
    @param backend: an L{ownsocket.interfaces.IFileBackend}; by default the
        files under C{config.root}.
    @param reactor: injected for tests; the global reactor otherwise.
    @param recent: L{ownsocket.boot.recent.RecentRequests} shared with DHCP.
    @param events: the L{ownsocket.events.EventBus} transfers are published on.
    """

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
        self.server = TFTPServer(
            backend, reactor,
            limits=Limits(config.max_blksize, config.max_windowsize,
                          config.max_bytes_in_flight),
            timeout=float(config.timeout), retries=config.retries,
            max_sessions=config.max_sessions,
            max_sessions_per_client=config.max_sessions_per_client,
            recent=recent)

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
