"""
Prometheus metrics from the event stream.

Every series has bounded labels: message types, drop reasons and transfer
results come from fixed vocabularies (anything else counts as C{other}),
subnets and selectors are the configured names (capped), and no label ever
holds a MAC, an address or a file name, so a flood of clients cannot grow
the exposition.  The registry is our own, not prometheus_client's global
one, so two servers in one process (tests) never share counters.

Counting happens in the event observer, which must stay cheap: label
children are looked up once and kept in dicts.  Gauges that are state, not
history (addresses by state, transfers in flight) are asked of the services
at scrape time by a custom collector, so they can never drift.
"""

from __future__ import annotations

import platform
import threading

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily
from twisted.python.threadable import isInIOThread
from zope.interface import implementer

from ownsocket import __version__
from ownsocket.admin.trail import OUTCOMES
from ownsocket.events import IEventObserver

DHCP_SERVICES = ("dhcp", "proxy", "dhcp6")
SERVICES = ("dhcp", "proxy", "dhcp6", "tftp", "http", "server")
RECEIVED = ("discover", "request", "decline", "release", "inform", "bootp")
SENT = ("offer", "ack", "nak", "bootp", "advertise", "reply")
DROP_REASONS = ("parse", "not_for_us", "no_subnet", "pool_exhausted", "overload", "store_error", "ignored",
                "error")
TFTP_RESULTS = ("ok", "not_found", "denied", "size_probe", "timeout", "aborted", "refused", "error")
HTTP_RESULTS = ("ok", "not_found", "denied", "aborted", "error")
ALLOCATION_REASONS = ("pool_exhausted", "store_error")
RELOAD_RESULTS = ("ok", "failed")
ADDRESS_STATES = ("free", "offered", "bound", "declined")
OTHER = "other"
NONE = "none"

#: Most distinct selector, architecture or subnet label values; later new ones count as "other".
MAX_NAMES = 32

COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


def _word(value) -> str:
    return str(value).strip().lower().replace("-", "_").replace(" ", "_")


class Vocabulary:
    """
    Maps free text onto a bounded set of label values.

    A fixed vocabulary (message types, reasons, results) is matched in
    snake_case ("not-for-us" counts as C{not_for_us}); anything else is
    C{other}.  A learned one (selector, architecture and subnet names, which
    the config and the client tables bound) keeps the first C{limit}
    distinct names as they are and counts later ones as C{other}.
    """

    def __init__(self, known=(), limit=0):
        self.known = frozenset(known)
        self.limit = limit
        self._words = {}  # text seen -> label, for the fixed vocabularies
        self.learned = set()

    def __call__(self, value) -> str:
        if value is None or value == "":
            return NONE
        if self.known:
            word = self._words.get(value)
            if word is None:
                word = _word(value)
                word = word if word in self.known else OTHER
                if len(self._words) < 1024 and isinstance(value, str):
                    self._words[value] = word
            return word
        name = str(value)
        if name in self.learned:
            return name
        if len(self.learned) < self.limit and len(name) <= 40 and \
                all(ch.isalnum() or ch in "_.:-" for ch in name):
            self.learned.add(name)
            return name
        return OTHER


@implementer(IEventObserver)
class Metrics:
    """
    The registry and the observer that fills it.

    @param runtime: what the server is (config, services, start time); read
        at scrape time, since a reload can swap C{runtime.config}.
    """

    def __init__(self, runtime):
        self.runtime = runtime
        self.registry = registry = CollectorRegistry(auto_describe=True)
        self._pending = {}
        #: the thread that counts (the reactor's: the one that builds us)
        self.counting_thread = threading.get_ident()
        # first in the registry, so a collection sees every count so far
        registry.register(_Flush(self))
        self._message = {"received": Vocabulary(RECEIVED), "sent": Vocabulary(SENT)}
        self._drop = Vocabulary(DROP_REASONS)
        self._tftp_result = Vocabulary(TFTP_RESULTS)
        self._http_result = Vocabulary(HTTP_RESULTS)
        self._selector = Vocabulary(limit=MAX_NAMES)
        self._arch = Vocabulary(limit=MAX_NAMES)
        self._subnet = Vocabulary(limit=MAX_NAMES)
        self._allocation_reason = Vocabulary(ALLOCATION_REASONS)

        self.received = Counter("ownsocket_dhcp_received", "DHCP/BOOTP requests that parsed, by message type",
                                ["service", "message"], registry=registry)
        self.sent = Counter("ownsocket_dhcp_sent", "DHCP/BOOTP replies sent, by message type",
                            ["service", "message"], registry=registry)
        self.dropped = Counter("ownsocket_dhcp_dropped", "DHCP datagrams dropped without an answer, by reason",
                               ["service", "reason"], registry=registry)
        self.allocation_failures = Counter("ownsocket_dhcp_allocation_failures",
                                           "Requests for which no address could be given",
                                           ["subnet", "reason"], registry=registry)
        self.decisions = Counter("ownsocket_selector_decisions",
                                 "Boot files chosen, by the selector that chose and the client architecture",
                                 ["selector", "arch"], registry=registry)
        self.commit_seconds = Histogram("ownsocket_dhcp_lease_commit_seconds",
                                        "Time the lease store took to make a lease durable",
                                        buckets=COMMIT_BUCKETS, registry=registry)
        self.tftp_requests = Counter("ownsocket_tftp_requests", "TFTP read requests, by result",
                                     ["result"], registry=registry)
        self.tftp_bytes = Counter("ownsocket_tftp_sent_bytes", "File bytes sent over TFTP", registry=registry)
        self.tftp_retransmits = Counter("ownsocket_tftp_retransmissions",
                                        "TFTP data blocks sent again", registry=registry)
        self.tftp_duration = Histogram("ownsocket_tftp_transfer_duration_seconds",
                                       "Duration of TFTP transfers that completed",
                                       buckets=DURATION_BUCKETS, registry=registry)
        self.http_requests = Counter("ownsocket_http_requests", "HTTP boot-file requests, by result",
                                     ["result"], registry=registry)
        self.http_bytes = Counter("ownsocket_http_sent_bytes", "File bytes sent over HTTP", registry=registry)
        self.http_duration = Histogram("ownsocket_http_transfer_duration_seconds",
                                       "Duration of HTTP transfers that completed",
                                       buckets=DURATION_BUCKETS, registry=registry)
        self.boots = Counter("ownsocket_boots", "Boots followed by the trail, by how they ended",
                             ["outcome"], registry=registry)
        self.reloads = Counter("ownsocket_config_reloads", "Configuration reloads, by result",
                               ["result"], registry=registry)
        self.events_seen = Counter("ownsocket_events", "Events the admin listener observed, by service",
                                   ["service"], registry=registry)
        self.state = _StateCollector(self)
        registry.register(self.state)
        self.trail = None

        # Every known label value exists from the start (at 0), so rates work
        # from the first scrape and the series count does not depend on traffic.
        for service in ("dhcp", "proxy"):
            for message in RECEIVED + (OTHER,):
                self.received.labels(service, message)
            for message in SENT[:4] + (OTHER,):
                self.sent.labels(service, message)
            for reason in DROP_REASONS + (OTHER,):
                self.dropped.labels(service, reason)
        # DHCPv6 publishes its replies and drops (no "received")
        for message in ("advertise", "reply", OTHER):
            self.sent.labels("dhcp6", message)
        for reason in DROP_REASONS + (OTHER,):
            self.dropped.labels("dhcp6", reason)
        for result in TFTP_RESULTS + (OTHER,):
            self.tftp_requests.labels(result)
        for result in HTTP_RESULTS + (OTHER,):
            self.http_requests.labels(result)
        for outcome in OUTCOMES:
            self.boots.labels(outcome)
        for result in RELOAD_RESULTS + (OTHER,):
            self.reloads.labels(result)
        for service in SERVICES:
            self.events_seen.labels(service)
        self._children = {}

    def _child(self, metric, *labels):
        """metric.labels(...) without prometheus_client's per-call validation."""
        key = (id(metric),) + labels
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def _count(self, metric, *labels):
        """One more, counted in a plain dict and handed to prometheus_client
        at the next collection (L{flush}): its C{inc} takes a lock each time,
        and the DHCP path counts about ten things per exchange."""
        key = (metric, labels)
        pending = self._pending
        pending[key] = pending.get(key, 0) + 1

    def flush(self):
        """Hand the pending counts over (on the reactor thread, which is the
        only one that counts)."""
        pending, self._pending = self._pending, {}
        for (metric, labels), amount in pending.items():
            self._child(metric, *labels).inc(amount)

    # -- the observer -----------------------------------------------------

    def observe(self, event):
        service, kind, fields = event.service, event.kind, event.fields
        if service in DHCP_SERVICES:
            self._dhcp(service, kind, fields)
        elif service == "tftp":
            if kind == "finished":
                self._transfer(fields, self._tftp_result, self.tftp_requests, self.tftp_bytes,
                               self.tftp_duration)
                retransmits = fields.get("retransmits")
                if isinstance(retransmits, int) and retransmits > 0:
                    self.tftp_retransmits.inc(retransmits)
        elif service == "http":
            if kind == "finished":
                self._transfer(fields, self._http_result, self.http_requests, self.http_bytes,
                               self.http_duration)
        elif service == "server":
            if kind == "reload":
                self._child(self.reloads, _reload_result(fields.get("result"))).inc()
        else:
            service = OTHER
        self._count(self.events_seen, service if service in SERVICES else OTHER)

    def _dhcp(self, service, kind, fields):
        if kind == "received":
            self._count(self.received, service, self._message["received"](fields.get("message")))
        elif kind == "sent":
            self._count(self.sent, service, self._message["sent"](fields.get("message")))
            if fields.get("file"):
                # The server asks the chain for every reply that carries a file.
                self._count(self.decisions, self._selector(fields.get("selector")),
                            self._arch(fields.get("arch")))
        elif kind == "dropped":
            self._count(self.dropped, service, self._drop(fields.get("reason")))
        elif kind == "committed":
            seconds = fields.get("seconds")
            if isinstance(seconds, (int, float)):
                self.commit_seconds.observe(seconds)
        elif kind == "allocation-failed":
            self._child(self.allocation_failures, self._subnet(fields.get("subnet")),
                        self._allocation_reason(fields.get("reason"))).inc()

    def _transfer(self, fields, vocabulary, requests, sent, duration):
        result = vocabulary(fields.get("result"))
        self._child(requests, result).inc()
        count = fields.get("bytes")
        if isinstance(count, int) and count > 0 and result not in ("not_found", "denied"):
            # (an HTTP 404/403 sends a short error page: not file bytes)
            sent.inc(count)
        seconds = fields.get("seconds")
        if result == "ok" and isinstance(seconds, (int, float)) and seconds >= 0:
            duration.observe(seconds)

    def boot_ended(self, boot):
        """The trail's on_end: one count per boot."""
        self._child(self.boots, boot.outcome if boot.outcome in OUTCOMES else OTHER).inc()


def _reload_result(result):
    word = _word(result) if result else NONE
    return word if word in RELOAD_RESULTS else OTHER


class _Flush:
    """Collects nothing; makes a collection on the reactor thread (tests,
    explain) see the counts still pending.  The admin page's thread-pool
    collection gets them from the flush that L{_StateCollector.refresh}
    does on the reactor thread first."""

    def __init__(self, metrics):
        self.metrics = metrics

    def describe(self):
        return []

    def collect(self):
        if threading.get_ident() == self.metrics.counting_thread:
            self.metrics.flush()
        return []


class _StateCollector:
    """What is true now, asked of the services at scrape time."""

    def __init__(self, metrics):
        self.metrics = metrics
        self._snapshot = None

    def describe(self):
        # Without this, registering would call collect() (and the services) once.
        return [GaugeMetricFamily("ownsocket_dhcp_addresses", ""),
                GaugeMetricFamily("ownsocket_tftp_transfers_in_flight", ""),
                GaugeMetricFamily("ownsocket_http_transfers_in_flight", ""),
                InfoMetricFamily("ownsocket_build", ""),
                InfoMetricFamily("ownsocket_config", ""),
                GaugeMetricFamily("ownsocket_start_time_seconds", ""),
                GaugeMetricFamily("ownsocket_trail_boots", "")]

    def refresh(self):
        """Take the services' state now, on the reactor thread.

        prometheus_client's Twisted resource collects in a thread-pool
        thread, where the services (and their SQLite connection) must not
        be touched: the resource calls this first, and C{collect} in that
        thread uses what was taken here."""
        self.metrics.flush()
        runtime = self.metrics.runtime
        self._snapshot = (address_counts(runtime), transfers_in_flight(runtime, "tftp"),
                          transfers_in_flight(runtime, "http"))

    def _state(self):
        if isInIOThread() or self._snapshot is None:
            runtime = self.metrics.runtime
            return (address_counts(runtime), transfers_in_flight(runtime, "tftp"),
                    transfers_in_flight(runtime, "http"))
        return self._snapshot

    def collect(self):
        runtime = self.metrics.runtime
        counts, tftp, http = self._state()
        addresses = GaugeMetricFamily("ownsocket_dhcp_addresses",
                                      "Pool addresses by subnet and state",
                                      labels=["subnet", "state"])
        if counts:
            names = {getattr(s, "name", None) for s in getattr(runtime.config, "subnets", ())}
            merged = {}
            for (subnet, state), value in counts.items():
                subnet = subnet if subnet in names else self.metrics._subnet(subnet)
                state = state if state in ADDRESS_STATES else OTHER
                for known in ADDRESS_STATES:  # every state, 0 or not: a fixed set of series
                    merged.setdefault((subnet, known), 0)
                merged[(subnet, state)] = merged.get((subnet, state), 0) + value
            for (subnet, state), value in sorted(merged.items()):
                addresses.add_metric([subnet, state], value)
        yield addresses
        for name, transfers in (("tftp", tftp), ("http", http)):
            if transfers is not None:
                # (requests queued for a free slot are listed too, as state "waiting": not running)
                running = sum(1 for t in transfers if t.get("state") != "waiting")
                yield GaugeMetricFamily(f"ownsocket_{name}_transfers_in_flight",
                                        f"{name.upper()} transfers running now", value=running)
        build = InfoMetricFamily("ownsocket_build", "The running ownsocket")
        build.add_metric([], {"version": __version__, "python": platform.python_version(),
                              "implementation": platform.python_implementation()})
        yield build
        config = InfoMetricFamily("ownsocket_config", "The configuration in use")
        config.add_metric([], {"hash": str(getattr(runtime, "config_hash", "") or "")[:80]})
        yield config
        started = getattr(runtime, "started_at", None)
        if started is not None:
            yield GaugeMetricFamily("ownsocket_start_time_seconds", "When the server started (Unix time)",
                                    value=started)
        trail = getattr(self.metrics, "trail", None)
        if trail is not None:
            yield GaugeMetricFamily("ownsocket_trail_boots", "Boots the trail holds now", value=len(trail))


def address_counts(runtime):
    """{(subnet, state): n} from the DHCP service, or None when it cannot say."""
    dhcp = getattr(runtime, "dhcp", None)
    method = getattr(dhcp, "address_counts", None)
    if method is None:
        return None
    try:
        return dict(method())
    except Exception:
        return None


def transfers_in_flight(runtime, name):
    """The service's transfers now (a list of dicts), or None when it cannot say."""
    service = getattr(runtime, name, None)
    method = getattr(service, "transfers_in_flight", None)
    if method is None:
        return None
    try:
        return list(method())
    except Exception:
        return None
