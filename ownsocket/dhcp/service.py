"""
The DHCP service: sockets, lease store and policy wired together.

Ports below 1024 are bound in privilegedStartService so that twistd
--uid/--gid can drop root afterwards; the lease database is opened there too,
before privileges go, so its directory may stay root-owned.
"""

from __future__ import annotations

import socket

from twisted.application.service import Service
from twisted.internet import task
from twisted.logger import Logger

from ownsocket.dhcp.leases import SqliteLeaseStore
from ownsocket.events import EventBus
from ownsocket.dhcp.protocol import DhcpProtocol
from ownsocket.dhcp.proxy import ProxyArrival, ProxyServer
from ownsocket.dhcp.server import Arrival, DhcpServer, make_boot_request
from ownsocket.dhcp.sockets import candidate_interfaces, open_interface_socket


#: How often to look whether the lease log can be checkpointed, how long
#: the network must have been quiet, and the longest a checkpoint may wait.
CHECKPOINT_POLL = 1.0
QUIET = 1.0
CHECKPOINT_MAX = 300.0


def sqlite_store(path):
    return SqliteLeaseStore(path, manual_checkpoints=True)


class DhcpService(Service):
    log = Logger()

    def __init__(self, config, selector, reactor, boot_file_size=None, recent=None,
                 store_factory=sqlite_store, interfaces=candidate_interfaces,
                 open_socket=open_interface_socket, events=None):
        self.config = config
        self.events = events if events is not None else EventBus(reactor)
        self.selector = selector
        self.reactor = reactor
        self.boot_file_size = boot_file_size
        self.recent = recent
        self._store_factory = store_factory
        self._interfaces = interfaces
        self._open_socket = open_socket
        self.ports = []
        self.store = None
        self.server = None

    def privilegedStartService(self):
        Service.privilegedStartService(self)
        if self.config.dhcp.mode == "proxy":
            self._start_proxy()
        elif not self.config.subnets:
            # Not even a socket: port 67 may belong to another DHCP server
            # on this host, and an unconfigured ownsocket must not get in its way.
            self.log.warn("no [subnet:...] is configured: DHCP is not started "
                          "(ownsocket hands out addresses only on subnets the config names)")
        else:
            self._start_server()

    def _start_server(self):
        dhcp = self.config.dhcp
        self.store = self._store_factory(dhcp.leases)
        self._checkpoints = None
        self.server = DhcpServer(self.config, self.store, self.selector, self.reactor,
                                 boot_file_size=self.boot_file_size, recent=self.recent,
                                 events=self.events)
        for name, address in self._listening_interfaces():
            self._listen(name, dhcp.port, Arrival(name, address))
        for subnet in self.config.subnets:
            pool = self.server.pools[subnet.name]
            self.log.info("subnet {name} {network}: {free} of {size} pool addresses free",
                          name=subnet.name, network=subnet.network, free=pool.free_count, size=pool.size)

    def _start_proxy(self):
        dhcp = self.config.dhcp
        self.server = ProxyServer(self.config, self.selector, make_boot_request,
                                  boot_file_size=self.boot_file_size, recent=self.recent,
                                  events=self.events, clock=self.reactor)
        self.log.info("proxyDHCP mode: answering PXE/HTTP boot clients only, never with an address")
        for name, address in self._listening_interfaces():
            self._listen(name, dhcp.port, ProxyArrival(name, address, 67), shared=True)
            self._listen(name, dhcp.proxy_port, ProxyArrival(name, address, 4011))

    def _listening_interfaces(self):
        """The configured interfaces, or every one with an IPv4 address but lo."""
        dhcp = self.config.dhcp
        named = set(dhcp.interfaces) | {s.interface for s in self.config.subnets if s.interface}
        for name, address in self._interfaces(dhcp.interfaces):
            if name not in named and (name == "lo" or address is None):
                continue
            yield name, address

    def _listen(self, name, port, arrival, shared=False):
        sock = self._open_socket(name, port, arrival.local_address, shared)
        try:
            protocol = DhcpProtocol(self.server, arrival, self.reactor)
            self.ports.append(self.reactor.adoptDatagramPort(sock.fileno(), socket.AF_INET, protocol))
        finally:
            sock.close()  # the port holds its own duplicate
        self.log.info("DHCP listening on {interface} ({address}) port {port}",
                      interface=name, address=arrival.local_address or "no IPv4 address", port=port)

    def address_counts(self):
        """{(subnet name, state): count}, state in free, offered, bound and
        declined; empty when no address-giving server runs (proxy mode)."""
        if self.server is None or not hasattr(self.server, "address_counts"):
            return {}
        return self.server.address_counts()

    def startService(self):
        Service.startService(self)
        if self.store is not None and hasattr(self.store, "checkpoint"):
            self._last_checkpoint = self.reactor.seconds()
            self._checkpoints = task.LoopingCall(self._maybe_checkpoint)
            self._checkpoints.clock = self.reactor
            self._checkpoints.start(CHECKPOINT_POLL, now=False)

    def _maybe_checkpoint(self):
        """Checkpoint the lease log when no request came for a while, or at
        the latest every CHECKPOINT_MAX seconds even in a long storm."""
        now = self.reactor.seconds()
        quiet = now - self.server.last_activity >= QUIET
        if quiet or now - self._last_checkpoint >= CHECKPOINT_MAX:
            try:
                self.store.checkpoint()
            except Exception as error:
                self.log.warn("{error}", error=error)
            self._last_checkpoint = now

    def stopService(self):
        if getattr(self, "_checkpoints", None) is not None and self._checkpoints.running:
            self._checkpoints.stop()
        Service.stopService(self)
        for port in self.ports:
            port.stopListening()
        self.ports = []
        if self.store is not None:
            self.store.close()
            self.store = None
