"""
One event stream for everything a boot does.

DHCP, proxyDHCP, TFTP and HTTP publish small events here; metrics, the
per-boot trail and the status page subscribe.  The protocols know none of
their subscribers, so adding a view never touches the wire or policy code,
and a test can subscribe a list and assert exactly what a service did.

Publishing must stay cheap: the DHCP hot path pays for every line it adds.
So an event is one small immutable tuple (a NamedTuple is built four times
faster than a frozen dataclass), and a service checks
L{EventBus.active} before it builds one.

The contract (service, kind, and the keys of C{fields}) is listed in
L{KINDS}; publishers use those names and subscribers may rely on them.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any, Mapping, NamedTuple

from twisted.logger import Logger
from zope.interface import Interface, implementer


class IEventObserver(Interface):
    """Anything that wants to hear what the services did."""

    def observe(event):
        """
        Called on the reactor thread for every published L{Event}.

        Must return quickly and must not raise; an observer that raises is
        logged once and then skipped for that event only.
        """


class Event(NamedTuple):
    """
    One thing that happened to one client.

    @ivar time: the injected clock's C{seconds()} when it happened.
    @ivar service: C{"dhcp"}, C{"proxy"}, C{"tftp"}, C{"http"} or
        C{"server"} (reloads and other server-wide facts).
    @ivar kind: what happened; see L{KINDS} for the names per service.
    @ivar mac: the client's MAC as C{aa:bb:cc:dd:ee:ff}, or None where the
        service only knows an address (TFTP and HTTP; subscribers map the
        peer to a MAC from the DHCP events they saw).
    @ivar peer: the client's IP address as text, or None when it has none
        yet (a DISCOVER).
    @ivar fields: the kind's details (see L{KINDS}); never None.
    """

    time: float
    service: str
    kind: str
    mac: str | None = None
    peer: str | None = None
    fields: Mapping[str, Any] = MappingProxyType({})


# service -> kind -> the keys its fields carry (documentation and a test
# contract; a publisher may add keys, never drop these).
KINDS = {
    "dhcp": {
        # a datagram that parsed; message: discover, request, decline,
        # release, inform or bootp; interface: receiving interface or
        # "relay <giaddr>"
        "received": ("message", "xid", "interface"),
        # a datagram dropped before an answer; reason: parse, not-for-us,
        # no-subnet, pool-exhausted, overload, store-error, ignored (or
        # error: the policy raised, a bug)
        "dropped": ("reason",),
        # a reply sent; message: offer, ack, nak or bootp.  selector is the
        # selector that chose the file (None when no file), arch the
        # architecture label (bios, efi-x64, ...), reason the selector's why
        # (the lease's why when no file was chosen, e.g. a NAK), lease the
        # lease's why (DHCP server only)
        "sent": ("message", "xid", "address", "file", "selector", "arch", "reason"),
        # a lease made durable; seconds is the store's commit latency
        "committed": ("address", "seconds"),
        # no address could be given (pool empty, store refused)
        "allocation-failed": ("subnet", "reason"),
        # a client gave its address back (RELEASE) or reported it in use
        # elsewhere (DECLINE: quarantined)
        "released": ("address",),
        "declined": ("address",),
    },
    "proxy": {
        "received": ("message", "xid", "interface"),
        "dropped": ("reason",),
        "sent": ("message", "xid", "address", "file", "selector", "arch", "reason"),
    },
    "dhcp6": {
        # a DHCPv6 answer sent; message: advertise or reply; address the
        # first address in it (None without one); file the option-59 URL
        "sent": ("message", "xid", "address", "file", "selector", "arch", "reason"),
        # dropped before an answer; reason: parse, no-subnet, not-for-us, ignored
        "dropped": ("reason",),
    },
    "tftp": {
        # an RRQ accepted; options as granted (blksize, windowsize, tsize)
        "started": ("file", "blksize", "windowsize", "size"),
        # a transfer ended; result: ok, not-found, denied, size-probe,
        # timeout, aborted, refused (no room) or error.  block is the last
        # block acknowledged, retransmits the blocks sent again
        "finished": ("file", "result", "bytes", "seconds", "retransmits", "block", "blksize",
                     "windowsize", "error"),
    },
    "http": {
        "started": ("file", "size"),
        # result: ok, not-found, denied, aborted or error; status the HTTP code
        "finished": ("file", "result", "bytes", "seconds", "status"),
    },
    "server": {
        # result: ok or failed; error: the one line that says why
        "reload": ("result", "error", "source"),
    },
}


@implementer(IEventObserver)
class EventBus:
    """
    Fans events out to observers, in subscription order.

    The bus itself is an observer, so a bus can be subscribed to another
    (one per reload generation, say) without the services noticing.
    """

    log = Logger()

    def __init__(self, clock=None):
        self.clock = clock
        self._observers = []

    @property
    def active(self):
        """True when someone listens: publishers skip building events otherwise."""
        return bool(self._observers)

    def subscribe(self, observer):
        self._observers.append(observer)

    def unsubscribe(self, observer):
        if observer in self._observers:
            self._observers.remove(observer)

    def publish(self, service, kind, mac=None, peer=None, **fields):
        """Build and deliver one event, stamped with the bus's clock."""
        if not self._observers:
            return
        now = self.clock.seconds() if self.clock is not None else 0.0
        self.observe(Event(now, service, kind, mac, peer, fields))

    def observe(self, event):
        for observer in tuple(self._observers):
            try:
                observer.observe(event)
            except Exception:
                self.log.failure("event observer {observer!r} failed on {service}.{kind}",
                                 observer=observer, service=event.service, kind=event.kind)


@implementer(IEventObserver)
class EventList:
    """An observer that keeps every event: for tests and for C{explain}."""

    def __init__(self):
        self.events = []

    def observe(self, event):
        self.events.append(event)

    def kinds(self, service=None):
        return [(e.service, e.kind) for e in self.events if service in (None, e.service)]
