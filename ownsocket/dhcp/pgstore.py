"""
Leases in PostgreSQL, shared by several ownsocket servers.

The database decides, not any server's memory:

 - the address is the primary key, and a client has at most one row per
   subnet (a unique constraint), so no two clients hold one address and no
   client holds two;
 - every change is one compare-and-set statement (C{ownsocket_claim()}
   takes the first candidate that is free, lapsed or already the client's,
   locking its row; a lost race moves on to the next candidate);
 - offers are rows too, with a short lifetime, so two servers do not offer
   one address while both offers are live;
 - expiry is on the database's clock (C{now()}), and lapsed offers and
   quarantines are deleted by one server at a time (an advisory lock).

Twisted's reactor never waits for the database: a bounded pool of
connections (and of threads to open them).  Everything asked in
one reactor turn (one socket read's batch) is one transaction (batches that
wait for a busy connection join the next one), all its claims in one
set-based statement, the whole transaction one query string and one round
trip, and its Deferreds fire only after the COMMIT, so an ACK never precedes
its lease.  Measured here (SELECT 1 round trips on a loaded 2-core
machine): psycopg blocking 171 us; one deferToThreadPool per query 549 us;
psycopg's AsyncConnection on asyncio 395 us (and it would need the asyncio
reactor for the whole process); 20 per thread trip in one transaction
217 us; the same pipelined 148 us.  Hence one trip per batch (first
pipelined, now one message: see L{PostgresLeaseStore._run}), on a pool
thread only where a thread is needed (connecting, a retry, an error): on
an open connection the reactor sends the batch and reads its answer itself
with libpq's non-blocking calls (L{ownsocket.dhcp.pgreactor}), which saves
the thread hand-off, about 100 us of CPU per transaction.

When the database cannot be reached, every change fails at once with
L{LeaseStoreUnavailable} (no binding without a commit: clients get no
answer and retry), one line says so, and the store retries with a backoff
(1 s doubling to 30 s) until the database answers; one line says that too.
One outage is one pair of lines however many transactions notice it:
transactions are numbered as they are sent, and only one sent after the
outage was noticed can end it (or one sent after it ended start another);
the others were in flight across the change and say nothing new.  The
pooled connections all die with the server, so the first failure drops
every idle one instead of letting each fail in turn.
"""

from __future__ import annotations

import ipaddress
import random
import socket
import threading
import time
from collections import deque
from contextlib import contextmanager
from typing import List, Optional, Sequence

from twisted.internet import defer, threads
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from ownsocket.dhcp.leases import (BOUND, DECLINED, OFFERED, Lease, LeaseStoreBusy, LeaseStoreError,
                                   LeaseStoreUnavailable)
from ownsocket.dhcp import pgreactor
from ownsocket.dhcp.pgreactor import ReactorTransaction
from ownsocket.interfaces import ILeaseStore
from ownsocket.ratelimit import RateLimitedLog

IPv4 = ipaddress.IPv4Address

#: The schema's version; ownsocket_schema holds the version a database has.
SCHEMA_VERSION = 3

#: pg_advisory_xact_lock key for reclaiming (ASCII "ownsockt").
RECLAIM_LOCK = 0x6F776E736F636B74

BACKOFF_FIRST, BACKOFF_MAX = 1.0, 30.0

#: changed_since() looks this many seconds further back than its mark:
#: a row's change time is its transaction's start, which may be earlier than
#: its commit.
CHANGES_OVERLAP = 5.0

#: Offers at most between claim and answer: this many, or as many as the
#: store answered in the last OFFER_WINDOW seconds if that is more.  The
#: window is what keeps goodput up under overload: every offer let in costs
#: a reply later, and an offer that reaches its client after the client gave
#: up (perfdhcp: 1 s) is lost work; a small window keeps the answers early.
#: Measured at 5,000 DISCOVERs/s on the shared 2-core machine: 256 in flight
#: converted 13 % of the offers sent into ACKs, 64 converted 37-55 %.  But
#: a fixed 64 also capped a server that keeps up: at 1,000/s a transaction
#: took 70-110 ms from send to answer, so 64 offers out meant at most about
#: 600 offers/s, and 40 % of the DISCOVERs were shed by a server with CPU
#: to spare.  Scaled by what was answered lately, the window lets offers
#: through as long as they are answered within about OFFER_WINDOW (Little's
#: law: in flight = rate x time; 0.15 s is about twice what a transaction
#: took at 1,000/s, and keeps an overloaded server's window near the 64
#: that was measured to work), and shrinks when they are not.  Bindings are
#: never refused (they complete exchanges).
OFFERS_OUT_MAX = 64
OFFER_WINDOW = 0.15
#: An offer that waited longer than this for a free connection is dropped
#: unsent (its client has moved on).
OFFER_WAIT = 0.5
#: New offers are also refused while the last transaction took longer than
#: this from send to answer, or one in flight has been out that long.
OFFER_LAG = 0.3
#: Statements at most in one transaction (batches that wait are merged): the
#: replies of one transaction are built in one reactor turn.
MAX_TRANSACTION = 512
DEADLOCK_RETRIES = 5

_MIGRATIONS = {
    1: """
CREATE TABLE ownsocket_leases (
    address  inet PRIMARY KEY,
    mac      text,
    subnet   text NOT NULL,
    state    text NOT NULL CHECK (state IN ('offered', 'bound', 'declined')),
    expires  timestamptz NOT NULL,
    hostname text,
    server   text,
    -- checked at COMMIT: a claim inserts the new row before it deletes the
    -- client's old one (claims for one client are serialised by a lock)
    CONSTRAINT ownsocket_one_per_client UNIQUE (subnet, mac) DEFERRABLE INITIALLY DEFERRED
);
CREATE INDEX ownsocket_leases_lapsing ON ownsocket_leases (expires) WHERE state <> 'bound';

CREATE FUNCTION ownsocket_claim(p_mac text, p_subnet text, p_candidates inet[], p_state text,
                                p_seconds double precision, p_hostname text, p_server text,
                                p_own_lo bigint[], p_own_hi bigint[], p_own_not inet[])
RETURNS SETOF ownsocket_leases
LANGUAGE plpgsql AS $$
DECLARE
    candidate inet;
    key integer;
    current ownsocket_leases;
    claimed ownsocket_leases;
    until timestamptz := CASE WHEN p_seconds IS NULL THEN 'infinity'::timestamptz
                              ELSE now() + make_interval(secs => p_seconds) END;
BEGIN
    -- One claim per client at a time, until COMMIT: this is what keeps the
    -- one-row-per-client rule true between servers.
    PERFORM pg_advisory_xact_lock(28535, hashtext(p_subnet || ' ' || p_mac));
    -- The client's own live offer or binding first, if it is still within
    -- the pool (ranges p_own_lo..p_own_hi, not one of p_own_not).
    IF p_own_lo IS NOT NULL THEN
        SELECT * INTO current FROM ownsocket_leases
            WHERE mac = p_mac AND subnet = p_subnet AND (state = 'bound' OR expires > now())
              AND address <> ALL (COALESCE(p_own_not, '{}'))
              AND EXISTS (SELECT 1 FROM unnest(p_own_lo, p_own_hi) AS r(lo, hi)
                          WHERE address - '0.0.0.0'::inet BETWEEN r.lo AND r.hi);
        IF FOUND THEN
            p_candidates := array_prepend(current.address, array_remove(p_candidates, current.address));
        END IF;
    END IF;
    FOREACH candidate IN ARRAY p_candidates LOOP
        -- Whoever claims an address holds its lock until COMMIT.  An offer
        -- does not wait: an address that is someone else's, or that another
        -- server is claiming right now, is passed over; a binding waits.
        SELECT * INTO current FROM ownsocket_leases WHERE address = candidate;
        CONTINUE WHEN FOUND AND current.expires > now() AND current.mac IS DISTINCT FROM p_mac
                      AND p_state = 'offered';
        key := ((candidate - '0.0.0.0'::inet) - 2147483648)::integer;
        IF p_state = 'offered' THEN
            CONTINUE WHEN NOT pg_try_advisory_xact_lock(28536, key);
        ELSE
            PERFORM pg_advisory_xact_lock(28536, key);
        END IF;
        -- The compare-and-set: a new row, or a row that lapsed or is this
        -- client's own (but an offer never downgrades a live binding).  A
        -- binding waits for a row another server is changing, then re-checks.
        INSERT INTO ownsocket_leases AS l (address, mac, subnet, state, expires, hostname, server)
            VALUES (candidate, p_mac, p_subnet, p_state, until, p_hostname, p_server)
            ON CONFLICT (address) DO UPDATE
                SET mac = EXCLUDED.mac, subnet = EXCLUDED.subnet, state = EXCLUDED.state,
                    expires = EXCLUDED.expires, server = EXCLUDED.server,
                    hostname = COALESCE(EXCLUDED.hostname,
                                        CASE WHEN l.mac = EXCLUDED.mac THEN l.hostname END)
                WHERE (l.expires <= now() OR l.mac = EXCLUDED.mac)
                  AND NOT (EXCLUDED.state = 'offered' AND l.state = 'bound'
                           AND l.mac = EXCLUDED.mac AND l.expires > now())
            RETURNING * INTO claimed;
        IF FOUND THEN
            DELETE FROM ownsocket_leases
                WHERE mac = p_mac AND subnet = p_subnet AND address <> candidate;
            RETURN NEXT claimed;
            RETURN;
        END IF;
        SELECT * INTO current FROM ownsocket_leases WHERE address = candidate;
        IF FOUND AND current.mac = p_mac THEN
            RETURN NEXT current;  -- the client's own live binding, kept
            RETURN;
        END IF;
    END LOOP;
    RETURN;
END $$;
""",
    # The same rules with fewer statements per claim: the client's one row is
    # read once, up front (a request for the address it was just offered
    # needs no second look at that row), and the client's old row is deleted
    # only when it has one elsewhere.  Rows carry when they last changed, so
    # a server can read what the others did lately (L{changed_since}).
    2: """
ALTER TABLE ownsocket_leases ADD COLUMN changed timestamptz NOT NULL DEFAULT now();
CREATE OR REPLACE FUNCTION ownsocket_claim(p_mac text, p_subnet text, p_candidates inet[], p_state text,
                                           p_seconds double precision, p_hostname text, p_server text,
                                           p_own_lo bigint[], p_own_hi bigint[], p_own_not inet[])
RETURNS SETOF ownsocket_leases
LANGUAGE plpgsql AS $$
DECLARE
    candidate inet;
    key integer;
    mine ownsocket_leases;
    current ownsocket_leases;
    claimed ownsocket_leases;
    until timestamptz := CASE WHEN p_seconds IS NULL THEN 'infinity'::timestamptz
                              ELSE now() + make_interval(secs => p_seconds) END;
BEGIN
    -- One claim per client at a time, until COMMIT: this is what keeps the
    -- one-row-per-client rule true between servers.
    PERFORM pg_advisory_xact_lock(28535, hashtext(p_subnet || ' ' || p_mac));
    -- The client's row in this subnet (one at most: the unique constraint).
    SELECT * INTO mine FROM ownsocket_leases WHERE subnet = p_subnet AND mac = p_mac;
    -- Its live offer or binding first, if it is still within the pool
    -- (ranges p_own_lo..p_own_hi, not one of p_own_not).
    IF p_own_lo IS NOT NULL AND mine.address IS NOT NULL
       AND (mine.state = 'bound' OR mine.expires > now())
       AND mine.address <> ALL (COALESCE(p_own_not, '{}'))
       AND EXISTS (SELECT 1 FROM unnest(p_own_lo, p_own_hi) AS r(lo, hi)
                   WHERE mine.address - '0.0.0.0'::inet BETWEEN r.lo AND r.hi) THEN
        p_candidates := array_prepend(mine.address, array_remove(p_candidates, mine.address));
    END IF;
    FOREACH candidate IN ARRAY p_candidates LOOP
        -- Whoever claims an address holds its lock until COMMIT.  An offer
        -- does not wait: an address that is someone else's, or that another
        -- server is claiming right now, is passed over; a binding waits.
        -- (Only a hint: the INSERT below decides on the row as it is.)
        IF candidate = mine.address THEN
            current := mine;
        ELSE
            SELECT * INTO current FROM ownsocket_leases WHERE address = candidate;
        END IF;
        CONTINUE WHEN current.address IS NOT NULL AND current.expires > now()
                      AND current.mac IS DISTINCT FROM p_mac AND p_state = 'offered';
        key := ((candidate - '0.0.0.0'::inet) - 2147483648)::integer;
        IF p_state = 'offered' THEN
            CONTINUE WHEN NOT pg_try_advisory_xact_lock(28536, key);
        ELSE
            PERFORM pg_advisory_xact_lock(28536, key);
        END IF;
        -- The compare-and-set: a new row, or a row that lapsed or is this
        -- client's own (but an offer never downgrades a live binding).  A
        -- binding waits for a row another server is changing, then re-checks.
        INSERT INTO ownsocket_leases AS l (address, mac, subnet, state, expires, hostname, server)
            VALUES (candidate, p_mac, p_subnet, p_state, until, p_hostname, p_server)
            ON CONFLICT (address) DO UPDATE
                SET mac = EXCLUDED.mac, subnet = EXCLUDED.subnet, state = EXCLUDED.state,
                    expires = EXCLUDED.expires, server = EXCLUDED.server, changed = now(),
                    hostname = COALESCE(EXCLUDED.hostname,
                                        CASE WHEN l.mac = EXCLUDED.mac THEN l.hostname END)
                WHERE (l.expires <= now() OR l.mac = EXCLUDED.mac)
                  AND NOT (EXCLUDED.state = 'offered' AND l.state = 'bound'
                           AND l.mac = EXCLUDED.mac AND l.expires > now())
            RETURNING * INTO claimed;
        IF FOUND THEN
            IF mine.address IS NOT NULL AND mine.address <> candidate THEN
                DELETE FROM ownsocket_leases WHERE address = mine.address AND mac = p_mac;
            END IF;
            RETURN NEXT claimed;
            RETURN;
        END IF;
        SELECT * INTO current FROM ownsocket_leases WHERE address = candidate;
        IF FOUND AND current.mac = p_mac THEN
            RETURN NEXT current;  -- the client's own live binding, kept
            RETURN;
        END IF;
    END LOOP;
    RETURN;
END $$;
""",
    # A binding, a renewal or a release of an offer changes only columns
    # that no index holds, so PostgreSQL can update the row in place (a HOT
    # update: no new entries in the address and client indexes) when its
    # page has room; the index on expiry made every such change a new
    # entry in all three indexes.  Reclaiming (one server every 10 s) reads
    # the table instead: a few milliseconds for 100,000 rows.
    3: """
DROP INDEX IF EXISTS ownsocket_leases_lapsing;
ALTER TABLE ownsocket_leases SET (fillfactor = 80);
""",
}

#: (addresses as integers: IPv4Address(int) is about 6x cheaper than
#: parsing text, and a full read of 100,000 leases makes 100,000 of them)
_COLUMNS = "address - '0.0.0.0'::inet, mac, state, extract(epoch FROM expires)::float8, hostname, subnet"

#: Every claim of one transaction in one statement: one row of arrays per
#: claim, each passed to ownsocket_claim() in order (the claims are sorted
#: by client), so a batch of a few hundred clients costs one round trip and
#: one statement to parse and plan instead of a few hundred.  A claim that
#: got nothing has no row; C{n} says whose each row is.
_CLAIM_BATCH = (
    "SELECT u.n, r.address - '0.0.0.0'::inet, r.mac, r.state, extract(epoch FROM r.expires)::float8, r.hostname, r.subnet"
    " FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[],"
    " %s::text[], %s::text[]) WITH ORDINALITY AS u(mac, subnet, candidates, state, seconds, hostname,"
    " lo, hi, excluded, n)"
    " CROSS JOIN LATERAL ownsocket_claim(u.mac, u.subnet, u.candidates::inet[], u.state,"
    " u.seconds::float8, u.hostname, %s, u.lo::bigint[], u.hi::bigint[], u.excluded::inet[]) AS r")


def _lease(row) -> Lease:
    address, mac, state, expires, hostname, subnet = row
    return Lease(mac, IPv4(address), state, expires, hostname, subnet)


def _array(values):
    if values is None:
        return None
    return "{" + ",".join(str(value) for value in values) + "}"


def _one(cursor):
    row = cursor.fetchone()
    return _lease(row) if row else None


def _all(cursor):
    return [_lease(row) for row in cursor.fetchall()]


def _changes(cursor):
    rows = cursor.fetchall()
    return [_lease(row[1:]) for row in rows if row[1] is not None], rows[0][0]


def _changed(cursor):
    return cursor.rowcount > 0


def describe(dsn):
    """The DSN without its password, for log lines."""
    try:
        from psycopg.conninfo import conninfo_to_dict
        parts = conninfo_to_dict(dsn)
    except Exception:
        return "postgresql://(unparsable DSN)"
    parts.pop("password", None)
    return " ".join(f"{key}={value}" for key, value in sorted(parts.items()))


@implementer(ILeaseStore)
class PostgresLeaseStore:
    """
    @param dsn: a libpq connection string or URI.  Put no password in it:
        use a passfile (C{?passfile=...}, or PGPASSFILE) or PGPASSWORD.
    @param clock: the reactor (callLater, callFromThread).
    @param pool_size: connections (and threads) at most.
    """

    log = Logger()
    shared = True

    def __init__(self, dsn, clock, pool_size=2, server_name=None, connect_timeout=5):
        import psycopg  # noqa: F401  (fail at start-up, not at the first packet)
        self.dsn = dsn
        self.description = describe(dsn)
        self.reactor = clock
        self.server_name = server_name or socket.gethostname()
        self.connect_timeout = connect_timeout
        self._threads = ThreadPool(minthreads=0, maxthreads=pool_size, name="ownsocket-leases")
        self._connections = pool_size
        self._in_flight = 0
        # (when, work) of batches that wait for a free connection
        self._waiting = deque()
        self._offers_out = 0  # offers claimed, not yet answered
        self._answered = deque()  # when each offer answered in the last second was
        self._sent_at = deque()  # when each transaction in flight was sent
        self._lag = 0.0  # how long the last one took, send to answer
        self._landed_at = 0.0
        self._connects = 0  # connections made so far
        #: seconds; None: offers are never refused for lag (only the window)
        self.offer_lag = OFFER_LAG
        self._drained = []  # close() waits for these
        self._refused = []  # offers refused in this batch (failed when it ends)
        self._threads.start()
        self._idle = deque()
        self._idle_lock = threading.Lock()
        self._queue = []
        self._flush_call = None
        self._in_batch = 0
        self._down = False
        self._retry_at = 0.0
        self._backoff = BACKOFF_FIRST
        # Transactions sent so far, and how many had been sent when the
        # outage was noticed, when a retry last failed, when it ended.
        self._sent = 0
        self._down_mark = self._retry_mark = self._up_mark = 0
        # Bumped (on a pool thread) when a connection fails: connections of
        # an older generation are closed instead of pooled again.
        self._generation = 0
        self._migrated = False
        self._closed = False
        self._error_log = RateLimitedLog(self.log.error, clock, burst=3)
        #: whether transactions on open connections skip the pool thread
        self._on_reactor = pgreactor.available(clock)

    # -- queries ----------------------------------------------------------
    # Each call queues one statement and how to read its result: the
    # statements of a batch are sent together (one query string) and read
    # after the COMMIT.

    def lookup(self, mac, subnet=None):
        return self._submit(
            f"SELECT {_COLUMNS} FROM ownsocket_leases WHERE mac = %s"
            " AND (subnet = %s OR %s::text IS NULL)"
            " AND (state = 'bound' OR expires > now()) LIMIT 1", (mac, subnet, subnet), _one)

    def holder(self, address):
        return self._submit(f"SELECT {_COLUMNS} FROM ownsocket_leases WHERE address = %s",
                            (str(address),), _one)

    def all_leases(self):
        return self._submit(f"SELECT {_COLUMNS} FROM ownsocket_leases", (), _all)

    # -- compare-and-set changes ---------------------------------------------

    def claim(self, mac, subnet, candidates: Sequence[IPv4], state, seconds, hostname=None, own=None):
        if state == OFFERED and self.behind():
            # Refused when the batch ends, not at once: a caller's "busy"
            # path (overload, clients retry) is its asynchronous one.
            d = defer.Deferred()
            self._refused.append(d)
            self._flush_soon()
            return d
        lo = hi = excluded = None
        if own is not None:
            ranges, excluded = own
            lo = _array([int(first) for first, _ in ranges])
            hi = _array([int(last) for _, last in ranges])
            excluded = _array(excluded)
        # Not a statement of its own: every claim of a transaction goes in
        # one set-based statement (L{_CLAIM_BATCH}), so its parameters are
        # kept as text, one array element each.
        return self._submit(None, (mac, subnet, _array(candidates), state,
                                   None if seconds is None else repr(float(seconds)), hostname, lo, hi,
                                   excluded), _one, durable=state != OFFERED, key=mac)

    def release(self, mac, address):
        return self._submit("DELETE FROM ownsocket_leases WHERE address = %s AND mac = %s",
                            (str(address), mac), _changed, durable=True)

    def forget(self, mac, address):
        return self._submit("DELETE FROM ownsocket_leases WHERE address = %s AND mac = %s"
                            " AND state = 'offered'", (str(address), mac), _changed)

    def decline(self, mac, address, seconds):
        return self._submit(
            "UPDATE ownsocket_leases SET mac = NULL, state = 'declined', hostname = NULL,"
            " expires = now() + make_interval(secs => %s), changed = now()"
            f" WHERE address = %s AND mac = %s RETURNING {_COLUMNS}", (seconds, str(address), mac), _one,
            durable=True)

    def changed_since(self, mark=None):
        """
        Rows claimed, renewed or declined (by any server) since C{mark}:
        a Deferred of (leases, next mark).  Cheap enough to ask every few
        seconds (no index is kept for it: a scan of 100,000 rows), so a
        server's hint and address counts need not wait for the next full
        read of L{all_leases} to see what other servers did.  Deleted rows
        (releases, reclaimed offers) are not seen: the next full read
        brings those.  C{mark} is on the database's clock, set back by
        CHANGES_OVERLAP, so a transaction that committed late is not
        missed; a row may be seen twice.  No mark: nothing, and the mark
        for now.
        """
        return self._submit(
            f"SELECT m.mark, {_COLUMNS} FROM (SELECT extract(epoch FROM now())::float8 - %s AS mark) AS m"
            " LEFT JOIN ownsocket_leases ON %s::float8 IS NOT NULL AND changed >= to_timestamp(%s::float8)",
            (CHANGES_OVERLAP, mark, mark), _changes)

    def reclaim(self):
        """One server at a time (the others skip this round): how many went."""
        return self._submit(
            "WITH turn AS (SELECT pg_try_advisory_xact_lock(%s) AS mine)"
            " DELETE FROM ownsocket_leases WHERE (SELECT mine FROM turn)"
            " AND state <> 'bound' AND expires <= now()", (RECLAIM_LOCK,), lambda cursor: cursor.rowcount)

    # -- transactions --------------------------------------------------------

    @contextmanager
    def batch(self):
        """Everything asked inside is one transaction (sent when it ends)."""
        self._in_batch += 1
        try:
            yield
        finally:
            self._in_batch -= 1
            if not self._in_batch:
                self._flush()

    def _submit(self, statement, parameters, read, durable=False, key=""):
        """
        Queue one statement for this turn's transaction (the DHCPv6 store
        uses this too).  C{statement} is one SQL statement with C{%s}
        placeholders (a literal percent sign as C{%%}), no semicolon: the
        batch's statements are joined into one query string, and
        C{parameters} are bound here, client-side, as SQL literals.
        C{read(cursor)} gets the cursor positioned on this statement's
        result (C{fetchone}, C{fetchall}, C{rowcount}); it must not move it
        to another result.  C{durable}: the COMMIT waits for its WAL flush.
        C{key}: claims are sent in this order.
        """
        d = defer.Deferred()
        if self._closed:
            return defer.fail(LeaseStoreError("the lease store is closed"))
        if self._down and self.reactor.seconds() < self._retry_at:
            return defer.fail(LeaseStoreUnavailable(f"lease database unreachable ({self.description})"))
        if statement is None and not durable:  # an offer
            self._offers_out += 1
            d.addBoth(self._offer_back)
        self._queue.append((key, statement, parameters, read, durable, d))
        self._flush_soon()
        return d

    def _flush_soon(self):
        if not self._in_batch and self._flush_call is None:
            # Everything asked in this reactor turn goes in one transaction.
            self._flush_call = self.reactor.callLater(0, self._flush)

    def behind(self):
        """
        Whether a new offer would come too late to matter (then L{claim}
        refuses offers with L{LeaseStoreBusy}; a caller that asks first can
        drop a DISCOVER before it spends anything on it).  Offers are what
        a server can refuse (the client asks again; its REQUEST, which
        completes an exchange, always goes through), and refusing them early
        is what keeps goodput up under overload: every offer let in is paid
        for again in reply CPU, and late ones are all lost.  Behind means:
        the window of offers out is full (L{offer_window}), or the last transaction took
        longer than OFFER_LAG from send to answer (database time, thread
        hand-off and this reactor's own lag together), or one in flight has
        been out that long.
        """
        if self._offers_out >= OFFERS_OUT_MAX and self._offers_out >= self.offer_window():
            return True
        lag = self.offer_lag
        if lag is None:
            return False
        now = self.reactor.seconds()
        if self._lag > lag and now - self._landed_at < lag:
            return True
        return bool(self._sent_at) and now - self._sent_at[0] > lag

    def offer_window(self):
        """Offers that may be out at once now: OFFERS_OUT_MAX, or what was
        answered in the last OFFER_WINDOW seconds, scaled from the last
        second's count."""
        answered, since = self._answered, self.reactor.seconds() - 1.0
        while answered and answered[0] < since:
            answered.popleft()
        return max(OFFERS_OUT_MAX, int(len(answered) * OFFER_WINDOW))

    def _offer_back(self, result):
        self._offers_out -= 1
        if not isinstance(result, Failure):
            self._answered.append(self.reactor.seconds())
        return result

    def _flush(self):
        """End of a batch: its work waits for a free connection, and
        everything that waits when one is free goes in one transaction
        (so under load transactions grow instead of queueing up)."""
        if self._flush_call is not None:
            if self._flush_call.active():
                self._flush_call.cancel()
            self._flush_call = None
        if self._queue:
            self._waiting.append((self.reactor.seconds(), self._queue))
            self._queue = []
        if self._refused:
            refused, self._refused = self._refused, []
            for d in refused:
                d.errback(LeaseStoreBusy("lease database busy"))
        self._dispatch()

    def _dispatch(self):
        self._send_waiting()
        if self._drained and not self._waiting and not self._in_flight:
            drained, self._drained = self._drained, []
            for d in drained:
                d.callback(None)

    def _send_waiting(self):
        while self._waiting and self._in_flight < self._connections:
            now = self.reactor.seconds()
            if self._down and now < self._retry_at:
                waiting, self._waiting = self._waiting, deque()
                error = LeaseStoreUnavailable(f"lease database unreachable ({self.description})")
                for _, work in waiting:
                    for item in work:
                        item[-1].errback(error)
                return
            work = []
            while self._waiting and len(work) < MAX_TRANSACTION:
                queued, batch = self._waiting.popleft()
                late = now - queued > OFFER_WAIT
                for item in batch:
                    if late and item[1] is None and not item[4]:
                        # An offer that waited too long: its client has given
                        # up on this exchange, so the database is spared it.
                        item[-1].errback(LeaseStoreBusy("lease database busy"))
                        continue
                    work.append(item)
            if not work:
                continue
            self._send(work)

    def _send(self, work):
        # Claims in client order: two servers that see the same clients in
        # one batch (one segment) then take their per-client locks in the
        # same order and cannot deadlock on them.
        work.sort(key=lambda item: item[0])
        self._in_flight += 1
        self._sent += 1
        sent_at = self.reactor.seconds()
        self._sent_at.append(sent_at)
        pooled = self._pooled() if self._on_reactor else None
        if pooled is None:
            d = threads.deferToThreadPool(self.reactor, self._threads, self._transact, work)
        else:
            d = ReactorTransaction(self, *pooled, work, _Query(self, work)).start()
        d.addBoth(self._landed, sent_at, self._connects)
        d.addCallbacks(self._done, self._failed, callbackArgs=(work, self._sent),
                       errbackArgs=(work, self._sent))
        d.addBoth(lambda _: self._dispatch())

    def _landed(self, result, sent_at, connects):
        self._in_flight -= 1
        self._sent_at.remove(sent_at)
        if connects == self._connects:
            # (one that had to connect first says nothing about lag)
            self._landed_at = self.reactor.seconds()
            self._lag = self._landed_at - sent_at
        return result

    def _done(self, results, work, number):
        # Only a transaction sent after the outage was noticed proves the
        # database is back: one that was in flight across it may have
        # finished just before.
        if self._down and number > self._down_mark:
            self._down = False
            self._backoff = BACKOFF_FIRST
            self._up_mark = self._sent
            self.log.info("lease database {db} reachable again; serving", db=self.description)
        for item, result in zip(work, results):
            item[-1].callback(result)

    def _failed(self, failure, work, number):
        if failure.check(LeaseStoreUnavailable):
            error = LeaseStoreUnavailable(f"lease database unreachable ({self.description}): "
                                          f"{_one_line(failure.getErrorMessage())}")
            if not self._down:
                # One sent before the database came back belongs to the
                # outage that was reported already.
                if number > self._up_mark:
                    self.log.error("{error}; no new leases until it answers (retrying with backoff)",
                                   error=error)
                    self._down = True
                    self._down_mark = self._retry_mark = self._sent
                    self._backoff = BACKOFF_FIRST
                    self._retry_at = self.reactor.seconds() + self._backoff
            elif number > self._retry_mark:
                # A retry failed (not one of several in flight at once).
                self._retry_mark = self._sent
                self._backoff = min(self._backoff * 2, BACKOFF_MAX)
                self._retry_at = self.reactor.seconds() + self._backoff
        else:
            error = LeaseStoreError(f"lease database {self.description}: {_one_line(failure.getErrorMessage())}")
            self._error_log("{error}", error=error)
        for item in work:
            item[-1].errback(error)

    # -- on a pool thread ------------------------------------------------------

    def _transact(self, work):
        """
        One transaction for the whole batch.  When PostgreSQL breaks a
        deadlock between two servers' batches (they claim overlapping
        addresses and clients in different orders) it aborts one; that one
        then runs its changes one transaction each, which cannot deadlock
        (each takes one row lock at a time and commits).
        """
        import psycopg
        from psycopg import errors
        try:
            connection, generation = self._connection()
        except (psycopg.OperationalError, psycopg.InterfaceError) as error:
            self._drop_idle()
            raise LeaseStoreUnavailable(_one_line(error)) from None
        try:
            try:
                results = self._run(connection, work)
            except errors.TransactionRollback:
                if connection.broken:
                    raise
                results = []
                for item in work:
                    for attempt in range(DEADLOCK_RETRIES):
                        try:
                            results.extend(self._run(connection, [item]))
                            break
                        except errors.TransactionRollback:
                            if connection.broken or attempt == DEADLOCK_RETRIES - 1:
                                raise
                            time.sleep(random.uniform(0.001, 0.005))
        except psycopg.Error as error:
            if connection.broken or connection.closed or isinstance(error, psycopg.InterfaceError):
                connection.close()
                self._drop_idle()
                raise LeaseStoreUnavailable(_one_line(error)) from None
            self._give_back(connection, generation)
            raise
        except BaseException:
            self._give_back(connection, generation)
            raise
        self._give_back(connection, generation)
        return results

    def _run(self, connection, work):
        """
        One transaction, one message, one round trip: every statement of
        the batch, the claims in one of them, sent as one query string
        (parameters bound here), which PostgreSQL runs as one implicit
        transaction; an error anywhere, the deferred checks at its commit
        included, undoes all of it.  Pipelined statements with BEGIN and
        COMMIT took about ten trips through psycopg's pipeline, each
        waiting for the GIL while the reactor built replies: 40-90 ms a
        transaction at 1,000/s on two loaded cores, with the backend idle in
        its transaction meanwhile (pg_stat_activity).  A transaction with no
        binding in it (offers, look-ups) does not wait for its WAL flush: an
        offer lost in a database crash only makes the client ask again;
        bindings, releases and quarantines always do.
        """
        import psycopg
        query = _Query(self, work)
        cursor = psycopg.ClientCursor(connection)
        cursor.execute(query.text, query.parameters)
        return query.read(cursor)

    def _connection(self):
        """A pooled connection, or a new one: (connection, its generation)."""
        import psycopg
        pooled = self._pooled()
        if pooled is not None:
            return pooled
        generation = self._generation  # (a connection made after a drop is of the new one)
        self._connects += 1  # (a plain int: read on the reactor thread, only compared)
        connection = psycopg.connect(self.dsn, connect_timeout=self.connect_timeout,
                                     application_name="ownsocket", autocommit=True)
        if not self._migrated:
            try:
                migrate(connection)
            except psycopg.Error as error:
                broken = connection.broken
                connection.close()
                if broken:  # the database went away meanwhile: an outage, not a schema problem
                    raise
                raise LeaseStoreError(f"cannot create or upgrade the lease tables: {_one_line(error)} "
                                      f"(the role needs CREATE on the database's schema, or to own the tables)") \
                    from None
            self._migrated = True
        return connection, generation

    def _pooled(self):
        """An open idle connection and its generation, or None (then only a
        pool thread may connect: L{_connection})."""
        with self._idle_lock:
            while self._idle:
                connection = self._idle.pop()
                if not connection.closed:
                    return connection, self._generation
        return None

    def _give_back(self, connection, generation):
        if not connection.closed and connection.info.transaction_status == 0:  # 0 = idle
            with self._idle_lock:
                if generation == self._generation:
                    self._idle.append(connection)
                    return
        connection.close()

    def _drop_idle(self):
        """A connection failed: the database went away (or was restarted),
        and every pooled connection went with it.  Close them all now, and
        those in use when they come back, so that each does not fail one
        transaction of its own after the database is back."""
        with self._idle_lock:
            self._generation += 1
            idle, self._idle = list(self._idle), deque()
        for connection in idle:
            connection.close()

    # -- housekeeping ----------------------------------------------------------

    def close(self):
        """Finish what was asked, then close every connection."""
        self._flush()
        self._closed = True
        drained = defer.Deferred()
        self._drained.append(drained)
        self._dispatch()

        def shut():
            with self._idle_lock:
                idle, self._idle = list(self._idle), deque()
            for connection in idle:
                connection.close()

        drained.addCallback(lambda _: threads.deferToThreadPool(self.reactor, self._threads, shut))
        drained.addBoth(lambda _: self._threads.stop())
        return drained


class _Query:
    """One batch as one query string, and how to read its results back:
    the same for a transaction run on a pool thread and one the reactor
    sends itself (L{ownsocket.dhcp.pgreactor})."""

    def __init__(self, store, work):
        self.work = work
        self.others = [item for item in work if item[1] is not None]
        self.claims = [item for item in work if item[1] is None]
        statements, parameters = [], []
        self.set_config = not any(item[4] for item in work)
        if self.set_config:
            statements.append("SELECT set_config('synchronous_commit', 'off', true)")
        for _, statement, values, _, _, _ in self.others:
            statements.append(statement.rstrip().rstrip(";"))  # (an empty statement would shift the results)
            parameters.extend(values)
        if self.claims:
            statements.append(_CLAIM_BATCH)
            parameters.extend(list(column) for column in zip(*(item[2] for item in self.claims)))
            parameters.append(store.server_name)
        self.text = "; ".join(statements)
        self.parameters = parameters

    def read(self, cursor):
        """Each item's result, in the order of C{work}, from a cursor on
        the first of the query's results."""
        if self.set_config:
            cursor.nextset()  # set_config's row
        results = {}
        for item in self.others:
            results[id(item)] = item[3](cursor)
            cursor.nextset()
        rows = cursor.fetchall() if self.claims else ()
        leases = [None] * len(self.claims)
        for n, *row in rows:
            leases[n - 1] = _lease(row)
        for item, lease in zip(self.claims, leases):
            results[id(item)] = lease
        return [results[id(item)] for item in self.work]


def migrate(connection):
    """Create or upgrade the schema to L{SCHEMA_VERSION}, once, under a lock
    (several servers may start at the same moment)."""
    with connection.transaction():
        connection.execute("SELECT pg_advisory_xact_lock(%s)", (RECLAIM_LOCK + 1,))
        connection.execute("CREATE TABLE IF NOT EXISTS ownsocket_schema (version integer NOT NULL)")
        row = connection.execute("SELECT max(version) FROM ownsocket_schema").fetchone()
        version = row[0] or 0
        if version > SCHEMA_VERSION:
            raise LeaseStoreError(f"the lease database has schema version {version}; this ownsocket "
                                  f"knows up to {SCHEMA_VERSION} (upgrade ownsocket)")
        for step in range(version + 1, SCHEMA_VERSION + 1):
            connection.execute(_MIGRATIONS[step])
            connection.execute("INSERT INTO ownsocket_schema (version) VALUES (%s)", (step,))


def _one_line(text):
    return " ".join(str(text).split())
