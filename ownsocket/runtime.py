"""
The running server as one object, and the one way its parts are built.

The admin listener (metrics, trail, status page) and the reload both need
"what is running now": the current config and its hash, the services, the
event bus.  L{Runtime} is that object; a reload replaces its C{config} and
C{config_hash} and nothing else.

L{prepare} builds everything a config implies that is not a socket (the
selectors, the chain, the file backends) from nothing but the config, so
start-up and reload build exactly the same way, and a reload can build the
new set beside the running one and throw it away when something is wrong.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import List, Optional

from ownsocket import config as configuration
from ownsocket.boot.chain import SelectorChain
from ownsocket.boot.loader import load_selectors
from ownsocket.filechain import BackendChain
from ownsocket.files import FilesystemBackend
from ownsocket.interfaces import IFileBackend, ITransferObserver


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


@dataclass(frozen=True)
class Prepared:
    """Everything one config implies, built and checked, not yet in use."""

    config: configuration.Config
    text: str
    selectors: tuple
    selector: SelectorChain
    tftp_backend: object
    http_backend: object

    @property
    def config_hash(self) -> str:
        return config_hash(self.text)


def config_hash(text: str) -> str:
    """The sha256 of the config text, so an operator can tell which file runs."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def read_config(path: Optional[str]):
    """
    The config at C{path} (the embedded defaults when None) and its text.

    The text is read once and parsed from memory, so the hash always
    belongs to the text that was parsed, even if the file changes meanwhile.

    @raise configuration.ConfigError: unreadable or invalid.
    """
    if path is None:
        text = configuration.EMBEDDED_DEFAULTS
        return configuration.load(), text
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as error:
        raise configuration.ConfigError(path, None, None, f"cannot read: {error.strerror}") from None
    except UnicodeDecodeError:
        raise configuration.ConfigError(path, None, None, "is not UTF-8 text") from None
    return configuration.load(path=path, text=text), text


def prepare_steps(config, text, reactor):
    """
    L{prepare} as a generator that yields between its steps (plugins found
    and selectors built; file backends; chain), and returns the
    L{Prepared}: a reload runs one step per reactor turn, so the sockets
    are read between them (L{ownsocket.reload}).

    @raise configuration.ConfigError: a selector or plugin is wrong.
    """
    selectors = tuple(load_selectors(config, reactor))
    yield
    tftp_backend = build_backend(config, selectors)
    http_backend = (build_backend(config, selectors, config.http.root)
                    if config.http.root else tftp_backend)
    yield
    return Prepared(config, text, selectors, build_selector(config, reactor, list(selectors)),
                    tftp_backend, http_backend)


def run_steps(steps):
    """What a generator such as L{prepare_steps} returns, all in one go."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value


def prepare(config, text, reactor) -> Prepared:
    """
    Build the selectors (plugins imported, verified), the chain and the
    file backends of C{config}, at once (start-up).

    @raise configuration.ConfigError: a selector or plugin is wrong.
    """
    return run_steps(prepare_steps(config, text, reactor))


class Runtime:
    """
    The running server, for the admin listener and the reload.

    @ivar config: the L{ownsocket.config.Config} in force (replaced on reload).
    @ivar config_hash: sha256 hex of its text (of the embedded text for the
        embedded defaults).
    @ivar config_path: the file given with --config, or None.
    @ivar started_at: C{reactor.seconds()} when the server started.
    @ivar reactor: the reactor everything runs on.
    @ivar events: the one L{ownsocket.events.EventBus}.
    @ivar dhcp: the DHCP (or proxyDHCP) service, or None when off.
    @ivar tftp: the TFTP service, or None.
    @ivar http: the HTTP service, or None.
    @ivar admin: the admin listener service, or None.
    @ivar selectors: the names of the selectors in the chain, in order.
    @ivar reloads: how many reloads succeeded and failed, by result.
    @ivar heap: the L{ownsocket.heap.Heap} policy once the server runs, or
        None (tests, embedders): the reload freezes the new heap through it.
    """

    heap = None

    def __init__(self, prepared: Prepared, reactor, events, config_path=None, recent=None):
        self.reactor = reactor
        self.events = events
        self.config_path = config_path
        self.recent = recent
        self.started_at = reactor.seconds()
        self.dhcp = self.dhcp6 = self.tftp = self.http = self.admin = None
        self.reloads = {"ok": 0, "failed": 0}
        self._adopt(prepared)

    def _adopt(self, prepared: Prepared) -> None:
        self.prepared = prepared
        self.config = prepared.config
        self.config_hash = prepared.config_hash
        self.selectors: List[str] = [selector.name for selector in prepared.selectors]

    def services(self):
        """(name, service) of each running service, in start order."""
        return [(name, service) for name, service in
                (("dhcp", self.dhcp), ("dhcp6", self.dhcp6), ("tftp", self.tftp), ("http", self.http), ("admin", self.admin))
                if service is not None]

    def wants_dhcp6(self, config) -> bool:
        """
        Whether C{config} runs DHCPv6: a [subnet6:...], and the DHCP service
        running (since start-up: [dhcp] enabled needs a restart) in server
        mode.  The same rule as at start-up.
        """
        return bool(config.subnets6) and self.dhcp is not None and config.dhcp.mode == "server"

    def make_dhcp6(self, prepared: Prepared):
        """A new DHCPv6 service for C{prepared}, not started (a reload adds
        the first [subnet6:...])."""
        from ownsocket.dhcp6.service import Dhcp6Service
        return Dhcp6Service(prepared.config, prepared.selector, self.reactor, recent=self.recent,
                            events=self.events)

    def transfers_busy(self) -> bool:
        """Whether a TFTP or HTTP transfer is in flight (or waiting for a
        slot): L{ownsocket.heap.Heap} sweeps only when none is."""
        return any(service.transfers_in_flight() for service in (self.tftp, self.http)
                   if service is not None and hasattr(service, "transfers_in_flight"))

    def backend_for(self, name, prepared: Prepared):
        """The file backend service C{name} reads through, under C{prepared}."""
        if name == "tftp":
            return prepared.tftp_backend
        if name == "http":
            return prepared.http_backend
        return None
