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

    Times are plain numbers (seconds) from an injected clock, never
    C{time.time()}, so expiry can be tested on a L{twisted.internet.task.Clock}.
    A store must have made a binding durable when L{commit} returns: the DHCP
    server sends the ACK only afterwards.
    """

    def lookup(mac):
        """Return the L{ownsocket.dhcp.leases.Lease} of C{mac}, or None."""

    def holder(address):
        """Return the lease that holds C{address} (any state), or None."""

    def offer(lease):
        """Hold C{lease.address} for C{lease.mac} while an offer is out; in
        memory is enough (a forgotten offer only makes the client ask again)."""

    def commit(lease):
        """Store or replace the lease of C{lease.mac}, durably."""

    def forget(lease):
        """Drop a lease that is no longer honoured (an offer that lapsed)."""

    def release(mac, address):
        """Forget the binding if C{mac} holds C{address}; return True if it did."""

    def decline(address, until):
        """Quarantine C{address} until time C{until} (a client found it in use)."""

    def all_leases():
        """Every stored lease, for start-up and for reports."""


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
