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
L{ownsocket.interfaces.ILeaseStore} only (all_leases, lookup, holder),
commits one fresh lease over it and checks that it reads back.
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

from zope.interface.verify import verifyObject  # noqa: E402

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


@atheris.instrument_func
def _check(store):
    verifyObject(ILeaseStore, store)
    for lease in store.all_leases():
        assert isinstance(lease.address, ipaddress.IPv4Address), lease
        assert lease.mac is None or isinstance(lease.mac, str), lease
        assert isinstance(lease.expires, (int, float)) and not math.isnan(lease.expires), lease
        assert store.holder(lease.address) is not None, lease
        if lease.mac is not None and store.lookup(lease.mac) is not None:
            assert isinstance(store.lookup(lease.mac).address, ipaddress.IPv4Address)


def test_one_input(data: bytes) -> None:
    provider = atheris.FuzzedDataProvider(data)
    os.makedirs(WORK, exist_ok=True)
    try:
        _one_input(provider)
    finally:
        _remove()
        os.rmdir(WORK)


def _one_input(provider) -> None:
    if provider.ConsumeBool():
        _write_rows(provider)
    else:
        _damage_file(provider)
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
        fresh = leases.Lease("52:54:00:00:00:99", ipaddress.IPv4Address("10.0.0.99"), "bound", 2e6, "fz")
        try:
            store.commit(fresh)
        except leases.LeaseStoreError as error:
            assert "\n" not in str(error), str(error)
            return
    finally:
        try:
            store.close()
        except leases.LeaseStoreError:
            pass
    reopened = leases.SqliteLeaseStore(PATH)
    try:
        _check(reopened)
        assert reopened.lookup(fresh.mac) == fresh, reopened.lookup(fresh.mac)
        assert reopened.holder(fresh.address) == fresh, reopened.holder(fresh.address)
    finally:
        reopened.close()


if __name__ == "__main__":
    _harness.main("leases", test_one_input, [bytes(range(64)), b"\x01" * 64, b"\x00" * 64])
