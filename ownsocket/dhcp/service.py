"""
The DHCP service: sockets, lease store and policy wired together.

Ports below 1024 are bound in privilegedStartService so that twistd
--uid/--gid can drop root afterwards; the lease database is opened there too,
before privileges go, so its directory may stay root-owned.
"""

from __future__ import annotations

import socket

from twisted.application.service import Service
from twisted.internet import defer, task
from twisted.logger import Logger

from ownsocket.dhcp.leases import LeaseStoreError, LeaseStoreUnavailable, SqliteLeaseStore
from ownsocket.events import EventBus
from ownsocket.dhcp.protocol import DhcpProtocol
from ownsocket.dhcp.proxy import ProxyArrival, ProxyServer
from ownsocket.dhcp.server import Arrival, DhcpServer, make_boot_request
from ownsocket.dhcp.sockets import SocketError, candidate_interfaces, open_interface_socket


#: How often to look whether the lease log can be checkpointed, how long
#: the network must have been quiet, and the longest a checkpoint may wait.
CHECKPOINT_POLL = 1.0
QUIET = 1.0
CHECKPOINT_MAX = 300.0


#: How often lapsed offers and quarantines are deleted from the store, and
#: (every REFRESH_EVERY rounds, with a store other servers share) the
#: free-address hint refreshed: a stale hint only costs a lost claim, and a
#: refresh reads every lease.
RECLAIM_INTERVAL = 10.0
REFRESH_EVERY = 6


def open_store(path, clock):
    """The lease store C{[dhcp] leases} names: a SQLite file, or a
    PostgreSQL database (C{postgresql://...}) that several servers share."""
    if path.startswith(("postgresql://", "postgres://")):
        from ownsocket.dhcp.pgstore import PostgresLeaseStore
        return PostgresLeaseStore(path, clock)
    return SqliteLeaseStore(path, clock=clock, manual_checkpoints=True)


sqlite_store = open_store  # the name older callers know


class DhcpService(Service):
    log = Logger()

    #: The process's L{ownsocket.heap.Heap} (set once the server runs), or
    #: None: when set, a full garbage collection runs only while the network
    #: is quiet, from the same idle check as the lease log checkpoint (and a
    #: storm freezes what it built now and then, see Heap.tick).
    heap = None

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
        self.store = self._store_factory(dhcp.leases, self.reactor)
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

    def _listening_interfaces(self, config=None):
        """The configured interfaces, or every one with an IPv4 address but lo."""
        config = config or self.config
        dhcp = config.dhcp
        named = set(dhcp.interfaces) | {s.interface for s in config.subnets if s.interface}
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

    # -- reload ------------------------------------------------------------

    def reconfigure(self, config, selector, backend=None):
        """
        Serve the next requests with a new config and selector (SIGHUP).

        Subnets are matched by name; leases stay in the store (those of a
        subnet that is gone lapse there).  Sockets are re-opened only when
        the interfaces or ports changed, the store only when C{[dhcp]
        leases} did, and the whole service only when the mode did.
        @return: None, or a Deferred while ports are re-opened.
        """
        old, self.config, self.selector = self.config, config, selector
        if not self.running and not self.ports:
            return None
        mode = lambda c: "off" if not c.dhcp.enabled else (
            c.dhcp.mode if c.dhcp.mode == "proxy" or c.subnets else "idle")
        same_store = old.dhcp.leases == config.dhcp.leases
        if mode(old) == mode(config) and self.server is not None and same_store:
            self.server.reconfigure(config, selector)
            if self._socket_plan(old) == self._socket_plan(config):
                return None
            self.log.info("DHCP interfaces or ports changed: re-opening sockets")
            return self._stop_ports().addCallback(lambda _: self._reopen())
        self.log.info("DHCP mode or lease store changed: restarting DHCP")
        d = self._stop_ports()
        d.addCallback(lambda _: self._close_store())
        d.addCallback(lambda _: self._restart())
        return d

    def _socket_plan(self, config):
        dhcp = config.dhcp
        return (dhcp.mode, dhcp.port, dhcp.proxy_port, tuple(self._listening_interfaces(config)))

    def _stop_ports(self):
        ports, self.ports = self.ports, []
        return defer.gatherResults([defer.maybeDeferred(port.stopListening) for port in ports])

    def _close_store(self):
        store, self.store, self.server = self.store, None, None
        if store is not None:
            return store.close()

    def _reopen(self):
        try:
            dhcp = self.config.dhcp
            for name, address in self._listening_interfaces():
                if isinstance(self.server, ProxyServer):
                    self._listen(name, dhcp.port, ProxyArrival(name, address, 67), shared=True)
                    self._listen(name, dhcp.proxy_port, ProxyArrival(name, address, 4011))
                else:
                    self._listen(name, dhcp.port, Arrival(name, address))
        except (SocketError, OSError) as error:  # e.g. a port below 1024 after dropping root
            self.log.error("DHCP cannot re-open its sockets after the reload: {error}", error=error)
        except Exception:
            self.log.failure("DHCP cannot re-open its sockets after the reload")

    def _restart(self):
        try:
            self.privilegedStartService()
        except (SocketError, OSError, LeaseStoreError) as error:
            self.log.error("DHCP cannot restart after the reload: {error}", error=error)
            return
        except Exception:
            self.log.failure("DHCP cannot restart after the reload")
            return
        if self.running:
            self._start_loops()

    def address_counts(self):
        """{(subnet name, state): count}, state in free, offered, bound and
        declined; empty when no address-giving server runs (proxy mode)."""
        if self.server is None or not hasattr(self.server, "address_counts"):
            return {}
        return self.server.address_counts()

    def startService(self):
        Service.startService(self)
        self._start_loops()

    _reclaims = None
    _checkpoints = None

    def _stop_loops(self):
        for loop in (self._checkpoints, self._reclaims):
            if loop is not None and loop.running:
                loop.stop()
        self._checkpoints = self._reclaims = None

    def _start_loops(self):
        self._stop_loops()
        if self.store is not None:
            self._reclaims = task.LoopingCall(self._reclaim)
            self._reclaims.clock = self.reactor
            self._reclaims.start(RECLAIM_INTERVAL, now=False)
        if self.store is not None:
            self._last_checkpoint = self.reactor.seconds()
            self._checkpoints = task.LoopingCall(self._maybe_checkpoint)
            self._checkpoints.clock = self.reactor
            self._checkpoints.start(CHECKPOINT_POLL, now=False)

    def _reclaim(self):
        if self.server is None or not hasattr(self.server, "addresses"):
            return None
        self._reclaim_rounds = getattr(self, "_reclaim_rounds", 0) + 1
        addresses = self.server.addresses
        # the hint is refreshed now and then, and at once if start-up could not read it
        d = addresses.reclaim(refresh=self._reclaim_rounds % REFRESH_EVERY == 0
                              or not getattr(addresses, "synced", True))
        d.addErrback(self._reclaim_failed)
        return None  # a slow database must not stop the loop

    def _reclaim_failed(self, failure):
        if not failure.check(LeaseStoreUnavailable):  # that one the store reports itself
            self.log.warn("lease reclaim failed: {error}", error=failure.getErrorMessage())

    def _maybe_checkpoint(self):
        """Checkpoint the lease log when no request came for a while, or at
        the latest every CHECKPOINT_MAX seconds even in a long storm; and
        tend the heap (a full sweep only when quiet)."""
        now = self.reactor.seconds()
        quiet = now - self.server.last_activity >= QUIET
        if self.heap is not None:
            self.heap.tick(quiet)
        if not hasattr(self.store, "checkpoint"):
            return
        if quiet or now - self._last_checkpoint >= CHECKPOINT_MAX:
            try:
                self.store.checkpoint()
            except LeaseStoreError as error:
                self.log.warn("{error}", error=error)
            except Exception:
                self.log.failure("lease database checkpoint failed")
            self._last_checkpoint = now

    def stopService(self):
        self._stop_loops()
        Service.stopService(self)
        for port in self.ports:
            port.stopListening()
        self.ports = []
        if self.store is not None:
            store, self.store = self.store, None
            return store.close()
