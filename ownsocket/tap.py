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

from ownsocket import __version__
from ownsocket import config as configuration
from ownsocket.boot.chain import SelectorChain
from ownsocket.boot.loader import load_selectors
from ownsocket.boot.recent import RecentRequests
from ownsocket.dhcp.leases import LeaseStoreError
from ownsocket.dhcp.service import DhcpService
from ownsocket.dhcp.sockets import SocketError
from ownsocket.dhcp6.leases import LeaseStoreError as LeaseStoreError6
from ownsocket.events import EventBus
from ownsocket.filechain import BackendChain
from ownsocket.files import FilesystemBackend, resolve
from ownsocket.interfaces import BackendError, IFileBackend, ITransferObserver
from ownsocket.http import HTTPService
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


def boot_file_size_function(tftp, clock, ttl=5.0):
    """
    Option 13 wants the size of the boot file as TFTP will serve it.

    Resolving the name safely (realpath and all) for every reply was a fifth
    of the DHCP time under load; a boot storm asks for the same two or three
    files thousands of times, so sizes are remembered for a few seconds.
    """
    root = os.path.abspath(tftp.root)
    cache = {}

    def size(name):
        now = clock.seconds()
        hit = cache.get(name)
        if hit is not None and hit[0] > now:
            return hit[1]
        try:
            value = os.stat(resolve(root, name, tftp.case_insensitive)).st_size
        except (OSError, BackendError):
            value = None
        if len(cache) > 4096:
            cache.clear()
        cache[name] = (now + ttl, value)
        return value

    return size


def build_selector(config, reactor, selectors=None):
    """The configured chain (the selectors may be passed in when already built)."""
    if selectors is None:
        selectors = load_selectors(config, reactor)
    return SelectorChain(selectors, clock=reactor, timeout=config.boot.selector_timeout)


def build_backend(config, selectors, root=None):
    """Generated content from selectors that provide IFileBackend first, then
    the files under the root (the TFTP root unless another is given);
    selectors that observe transfers are told of every file opened."""
    generated = [s for s in selectors if IFileBackend.providedBy(s)]
    observers = [s for s in selectors if ITransferObserver.providedBy(s)]
    filesystem = FilesystemBackend(os.path.abspath(root or config.tftp.root), config.tftp.case_insensitive)
    return BackendChain(generated + [filesystem], observers)


def makeService(options, reactor=None):
    if reactor is None:
        from twisted.internet import reactor
    try:
        config = configuration.load(options["config"])
        selectors = load_selectors(config, reactor)
    except configuration.ConfigError as error:
        fail(str(error))
    services = MultiService()
    recent = RecentRequests()
    events = EventBus(reactor)
    backend = build_backend(config, selectors)
    if config.dhcp.enabled:
        DhcpService(config, build_selector(config, reactor, selectors), reactor,
                    boot_file_size=boot_file_size_function(config.tftp, reactor),
                    recent=recent, events=events).setServiceParent(services)
    ipv6 = bool(config.subnets6) and config.dhcp.enabled and config.dhcp.mode == "server"
    if ipv6:
        from ownsocket.dhcp6.service import Dhcp6Service
        Dhcp6Service(config, build_selector(config, reactor, selectors), reactor,
                     recent=recent, events=events).setServiceParent(services)
    if config.tftp.enabled:
        tftp = TFTPService(config.tftp, backend=backend, reactor=reactor, recent=recent, events=events)
        tftp.listen_ipv6 = ipv6  # also [::]:69 when no [tftp] addresses are named
        tftp.setServiceParent(services)
    if config.http.enabled:
        http_backend = build_backend(config, selectors, config.http.root) if config.http.root else backend
        http = HTTPService(config.http, http_backend, reactor=reactor, recent=recent, events=events)
        http.listen_ipv6 = ipv6
        http.setServiceParent(services)
    return StartupGuard(services, config, selectors)


class StartupGuard(MultiService):
    """Turns a failure to bind a port or open the lease database into one
    line and a non-zero exit, instead of a traceback from twistd, and says
    at start-up what the server will do."""

    log = Logger()

    def __init__(self, inner, config, selectors):
        MultiService.__init__(self)
        inner.setServiceParent(self)
        self.config = config
        self.selectors = selectors

    def startService(self):
        MultiService.startService(self)
        config = self.config
        self.log.info("ownsocket {version} with {source}: DHCP {dhcp}, TFTP {tftp}, HTTP {http}{dhcp6}; "
                      "selectors {selectors}",
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
                      selectors=", ".join(s.name for s in self.selectors))
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
