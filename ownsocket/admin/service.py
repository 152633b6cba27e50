"""
The admin listener: metrics, the JSON API and the status page on their own
TCP port (loopback by default), apart from the boot HTTP service that faces
every client on the LAN.

  /             the status page
  /metrics      Prometheus exposition (prometheus_client's Twisted resource)
  /api/boots    the per-boot trail as JSON; /api/boots/<mac> one machine

The port is bound in privilegedStartService like every other listener, and
a failure to bind is one line (L{ownsocket.listening.BindError}).
"""

from __future__ import annotations

from twisted.logger import Logger
from twisted.web import server
from twisted.web.resource import Resource

from ownsocket import listening
from ownsocket.admin.api import ApiResource
from ownsocket.admin.metrics import Metrics
from ownsocket.admin.page import StatusPage
from ownsocket.admin.trail import BootTrail


class MetricsPage(Resource):
    """prometheus_client's Twisted MetricsResource, after a snapshot of the
    services' state taken on the reactor thread (it collects in a thread)."""

    isLeaf = True

    def __init__(self, metrics):
        Resource.__init__(self)
        # Imported here: prometheus_client.twisted imports the global reactor.
        from prometheus_client.twisted import MetricsResource
        self.metrics = metrics
        self.exposition = MetricsResource(metrics.registry)

    def render(self, request):
        self.metrics.state.refresh()
        return self.exposition.render(request)


class AdminSite(server.Site):
    noisy = False
    displayTracebacks = False

    def log(self, request):
        """No access log: a scrape every 15 s is not news."""


def build_root(runtime, metrics, trail):
    root = Resource()
    root.putChild(b"", StatusPage(runtime, trail))
    root.putChild(b"metrics", MetricsPage(metrics))
    root.putChild(b"api", ApiResource(runtime, trail))
    return root


class AdminService(listening.ListeningService):
    """
    @param runtime: the running server (config, reactor, events, services);
        C{runtime.config} may be swapped by a reload, so everything reads it
        when it needs it.
    """

    name = "admin"
    transport = "TCP"
    in_use_hint = "address already in use (another ownsocket, or change [admin] port)"
    log = Logger()

    def __init__(self, runtime, metrics=None, trail=None):
        listening.ListeningService.__init__(self)
        self.runtime = runtime
        self.reactor = runtime.reactor
        self.metrics = metrics if metrics is not None else Metrics(runtime)
        if trail is None:
            trail = BootTrail(lambda: runtime.config.admin, runtime.reactor, on_end=self.metrics.boot_ended)
        self.trail = trail
        self.metrics.trail = trail
        self.root = build_root(runtime, self.metrics, trail)
        self.site = AdminSite(self.root, reactor=runtime.reactor)
        #: The [admin] settings the port was opened with (a reload passes new ones to reconfigure).
        self.config = runtime.config.admin
        self._subscribed = False

    def _listen(self, host):
        return self.reactor.listenTCP(self.config.port, self.site, interface=host)

    def startService(self):
        listening.ListeningService.startService(self)
        if not self._subscribed:
            self.runtime.events.subscribe(self.metrics)
            self.runtime.events.subscribe(self.trail)
            self._subscribed = True
        self.log.info("admin listener on {where}: status page /, metrics /metrics, boots /api/boots",
                      where=", ".join("%s:%d" % hp for hp in self.listening_addresses()))

    def stopService(self):
        if self._subscribed:
            self.runtime.events.unsubscribe(self.metrics)
            self.runtime.events.unsubscribe(self.trail)
            self._subscribed = False
        self.trail.stop()
        return listening.ListeningService.stopService(self)

    def reconfigure(self, config, selector=None, backend=None):
        """
        The reload contract.  The page, the API and the metrics read
        C{runtime.config} per request, so they follow by themselves; the
        port is re-opened only when [admin] addresses or port changed
        (L{listening.ListeningService.rebind}: unchanged ports stay open).
        A new port that cannot be opened leaves the old ones, with one line.
        """
        def failed(failure):
            failure.trap(listening.BindError)
            self.log.error("reload: admin listener stays on {where}: {error}",
                           where=", ".join("%s:%d" % hp for hp in self.listening_addresses()),
                           error=str(failure.value))
        return self.rebind(config.admin).addErrback(failed)


def make_admin_service(runtime):
    """The admin listener's service (the caller adds it to the service tree)."""
    return AdminService(runtime)


__all__ = ["AdminService", "make_admin_service"]
