"""
DHCPv6 leases behind a narrow interface: in memory, optionally written
through to SQLite, or in PostgreSQL (L{ownsocket.dhcp6.pgstore}).

DHCPv6 bindings are keyed differently from DHCPv4's (DUID + IAID + MAC,
RFC 8415 §7.5, since iPXE's DUID is the same on every VM), so they have a
table of their own, C{leases6}, in the same SQLite file as the DHCPv4
leases (one file to back up and restore).

The store decides who gets an address: the policy (L{ownsocket.dhcp6.server})
hands it candidates and the store's L{claim} takes the first that is free
(no holder, lapsed, or already this client's), the same compare-and-set
the PostgreSQL store does in the database.  These stores answer at once;
the PostgreSQL one answers with Deferreds, and the policy takes either.
"""

from __future__ import annotations

import heapq
import ipaddress
import os
import sqlite3
from dataclasses import dataclass
from typing import Dict, Iterable, Iterator, Optional, Sequence, Tuple

# One error class for both families' stores: callers catch one name.
from ownsocket.dhcp.leases import LeaseStoreError, LeaseStoreUnavailable  # noqa: F401  (re-exported)

OFFERED, BOUND, DECLINED = "offered", "bound", "declined"

Key = Tuple[bytes, int, str]


#: (first, last) address ranges
Ranges = Sequence[Tuple[ipaddress.IPv6Address, ipaddress.IPv6Address]]


def quarantine_key(address) -> Key:
    """The key a declined address is held under: its own, so that the
    quarantine outlives the client's next binding."""
    return (b"declined", 0, str(address))


def within(address, ranges: Optional[Ranges]) -> bool:
    return ranges is not None and any(first <= address <= last for first, last in ranges)


@dataclass(frozen=True)
class Lease6:
    duid: bytes
    iaid: int
    mac: str  # "" when no MAC could be learned
    address: ipaddress.IPv6Address
    state: str
    expires: float

    @property
    def key(self) -> Key:
        return (self.duid, self.iaid, self.mac)

    def active(self, now: float) -> bool:
        return self.expires > now


class MemoryLeaseStore6:
    """Bindings by client key and by address; an expiry heap for sweeps."""

    def __init__(self):
        self._by_key: Dict[Key, Lease6] = {}
        self._by_address: Dict[ipaddress.IPv6Address, Lease6] = {}
        self._expiries = []

    def lookup(self, key: Key) -> Optional[Lease6]:
        return self._by_key.get(key)

    def holder(self, address) -> Optional[Lease6]:
        return self._by_address.get(address)

    def put(self, lease: Lease6) -> None:
        """Record C{lease}: the client's previous binding of this IA and the
        address's previous holder are replaced."""
        old = self._by_key.get(lease.key)
        if old is not None and self._by_address.get(old.address) is old:
            del self._by_address[old.address]
        holder = self._by_address.get(lease.address)
        if holder is not None and self._by_key.get(holder.key) is holder:
            del self._by_key[holder.key]
        self._by_key[lease.key] = lease
        self._by_address[lease.address] = lease
        heapq.heappush(self._expiries, (lease.expires, int(lease.address), lease.address))

    # -- what the policy asks (the same on every store) ----------------------

    def free(self, address, key: Key, now: float) -> bool:
        holder = self._by_address.get(address)
        return holder is None or not holder.active(now) or (holder.key == key and holder.state != DECLINED)

    def claim(self, key: Key, subnet: str, candidates: Iterable, state: str, seconds: float, now: float,
              own: Optional[Ranges] = None):
        """
        Give C{key} the first free address: its own current binding first
        when that lies within the ranges C{own}, then the first of
        C{candidates} (an iterable, read only as far as needed) that has no
        holder, has lapsed or is already this client's.  The client's
        previous binding of this IA goes.  Returns (lease, whether it was
        the client's own binding already), or None when nothing was free.
        """
        current = self._by_key.get(key)
        if current is not None and current.state != DECLINED and within(current.address, own):
            return self._take(key, current.address, state, seconds, now), True
        for address in candidates:
            if self.free(address, key, now):
                return self._take(key, address, state, seconds, now), False
        return None

    def _take(self, key, address, state, seconds, now):
        lease = Lease6(key[0], key[1], key[2], address, state, now + seconds)
        self.put(lease)
        return lease

    def forget(self, key: Key) -> bool:
        """Drop the client's offer (not a binding): it chose another server."""
        held = self._by_key.get(key)
        if held is not None and held.state == OFFERED:
            self.remove(held)
            return True
        return False

    def release(self, key: Key, address) -> bool:
        lease = self._by_address.get(address)
        if lease is not None and lease.key == key:
            self.remove(lease)
            return True
        return False

    def decline(self, key: Key, address, seconds: float, now: float) -> bool:
        """The client's address is in use elsewhere: quarantine it."""
        holder = self._by_address.get(address)
        if holder is None or holder.key != key:
            return False
        self.put(Lease6(*quarantine_key(address), address, DECLINED, now + seconds))
        return True

    # -- rows --------------------------------------------------------------

    def remove(self, lease: Lease6) -> None:
        if self._by_key.get(lease.key) is lease:
            del self._by_key[lease.key]
        if self._by_address.get(lease.address) is lease:
            del self._by_address[lease.address]

    def sweep(self, now: float) -> int:
        """Forget every binding whose time is up; returns how many."""
        swept = 0
        while self._expiries and self._expiries[0][0] <= now:
            _, _, address = heapq.heappop(self._expiries)
            lease = self._by_address.get(address)
            if lease is not None and not lease.active(now):
                self.remove(lease)
                swept += 1
        return swept

    def all_leases(self) -> Iterator[Lease6]:
        return iter(list(self._by_address.values()))

    def close(self) -> None:
        pass


class SqliteLeaseStore6(MemoryLeaseStore6):
    """
    The memory store, written through to one SQLite table so that bindings
    survive a restart (a client renewing after a restart keeps its address).
    Every binding is committed before the Reply that depends on it leaves;
    offers (Advertise) live in memory only, as in DHCPv4, so a Solicit
    storm costs no disk writes.
    """

    def __init__(self, path: str, legacy: Optional[str] = None):
        """
        @param path: the lease file (the DHCPv4 one: see L{sqlite_path_for}).
        @param legacy: a file of an earlier version that kept the DHCPv6
            table apart (C{leases-v6.sqlite}); its bindings are imported
            once and it is renamed to C{*.imported}.  By default the name
            that version used next to C{path}.
        """
        MemoryLeaseStore6.__init__(self)
        if legacy is None:
            legacy = _legacy_path_for(path)
        self.imported = 0
        try:
            self._db = sqlite3.connect(path)
            # WAL + NORMAL: a commit survives the process being killed,
            # without an fsync per binding.
            self._db.execute("PRAGMA journal_mode=WAL").fetchall()
            self._db.execute("PRAGMA synchronous=NORMAL").fetchall()
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS leases6 (address TEXT PRIMARY KEY, duid BLOB NOT NULL, "
                "iaid INTEGER NOT NULL, mac TEXT NOT NULL, state TEXT NOT NULL, expires REAL NOT NULL)")
            self._db.commit()
            if legacy and legacy != path and os.path.exists(legacy):
                self._import(legacy)
            rows = self._db.execute("SELECT address, duid, iaid, mac, state, expires FROM leases6").fetchall()
        except sqlite3.Error as error:
            raise LeaseStoreError(f"cannot open the DHCPv6 lease database {path}: {error}") from None
        except OSError as error:
            raise LeaseStoreError(f"cannot move the imported DHCPv6 lease file {legacy} aside: "
                                  f"{error.strerror}") from None
        for address, duid, iaid, mac, state, expires in rows:
            MemoryLeaseStore6.put(self, Lease6(bytes(duid), iaid, mac, ipaddress.IPv6Address(address),
                                               state, expires))

    def _import(self, legacy):
        """Bindings of the separate file an earlier version wrote; rows
        already in this file win (they are newer).  The old file is renamed,
        not deleted, so nothing is lost if this goes wrong."""
        self._db.execute("ATTACH DATABASE ? AS legacy", (legacy,))
        try:
            with self._db:
                before = self._db.execute("SELECT count(*) FROM leases6").fetchone()[0]
                self._db.execute("INSERT OR IGNORE INTO leases6 (address, duid, iaid, mac, state, expires) "
                                 "SELECT address, duid, iaid, mac, state, expires FROM legacy.leases6")
                self.imported = self._db.execute("SELECT count(*) FROM leases6").fetchone()[0] - before
        finally:
            self._db.execute("DETACH DATABASE legacy")
        for suffix in ("-wal", "-shm"):
            if os.path.exists(legacy + suffix):
                os.rename(legacy + suffix, legacy + ".imported" + suffix)
        os.rename(legacy, legacy + ".imported")

    def put(self, lease: Lease6) -> None:
        old = self.lookup(lease.key)
        MemoryLeaseStore6.put(self, lease)
        if lease.state == OFFERED:
            return
        if old is not None and old.address != lease.address:
            self._db.execute("DELETE FROM leases6 WHERE address = ?", (str(old.address),))
        self._db.execute("INSERT OR REPLACE INTO leases6 VALUES (?, ?, ?, ?, ?, ?)",
                         (str(lease.address), lease.duid, lease.iaid, lease.mac, lease.state, lease.expires))
        self._db.commit()

    def remove(self, lease: Lease6) -> None:
        MemoryLeaseStore6.remove(self, lease)
        self._db.execute("DELETE FROM leases6 WHERE address = ? AND duid = ? AND iaid = ?",
                         (str(lease.address), lease.duid, lease.iaid))
        self._db.commit()

    def close(self) -> None:
        self._db.close()


def sqlite_path_for(v4_path: str) -> str:
    """The DHCPv6 table sits in the DHCPv4 lease file."""
    return v4_path


def _legacy_path_for(path: str) -> str:
    """Where the previous version kept the DHCPv6 table: C{leases.sqlite}
    -> C{leases-v6.sqlite}."""
    if path.endswith(".sqlite"):
        return path[:-len(".sqlite")] + "-v6.sqlite"
    return path + "-v6"
