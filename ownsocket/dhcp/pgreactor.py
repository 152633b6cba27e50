"""
A lease transaction sent and read by the reactor itself, on a pooled
connection, instead of on a pool thread.

Why: a trip through a pool thread costs the reactor's process about
150 us of CPU more than the query itself (Twisted's thread pool hand-off,
two thread wake-ups, callFromThread's waker, the GIL passed back and
forth): measured here 220-260 us per transaction on a thread against
75-110 us driving libpq's non-blocking calls from the reactor.  Under a
boot storm spread over several servers, each sees small batches, about
two transactions per exchange, so that hop was a large share of its CPU.

Only the common case comes here: a pooled connection that is already
open and idle.  Connecting, creating the schema, retrying a transaction
PostgreSQL aborted (a deadlock between two servers' batches) and every
statement error stay on the pool thread (L{PostgresLeaseStore._transact}),
which re-runs the whole batch: PostgreSQL undid all of it, since one
query string is one implicit transaction.  A connection that breaks here
fails the batch with L{LeaseStoreUnavailable}, as it does on a thread.

It relies on psycopg's libpq wrapper (C{connection.pgconn}: send, flush,
consume, get results; psycopg keeps its connections non-blocking) and on
one private cursor method, C{_set_results}, to read the results with
psycopg's own type loaders; without it every transaction takes the
thread (L{available}).
"""

from __future__ import annotations

import os

from twisted.internet import defer, threads
from twisted.internet.interfaces import IReactorFDSet

from ownsocket.dhcp.leases import LeaseStoreUnavailable

try:
    import psycopg
    from psycopg import pq
except ImportError:  # (SQLite-only installs: nothing here is used then)
    psycopg = pq = None


def available(reactor) -> bool:
    """Whether transactions can be sent from this reactor (a test clock
    cannot watch a socket) with this psycopg."""
    if psycopg is None or not IReactorFDSet.providedBy(reactor):
        return False
    return callable(getattr(psycopg.ClientCursor, "_set_results", None))


class ReactorTransaction:
    """
    One batch's query on one pooled connection: sent, flushed and read
    as the socket allows, then handed back to the pool.  L{start} returns
    a Deferred of the batch's results in C{work} order.
    """

    def __init__(self, store, connection, generation, work, query):
        self.store = store
        self.reactor = store.reactor
        self.connection = connection
        self.generation = generation
        self.work = work
        self.query = query
        self.pgconn = connection.pgconn
        self.results = []
        self.done = defer.Deferred()
        self.reading = self.writing = False
        self.over = False
        self.cursor = None
        self.fd = -1

    # -- IReadWriteDescriptor ---------------------------------------------

    def fileno(self):
        return self.fd

    def logPrefix(self):
        return "ownsocket-leases"

    def doRead(self):
        if self.over:
            return
        try:
            self.pgconn.consume_input()
            while not self.pgconn.is_busy():
                result = self.pgconn.get_result()
                if result is None:
                    self._finished()
                    return
                self.results.append(result)
        except psycopg.Error as error:
            self._failed(error)

    def doWrite(self):
        if self.over:
            return
        try:
            if not self.pgconn.flush():
                self._stop_writing()
        except psycopg.Error as error:
            self._failed(error)

    def connectionLost(self, reason):
        # (the reactor is shutting down with this transaction out)
        if not self.over:
            self.reading = self.writing = False
            self._stop()
            self._broken(reason.getErrorMessage())

    # -- the transaction --------------------------------------------------

    def start(self):
        try:
            self.cursor = psycopg.ClientCursor(self.connection)
            text = self.cursor.mogrify(self.query.text, self.query.parameters)
            self.pgconn.send_query(text.encode(self.connection.info.encoding))
            # The reactor watches a duplicate: libpq closes its own socket
            # when the server hangs up, and an epoll registration cannot be
            # undone on a closed descriptor.
            self.fd = os.dup(self.pgconn.socket)
            self.reactor.addReader(self)
            self.reading = True
            if self.pgconn.flush():
                self.reactor.addWriter(self)
                self.writing = True
        except psycopg.Error as error:
            self._failed(error)
        return self.done

    def _finished(self):
        self._stop()
        good = (pq.ExecStatus.TUPLES_OK, pq.ExecStatus.COMMAND_OK)
        if (any(result.status not in good for result in self.results)
                or self.pgconn.transaction_status != pq.TransactionStatus.IDLE):
            # PostgreSQL refused a statement and undid the batch: the pool
            # thread runs it again and says why (or retries a deadlock).
            self._on_thread()
            return
        try:
            self.cursor._set_results(self.results)
            values = self.query.read(self.cursor)
        except Exception:
            self.store._give_back(self.connection, self.generation)
            self.done.errback()
            return
        self.store._give_back(self.connection, self.generation)
        self.done.callback(values)

    def _failed(self, error):
        self._stop()
        if self.connection.closed or self.pgconn.status != pq.ConnStatus.OK:
            self._broken(error)
        else:
            self._on_thread()

    def _broken(self, error):
        """The connection died (the database went away or was restarted):
        as on a thread, the batch fails and every idle connection goes."""
        from ownsocket.dhcp.pgstore import _one_line
        self.over = True
        self.connection.close()
        self.store._drop_idle()
        self.done.errback(LeaseStoreUnavailable(_one_line(error)))

    def _on_thread(self):
        self.over = True
        self.store._give_back(self.connection, self.generation)
        d = threads.deferToThreadPool(self.reactor, self.store._threads, self.store._transact, self.work)
        d.chainDeferred(self.done)

    def _stop_writing(self):
        if self.writing:
            self.writing = False
            self.reactor.removeWriter(self)

    def _stop(self):
        self.over = True
        self._stop_writing()
        if self.reading:
            self.reading = False
            self.reactor.removeReader(self)
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
