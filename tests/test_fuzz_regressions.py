"""
What the fuzzers found, pinned as plain unit tests (no atheris needed).
Each test names the harness and the input file in fuzz/regressions/ it
came from.
"""

import sqlite3

from twisted.trial import unittest

from ownsocket.dhcp.leases import LeaseStoreError, SqliteLeaseStore

SCHEMA = """
CREATE TABLE leases (address TEXT PRIMARY KEY, mac TEXT, state TEXT NOT NULL,
                     expires REAL NOT NULL, hostname TEXT);
"""


class LeaseRowTests(unittest.TestCase):
    """fuzz_leases: rows SQLite accepted but the store could not read."""

    def database(self, *rows):
        path = self.mktemp()
        db = sqlite3.connect(path)
        db.executescript(SCHEMA)
        db.executemany("INSERT INTO leases VALUES (?, ?, ?, ?, ?)", rows)
        db.commit()
        db.close()
        return path

    def refused(self, *rows):
        path = self.database(*rows)
        error = self.assertRaises(LeaseStoreError, SqliteLeaseStore, path)
        self.assertNotIn("\n", str(error))
        self.assertIn(path, str(error))
        return str(error)

    def test_address_that_is_not_an_ipv4_address(self):
        # regressions/leases/bad-address-row: an integer in the address column
        # raised AddressValueError out of the constructor.
        message = self.refused((72340172838076673, "52:54:00:00:00:01", "bound", 1e6, None))
        self.assertIn("bad row for address '72340172838076673'", message)
        self.refused(("10.0.0", "52:54:00:00:00:01", "bound", 1e6, None))
        self.refused(("::1", None, "declined", 1e6, None))

    def test_columns_of_the_wrong_type(self):
        self.assertIn("mac is not text", self.refused(("10.0.0.5", b"\x01\x02", "bound", 1e6, None)))
        self.assertIn("unknown state", self.refused(("10.0.0.5", "52:54:00:00:00:01", "gone", 1e6, None)))
        self.assertIn("expires", self.refused(("10.0.0.5", "52:54:00:00:00:01", "bound", "soon", None)))
        self.assertIn("hostname", self.refused(("10.0.0.5", "52:54:00:00:00:01", "bound", 1e6, b"\xff")))

    def test_good_rows_still_load(self):
        path = self.database(("10.0.0.5", "52:54:00:00:00:01", "bound", 1e6, "pc"),
                             ("10.0.0.6", None, "declined", 5, None),
                             ("10.0.0.7", "52:54:00:00:00:02", "bound", float("inf"), None))
        store = SqliteLeaseStore(path)
        self.addCleanup(store.close)
        leases = self.successResultOf(store.all_leases())
        self.assertEqual(sorted(str(lease.address) for lease in leases),
                         ["10.0.0.5", "10.0.0.6", "10.0.0.7"])
        self.assertEqual(self.successResultOf(store.lookup("52:54:00:00:00:01")).hostname, "pc")
        self.assertEqual(self.successResultOf(store.lookup("52:54:00:00:00:02")).expires, float("inf"))

    def test_damaged_file(self):
        # regressions/leases/damaged-file-undecodable-pragma: a damaged
        # header made SQLite answer a PRAGMA with bytes that are not UTF-8,
        # which the sqlite3 module raises as UnicodeDecodeError.
        path = self.database(("10.0.0.5", "52:54:00:00:00:01", "bound", 1e6, "pc"))
        with open(path, "r+b") as f:
            content = bytearray(f.read())
            for at in range(0, 100):
                content[at] = 0xAF
            f.seek(0)
            f.write(content)
        error = self.assertRaises(LeaseStoreError, SqliteLeaseStore, path)
        self.assertNotIn("\n", str(error))

    def test_damaged_index_is_refused_at_open(self):
        """A broken index page lets SQLite open the file and read every row;
        only the first write failed, mid-storm.  quick_check refuses it at
        start-up, in one line."""
        path = self.database(*[(f"10.0.{i >> 8}.{i & 255}", f"52:54:00:00:{i >> 8:02x}:{i & 255:02x}",
                                "bound", 1e6, None) for i in range(2000)])
        SqliteLeaseStore(path).close()  # the store adds its index (leases_by_mac)
        db = sqlite3.connect(path)
        root = db.execute("SELECT rootpage FROM sqlite_master WHERE name = 'leases_by_mac'").fetchone()[0]
        size = db.execute("PRAGMA page_size").fetchone()[0]
        self.assertEqual(db.execute("PRAGMA quick_check").fetchall(), [("ok",)])
        db.close()
        with open(path, "r+b") as f:
            f.seek((root - 1) * size + 8)
            f.write(b"\x5a" * 192)
        error = self.assertRaises(LeaseStoreError, SqliteLeaseStore, path)
        self.assertIn("is damaged (PRAGMA quick_check:", str(error))
        self.assertNotIn("\n", str(error))

    def test_damaged_schema_error_is_one_line(self):
        # regressions/leases/damaged-schema-multiline-error: SQLite's error
        # for a damaged schema quotes the schema text, newlines included,
        # and that went into the one-line LeaseStoreError.
        path = self.database(("10.0.0.5", "52:54:00:00:00:01", "bound", 1e6, "pc"))
        db = sqlite3.connect(path)
        db.execute("PRAGMA writable_schema=ON")
        db.execute("UPDATE sqlite_master SET sql = ? WHERE name = 'leases'",
                   ('CREATE TABLE leases (address TEXT PRIMARY KEY, "\n hostname TEXT\n)',))
        db.commit()
        db.close()
        error = self.assertRaises(LeaseStoreError, SqliteLeaseStore, path)
        self.assertIn("malformed database schema", str(error))
        self.assertNotIn("\n", str(error))
