"""
Leases: who holds which address until when, kept in SQLite.

The store keeps every row in memory as well, so the per-packet path never
queries the database; the database is written through on every change and a
binding is durable (written to the database file) before the store returns,
which is what lets the server send the ACK only after the lease survives a
kill -9.  Offers are deliberately not written: a server that forgets an offer
only makes the client ask again.
"""

from __future__ import annotations

import ipaddress
import sqlite3
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Dict, Iterator, Optional

from zope.interface import implementer

from ownsocket.interfaces import ILeaseStore

IPv4 = ipaddress.IPv4Address

OFFERED, BOUND, DECLINED = "offered", "bound", "declined"
FOREVER = float("inf")


@dataclass(frozen=True)
class Lease:
    mac: Optional[str]  # None for a declined (quarantined) address
    address: IPv4
    state: str
    expires: float  # seconds on the server's clock; FOREVER for BOOTP
    hostname: Optional[str] = None

    def active(self, now: float) -> bool:
        return self.expires > now

    def renewed(self, state: str, expires: float, hostname: Optional[str] = None) -> "Lease":
        return replace(self, state=state, expires=expires, hostname=hostname or self.hostname)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS leases (
    address  TEXT PRIMARY KEY,
    mac      TEXT,
    state    TEXT NOT NULL,
    expires  REAL NOT NULL,
    hostname TEXT
);
CREATE INDEX IF NOT EXISTS leases_by_mac ON leases (mac);
"""


class LeaseStoreError(Exception):
    """The lease database cannot be opened or written; the message is one
    log line (SQLite's own text may quote a damaged schema over lines)."""

    def __init__(self, message):
        super().__init__(" ".join(str(message).split()))


def _lease_from_row(path, row) -> Lease:
    """
    A row read back from the database, checked: SQLite keeps any type in any
    column, and a file edited by hand or damaged must stop the server with
    one line naming the row, not a traceback (nor hand out an address that
    an unreadable row may hold).
    """
    address, mac, state, expires, hostname = row
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
    except ValueError as error:
        raise LeaseStoreError(f"lease database {path}: bad row for address {address!r:.60}: {error}") from None
    return Lease(mac, parsed, state, float(expires), hostname)


@implementer(ILeaseStore)
class SqliteLeaseStore:
    """
    @param path: the database file, or ":memory:" for tests.
    @param synchronous: SQLite's C{synchronous} pragma.  C{NORMAL} (with WAL)
        makes a commit durable against a crash of this process, as Kea's
        memfile is; C{FULL} also against power loss, at an fsync per lease.
    """

    def __init__(self, path: str, synchronous: str = "NORMAL", manual_checkpoints: bool = False):
        self.path = path
        self._manual_checkpoints = manual_checkpoints and path != ":memory:"
        try:
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={synchronous}")
            if self._manual_checkpoints:
                # In WAL mode a commit appends to the log without fsync; the
                # fsyncs happen when the log is copied back into the database
                # (a checkpoint), which SQLite does inside whichever commit
                # crosses 1000 pages.  In a boot storm that stall overflowed
                # the socket's queue (ACK/s at 5,000 offered swung between
                # 2,400 and 4,900; with no checkpoints, a steady 4,900), so
                # the DHCP service checkpoints when the network is quiet.
                self._db.execute("PRAGMA wal_autocheckpoint=0")
            self._db.executescript(_SCHEMA)
            rows = self._db.execute("SELECT address, mac, state, expires, hostname FROM leases").fetchall()
        except (sqlite3.Error, UnicodeDecodeError) as error:
            # A damaged file can make SQLite hand back text that is not
            # UTF-8, which the sqlite3 module raises as UnicodeDecodeError.
            raise LeaseStoreError(f"cannot open lease database {path}: {error}") from None
        self._by_address: Dict[IPv4, Lease] = {}
        self._by_mac: Dict[str, Lease] = {}
        self._in_batch = False
        for row in rows:
            lease = _lease_from_row(path, row)
            self._by_address[lease.address] = lease
            if lease.mac is not None:
                self._by_mac[lease.mac] = lease

    def lookup(self, mac: str) -> Optional[Lease]:
        return self._by_mac.get(mac)

    def holder(self, address: IPv4) -> Optional[Lease]:
        return self._by_address.get(address)

    def offer(self, lease: Lease) -> None:
        """Hold an address for an offer, in memory only."""
        previous = self._forget_previous(lease.mac, lease.address)
        if previous is not None:
            self._delete_row(previous.address)
        self._remember(lease)

    def commit(self, lease: Lease) -> None:
        previous = self._forget_previous(lease.mac, lease.address)
        try:
            with self._transaction():
                if previous is not None and previous.address != lease.address:
                    self._db.execute("DELETE FROM leases WHERE address = ?", (str(previous.address),))
                self._db.execute(
                    "INSERT OR REPLACE INTO leases (address, mac, state, expires, hostname) VALUES (?, ?, ?, ?, ?)",
                    (str(lease.address), lease.mac, lease.state, lease.expires, lease.hostname))
        except sqlite3.Error as error:
            raise LeaseStoreError(f"cannot write lease of {lease.mac}: {error}") from None
        self._remember(lease)

    def release(self, mac: str, address: IPv4) -> bool:
        lease = self._by_address.get(address)
        if lease is None or lease.mac != mac:
            return False
        self._delete(lease)
        return True

    def forget(self, lease: Lease) -> None:
        """Drop a lease the server no longer honours (an expired offer)."""
        if self._by_address.get(lease.address) == lease:
            self._delete(lease)

    def decline(self, address: IPv4, until: float) -> None:
        current = self._by_address.get(address)
        if current is not None and current.mac is not None:
            self._by_mac.pop(current.mac, None)
        self.commit(Lease(None, address, DECLINED, until))

    def all_leases(self) -> Iterator[Lease]:
        return iter(list(self._by_address.values()))

    def close(self) -> None:
        try:
            self.checkpoint()
        finally:
            self._db.close()

    def checkpoint(self) -> None:
        """Copy the write-ahead log into the database file and empty it."""
        if self._manual_checkpoints and not self._in_batch:
            try:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error as error:
                raise LeaseStoreError(f"cannot checkpoint the lease database: {error}") from None

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
        if self._in_batch:
            yield
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
        except sqlite3.Error:
            pass

    def _forget_previous(self, mac: Optional[str], address: IPv4) -> Optional[Lease]:
        """A client holds one address: moving it frees the old one."""
        if mac is None:
            return None
        previous = self._by_mac.get(mac)
        if previous is not None and previous.address != address:
            del self._by_address[previous.address]
            if previous.state != OFFERED:
                return previous
        return None

    def _remember(self, lease: Lease) -> None:
        displaced = self._by_address.get(lease.address)
        if displaced is not None and displaced.mac not in (None, lease.mac):
            self._by_mac.pop(displaced.mac, None)
        self._by_address[lease.address] = lease
        if lease.mac is not None:
            self._by_mac[lease.mac] = lease

    def _delete(self, lease: Lease) -> None:
        del self._by_address[lease.address]
        if lease.mac is not None and self._by_mac.get(lease.mac) is lease:
            del self._by_mac[lease.mac]
        if lease.state != OFFERED:
            self._delete_row(lease.address)

    def _delete_row(self, address: IPv4) -> None:
        try:
            with self._transaction():
                self._db.execute("DELETE FROM leases WHERE address = ?", (str(address),))
        except sqlite3.Error as error:
            raise LeaseStoreError(f"cannot delete lease of {address}: {error}") from None
