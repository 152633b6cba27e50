"""
twistd ownsocket: command-line options and the service tree.

The dropin in twisted/plugins names only this module, so importing the
plugin list stays cheap for every other twistd user on the machine.
"""

from __future__ import annotations

import os

from twisted.application.service import MultiService
from twisted.logger import Logger
from twisted.python import usage

from ownsocket import __version__, logformat
from ownsocket import config as configuration
from ownsocket.boot.recent import RecentRequests
from ownsocket.dhcp.leases import LeaseStoreError
from ownsocket.dhcp.service import DhcpService
from ownsocket.dhcp.sockets import SocketError
from ownsocket.dhcp6.leases import LeaseStoreError as LeaseStoreError6
from ownsocket.events import EventBus
from ownsocket.filechain import FileSizes
from ownsocket.http import HTTPService
from ownsocket.reload import ReloadOnSignal, Reloader
from ownsocket.runtime import Runtime, build_backend, build_selector, prepare, read_config  # noqa: F401
from ownsocket.tftp.service import BindError, TFTPService


class Options(usage.Options):
    synopsis = "[--config FILE]"
    longdesc = ("Network-boot server: DHCP/BOOTP on UDP 67 and TFTP on UDP 69. "
                "Without --config the embedded defaults are used; they name no subnet, "
                "so no address is handed out until you configure one.")
    optParameters = [
        ["config", "c", None, "INI configuration file (default: the embedded defaults)"],
    ]


def fail(message):
    """End start-up with one line and a non-zero exit, never a traceback."""
    raise SystemExit(f"ownsocket: {message}")


def make_admin(runtime):
    """
    The admin listener (ownsocket.admin), or None when this build has no
    admin package.  Any other import failure (prometheus_client missing,
    say) stops start-up with one line: the operator asked for metrics.
    """
    try:
        from ownsocket.admin import make_admin_service
    except ModuleNotFoundError as error:
        if error.name not in ("ownsocket.admin", "ownsocket"):
            fail(f"{runtime.config.source}: [admin] enabled: the admin listener cannot start: "
                 f"{error} (install it, or set [admin] enabled = false)")
        StartupGuard.log.warn("[admin] enabled, but this build of ownsocket has no admin "
                              "listener (ownsocket.admin): no metrics or status page")
        return None
    except ImportError as error:
        fail(f"{runtime.config.source}: [admin] enabled: the admin listener cannot start: "
             f"{error} (install it, or set [admin] enabled = false)")
    try:
        return make_admin_service(runtime)
    except ImportError as error:  # a dependency imported only when it is built
        fail(f"{runtime.config.source}: [admin] enabled: the admin listener cannot start: "
             f"{error} (install it, or set [admin] enabled = false)")


def makeService(options, reactor=None, admin_factory=make_admin):
    if reactor is None:
        from twisted.internet import reactor
    try:
        config, text = read_config(options["config"])
        prepared = prepare(config, text, reactor)
    except configuration.ConfigError as error:
        fail(str(error))
    services = MultiService()
    recent = RecentRequests()
    events = EventBus(reactor)
    # absolute, so a reload finds the file whatever the working directory is by then
    path = options["config"] and os.path.abspath(options["config"])
    runtime = Runtime(prepared, reactor, events, config_path=path, recent=recent)
    if config.dhcp.enabled:
        runtime.dhcp = DhcpService(config, prepared.selector, reactor,
                                   # option 13 from the TFTP backend chain in force
                                   boot_file_size=FileSizes(lambda: runtime.prepared.tftp_backend, reactor),
                                   recent=recent, events=events)
        runtime.dhcp.setServiceParent(services)
    ipv6 = runtime.wants_dhcp6(config)  # the same rule as a reload's
    if ipv6:
        from ownsocket.dhcp6.service import Dhcp6Service
        runtime.dhcp6 = Dhcp6Service(config, prepared.selector, reactor, recent=recent, events=events)
        runtime.dhcp6.setServiceParent(services)
    if config.tftp.enabled:
        runtime.tftp = TFTPService(config.tftp, backend=prepared.tftp_backend, reactor=reactor,
                                   recent=recent, events=events)
        runtime.tftp.listen_ipv6 = ipv6  # also [::]:69 when no [tftp] addresses are named
        runtime.tftp.setServiceParent(services)
    if config.http.enabled:
        runtime.http = HTTPService(config.http, prepared.http_backend, reactor=reactor,
                                   recent=recent, events=events)
        runtime.http.listen_ipv6 = ipv6
        runtime.http.setServiceParent(services)
    if config.admin.enabled:
        runtime.admin = admin_factory(runtime)
        if runtime.admin is not None:
            runtime.admin.setServiceParent(services)
    ReloadOnSignal(Reloader(runtime), reactor).setServiceParent(services)
    # twistd's own options (-n, --logfile, --logger...), when run by twistd
    return StartupGuard(services, runtime, twistd_options=getattr(options, "parent", None))


class StartupGuard(MultiService):
    """Turns a failure to bind a port or open the lease database into one
    line and a non-zero exit, instead of a traceback from twistd, and says
    at start-up what the server will do."""

    log = Logger()

    def __init__(self, inner, runtime, twistd_options=None):
        MultiService.__init__(self)
        inner.setServiceParent(self)
        self.runtime = runtime
        self.twistd_options = twistd_options

    def setServiceParent(self, parent):
        # twistd hands us its application here, before it starts logging:
        # the one moment to offer it the faster text observer (logformat).
        logformat.install(parent, self.twistd_options)
        MultiService.setServiceParent(self, parent)

    def startService(self):
        runtime = self.runtime
        runtime.started_at = runtime.reactor.seconds()
        MultiService.startService(self)
        config = runtime.config
        admin = config.admin
        self.log.info("ownsocket {version} with {source} (sha256 {short}): DHCP {dhcp}, TFTP {tftp}, "
                      "HTTP {http}{dhcp6}, admin {admin}; selectors {selectors}",
                      short=runtime.config_hash[:12],
                      admin=(f"{', '.join(str(a) for a in admin.addresses) or '0.0.0.0'} port {admin.port}"
                             if runtime.admin is not None else "off"),
                      version=__version__, source=config.source,
                      dhcp=("off" if not config.dhcp.enabled else
                            "proxy mode" if config.dhcp.mode == "proxy" else
                            f"{len(config.subnets)} subnet(s)"),
                      dhcp6=(f", DHCPv6 {len(config.subnets6)} subnet6(s) (port 547, Router Advertisements"
                             f" where router_advertisements = true; TFTP/HTTP also on IPv6)"
                             if config.subnets6 and config.dhcp.enabled and config.dhcp.mode == "server"
                             else ""),
                      tftp=f"port {config.tftp.port}, root {os.path.abspath(config.tftp.root)}"
                      if config.tftp.enabled else "off",
                      http=f"port {config.http.port}" if config.http.enabled else "off",
                      selectors=", ".join(runtime.selectors))
        if runtime.admin is not None and not admin.loopback_only:
            self.log.warn("[admin] addresses {addresses}: the admin listener is reachable from the "
                          "network; its status page, trail and metrics show MACs, addresses and "
                          "file names to anyone who can reach it",
                          addresses=", ".join(str(a) for a in admin.addresses) or "(all)")
        if config.tftp.enabled and not os.path.isdir(config.tftp.root):
            self.log.warn("[tftp] root {root} is not a directory: every request will get 'file not found'",
                          root=os.path.abspath(config.tftp.root))

    def privilegedStartService(self):
        try:
            MultiService.privilegedStartService(self)
        except SystemExit:
            raise
        except (SocketError, LeaseStoreError, LeaseStoreError6, BindError) as error:
            fail(str(error))
