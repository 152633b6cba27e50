"""
Leases: who holds which address until when, kept in SQLite.

The store decides.  Every change is a compare-and-set on the address's row
(free, lapsed, or already this client's), the same rule the PostgreSQL store
applies for several servers; the address owner (L{ownsocket.dhcp.addresses})
keeps only a hint.  This store is written by one process, so it keeps an
exact copy of its rows in memory and never queries per packet; bindings are
written through, offers stay in memory (a server that forgets an offer only
makes the client ask again).

The store answers with Deferreds (L{ILeaseStore} is asynchronous), but
SQLite answers at once: the Deferreds have fired when the call returns, so a
DHCP reply waits for nothing but its batch's commit.  A binding is in the
database file (its WAL) before the ACK leaves, which survives a kill -9.
"""

from __future__ import annotations

import ipaddress
import sqlite3
import sys
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Dict, List, Optional, Sequence

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from ownsocket.interfaces import ILeaseStore

IPv4 = ipaddress.IPv4Address

OFFERED, BOUND, DECLINED = "offered", "bound", "declined"
FOREVER = float("inf")

#: The SQLite schema's version (PRAGMA user_version); 1 added the subnet.
SCHEMA_VERSION = 1


#: __slots__ where the dataclass module offers them (3.10+): a server holds
#: one Lease per address, 100,000 of them on a big site.
_SLOTS = {"slots": True} if sys.version_info >= (3, 10) else {}


@dataclass(frozen=True, **_SLOTS)
class Lease:
    mac: Optional[str]  # None for a declined (quarantined) address
    address: IPv4
    state: str
    expires: float  # seconds on the store's clock; FOREVER for BOOTP
    hostname: Optional[str] = None
    subnet: Optional[str] = None  # the [subnet:NAME] it was given on

    def active(self, now: float) -> bool:
        return self.expires > now

    def renewed(self, state: str, expires: float, hostname: Optional[str] = None) -> "Lease":
        return replace(self, state=state, expires=expires, hostname=hostname or self.hostname)


class LeaseStoreError(Exception):
    """The lease database cannot be opened or written; the message is one
    log line (SQLite's own text may quote a damaged schema over lines)."""

    def __init__(self, message=""):
        super().__init__(" ".join(str(message).split()))


class LeaseStoreUnavailable(LeaseStoreError):
    """The lease database cannot be reached just now (it is retried)."""


class LeaseStoreBusy(LeaseStoreError):
    """The lease database is behind: a new offer is refused at once rather
    than answered too late to matter (the client retries)."""


_COLUMNS = "address, mac, state, expires, hostname, subnet"

_UPSERT = f"INSERT OR REPLACE INTO leases ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS leases (
    address  TEXT PRIMARY KEY,
    mac      TEXT,
    state    TEXT NOT NULL,
    expires  REAL NOT NULL,
    hostname TEXT,
    subnet   TEXT
);
CREATE INDEX IF NOT EXISTS leases_by_mac ON leases (mac);
"""


def _own(leases, now, ranges, excluded):
    """The client's live offer or binding within C{ranges}, not excluded."""
    for lease in leases:
        if ((lease.state == BOUND or lease.active(now)) and lease.address not in excluded
                and any(first <= lease.address <= last for first, last in ranges)):
            return lease
    return None


def _deferred(method):
    """Run a synchronous store method and hand its result (or its
    L{LeaseStoreError}) back as a Deferred that has already fired."""
    def wrapper(self, *args, **kwargs):
        try:
            return defer.succeed(method(self, *args, **kwargs))
        except LeaseStoreError:
            return defer.fail()
        except sqlite3.Error as error:
            return defer.fail(LeaseStoreError(f"lease database {self.path}: {error}"))
    wrapper.__name__ = method.__name__
    wrapper.__doc__ = method.__doc__
    return wrapper


def _lease_from_row(path, row) -> Lease:
    """
    A row read back from the database, checked: SQLite keeps any type in any
    column, and a file edited by hand or damaged must stop the server with
    one line naming the row, not a traceback (nor hand out an address that
    an unreadable row may hold).
    """
    address, mac, state, expires, hostname, subnet = row
    try:
        if not isinstance(address, str):
            raise ValueError("address is not text")
        parsed = IPv4(address)
        if mac is not None and not isinstance(mac, str):
            raise ValueError("mac is not text")
        if state not in (OFFERED, BOUND, DECLINED):
            raise ValueError(f"unknown state {state!r}")
        if isinstance(expires, bool) or not isinstance(expires, (int, float)) or expires != expires:
            raise ValueError(f"expires is not a number: {expires!r}")
        if hostname is not None and not isinstance(hostname, str):
            raise ValueError("hostname is not text")
        if subnet is not None and not isinstance(subnet, str):
            raise ValueError("subnet is not text")
    except ValueError as error:
        raise LeaseStoreError(f"lease database {path}: bad row for address {address!r:.60}: {error}") from None
    return Lease(mac, parsed, state, float(expires), hostname, subnet)


@implementer(ILeaseStore)
class SqliteLeaseStore:
    """
    @param path: the database file, or ":memory:" for tests.
    @param clock: anything with C{seconds()}: expiry is on this clock.
    @param synchronous: SQLite's C{synchronous} pragma.  C{NORMAL} (with WAL)
        makes a commit durable against a crash of this process, as Kea's
        memfile is; C{FULL} also against power loss, at an fsync per batch.
    """

    log = Logger()
    shared = False  # one server writes it: a memory hint stays true

    def __init__(self, path: str, clock=None, synchronous: str = "NORMAL", manual_checkpoints: bool = False):
        self.path = path
        if clock is None:
            from twisted.internet import reactor as clock
        self.clock = clock
        self._manual_checkpoints = manual_checkpoints and path != ":memory:"
        self._in_batch = False
        try:
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL").fetchall()
            self._db.execute(f"PRAGMA synchronous={synchronous}").fetchall()
            if self._manual_checkpoints:
                # In WAL mode a commit appends to the log without fsync; the
                # fsyncs happen when the log is copied back into the database
                # (a checkpoint), which SQLite does inside whichever commit
                # crosses 1000 pages.  In a boot storm that stall overflowed
                # the socket's queue (ACK/s at 5,000 offered swung between
                # 2,400 and 4,900; with no checkpoints, a steady 4,900), so
                # the DHCP service checkpoints when the network is quiet.
                self._db.execute("PRAGMA wal_autocheckpoint=0").fetchall()
            self._check()
            self._db.executescript(_SCHEMA)
            self._migrate()
            self._load()
        except (sqlite3.Error, UnicodeDecodeError) as error:
            # A damaged file can make SQLite hand back text that is not
            # UTF-8, which the sqlite3 module raises as UnicodeDecodeError.
            raise LeaseStoreError(f"cannot open lease database {path}: {error}") from None

    def _check(self):
        """
        Refuse a damaged file at start-up.  SQLite opens one whose index
        pages are broken and reads its rows, and only the first write then
        fails ("database disk image is malformed"): in the middle of a boot
        storm, for every ACK.  C{quick_check} reads every page once (tens of
        milliseconds for 100,000 leases).
        """
        rows = self._db.execute("PRAGMA quick_check").fetchall()
        if rows != [("ok",)]:
            detail = "; ".join(str(row[0]) for row in rows[:3])
            first = detail.replace("*** in database main ***", "").strip().splitlines()[0][:200] \
                if detail.strip() else "no answer"
            raise LeaseStoreError(
                f"lease database {self.path} is damaged (PRAGMA quick_check: {first}); restore it from a "
                f"backup, or move it aside to start with no leases (clients then keep their addresses "
                f"only if nobody else asks first)")

    def _migrate(self):
        version = self._db.execute("PRAGMA user_version").fetchall()[0][0]
        if version < 1:
            columns = [row[1] for row in self._db.execute("PRAGMA table_info(leases)")]
            if "subnet" not in columns:
                self._db.execute("ALTER TABLE leases ADD COLUMN subnet TEXT")
        if version < SCHEMA_VERSION:
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def _load(self):
        """Read every row into memory: this process is the only writer, so
        the copy stays exact and no query runs per packet."""
        self._by_address: Dict[IPv4, Lease] = {}
        self._by_mac: Dict[str, List[Lease]] = {}
        for row in self._db.execute(f"SELECT {_COLUMNS} FROM leases").fetchall():
            self._remember(_lease_from_row(self.path, row))

    # -- queries ------------------------------------------------------------

    @_deferred
    def lookup(self, mac: str, subnet: Optional[str] = None) -> Optional[Lease]:
        """The client's offer (while it lasts) or binding (lapsed too: the
        client may have its old address back if nobody took it)."""
        now = self.clock.seconds()
        for lease in self._of(mac, subnet):
            if lease.state == BOUND or lease.active(now):
                return lease
        return None

    @_deferred
    def holder(self, address: IPv4) -> Optional[Lease]:
        return self._by_address.get(address)

    @_deferred
    def all_leases(self) -> List[Lease]:
        return list(self._by_address.values())

    # -- compare-and-set changes -------------------------------------------

    @_deferred
    def claim(self, mac: str, subnet: Optional[str], candidates: Sequence[IPv4], state: str,
              seconds: Optional[float], hostname: Optional[str] = None, own=None) -> Optional[Lease]:
        """
        Give the first candidate that is free, lapsed or already this
        client's to C{mac}; None when every one is held by someone else.
        The client's other rows in the subnet go (one address per client);
        an offer never downgrades the client's own live binding.  Offers
        stay in memory: a server that forgets one only makes the client ask
        again.
        """
        now = self.clock.seconds()
        expires = FOREVER if seconds is None else now + seconds
        by_address = self._by_address
        if own is not None:
            current = _own(self._of(mac, subnet), now, *own)
            if current is not None:
                candidates = [current.address] + [a for a in candidates if a != current.address]
        for address in candidates:
            current = by_address.get(address)
            if current is not None and current.active(now) and current.mac != mac:
                continue
            mine = current is not None and current.mac == mac
            if mine and state == OFFERED and current.state == BOUND and current.active(now):
                return current
            keep = hostname or (current.hostname if mine else None)
            lease = Lease(mac, address, state, expires, keep, subnet)
            others = [old for old in self._of(mac, subnet) if old.address != address]
            durable = [old for old in others if old.state != OFFERED]
            if durable:
                with self._transaction():
                    for old in durable:
                        self._db.execute("DELETE FROM leases WHERE address = ?", (str(old.address),))
                    if state != OFFERED:
                        self._db.execute(_UPSERT, (str(address), mac, state, expires, keep, subnet))
            elif state != OFFERED:
                # One statement is atomic on its own (inside a batch too: a
                # failing statement undoes only itself), so the usual ACK
                # pays for no savepoint.
                self._db.execute(_UPSERT, (str(address), mac, state, expires, keep, subnet))
            for old in others:
                self._drop(old)
            if current is not None:
                self._drop(current)
            self._remember(lease)
            return lease
        return None

    @_deferred
    def release(self, mac: str, address: IPv4) -> bool:
        lease = self._by_address.get(address)
        if lease is None or lease.mac != mac:
            return False
        self._delete(lease)
        return True

    @_deferred
    def forget(self, mac: str, address: IPv4) -> bool:
        """Drop an offer (not a binding) of C{mac} on C{address}."""
        lease = self._by_address.get(address)
        if lease is None or lease.mac != mac or lease.state != OFFERED:
            return False
        self._drop(lease)
        return True

    @_deferred
    def decline(self, mac: str, address: IPv4, seconds: float) -> Optional[Lease]:
        """Quarantine C{address} if C{mac} holds it; the quarantine or None."""
        current = self._by_address.get(address)
        if current is None or current.mac != mac:
            return None
        lease = Lease(None, address, DECLINED, self.clock.seconds() + seconds, None, current.subnet)
        with self._transaction():
            self._db.execute(f"INSERT OR REPLACE INTO leases ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
                             (str(address), None, DECLINED, lease.expires, None, lease.subnet))
        self._drop(current)
        self._remember(lease)
        return lease

    @_deferred
    def reclaim(self) -> int:
        """Delete lapsed offers and quarantines (lapsed bindings stay: their
        client may come back for the address)."""
        now = self.clock.seconds()
        lapsed = [lease for lease in self._by_address.values()
                  if lease.state != BOUND and not lease.active(now)]
        if any(lease.state == DECLINED for lease in lapsed):
            with self._transaction():
                self._db.execute("DELETE FROM leases WHERE state = ? AND expires <= ?", (DECLINED, now))
        for lease in lapsed:
            self._drop(lease)
        return len(lapsed)

    # -- memory ----------------------------------------------------------------

    def _of(self, mac, subnet):
        return [lease for lease in self._by_mac.get(mac, ())
                if subnet is None or lease.subnet is None or lease.subnet == subnet]

    def _remember(self, lease):
        self._by_address[lease.address] = lease
        if lease.mac is not None:
            self._by_mac.setdefault(lease.mac, []).append(lease)

    def _drop(self, lease):
        if self._by_address.get(lease.address) is lease:
            del self._by_address[lease.address]
        if lease.mac is not None:
            held = self._by_mac.get(lease.mac)
            if held is not None:
                held[:] = [other for other in held if other is not lease]
                if not held:
                    del self._by_mac[lease.mac]

    def _delete(self, lease):
        if lease.state != OFFERED:
            with self._transaction():
                self._db.execute("DELETE FROM leases WHERE address = ?", (str(lease.address),))
        self._drop(lease)

    # -- transactions ---------------------------------------------------------

    @contextmanager
    def batch(self):
        """
        One transaction for many changes (group commit).

        The DHCP protocol handles every datagram that one read of the socket
        brought in one batch and sends the replies only after the batch has
        been committed, so each ACK still leaves after its lease is on disk
        while a boot storm pays for one commit per batch, not per client.
        """
        if self._in_batch:
            yield
            return
        self._in_batch = True
        try:
            self._db.execute("BEGIN")
        except sqlite3.Error as error:
            self._in_batch = False
            raise LeaseStoreError(f"cannot start a lease transaction: {error}") from None
        try:
            yield
        except BaseException:
            self._rollback()
            raise
        else:
            try:
                self._db.execute("COMMIT")
            except sqlite3.Error as error:
                self._rollback()
                raise LeaseStoreError(f"cannot commit leases: {error}") from None
        finally:
            self._in_batch = False

    @contextmanager
    def _transaction(self):
        """One change: its own transaction, or a savepoint inside a batch so
        a failing change leaves the batch's other changes intact."""
        if self._in_batch:
            self._db.execute("SAVEPOINT change")
            try:
                yield
            except BaseException:
                self._db.execute("ROLLBACK TO change")
                self._db.execute("RELEASE change")
                raise
            self._db.execute("RELEASE change")
            return
        self._db.execute("BEGIN")
        try:
            yield
        except BaseException:
            self._rollback()
            raise
        self._db.execute("COMMIT")

    def _rollback(self):
        try:
            self._db.execute("ROLLBACK")
        except sqlite3.Error as error:
            # The transaction is gone either way; say so instead of hiding it.
            self.log.error("lease database {path}: rollback failed: {error}", path=self.path, error=error)
        try:
            self._load()  # what memory holds must be what the file holds
        except sqlite3.Error as error:
            self.log.error("lease database {path}: cannot re-read after a rollback: {error}",
                           path=self.path, error=error)

    # -- housekeeping --------------------------------------------------------

    def close(self):
        try:
            self.checkpoint()
        finally:
            self._db.close()
        return defer.succeed(None)

    def checkpoint(self) -> None:
        """Copy the write-ahead log into the database file and empty it."""
        if self._manual_checkpoints and not self._in_batch:
            try:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            except sqlite3.Error as error:
                raise LeaseStoreError(f"cannot checkpoint the lease database: {error}") from None
