"""
twistd ownsocket: command-line options and the service tree.

The dropin in twisted/plugins names only this module, so importing the
plugin list stays cheap for every other twistd user on the machine.
"""

from __future__ import annotations

import os

from twisted.application.service import MultiService
from twisted.python import usage

from ownsocket import config as configuration
from ownsocket.boot.chain import SelectorChain
from ownsocket.boot.recent import RecentRequests
from ownsocket.boot.selectors import ArchTableSelector, HostSelector
from ownsocket.dhcp.leases import LeaseStoreError
from ownsocket.dhcp.service import DhcpService
from ownsocket.dhcp.sockets import SocketError
from ownsocket.files import resolve
from ownsocket.interfaces import BackendError
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


def boot_file_size_function(tftp):
    """Option 13 wants the size of the boot file as TFTP will serve it."""
    root = os.path.abspath(tftp.root)

    def size(name):
        try:
            return os.stat(resolve(root, name, tftp.case_insensitive)).st_size
        except (OSError, BackendError):
            return None

    return size


def build_selector(config, reactor):
    return SelectorChain([HostSelector(config.hosts), ArchTableSelector(config.boot)], clock=reactor)


def makeService(options, reactor=None):
    if reactor is None:
        from twisted.internet import reactor
    try:
        config = configuration.load(options["config"])
    except configuration.ConfigError as error:
        fail(str(error))
    services = MultiService()
    recent = RecentRequests()
    if config.dhcp.enabled:
        DhcpService(config, build_selector(config, reactor), reactor,
                    boot_file_size=boot_file_size_function(config.tftp),
                    recent=recent).setServiceParent(services)
    if config.tftp.enabled:
        TFTPService(config.tftp, reactor=reactor, recent=recent).setServiceParent(services)
    return StartupGuard(services)


class StartupGuard(MultiService):
    """Turns a failure to bind a port or open the lease database into one
    line and a non-zero exit, instead of a traceback from twistd."""

    def __init__(self, inner):
        MultiService.__init__(self)
        inner.setServiceParent(self)

    def privilegedStartService(self):
        try:
            MultiService.privilegedStartService(self)
        except SystemExit:
            raise
        except (SocketError, LeaseStoreError, BindError) as error:
            fail(str(error))
