"""
Run a policy step that asks a lease store, whichever kind the store is.

The in-memory and SQLite stores answer at once; the PostgreSQL store
answers with Deferreds (a round trip must not block the reactor).  A step
is written once, as a generator that yields each store call's result and
gets its value back.  L{run} sends plain values straight back, so with the
SQLite store a reply is built in the same call and nothing changes for it;
at the first Deferred it suspends the step until that fires (the reply
then waits for the commit, and other clients go on meanwhile), and returns
a Deferred of the step's result.
"""

from __future__ import annotations

from twisted.internet import defer


def run(steps, value=None, error=None):
    """The generator C{steps}' return value, or a Deferred of it."""
    while True:
        try:
            if error is not None:
                asked = steps.throw(error)
                error = None
            else:
                asked = steps.send(value)
        except StopIteration as done:
            return done.value
        if isinstance(asked, defer.Deferred):
            return asked.addCallbacks(lambda got: run(steps, got),
                                      lambda failure: run(steps, error=failure.value))
        value = asked
