"""
DHCPv6 leases in PostgreSQL: the same database as the DHCPv4 leases
(C{[dhcp] leases = postgresql://...}), shared by several servers.

The rules are the DHCPv4 store's (L{ownsocket.dhcp.pgstore}), for DHCPv6's
keys (DUID + IAID + MAC, never the xid):

 - the address is the primary key of C{ownsocket_leases6}, and one IA of
   one client (duid, iaid, mac) has one row at most (a unique constraint),
   so no two clients hold one address and no IA holds two;
 - every claim is one compare-and-set (C{ownsocket_claim6()}: the first
   candidate that has no row, has lapsed or is already this client's);
   changes for one client are serialised by an advisory lock, and a claim
   changes an address only under that address's advisory lock (an offer
   passes over an address another server is claiming, a binding waits);
 - offers are rows with a short lifetime, so two servers do not advertise
   one address while both offers are live, and an offer never downgrades
   the client's live binding;
 - expiry is on the database's clock (C{now()}); lapsed rows are deleted
   by one server at a time (an advisory lock), and a lapsed row counts as
   free meanwhile anyway.

The connections, thread pool, batching (one transaction per reactor turn,
replies only after its COMMIT), outage handling (L{LeaseStoreUnavailable}
at once, one line when the database goes and one when it is back, retries
with backoff) and the password-free description are the DHCPv4 store's
own: this module only adds its statements, through an instance of it.  Its
tables are its own and carry their own version (C{ownsocket_schema6}), so
either schema can change without the other.
"""

from __future__ import annotations

import functools
import ipaddress
from itertools import islice

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from ownsocket.dhcp.leases import LeaseStoreUnavailable
from ownsocket.dhcp6.leases import DECLINED, OFFERED, Lease6, quarantine_key

IPv6 = ipaddress.IPv6Address

#: The version of this module's tables; ownsocket_schema6 holds a database's.
SCHEMA_VERSION = 1
#: pg_advisory_xact_lock keys: migrating, reclaiming (one server at a time).
#: The per-client and per-address locks are the classes 28537 and 28538,
#: written into the SQL (the DHCPv4 store's are 28535 and 28536).
MIGRATE_LOCK = 0x6F776E736F636B36  # ASCII "ownsock6"
RECLAIM_LOCK = MIGRATE_LOCK + 1
#: Candidates sent with a claim's first round trip; if none of them is free
#: (a crowded pool), the rest follow CHUNK at a time.
FIRST_CHUNK, CHUNK = 4, 1024
#: Lapsed rows are deleted at most this often (database work, not policy:
#: a lapsed row is free to claim either way).
SWEEP_INTERVAL = 10.0
#: Lapsed rows deleted at most per round (a lapsed row is free to claim
#: anyway: this only keeps the table small).
RECLAIM_MAX = 5000

_MIGRATIONS = {
    1: """
CREATE TABLE IF NOT EXISTS ownsocket_leases6 (
    address  inet PRIMARY KEY,
    duid     bytea NOT NULL,
    iaid     bigint NOT NULL,
    mac      text NOT NULL,
    subnet   text NOT NULL,
    state    text NOT NULL CHECK (state IN ('offered', 'bound', 'declined')),
    expires  timestamptz NOT NULL,
    server   text,
    changed  timestamptz NOT NULL DEFAULT now(),
    -- checked at COMMIT: a claim inserts the new row before it deletes the
    -- IA's old one (claims for one client are serialised by a lock)
    CONSTRAINT ownsocket_leases6_one_per_ia UNIQUE (duid, iaid, mac) DEFERRABLE INITIALLY DEFERRED
);
CREATE INDEX IF NOT EXISTS ownsocket_leases6_lapsing ON ownsocket_leases6 (expires);

CREATE OR REPLACE FUNCTION ownsocket_claim6(p_duid bytea, p_iaid bigint, p_mac text, p_subnet text,
                                            p_candidates inet[], p_state text, p_seconds double precision,
                                            p_server text, p_own_lo inet[], p_own_hi inet[])
RETURNS TABLE (r_address text, r_state text, r_expires double precision, r_own boolean)
LANGUAGE plpgsql AS $fn$
DECLARE
    candidate inet;
    mine ownsocket_leases6;
    current ownsocket_leases6;
    claimed ownsocket_leases6;
    until timestamptz := now() + make_interval(secs => p_seconds);
BEGIN
    -- One claim per client at a time, until COMMIT: this keeps the
    -- one-row-per-IA rule true between servers.  (Release, Decline and
    -- forgetting an offer take the same lock.)
    PERFORM pg_advisory_xact_lock(28537, hashtext(encode(p_duid, 'hex') || '/' || p_iaid || '/' || p_mac));
    SELECT * INTO mine FROM ownsocket_leases6 l
        WHERE l.duid = p_duid AND l.iaid = p_iaid AND l.mac = p_mac;
    -- Its live offer or binding first, if it lies within the pool.  A
    -- claim changes an address only while it holds the address's lock
    -- (28538, until COMMIT).
    IF mine.address IS NOT NULL AND p_own_lo IS NOT NULL AND mine.expires > now()
       AND EXISTS (SELECT 1 FROM unnest(p_own_lo, p_own_hi) AS r(lo, hi)
                   WHERE mine.address BETWEEN r.lo AND r.hi) THEN
        PERFORM pg_advisory_xact_lock(28538, hashtext(host(mine.address)));
        IF mine.state = 'bound' AND p_state = 'offered' THEN
            claimed := mine;  -- an offer never downgrades a live binding
        ELSE
            UPDATE ownsocket_leases6 l SET state = p_state, expires = until, subnet = p_subnet,
                                           server = p_server, changed = now()
                WHERE l.address = mine.address AND l.duid = p_duid AND l.iaid = p_iaid AND l.mac = p_mac
                RETURNING * INTO claimed;
        END IF;
        IF claimed.address IS NOT NULL THEN
            RETURN QUERY SELECT host(claimed.address), claimed.state,
                                extract(epoch FROM claimed.expires)::float8, true;
            RETURN;
        END IF;
    END IF;
    FOREACH candidate IN ARRAY COALESCE(p_candidates, '{}') LOOP
        -- Someone else's live row is not free: passed over without a lock.
        -- Then the address's lock: an offer does not wait for it (another
        -- server is claiming the address right now), a binding does; and
        -- under the lock a second look, so that an address that was taken
        -- meanwhile is passed over without touching (locking) its row.
        SELECT * INTO current FROM ownsocket_leases6 l WHERE l.address = candidate;
        CONTINUE WHEN current.address IS NOT NULL AND current.expires > now()
                      AND (current.duid, current.iaid, current.mac) IS DISTINCT FROM (p_duid, p_iaid, p_mac);
        IF p_state = 'offered' THEN
            CONTINUE WHEN NOT pg_try_advisory_xact_lock(28538, hashtext(host(candidate)));
        ELSE
            PERFORM pg_advisory_xact_lock(28538, hashtext(host(candidate)));
        END IF;
        SELECT * INTO current FROM ownsocket_leases6 l WHERE l.address = candidate;
        CONTINUE WHEN current.address IS NOT NULL AND current.expires > now()
                      AND (current.duid, current.iaid, current.mac) IS DISTINCT FROM (p_duid, p_iaid, p_mac);
        -- The compare-and-set: a new row, or a row that lapsed or is this
        -- client's own.
        INSERT INTO ownsocket_leases6 AS l (address, duid, iaid, mac, subnet, state, expires, server)
            VALUES (candidate, p_duid, p_iaid, p_mac, p_subnet, p_state, until, p_server)
            ON CONFLICT (address) DO UPDATE
                SET duid = EXCLUDED.duid, iaid = EXCLUDED.iaid, mac = EXCLUDED.mac, subnet = EXCLUDED.subnet,
                    state = EXCLUDED.state, expires = EXCLUDED.expires, server = EXCLUDED.server,
                    changed = now()
                WHERE l.expires <= now()
                   OR (l.duid = EXCLUDED.duid AND l.iaid = EXCLUDED.iaid AND l.mac = EXCLUDED.mac
                       AND l.state <> 'declined')
            RETURNING * INTO claimed;
        IF FOUND THEN
            IF mine.address IS NOT NULL AND mine.address <> candidate THEN
                -- The IA's old row (the unique constraint allows one):
                -- waited for, since it must go before COMMIT.
                PERFORM pg_advisory_xact_lock(28538, hashtext(host(mine.address)));
                DELETE FROM ownsocket_leases6 l
                    WHERE l.address = mine.address AND l.duid = p_duid AND l.iaid = p_iaid AND l.mac = p_mac;
            END IF;
            RETURN QUERY SELECT host(claimed.address), claimed.state,
                                extract(epoch FROM claimed.expires)::float8, false;
            RETURN;
        END IF;
    END LOOP;
    RETURN;
END $fn$;
""",
}


def migration_statement():
    """
    One statement (a DO block: the shared machinery sends statements one
    by one, with parameters) that creates or upgrades this
    module's tables to L{SCHEMA_VERSION} under an advisory lock (several
    servers may start at once), and refuses a newer schema.  (No percent
    sign in it: it is sent with an empty parameter list.)
    """
    steps = "\n".join(
        f"    IF have < {step} THEN\n        EXECUTE $step{step}${_MIGRATIONS[step]}$step{step}$;\n"
        f"        INSERT INTO ownsocket_schema6 (version) VALUES ({step});\n    END IF;"
        for step in sorted(_MIGRATIONS))
    return f"""DO $migrate$
DECLARE
    have integer;
BEGIN
    PERFORM pg_advisory_xact_lock({MIGRATE_LOCK});
    IF to_regclass('ownsocket_schema6') IS NULL THEN
        CREATE TABLE ownsocket_schema6 (version integer NOT NULL);
    END IF;
    SELECT COALESCE(max(s.version), 0) INTO have FROM ownsocket_schema6 s;
    IF have > {SCHEMA_VERSION} THEN
        RAISE EXCEPTION USING MESSAGE = 'the DHCPv6 lease tables have schema version ' || have
            || '; this ownsocket knows up to {SCHEMA_VERSION} (upgrade ownsocket)';
    END IF;
{steps}
END $migrate$"""


_COLUMNS = "host(address), duid, iaid, mac, state, extract(epoch FROM expires)::float8"

#: The client's claim lock (as in ownsocket_claim6), taken first by the
#: other statements that change a client's rows: every change for one
#: client is then in one order with its claims (a transaction's statements
#: are sorted by client), which keeps two servers' transactions from
#: waiting for each other.  Parameters: duid, iaid, mac.
_CLIENT_LOCK = ("WITH client AS MATERIALIZED (SELECT pg_advisory_xact_lock(28537, hashtext("
                "encode(%s::bytea, 'hex') || '/' || %s::bigint || '/' || %s::text))) ")


def _lease(row) -> Lease6:
    address, duid, iaid, mac, state, expires = row
    return Lease6(bytes(duid), iaid, mac, IPv6(address), state, expires)


def _one(cursor):
    row = cursor.fetchone()
    return _lease(row) if row else None


def _all(cursor):
    return [_lease(row) for row in cursor.fetchall()]


def _changed(cursor):
    return cursor.rowcount > 0


def _array(addresses):
    """An inet[] literal: one text parameter, cheaper to send than a list."""
    return "{" + ",".join(map(str, addresses)) + "}"


@functools.lru_cache(maxsize=64)
def _ranges(own):
    """The pool ranges as two inet[] literals (the same few for every claim)."""
    return _array(first for first, _ in own), _array(last for _, last in own)


def _order(key):
    """The batch order of a client's statements (the DHCPv4 store sorts a
    transaction's statements by it): two servers then take their
    per-client locks in one order."""
    duid, iaid, mac = key
    return f"{mac}/{duid.hex()}/{iaid}"


class PostgresLeaseStore6:
    """
    The DHCPv6 store on PostgreSQL.  Every answer is a Deferred that fires
    after the COMMIT of the transaction that holds it.

    @param dsn: a libpq connection string or URI (the DHCPv4 one: no
        password in it; a passfile or PGPASSWORD).
    @param clock: the reactor.
    @param db: an L{ownsocket.dhcp.pgstore.PostgresLeaseStore} to run on
        (its pool, batching and outage handling); by default one of this
        store's own on C{dsn} (then L{close} closes it).
    """

    log = Logger()
    shared = True

    def __init__(self, dsn=None, clock=None, pool_size=2, server_name=None, connect_timeout=5, db=None):
        from ownsocket.dhcp.pgstore import PostgresLeaseStore
        self._own_db = db is None
        if db is None:
            db = PostgresLeaseStore(dsn, clock, pool_size=pool_size, server_name=server_name,
                                    connect_timeout=connect_timeout)
            # Its lines ("lease database ... unreachable", "... reachable
            # again") then say which service's connections they are about.
            db.description = f"{db.description} (DHCPv6)"
        self.db = db
        self.reactor = db.reactor
        self.description = db.description
        self.server_name = db.server_name
        self._schema_ready = False
        self._migrating = None  # statements waiting for the migration's commit
        self._next_sweep = None

    def _submit(self, statement, parameters, read, durable=False, order=""):
        """A statement in this reactor turn's transaction; before this
        store's first migration has committed, after it."""
        if self._schema_ready:
            return self.db._submit(statement, parameters, read, durable=durable, key=order)
        d = defer.Deferred()
        first = self._migrating is None
        if first:
            self._migrating = []
        self._migrating.append((d, statement, parameters, read, durable, order))
        if first:  # (its answer may come at once: refused during an outage's backoff)
            self.db._submit(migration_statement(), (), lambda cursor: None, durable=True).addBoth(
                self._migrated)
        return d

    def _migrated(self, result):
        """The migration committed (then everything that waited goes, in
        one transaction) or failed (then all of it fails the same way, and
        the next statement tries again)."""
        waiting, self._migrating = self._migrating, None
        if isinstance(result, Failure):
            for d, *_ in waiting:
                d.errback(result)
            return None
        self._schema_ready = True
        with self.db.batch():
            for d, statement, parameters, read, durable, order in waiting:
                self.db._submit(statement, parameters, read, durable=durable, key=order).chainDeferred(d)
        return None

    # -- what the policy asks ------------------------------------------------

    def claim(self, key, subnet, candidates, state, seconds, now=None, own=None):
        """
        L{ownsocket.dhcp6.leases.MemoryLeaseStore6.claim} in the database:
        a Deferred of (lease, was it the client's own) or None.  C{now} is
        ignored (the database's clock decides).  The candidates go
        FIRST_CHUNK in the first round trip, the rest (a crowded pool) in
        later ones.
        """
        candidates = iter(candidates)
        lo, hi = _ranges(tuple(own)) if own is not None else (None, None)
        first = list(islice(candidates, FIRST_CHUNK))
        d = self._claim(key, subnet, first, state, seconds, lo, hi)

        def more(claimed, full):
            if claimed is not None or not full:
                return claimed
            chunk = list(islice(candidates, CHUNK))
            if not chunk:
                return None
            # (the own binding is looked at again: it may have been made,
            # by another server, since the last round trip)
            return self._claim(key, subnet, chunk, state, seconds, lo, hi).addCallback(
                more, len(chunk) == CHUNK)

        return d.addCallback(more, len(first) == FIRST_CHUNK)

    def _claim(self, key, subnet, candidates, state, seconds, lo, hi):
        duid, iaid, mac = key

        def read(cursor):
            row = cursor.fetchone()
            if row is None:
                return None
            address, got_state, expires, own = row
            return Lease6(duid, iaid, mac, IPv6(address), got_state, expires), own

        return self._submit(
            "SELECT r_address, r_state, r_expires, r_own FROM ownsocket_claim6(%s, %s, %s, %s, %s::inet[],"
            " %s, %s, %s, %s::inet[], %s::inet[])",
            (duid, iaid, mac, subnet, _array(candidates), state, float(seconds), self.server_name, lo, hi),
            read, durable=state != OFFERED, order=_order(key))

    def forget(self, key):
        duid, iaid, mac = key
        return self._submit(_CLIENT_LOCK + "DELETE FROM ownsocket_leases6 WHERE EXISTS (SELECT FROM client)"
                            " AND duid = %s AND iaid = %s AND mac = %s AND state = 'offered'",
                            (duid, iaid, mac) * 2, _changed, order=_order(key))

    def release(self, key, address):
        duid, iaid, mac = key
        return self._submit(_CLIENT_LOCK + "DELETE FROM ownsocket_leases6 WHERE EXISTS (SELECT FROM client)"
                            " AND address = %s AND duid = %s AND iaid = %s AND mac = %s",
                            (duid, iaid, mac, str(address), duid, iaid, mac), _changed, durable=True,
                            order=_order(key))

    def decline(self, key, address, seconds, now=None):
        """Quarantine under a key of the address's own (as the memory store
        does), for C{seconds} on the database's clock."""
        duid, iaid, mac = key
        q_duid, q_iaid, q_mac = quarantine_key(address)
        return self._submit(
            _CLIENT_LOCK + "UPDATE ownsocket_leases6 SET duid = %s, iaid = %s, mac = %s, state = %s,"
            " expires = now() + make_interval(secs => %s), server = %s, changed = now()"
            " WHERE EXISTS (SELECT FROM client) AND address = %s AND duid = %s AND iaid = %s AND mac = %s",
            (duid, iaid, mac, q_duid, q_iaid, q_mac, DECLINED, float(seconds), self.server_name, str(address),
             duid, iaid, mac),
            _changed, durable=True, order=_order(key))

    def lookup(self, key):
        """The IA's live offer or binding (a Deferred of a Lease6 or None)."""
        duid, iaid, mac = key
        return self._submit(f"SELECT {_COLUMNS} FROM ownsocket_leases6 WHERE duid = %s AND iaid = %s"
                            " AND mac = %s AND expires > now()", (duid, iaid, mac), _one)

    def holder(self, address):
        """Who holds C{address} now (lapsed rows hold nothing)."""
        return self._submit(f"SELECT {_COLUMNS} FROM ownsocket_leases6 WHERE address = %s"
                            " AND expires > now()", (str(address),), _one)

    def all_leases(self):
        return self._submit(f"SELECT {_COLUMNS} FROM ownsocket_leases6 ORDER BY address", (), _all)

    # -- housekeeping ----------------------------------------------------------

    def sweep(self, now):
        """Called with every message: every SWEEP_INTERVAL (this server's
        clock) lapsed rows are deleted, by one server at a time.  Returns
        at once; its outcome is not the message's business."""
        if self._next_sweep is not None and now < self._next_sweep:
            return 0
        self._next_sweep = now + SWEEP_INTERVAL
        self.reclaim().addErrback(self._sweep_failed)
        return 0

    def _sweep_failed(self, failure):
        if not failure.check(LeaseStoreUnavailable):  # that one is said once by the store
            self.log.warn("DHCPv6 lease reclaim failed: {error}", error=failure.getErrorMessage())

    def reclaim(self):
        """Delete lapsed rows unless another server is doing it: a Deferred
        of how many went."""
        # Rows a claim is taking over right now (row or address locked)
        # are left for the next round: reclaiming never waits for a claim.
        return self._submit(
            "WITH turn AS (SELECT pg_try_advisory_xact_lock(%s) AS mine)"
            " DELETE FROM ownsocket_leases6 WHERE address IN (SELECT address FROM ownsocket_leases6"
            " WHERE (SELECT mine FROM turn) AND expires <= now() LIMIT %s FOR UPDATE SKIP LOCKED)"
            " AND expires <= now() AND pg_try_advisory_xact_lock(28538, hashtext(host(address)))",
            (RECLAIM_LOCK, RECLAIM_MAX), lambda cursor: cursor.rowcount)

    def close(self):
        if self._own_db:
            return self.db.close()
        return defer.succeed(None)


def open_store6(leases, clock, db=None):
    """The DHCPv6 store for C{[dhcp] leases}: PostgreSQL for a
    C{postgresql://} DSN (on C{db}, the DHCPv4 store, when given), else the
    SQLite file's C{leases6} table."""
    if leases.startswith(("postgresql://", "postgres://")):
        return PostgresLeaseStore6(leases, clock, db=db)
    from ownsocket.dhcp6.leases import SqliteLeaseStore6, sqlite_path_for
    return SqliteLeaseStore6(sqlite_path_for(leases))
