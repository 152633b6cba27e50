"""
DHCPv6 leases behind a narrow interface: in memory, optionally written
through to SQLite.

DHCPv4's store (ownsocket/dhcp/leases.py) is keyed by MAC and is being
rewritten for shared stores; DHCPv6 bindings are keyed differently (DUID +
IAID + MAC, RFC 8415 §7.5, since iPXE's DUID is the same on every VM), so
they live in their own small table until both can share one store.  The
store only keeps bindings; the policy (L{ownsocket.dhcp6.server}) decides.
"""

from __future__ import annotations

import heapq
import ipaddress
import sqlite3
from dataclasses import dataclass
from typing import Dict, Iterator, Optional, Tuple

OFFERED, BOUND, DECLINED = "offered", "bound", "declined"

Key = Tuple[bytes, int, str]


class LeaseStoreError(Exception):
    """The lease database cannot be opened; the message is one log line."""


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

    def __init__(self, path: str):
        MemoryLeaseStore6.__init__(self)
        try:
            self._db = sqlite3.connect(path)
            # WAL + NORMAL: a commit survives the process being killed,
            # without an fsync per binding.
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS leases6 (address TEXT PRIMARY KEY, duid BLOB NOT NULL, "
                "iaid INTEGER NOT NULL, mac TEXT NOT NULL, state TEXT NOT NULL, expires REAL NOT NULL)")
            self._db.commit()
            rows = self._db.execute("SELECT address, duid, iaid, mac, state, expires FROM leases6").fetchall()
        except sqlite3.Error as error:
            raise LeaseStoreError(f"cannot open the DHCPv6 lease database {path}: {error}") from None
        for address, duid, iaid, mac, state, expires in rows:
            MemoryLeaseStore6.put(self, Lease6(bytes(duid), iaid, mac, ipaddress.IPv6Address(address),
                                               state, expires))

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
    """The DHCPv6 table sits in a file next to the DHCPv4 one:
    C{leases.sqlite} -> C{leases-v6.sqlite}."""
    if v4_path.endswith(".sqlite"):
        return v4_path[:-len(".sqlite")] + "-v6.sqlite"
    return v4_path + "-v6"
