#!/usr/bin/env python3
"""
Lease rows read back from a store: what a server finds in its lease
database at start-up (written by an older version, edited by hand, or
damaged) must end in LeaseStoreError (one line) or in well-formed leases,
never another exception.

Kept thin on purpose: it writes rows in the SQLite file format of the
C{leases} table with any SQLite type in any column (SQLite's typing is
dynamic, so a TEXT column can hold a blob), or damages the bytes of a
valid database file, then opens the store and reads through the public
L{ownsocket.interfaces.ILeaseStore} only (all_leases, holder, claim; the
store answers with Deferreds), claims one fresh lease over it and checks
that it reads back.
"""

import ipaddress
import math
import os
import sqlite3
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _harness  # noqa: E402

import atheris  # noqa: E402

with atheris.instrument_imports(include=["ownsocket"]):
    from ownsocket.dhcp import leases
    from ownsocket.interfaces import ILeaseStore

from twisted.internet import defer  # noqa: E402
from twisted.python.failure import Failure  # noqa: E402
from zope.interface.verify import verifyObject  # noqa: E402

MAC, ADDRESS = "52:54:00:00:00:99", ipaddress.IPv4Address("10.0.0.99")

SCHEMA = """
CREATE TABLE IF NOT EXISTS leases (
    address  TEXT PRIMARY KEY,
    mac      TEXT,
    state    TEXT NOT NULL,
    expires  REAL NOT NULL,
    hostname TEXT
);
"""
# One database per process, deleted after every input (libFuzzer ends the
# process without running atexit handlers).
WORK = os.path.join("/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir(),
                    f"ownsocket-fuzz-leases-{os.getpid()}")
PATH = os.path.join(WORK, "leases.sqlite")
TYPICAL = {
    "address": ["10.0.0.100", "10.0.0.101", "10.0.0.99", "0.0.0.0", "::1", "10.0.0", ""],
    "mac": ["52:54:00:00:00:01", "52:54:00:00:00:02", "52:54:00:00:00:99", None, "zz"],
    "state": ["bound", "offered", "declined", "weird"],
    "expires": [1e6, float("inf"), -1.0, 0],
    "hostname": [None, "pc1", ""],
}
COLUMNS = ("address", "mac", "state", "expires", "hostname")


@atheris.instrument_func   # coverage of which rows were made guides the fuzzer
def _value(provider, column):
    kind = provider.ConsumeIntInRange(0, 6)
    if kind == 0:
        return None
    if kind == 1:
        return provider.ConsumeInt(8)
    if kind == 2:
        return provider.ConsumeRegularFloat()
    if kind == 3:
        return provider.ConsumeUnicodeNoSurrogates(provider.ConsumeIntInRange(0, 40))
    if kind == 4:
        return provider.ConsumeBytes(provider.ConsumeIntInRange(0, 20))
    if kind == 5:
        return provider.ConsumeFloat()   # inf, nan, -0.0 ...
    choices = TYPICAL[column]
    return choices[provider.ConsumeIntInRange(0, len(choices) - 1)]


def _remove():
    for suffix in ("", "-wal", "-shm", "-journal"):
        try:
            os.unlink(PATH + suffix)
        except FileNotFoundError:
            pass


@atheris.instrument_func
def _write_rows(provider):
    db = sqlite3.connect(PATH)
    try:
        db.executescript(SCHEMA)
        for _ in range(provider.ConsumeIntInRange(0, 5)):
            row = [_value(provider, column) for column in COLUMNS]
            try:
                db.execute("INSERT INTO leases VALUES (?, ?, ?, ?, ?)", row)
            except sqlite3.Error:
                pass   # NOT NULL or a duplicate address: SQLite itself refuses
        db.commit()
    finally:
        db.close()


@atheris.instrument_func
def _damage_file(provider):
    db = sqlite3.connect(PATH)
    db.executescript(SCHEMA)
    db.execute("INSERT INTO leases VALUES ('10.0.0.100', '52:54:00:00:00:01', 'bound', 1e6, 'pc')")
    db.commit()
    db.close()
    with open(PATH, "r+b") as f:
        content = bytearray(f.read())
        for _ in range(provider.ConsumeIntInRange(1, 8)):
            at = provider.ConsumeIntInRange(0, len(content) - 1)
            content[at] = provider.ConsumeIntInRange(0, 255)
        f.seek(0)
        f.write(content)


def _result(value):
    """The store answers with Deferreds (fired at once for SQLite); a
    failure is raised here."""
    if isinstance(value, defer.Deferred):
        outcome = []
        value.addBoth(outcome.append)
        assert outcome, "the store's Deferred has not fired"
        value = outcome[0]
        if isinstance(value, Failure):
            value.raiseException()
    return value


@atheris.instrument_func
def _check(store):
    verifyObject(ILeaseStore, store)
    for lease in _result(store.all_leases()):
        assert isinstance(lease.address, ipaddress.IPv4Address), lease
        assert lease.mac is None or isinstance(lease.mac, str), lease
        assert isinstance(lease.expires, (int, float)) and not math.isnan(lease.expires), lease
        assert _result(store.holder(lease.address)) is not None, lease


def test_one_input(data: bytes) -> None:
    provider = atheris.FuzzedDataProvider(data)
    os.makedirs(WORK, exist_ok=True)
    try:
        _one_input(provider)
    finally:
        _remove()
        os.rmdir(WORK)


def _one_input(provider) -> None:
    damaged = not provider.ConsumeBool()
    if damaged:
        _damage_file(provider)
    else:
        _write_rows(provider)
    try:
        store = leases.SqliteLeaseStore(PATH)
    except leases.LeaseStoreError as error:
        assert "\n" not in str(error), str(error)
        return
    try:
        _check(store)
        # A lease written over whatever was read must read back the same.
        # (A damaged file may read but refuse writes: that is the
        # LeaseStoreError the DHCP server answers with a dropped request.)
        try:
            fresh = _result(store.claim(MAC, None, [ADDRESS], "bound", 3600, hostname="fz"))
        except leases.LeaseStoreError as error:
            assert "\n" not in str(error), str(error)
            return
        if fresh is None:
            return   # 10.0.0.99 is someone else's live lease in this input
    finally:
        try:
            store.close()
        except leases.LeaseStoreError:
            pass
    try:
        reopened = leases.SqliteLeaseStore(PATH)
    except leases.LeaseStoreError as error:
        # SQLite opens a damaged file lazily: it may read, take the write,
        # and refuse the next open.  A clean one-line error is all we ask
        # there; an intact file must read back.
        assert damaged, str(error)
        assert "\n" not in str(error), str(error)
        return
    try:
        _check(reopened)
        again = _result(reopened.holder(ADDRESS))
        assert again is not None and (again.mac, again.state, again.hostname) == (MAC, "bound", "fz"), again
    finally:
        reopened.close()


if __name__ == "__main__":
    _harness.main("leases", test_one_input, [bytes(range(64)), b"\x01" * 64, b"\x00" * 64])
