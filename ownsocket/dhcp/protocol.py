"""
The thin Twisted end of DHCP: datagrams in, datagrams out.

Everything that can go wrong with a datagram is caught here: a malformed
packet is dropped with a rate-limited line, a failing policy is logged and the
packet dropped, and a send error (ENETUNREACH, ENOBUFS, EAGAIN escape from
Port.write) costs one reply, never the server.
"""

from __future__ import annotations

from contextlib import nullcontext

from twisted.internet import defer
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from ownsocket.dhcp import wire
from ownsocket.dhcp.leases import LeaseStoreBusy, LeaseStoreError, LeaseStoreUnavailable
from ownsocket.dhcp.server import Arrival, message_name
from ownsocket.dhcp.shedding import DiscoverFilter
from ownsocket.events import EventBus
from ownsocket.ratelimit import RateLimitedLog


class DhcpProtocol(DatagramProtocol):
    """
    Datagrams are queued as they arrive and handled together once the
    reactor has read what the socket had (one call later), which buys three
    things under a boot storm: one lease-database commit per batch instead of
    one per ACK; REQUESTs (which complete an exchange) handled before
    DISCOVERs (which only start one); and, when a batch is larger than can be
    answered in good time, DISCOVERs beyond C{discover_budget} dropped rather
    than answered too late to matter.  Replies leave only after the batch's
    commit, so an ACK never precedes its lease on disk.
    """

    log = Logger()
    noisy = False  # the service logs one line per interface itself

    #: seconds between looks at the store while DISCOVERs are dropped in
    #: the kernel (then none reach L{_drain} to look for us)
    shed_check = 0.05

    def __init__(self, server, arrival: Arrival, clock, discover_budget=512):
        self.server = server
        self._filter = DiscoverFilter(self.log)
        self._filter_check = None
        self.arrival = arrival
        self.clock = clock
        self.discover_budget = discover_budget
        self._queue = []
        self.events = getattr(server, "events", None) or EventBus(clock)
        self.service_name = getattr(server, "service_name", "dhcp")
        self._drop_log = RateLimitedLog(self.log.warn, clock)
        self._send_log = RateLimitedLog(self.log.warn, clock)
        self._shed_log = RateLimitedLog(self.log.warn, clock, burst=1)
        self._store_log = RateLimitedLog(self.log.error, clock, burst=3)

    def startProtocol(self):
        self.transport.setBroadcastAllowed(True)

    def datagramReceived(self, data, addr):
        self._queue.append((data, addr))
        if len(self._queue) == 1:
            self.clock.callLater(0, self._drain)

    def _drain(self):
        batch, self._queue = self._queue, []
        finishing, starting = [], []
        for data, addr in batch:
            message = self._parse(data, addr)
            if message is not None:
                (starting if message.message_type == wire.DISCOVER else finishing).append((message, addr))
        room = max(self.discover_budget - len(finishing), 0)
        why = "REQUESTs first"
        behind = getattr(getattr(self.server, "store", None), "behind", None)
        if starting and behind is not None and behind():
            # A shared store that is behind would refuse these offers after
            # all the work of answering them (pgstore.behind()): shed them
            # first, and have the kernel shed the next ones until it
            # catches up, so that REQUESTs find room in the socket's queue.
            room, why = 0, "the lease database is behind"
            if self._start_filter(behind):
                why += "; more are dropped in the kernel until it catches up"
        if len(starting) > room:
            self._shed_log("overloaded: {count} DISCOVERs dropped in one batch of {size} on {interface} "
                           "({why}; clients retry)", why=why,
                           count=len(starting) - room, size=len(batch), interface=self.arrival.interface or "?")
            if self.events.active:
                for message, addr in starting[room:]:
                    self._dropped("overload", message)
            del starting[room:]
        # Replies that are ready while the batch is open wait for its commit;
        # those that come later (a store or selector that answers later)
        # leave when they come: a store's Deferred fires only once the
        # binding is durable.  If the batch's commit fails, nothing goes.
        state = {"open": True, "ready": [], "failed": False}
        try:
            with self._batch():
                for message, addr in finishing + starting:
                    try:
                        result = self.server.handle(message, self.arrival, addr)
                    except LeaseStoreError as error:
                        if not isinstance(error, LeaseStoreUnavailable):
                            self._store_log("lease database failed for {mac}; request dropped: {error}",
                                            mac=message.mac, error=error)
                        if self.events.active:
                            self._dropped("store-error", message)
                        continue
                    except Exception:
                        self.log.failure("DHCP policy failed for {mac}; request dropped", mac=message.mac)
                        if self.events.active:
                            self._dropped("error", message)
                        continue
                    if isinstance(result, defer.Deferred):
                        result.addCallbacks(self._deliver, self._failed,
                                            callbackArgs=(state,), errbackArgs=(message,))
                    else:
                        self._deliver(result, state)
        except Exception as error:
            state["failed"] = True
            if isinstance(error, LeaseStoreError):
                self.log.error("lease database failed: {count} replies not sent: {error}",
                               count=len(state["ready"]), error=error)
            else:
                self.log.failure("lease batch failed: {count} replies not sent", count=len(state["ready"]))
            if self.events.active:
                for message, addr in finishing + starting:
                    self._dropped("store-error", message)
            return
        finally:
            state["open"] = False
        if starting and behind is not None and not self._filter.on and behind():
            # This batch's offers put the store behind: the next DISCOVERs
            # are shed from now on, not once they have filled the socket's
            # queue (under a flood that takes milliseconds, and REQUESTs
            # that find the queue full are lost with them).
            self._start_filter(behind)
        self._send(state["ready"])

    def _start_filter(self, behind):
        handle = getattr(self.transport, "getHandle", None)
        if self._filter.on or handle is None or not self._filter.start(handle()):
            return False
        self._filter_check = self.clock.callLater(self.shed_check, self._check_filter, behind)
        return True

    def _check_filter(self, behind):
        self._filter_check = None
        if self.transport is None:
            return
        if behind():
            self._filter_check = self.clock.callLater(self.shed_check, self._check_filter, behind)
        else:
            self._filter.stop(self.transport.getHandle())

    def stopProtocol(self):
        if self._filter_check is not None and self._filter_check.active():
            self._filter_check.cancel()
        self._filter_check = None

    def _deliver(self, replies, state):
        if state["open"]:
            state["ready"].extend(replies)
        elif not state["failed"]:
            self._send(replies)

    def _failed(self, failure, message):
        if failure.check(LeaseStoreBusy):
            self._shed_log("overloaded: the lease database is behind; DISCOVERs dropped (clients retry)")
            reason = "overload"
        elif failure.check(LeaseStoreUnavailable):
            reason = "store-error"  # the store said it once, and says when it is back
        elif failure.check(LeaseStoreError):
            self._store_log("lease database failed for {mac}; request dropped: {error}",
                            mac=message.mac, error=failure.getErrorMessage())
            reason = "store-error"
        else:
            self.log.failure("DHCP reply for {mac} failed; request dropped", failure, mac=message.mac)
            reason = "error"
        if self.events.active:
            self._dropped(reason, message)

    def _dropped(self, reason, message=None, addr=None):
        if message is None:
            self.events.publish(self.service_name, "dropped", peer=addr[0] if addr else None, reason=reason)
        else:
            self.events.publish(self.service_name, "dropped", mac=message.mac,
                                peer=str(message.ciaddr) if message.has_ciaddr else None,
                                reason=reason, message=message_name(message), xid=message.xid)

    def _batch(self):
        batch = getattr(self.server, "batch", None)
        return batch() if batch is not None else nullcontext()

    def _parse(self, data, addr):
        try:
            return wire.parse(data)
        except wire.MalformedPacket as error:
            self._drop_log("dropped {size}-byte packet from {host}:{port} on {interface}: {reason}",
                           size=len(data), host=addr[0], port=addr[1],
                           interface=self.arrival.interface or "?", reason=error)
        except Exception:
            self.log.failure("parser failed on a {size}-byte packet from {host}; dropped",
                             size=len(data), host=addr[0])
        if self.events.active:
            self._dropped("parse", addr=addr)
        return None

    def _send(self, replies):
        if self.transport is None:
            return  # the port closed (stop, reload) while the store answered
        for outgoing in replies:
            try:
                self.transport.write(outgoing.data, (outgoing.host, outgoing.port))
            except OSError as error:
                self._send_log("cannot send to {host}:{port} on {interface}: {error}",
                               host=outgoing.host, port=outgoing.port,
                               interface=self.arrival.interface or "?", error=error.strerror or error)
