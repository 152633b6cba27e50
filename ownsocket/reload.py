"""
Live reload: SIGHUP (and C{systemctl reload}) re-reads the config file.

Build, check, swap.  The new file is read and validated completely, its
selectors (plugins included) built and verified and its file backends made,
beside the running ones and without touching them; a mistake anywhere
changes nothing and is one log line.  Only then, in one reactor turn, each
running service gets C{reconfigure(config, selector, backend)}, so no
request ever sees half of one config and half of the other:

 - C{config}: the new L{ownsocket.config.Config};
 - C{selector}: the new selector chain;
 - C{backend}: the new file backend of that service (None for DHCP).

A service's C{reconfigure} must not raise for a valid config; it may return
a Deferred, e.g. while it re-opens a port whose settings changed.  Transfers
in flight keep the reader (and so the backend) they opened; leases stay in
the store.  A service without C{reconfigure} keeps its old settings until
restart, and the reload says so.

The first C{[subnet6:...]} starts DHCPv6 (and its Router Advertisements),
removing the last one stops it, as a start with that file would have.

A reload must cost no packets.  A server answering 1,000 exchanges/s is
busy most of each reactor turn, and its DHCP socket buffers only some
100 ms of requests; a reload done in one piece (5-15 ms, more under load)
plus a young garbage collection after it lengthened one or two turns enough
to overflow that buffer now and then.  So its work comes in turns of its
own (read and parse; selectors, plugins imported and verified; file
backends and chain; swap), the reactor reading its sockets between them,
and no turn grows by more than the longest step (logged with each reload).
The reload does no collector work at all: the heap's periodic settle
freezes the new config later (L{ownsocket.heap}).
"""

from __future__ import annotations

import inspect
import signal
import time

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.task import deferLater
from twisted.logger import Logger

from ownsocket import config as configuration
from ownsocket.dhcp.sockets import SocketError
from ownsocket.dhcp6.leases import LeaseStoreError as LeaseStoreError6
from ownsocket.heap import Heap
from ownsocket.runtime import prepare_steps, read_config

_log = Logger(namespace="ownsocket.reload")

#: Settings a reload cannot change: a service is built, or not, at start-up.
_NEEDS_RESTART = (("dhcp", "enabled"), ("tftp", "enabled"), ("http", "enabled"),
                  ("admin", "enabled"))


class Reloader:
    """
    Re-reads C{runtime.config_path} and swaps it in.

    One reload runs at a time: a signal that comes while the services are
    still settling (re-opening a port) is remembered and runs right after.
    """

    def __init__(self, runtime, read=read_config, build=prepare_steps):
        self.runtime = runtime
        self._read = read
        self._build = build
        self._running = None
        self._again = None

    def reload(self, trigger="SIGHUP"):
        """
        @return: a Deferred that fires with True when the new config is in
            force everywhere, False when the reload failed (the reason is
            logged and published as a C{server reload} event).
        """
        if self._running is not None:
            self._again = trigger
            waiting = defer.Deferred()
            self._running.addBoth(lambda result: (waiting.callback(result), result)[1])
            return waiting
        self._running = running = defer.Deferred()
        result = defer.ensureDeferred(self._reload(trigger))
        result.addBoth(self._done)
        result.chainDeferred(running)
        return running

    def _done(self, result):
        self._running = None
        if self._again is not None:
            trigger, self._again = self._again, None
            self.runtime.reactor.callLater(0, self.reload, trigger)
        return result

    async def _reload(self, trigger):
        runtime = self.runtime
        path = runtime.config_path
        source = path or "<embedded defaults>"
        started = time.perf_counter()
        held = _Held()
        try:
            with held:
                config, text = self._read(path)
                steps = self._build(config, text, runtime.reactor)
            if inspect.isgenerator(steps):
                while True:
                    await self._next_turn()
                    try:
                        with held:
                            next(steps)
                    except StopIteration as done:
                        prepared = done.value
                        break
            else:
                prepared = steps
        except configuration.ConfigError as error:
            return self._failed(source, trigger, f"{error}; the running configuration is kept")
        except Exception as error:  # a plugin that blows up while being built
            return self._failed(source, trigger, f"{source}: {type(error).__name__}: {error}; "
                                "the running configuration is kept")
        build_ms, build_longest, turns = held.total * 1000, held.longest * 1000, held.turns
        await self._next_turn()
        swap = _Held()
        with swap:
            waits = self._swap(prepared)
        errors = []
        for name, d in waits:
            try:
                await d
            except Exception as error:
                errors.append(f"{name}: {error}")
        if errors:
            return self._failed(source, trigger, "; ".join(errors) + " (the rest of the new "
                                "configuration is in force)", config_hash=prepared.config_hash)
        _log.info("reloaded {source} (sha256 {short}) on {trigger}: {subnets} subnet(s), "
                  "{subnets6} subnet6(s), {hosts} host(s), selectors {selectors}; read and built "
                  "in {turns} reactor turns of at most {longest_ms:.1f} ms ({build_ms:.1f} ms in "
                  "all), swapped in {swap_ms:.1f} ms; {wall_ms:.0f} ms from start to swap",
                  source=source, short=prepared.config_hash[:12], trigger=trigger,
                  subnets=len(config.subnets), subnets6=len(config.subnets6), hosts=len(config.hosts),
                  selectors=", ".join(runtime.selectors), turns=turns, longest_ms=build_longest,
                  build_ms=build_ms, swap_ms=swap.total * 1000,
                  wall_ms=(swap.started - started) * 1000)
        runtime.reloads["ok"] += 1
        runtime.events.publish("server", "reload", result="ok", error=None, source=source,
                               trigger=trigger, hash=prepared.config_hash)
        return True

    def _next_turn(self):
        """A Deferred that fires in the reactor's next turn: between two
        steps of a reload the reactor polls and reads its sockets."""
        return deferLater(self.runtime.reactor, 0, lambda: None)

    def _swap(self, prepared):
        """
        Everything in one reactor turn: each service's reconfigure, then
        the runtime's config.  Returns (name, Deferred) of the services that
        are still settling.
        """
        runtime = self.runtime
        old, new = runtime.config, prepared.config
        for section, key in _NEEDS_RESTART:
            before, after = getattr(getattr(old, section), key), getattr(getattr(new, section), key)
            if before != after:
                _log.warn("reload: [{section}] {key} changed from {before} to {after}; "
                          "that takes effect at the next restart",
                          section=section, key=key, before=before, after=after)
        _carry_state(runtime.prepared.selectors, prepared.selectors)
        waits = self._start_or_stop_dhcp6(prepared)
        ipv6 = runtime.wants_dhcp6(new)
        for name, service in runtime.services():
            if name == "dhcp6" and service.config is new:
                continue  # just started with the new config
            if name in ("tftp", "http") and getattr(service, "listen_ipv6", ipv6) != ipv6:
                # the first [subnet6:...] came or the last one went: its
                # rebind opens or closes "::" (where no addresses are named)
                service.listen_ipv6 = ipv6
            reconfigure = getattr(service, "reconfigure", None)
            if reconfigure is None:
                _log.warn("reload: the {name} service cannot be reconfigured; "
                          "it keeps its old settings until restart", name=name)
                continue
            try:
                result = reconfigure(new, prepared.selector, runtime.backend_for(name, prepared))
            except Exception as error:
                _log.failure("reload: {name}.reconfigure raised", name=name)
                result = defer.fail(error)
            if isinstance(result, defer.Deferred):
                waits.append((name, result))
        # no collector work here: the heap's next periodic settle freezes
        # the new config (ownsocket.heap)
        runtime._adopt(prepared)
        return waits

    def _start_or_stop_dhcp6(self, prepared):
        """
        The first [subnet6:...] starts DHCPv6 and its Router Advertisements,
        the last one gone stops them (sockets closed, lease store closed;
        the leases stay in it).  Returns [(name, Deferred)] as L{_swap}.
        """
        runtime = self.runtime
        wanted = runtime.wants_dhcp6(prepared.config)
        if wanted and runtime.dhcp6 is None:
            service = runtime.make_dhcp6(prepared)
            try:
                # a running parent opens its sockets (privilegedStartService)
                # and starts it (startService) right here
                service.setServiceParent(runtime.dhcp.parent)
            except Exception as error:  # e.g. port 547 after twistd dropped root
                if service.parent is not None:
                    service.disownServiceParent()
                why = str(error) if isinstance(error, (OSError, SocketError, LeaseStoreError6)) \
                    else f"{type(error).__name__}: {error}"
                _log.error("reload: DHCPv6 cannot start: {why}", why=why)
                return [("dhcp6", defer.fail(RuntimeError(f"cannot start: {why}")))]
            runtime.dhcp6 = service
            _log.info("reload: {count} [subnet6:...] now configured: DHCPv6 started "
                      "(TFTP and HTTP listen on [::] too where they name no addresses)",
                      count=len(prepared.config.subnets6))
            return []
        if not wanted and runtime.dhcp6 is not None:
            service, runtime.dhcp6 = runtime.dhcp6, None
            _log.info("reload: no [subnet6:...] any more: DHCPv6 and Router Advertisements stopped "
                      "(their leases stay in the store; TFTP and HTTP close their [::] listeners)")
            return [("dhcp6", defer.maybeDeferred(service.disownServiceParent))]
        return []

    def _failed(self, source, trigger, message, config_hash=None):
        _log.error("reload of {source} failed: {why}", source=source, why=message)
        self.runtime.reloads["failed"] += 1
        self.runtime.events.publish("server", "reload", result="failed", error=message,
                                    source=source, trigger=trigger, hash=config_hash)
        return False


class _Held:
    """How long the reactor thread spent in the C{with} blocks: in all, the
    longest one, and how many."""

    def __init__(self):
        self.total = self.longest = 0.0
        self.turns = 0
        self.started = None

    def __enter__(self):
        self.started = self._entered = time.perf_counter()
        return self

    def __exit__(self, *exc):
        spent = time.perf_counter() - self._entered
        self.total += spent
        self.longest = max(self.longest, spent)
        self.turns += 1
        return False


def _carry_state(old_selectors, new_selectors):
    """
    A selector that remembers clients (the stateful iPXE selector knows who
    fetched a first stage) may take that memory over from its predecessor
    of the same name and class, so a machine half-way through its boot at
    reload time carries on: it defines C{inherit(old)}.  Called in the swap
    turn, so nothing is learnt by the old one afterwards.
    """
    old_by_name = {getattr(selector, "name", None): selector for selector in old_selectors}
    for selector in new_selectors:
        old = old_by_name.get(getattr(selector, "name", None))
        inherit = getattr(selector, "inherit", None)
        if old is None or inherit is None or type(old) is not type(selector):
            continue
        try:
            inherit(old)
        except Exception:
            _log.failure("reload: selector {name} could not take over its state", name=selector.name)


class ReloadOnSignal(Service):
    """
    SIGHUP runs the reload on the reactor thread.

    The handler only schedules (callFromThread is safe from a signal
    handler and wakes the reactor); the previous handler comes back when
    the service stops, so tests and embedders are left as they were.

    It is the last service of the tree, so it also starts the process's
    collector policy (L{ownsocket.heap}) once everything else has started:
    at the reactor's first turn, so that a test that starts the tree on a
    fake reactor never freezes the test runner's heap.  C{heap} is a
    L{Heap}, or None to leave the collector alone.
    """

    name = "reload-on-sighup"

    def __init__(self, reloader, reactor, signum=signal.SIGHUP, heap=True):
        self.reloader = reloader
        self.reactor = reactor
        self.signum = signum
        self.heap = Heap(reactor) if heap is True else heap
        self._previous = None
        self._heap_start = None

    def startService(self):
        Service.startService(self)
        self._previous = signal.signal(self.signum, self._handle)
        runtime = getattr(self.reloader, "runtime", None)
        if self.heap is not None and runtime is not None and runtime.heap is None:
            self._heap_start = self.reactor.callLater(0, self._start_heap)

    def _start_heap(self):
        self._heap_start = None
        runtime = self.reloader.runtime
        runtime.heap = self.heap
        if self.heap.busy is None:
            self.heap.busy = runtime.transfers_busy  # no full sweep under a transfer
        if runtime.dhcp is not None:
            runtime.dhcp.heap = self.heap  # full sweeps when the network is quiet
        self.heap.start()

    def _handle(self, signum, frame):
        self.reactor.callFromThread(self.reloader.reload, signal.Signals(signum).name)

    def stopService(self):
        Service.stopService(self)
        if self._heap_start is not None and self._heap_start.active():
            self._heap_start.cancel()
        self._heap_start = None
        if self._previous is not None:
            signal.signal(self.signum, self._previous)
            self._previous = None
