"""
The public contracts of ownsocket.

Sites extend ownsocket by providing these interfaces (a boot-file selector, a
file backend, a lease store); the server only ever talks to the interfaces, so
a plugin never needs to know how the protocols are wired.
"""

from zope.interface import Attribute, Interface


class IBootFileSelector(Interface):
    """Chooses what a network-booting client should load."""

    name = Attribute("Unique short name, used in the config file and in logs.")

    def select(request):
        """
        Decide for one L{ownsocket.boot.request.BootRequest}.

        @return: a L{ownsocket.boot.request.BootDecision}, L{None} for "not
            mine, ask the next selector", or a Deferred firing with either.
        """


class ISelectorFactory(Interface):
    """
    Makes a configured selector at start-up.

    Built-in selectors and site plugins are factories so that they can take
    their settings from a C{[selector:NAME]} section of the config; a plugin
    that needs no settings may instead provide L{IBootFileSelector} directly.
    """

    name = Attribute("The name used in [boot] selectors and [selector:NAME].")

    def build(settings, context):
        """
        @param settings: the keys of C{[selector:NAME]} (a dict of str, empty
            when the section is absent).
        @param context: an L{ownsocket.boot.loader.SelectorContext} (the whole
            config and the clock).
        @return: a provider of L{IBootFileSelector}.
        @raise SettingError: for a bad setting; start-up
            stops with a line naming the section and key.
        """


class ITransferObserver(Interface):
    """
    Told when a client opens a file over TFTP or HTTP.

    The stateful iPXE selector uses this to learn that a machine really
    fetched its first stage, which DHCP alone cannot tell (FIRMWARE-FACTS
    §1b: the NIC ROM and the chained iPXE send identical options).
    """

    def file_opened(request):
        """@param request: the L{ownsocket.files.ReadRequest} that succeeded."""


class IReader(Interface):
    """An open file (or generated content) being sent to one client."""

    size = Attribute("Size in bytes, or None when it is not known in advance.")

    def read(n):
        """Return up to C{n} bytes; fewer than C{n} means end of file."""

    def finish():
        """Release resources: called once on success, error and timeout alike."""


class IFileBackend(Interface):
    """Where TFTP and HTTP find the bytes they serve."""

    def get_reader(request):
        """
        Open a file for reading.

        @param request: a L{ownsocket.files.ReadRequest}.
        @return: a Deferred firing with an L{IReader}, or failing with
            L{FileNotFound}, L{AccessViolation} or L{BackendError}.
        """


class ILeaseStore(Interface):
    """
    Durable record of which client holds which address until when.

    The store decides: every change is a compare-and-set on the address's
    row, so servers sharing one store never give one address to two clients
    and a client never holds two rows in one subnet.  Every method returns a
    Deferred (a database round trip must not block the reactor); a store
    that answers at once returns Deferreds that have fired already.  Expiry
    is on the store's clock (an injected clock, or the database's), so the
    methods take durations, not times.  A Deferred of a change fires only
    once the change is durable: the DHCP server sends the ACK afterwards.
    A store that cannot be reached fails with
    L{ownsocket.dhcp.leases.LeaseStoreUnavailable}.
    """

    shared = Attribute("True when other servers write the same store (then "
                       "the address owner refreshes its hint of free addresses).")

    def lookup(mac, subnet):
        """The L{ownsocket.dhcp.leases.Lease} of C{mac} in the subnet named
        C{subnet}: its live offer, or its binding (lapsed ones too), or None."""

    def holder(address):
        """The lease that holds C{address} (any state, lapsed too), or None."""

    def claim(mac, subnet, candidates, state, seconds, hostname=None, own=None):
        """
        Give C{mac} the first address in C{candidates} that is free, lapsed
        or already its own, in C{state} (offered or bound) for C{seconds}
        (None: for good).  The client's other rows in the subnet go; an offer
        never downgrades its own live binding (that binding is returned).
        C{own}: (ranges, excluded): the client's own live offer or binding,
        if its address lies in one of the (first, last) ranges and is not
        excluded, is tried before the candidates (one round trip).
        @return: Deferred of the lease as stored, or None when every
            candidate is held by someone else.
        """

    def release(mac, address):
        """Delete the row if C{mac} holds C{address}: Deferred of a bool."""

    def forget(mac, address):
        """Delete C{mac}'s offer (not a binding) on C{address}: Deferred of a bool."""

    def decline(mac, address, seconds):
        """Quarantine C{address} for C{seconds} if C{mac} holds it: Deferred
        of the quarantine lease, or None."""

    def reclaim():
        """Delete lapsed offers and quarantines (one server at a time where
        several share the store): Deferred of how many."""

    def all_leases():
        """Deferred of every row, for start-up, the hint and reports."""

    def batch():
        """A context manager: the changes made inside it are one transaction
        whose Deferreds fire after its commit (group commit)."""

    def behind():
        """
        True while a new offer would come too late to matter (a shared
        database lagging under load): the DHCP protocol then drops
        DISCOVERs before spending anything on them, as it does when the
        socket brings more than it can answer.  Bindings are never refused.
        A store that answers at once always says False.
        """

    def close():
        """Release connections and files; may return a Deferred."""


class SettingError(ValueError):
    """
    A bad key in a C{[selector:NAME]} section, raised by a selector factory;
    start-up stops with a line naming the section and this key.  It lives
    here, not in the loader, so a plugin needs only the contracts module.
    """

    def __init__(self, key, message):
        self.key = key
        super().__init__(message)


class BackendError(Exception):
    """The backend failed for a reason the client cannot fix."""


class FileNotFound(BackendError):
    """No such file under the served root."""


class AccessViolation(BackendError):
    """The name points outside the served root or is otherwise refused."""
