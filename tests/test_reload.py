"""
Live reload with fakes and a Clock: build, check, swap.

An invalid file (or plugin) changes nothing and says why in one line; a
valid one reaches every service in one reactor turn; the runtime's config
and hash follow.  The end-to-end run under twistd is tests/test_reload_live.py.
"""

import os
import shutil
import signal
import socket

from twisted.application.service import MultiService, Service
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest

from ownsocket.dhcp.service import DhcpService
from ownsocket.dhcp6 import ra
from ownsocket.events import KINDS, EventBus, EventList
from ownsocket.heap import SETTLE_EVERY, SWEEP_EVERY, Heap
from ownsocket.http import HTTPService
from ownsocket.reload import ReloadOnSignal, Reloader
from ownsocket.runtime import Runtime, config_hash, prepare, prepare_steps, read_config
from ownsocket.tftp.service import TFTPService
from tests.test_dhcp6_listeners import has_ipv6_loopback

VALID = """\
[dhcp]
enabled = false
[tftp]
root = {root}
port = 16969
[boot]
default = {default}
"""


def run_reload(reloader, trigger="SIGHUP", turns=20):
    """
    C{reloader.reload()}, with the fake reactor's turns run until it is
    done (or waits for something else): a reload takes one step per turn.
    """
    d = reloader.reload(trigger)
    for _ in range(turns):
        if d.called:
            break
        reloader.runtime.reactor.advance(0)
    return d


class FakeService:
    """Records each reconfigure call and the clock time it came at."""

    def __init__(self, clock, result=None):
        self.clock = clock
        self.calls = []
        self.result = result

    def reconfigure(self, config, selector, backend):
        self.calls.append((self.clock.seconds(), config, selector, backend))
        return self.result


class OldService:
    """A service that predates reload."""


class Log:
    def __init__(self, test):
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        test.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def lines(self, namespace="ownsocket.reload"):
        """The lines of C{namespace} (None: all)."""
        return [formatEvent(e) for e in self.events
                if namespace is None or e.get("log_namespace") == namespace]


class ReloadTests(unittest.TestCase):

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(100)
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.path = os.path.join(self.dir, "site.ini")
        self.write(default="first.efi")
        config, text = read_config(self.path)
        self.bus = EventBus(self.clock)
        self.seen = EventList()
        self.bus.subscribe(self.seen)
        self.runtime = Runtime(prepare(config, text, self.clock), self.clock, self.bus,
                               config_path=self.path)
        self.runtime.tftp = FakeService(self.clock)
        self.runtime.http = FakeService(self.clock)
        self.reloader = Reloader(self.runtime)
        self.log = Log(self)

    def write(self, text=None, **values):
        if text is None:
            text = VALID.format(root=self.dir, **values)
        with open(self.path, "w") as handle:
            handle.write(text)
        return text

    def reload_events(self):
        events = [e for e in self.seen.events if (e.service, e.kind) == ("server", "reload")]
        for event in events:
            for key in KINDS["server"]["reload"]:
                self.assertIn(key, event.fields)
        return events

    def assertUnchanged(self, before):
        self.assertIs(self.runtime.config, before)
        self.assertEqual(self.runtime.tftp.calls, [])
        self.assertEqual(self.runtime.http.calls, [])

    @defer.inlineCallbacks
    def test_valid_reload_reaches_every_service_in_one_turn(self):
        old_hash = self.runtime.config_hash
        text = self.write(default="second.efi")
        ok = yield run_reload(self.reloader, "SIGHUP")
        self.assertTrue(ok)
        config = self.runtime.config
        self.assertEqual(config.boot.default, "second.efi")
        self.assertEqual(self.runtime.config_hash, config_hash(text))
        self.assertNotEqual(self.runtime.config_hash, old_hash)
        self.assertEqual(self.runtime.selectors, list(config.boot.selectors))
        [(when_tftp, c1, chain1, backend1)] = self.runtime.tftp.calls
        [(when_http, c2, chain2, backend2)] = self.runtime.http.calls
        self.assertEqual(when_tftp, when_http)
        self.assertIs(c1, config)
        self.assertIs(c2, config)
        self.assertIs(chain1, chain2)
        self.assertIs(chain1, self.runtime.prepared.selector)
        self.assertIs(backend1, self.runtime.prepared.tftp_backend)
        self.assertIs(backend2, self.runtime.prepared.http_backend)
        [event] = self.reload_events()
        self.assertEqual((event.fields["result"], event.fields["error"], event.fields["source"]),
                         ("ok", None, self.path))
        self.assertEqual(self.runtime.reloads, {"ok": 1, "failed": 0})
        [line] = self.log.lines()
        self.assertIn(f"reloaded {self.path} (sha256 {config_hash(text)[:12]}) on SIGHUP", line)

    @defer.inlineCallbacks
    def test_new_selector_chain_decides(self):
        from ownsocket.boot.request import BootRequest
        self.write(default="second.efi")
        yield run_reload(self.reloader)
        request = BootRequest(mac="52:54:00:00:00:01", xid=1, message_type=1, arch=(0xFFFF,))
        [(_, _, chain, _)] = self.runtime.tftp.calls
        decision = yield defer.maybeDeferred(chain.select, request)
        self.assertEqual(decision.filename, "second.efi")

    @defer.inlineCallbacks
    def test_invalid_file_changes_nothing(self):
        before = self.runtime.config
        before_hash = self.runtime.config_hash
        self.write("[tftp]\nport = 70000\n")
        ok = yield run_reload(self.reloader)
        self.assertFalse(ok)
        self.assertUnchanged(before)
        self.assertEqual(self.runtime.config_hash, before_hash)
        [line] = self.log.lines()
        self.assertEqual(line, f"reload of {self.path} failed: {self.path}: [tftp] port: 70000 is out "
                               "of range (1 to 65535); the running configuration is kept")
        [event] = self.reload_events()
        self.assertEqual(event.fields["result"], "failed")
        self.assertIn("[tftp] port: 70000 is out of range", event.fields["error"])
        self.assertEqual(self.runtime.reloads, {"ok": 0, "failed": 1})

    @defer.inlineCallbacks
    def test_bad_plugin_changes_nothing(self):
        before = self.runtime.config
        self.write(VALID.format(root=self.dir, default="x.efi") + "selectors = host, nosuchplugin\n")
        ok = yield run_reload(self.reloader)
        self.assertFalse(ok)
        self.assertUnchanged(before)
        [line] = self.log.lines()
        self.assertIn("[boot] selectors: unknown selector 'nosuchplugin'", line)

    @defer.inlineCallbacks
    def test_selector_that_fails_to_build_changes_nothing(self):
        before = self.runtime.config
        self.write(VALID.format(root=self.dir, default="x.efi")
                   + "selectors = tests.test_reload.exploding_selector\n")
        ok = yield run_reload(self.reloader)
        self.assertFalse(ok)
        self.assertUnchanged(before)
        self.assertIn("selector 'tests.test_reload.exploding_selector' failed to start",
                      self.log.lines()[0])

    @defer.inlineCallbacks
    def test_missing_file_changes_nothing(self):
        before = self.runtime.config
        os.remove(self.path)
        ok = yield run_reload(self.reloader)
        self.assertFalse(ok)
        self.assertUnchanged(before)
        self.assertIn("cannot read", self.log.lines()[0])

    @defer.inlineCallbacks
    def test_alternating_valid_and_invalid(self):
        for round in range(10):
            self.write(default=f"file{round}.efi")
            self.assertTrue((yield run_reload(self.reloader)))
            self.assertEqual(self.runtime.config.boot.default, f"file{round}.efi")
            self.write("[boot]\ndefault =\n[nonsense]\n")
            self.assertFalse((yield run_reload(self.reloader)))
            self.assertEqual(self.runtime.config.boot.default, f"file{round}.efi")
        self.assertEqual(self.runtime.reloads, {"ok": 10, "failed": 10})
        self.assertEqual(len(self.runtime.tftp.calls), 10)

    def test_steps_in_turns_of_their_own(self):
        """
        Reading, each build step and the swap come in turns of their own,
        so the reactor reads its sockets between them (in one piece, a
        reload lengthened one turn of a busy server by 5-15 ms).
        """
        reactor = TurnReactor()
        self.runtime.reactor = reactor
        journal = []

        def read(path):
            journal.append(("read", reactor.turns))
            return read_config(path)

        def build(config, text, clock):
            steps = prepare_steps(config, text, clock)
            while True:
                journal.append(("step", reactor.turns))
                try:
                    next(steps)
                except StopIteration as done:
                    return done.value
                yield

        class Recording(FakeService):
            def reconfigure(service, config, selector, backend):
                journal.append(("swap", reactor.turns))

        self.runtime.tftp = Recording(reactor)
        self.write(default="second.efi")
        d = Reloader(self.runtime, read=read, build=build).reload()
        for _ in range(10):
            if d.called:
                break
            reactor.turn()
        self.assertTrue(self.successResultOf(d))
        self.assertEqual(self.runtime.config.boot.default, "second.efi")
        names = [name for name, _ in journal]
        self.assertEqual(names, ["read", "step", "step", "step", "swap"])
        turns = [turn for _, turn in journal]
        self.assertEqual(turns, sorted(set(turns)), journal)  # never two in one turn
        [line] = self.log.lines()
        self.assertRegex(line, r"read and built in 4 reactor turns of at most [\d.]+ ms "
                               r"\([\d.]+ ms in all\), swapped in [\d.]+ ms")

    def test_a_plain_build_function_still_works(self):
        """A build that returns the Prepared at once (not steps) is taken as is."""
        self.write(default="second.efi")
        reloader = Reloader(self.runtime, build=prepare)
        self.assertTrue(self.successResultOf(run_reload(reloader)))
        self.assertEqual(self.runtime.config.boot.default, "second.efi")

    @defer.inlineCallbacks
    def test_service_without_reconfigure_is_named(self):
        self.runtime.dhcp = OldService()
        self.write(default="second.efi")
        ok = yield run_reload(self.reloader)
        self.assertTrue(ok)
        self.assertEqual(len(self.runtime.http.calls), 1)
        self.assertTrue(any("the dhcp service cannot be reconfigured" in line
                            for line in self.log.lines()), self.log.lines())

    @defer.inlineCallbacks
    def test_settling_service_and_failed_rebind(self):
        settling = defer.Deferred()
        self.runtime.http.result = settling
        self.write(default="second.efi")
        d = run_reload(self.reloader)
        self.assertNoResult(d)
        self.assertEqual(self.runtime.config.boot.default, "second.efi")  # swapped already
        settling.errback(RuntimeError("cannot bind TCP 0.0.0.0:80: address already in use"))
        ok = yield d
        self.assertFalse(ok)
        [event] = self.reload_events()
        self.assertEqual(event.fields["result"], "failed")
        self.assertIn("http: cannot bind TCP 0.0.0.0:80", event.fields["error"])

    @defer.inlineCallbacks
    def test_signal_during_reload_runs_after_it(self):
        settling = defer.Deferred()
        self.runtime.http.result = settling
        self.write(default="second.efi")
        first = run_reload(self.reloader)
        self.write(default="third.efi")
        self.reloader.reload()
        self.assertEqual(len(self.runtime.http.calls), 1)
        self.runtime.http.result = None
        settling.callback(None)
        yield first
        for _ in range(10):
            self.clock.advance(0)
        self.assertEqual(len(self.runtime.http.calls), 2)
        self.assertEqual(self.runtime.config.boot.default, "third.efi")

    @defer.inlineCallbacks
    def test_enabled_flip_needs_restart(self):
        self.write(VALID.format(root=self.dir, default="x.efi") + "[http]\nenabled = true\n")
        ok = yield run_reload(self.reloader)
        self.assertTrue(ok)
        self.assertTrue(any("[http] enabled changed from False to True; that takes effect at "
                            "the next restart" in line for line in self.log.lines()))

    @defer.inlineCallbacks
    def test_embedded_defaults(self):
        self.runtime.config_path = None
        ok = yield run_reload(self.reloader)
        self.assertTrue(ok)
        from ownsocket.config import EMBEDDED_DEFAULTS
        self.assertEqual(self.runtime.config_hash, config_hash(EMBEDDED_DEFAULTS))
        self.assertEqual(self.runtime.config.source, "<embedded defaults>")


def exploding_selector(settings, context):
    raise RuntimeError("inventory database unreachable")


class TurnReactor(Clock):
    """
    A Clock run one reactor turn at a time: C{turn()} runs the calls due
    when it starts; what they schedule for now runs in the next turn, as in
    Twisted's loop (where the sockets are polled and read in between).
    """

    turns = 0

    def turn(self):
        self.turns += 1
        due = [call for call in self.calls if call.getTime() <= self.seconds()]
        for call in due:
            if call in self.calls:
                self.calls.remove(call)
                call.called = 1
                call.func(*call.args, **call.kw)


class FakeReactor(Clock):
    def __init__(self):
        super().__init__()
        self.from_thread = []

    def callFromThread(self, f, *args):
        self.from_thread.append((f, args))


class SignalTests(unittest.TestCase):

    def test_sighup_schedules_a_reload_and_stop_restores(self):
        previous = signal.getsignal(signal.SIGHUP)
        reactor = FakeReactor()
        reloader = object.__new__(Reloader)
        service = ReloadOnSignal(reloader, reactor)
        service.startService()
        try:
            handler = signal.getsignal(signal.SIGHUP)
            self.assertNotEqual(handler, previous)
            handler(signal.SIGHUP, None)
            self.assertEqual(reactor.from_thread, [(reloader.reload, ("SIGHUP",))])
        finally:
            service.stopService()
        self.assertEqual(signal.getsignal(signal.SIGHUP), previous)

    def test_real_signal(self):
        """os.kill(SIGHUP) reaches the handler (delivered between bytecodes)."""
        reactor = FakeReactor()
        reloader = object.__new__(Reloader)
        service = ReloadOnSignal(reloader, reactor)
        service.startService()
        self.addCleanup(service.stopService)
        os.kill(os.getpid(), signal.SIGHUP)
        for _ in range(1000):
            if reactor.from_thread:
                break
        self.assertEqual(len(reactor.from_thread), 1)


class Remembers:
    """A selector with memory, as the stateful iPXE selector has."""

    name = "remembers"

    def __init__(self, settings=None, context=None):
        self.seen = {}

    def select(self, request):
        return None

    def inherit(self, old):
        self.seen = dict(old.seen)


class CarryStateTests(unittest.TestCase):

    @defer.inlineCallbacks
    def test_same_selector_takes_over_its_memory(self):
        clock = Clock()
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        path = os.path.join(directory, "site.ini")
        with open(path, "w") as handle:
            handle.write("[dhcp]\nenabled = false\n[boot]\nselectors = tests.test_reload.remembers, arch\n")
        config, text = read_config(path)
        runtime = Runtime(prepare(config, text, clock), clock, EventBus(clock), config_path=path)
        old = runtime.prepared.selectors[0]
        old.seen["52:54:00:00:00:01"] = 12.0
        ok = yield run_reload(Reloader(runtime))
        self.assertTrue(ok)
        new = runtime.prepared.selectors[0]
        self.assertIsNot(new, old)
        self.assertEqual(new.seen, {"52:54:00:00:00:01": 12.0})


def remembers(settings, context):
    from zope.interface import directlyProvides
    from ownsocket.interfaces import IBootFileSelector
    selector = Remembers()
    directlyProvides(selector, IBootFileSelector)
    return selector


class FakeCollector:
    """The gc module's freeze/collect calls, recorded instead of done: a
    test must not freeze the test runner's own heap."""

    def __init__(self):
        self.calls = []

    def collect(self, generation=2):
        self.calls.append(("collect", generation))
        return 0

    def freeze(self):
        self.calls.append(("freeze",))

    def unfreeze(self):
        self.calls.append(("unfreeze",))


class HeapTests(unittest.TestCase):

    def setUp(self):
        self.clock = Clock()
        self.gc = FakeCollector()
        self.heap = Heap(self.clock, self.gc)

    def test_start_collects_everything_once_then_freezes(self):
        self.heap.start()
        self.assertEqual(self.gc.calls, [("collect", 2), ("freeze",)])

    def test_settle_never_collects_the_old_generation(self):
        self.heap.settle()
        self.assertEqual(self.gc.calls, [("collect", 1), ("freeze",)])

    def test_sweep_at_most_every_sweep_every(self):
        self.heap.start()
        del self.gc.calls[:]
        self.clock.advance(SWEEP_EVERY - 1)
        self.assertFalse(self.heap.sweep())
        self.assertEqual(self.gc.calls, [])
        self.clock.advance(1)
        self.assertTrue(self.heap.sweep())
        self.assertEqual(self.gc.calls, [("unfreeze",), ("collect", 2), ("freeze",)])
        self.assertFalse(self.heap.sweep())

    def test_a_storm_settles_now_and_then_never_sweeps(self):
        self.heap.start()
        del self.gc.calls[:]
        for _ in range(int(SETTLE_EVERY) * 3):
            self.clock.advance(1)
            self.heap.tick(quiet=False)
        self.assertEqual(self.gc.calls, [("collect", 1), ("freeze",)] * 3)


class TransfersInFlightTests(unittest.TestCase):
    """
    A full sweep (2.4 s once, on a loaded machine) waits until no TFTP or
    HTTP transfer is in flight, as well as for a quiet DHCP.
    """

    class Service:
        def __init__(self):
            self.rows = []

        def transfers_in_flight(self):
            return self.rows

    def setUp(self):
        self.clock = Clock()
        self.gc = FakeCollector()
        self.runtime = Runtime.__new__(Runtime)
        self.runtime.tftp, self.runtime.http = self.Service(), self.Service()
        self.heap = Heap(self.clock, self.gc, busy=self.runtime.transfers_busy)
        self.heap.start()
        del self.gc.calls[:]

    def test_runtime_transfers_busy(self):
        self.assertFalse(self.runtime.transfers_busy())
        self.runtime.http.rows.append({"peer": "192.0.2.1"})
        self.assertTrue(self.runtime.transfers_busy())
        self.runtime.http = None  # [http] enabled = false
        self.assertFalse(self.runtime.transfers_busy())
        self.runtime.tftp.rows.append({"peer": "192.0.2.2", "state": "waiting"})
        self.assertTrue(self.runtime.transfers_busy())

    def test_sweep_waits_for_transfers_to_end(self):
        self.runtime.tftp.rows.append({"peer": "192.0.2.1"})
        for _ in range(int(SWEEP_EVERY) * 3):
            self.clock.advance(1)
            self.heap.tick(quiet=True)  # DHCP quiet, a transfer running
        self.assertNotIn(("unfreeze",), self.gc.calls)
        self.assertNotIn(("collect", 2), self.gc.calls)
        # meanwhile what survives is still frozen now and then
        self.assertEqual(self.gc.calls, [("collect", 1), ("freeze",)] * 6)
        del self.gc.calls[:]
        self.runtime.tftp.rows.clear()
        self.clock.advance(1)
        self.heap.tick(quiet=True)
        self.assertEqual(self.gc.calls, [("unfreeze",), ("collect", 2), ("freeze",)])

    def test_direct_sweep_refused_under_a_transfer(self):
        self.clock.advance(SWEEP_EVERY)
        self.runtime.http.rows.append({"peer": "192.0.2.1"})
        self.assertFalse(self.heap.sweep())
        self.runtime.http.rows.clear()
        self.assertTrue(self.heap.sweep())

    def test_quiet_but_busy_still_settles_every_settle_every(self):
        self.runtime.tftp.rows.append({"peer": "192.0.2.1"})
        self.clock.advance(SETTLE_EVERY)
        self.heap.tick(quiet=True)
        self.heap.tick(quiet=True)
        self.assertEqual(self.gc.calls, [("collect", 1), ("freeze",)])


class NoFreeze:
    """A collector without freeze (PyPy's)."""

    def __init__(self):
        self.calls = []

    def collect(self, generation=2):
        self.calls.append(("collect", generation))


class HeapWithoutFreezeTests(unittest.TestCase):

    def test_everything_is_a_no_op(self):
        clock = Clock()
        gc = NoFreeze()
        heap = Heap(clock, gc)
        self.assertFalse(heap.active)
        heap.start()
        heap.settle()
        clock.advance(SWEEP_EVERY + SETTLE_EVERY)
        self.assertFalse(heap.sweep())
        heap.tick(quiet=True)
        heap.tick(quiet=False)
        self.assertEqual(gc.calls, [])


class HeapAtReloadTests(unittest.TestCase):
    """The reload freezes the new long-lived heap, and only after a swap."""

    def setUp(self):
        ReloadTests.setUp(self)
        self.gc = FakeCollector()
        self.runtime.heap = Heap(self.clock, self.gc)

    write = ReloadTests.write

    @defer.inlineCallbacks
    def test_a_reload_does_no_collector_work(self):
        """The new config is frozen by the periodic settle, not by the
        reload: a young collection (a few ms) has no place in its turns."""
        self.runtime.heap.start()
        del self.gc.calls[:]
        self.write(default="second.efi")
        self.assertTrue((yield run_reload(self.reloader)))
        self.write(text="[tftp]\nmax_windowsize = 0\n")
        self.assertFalse((yield run_reload(self.reloader)))
        for _ in range(int(SETTLE_EVERY) - 1):
            self.clock.advance(1)
            self.runtime.heap.tick(quiet=False)
        self.assertEqual(self.gc.calls, [])
        self.clock.advance(1)
        self.runtime.heap.tick(quiet=False)
        self.assertEqual(self.gc.calls, [("collect", 1), ("freeze",)])

    def test_reload_on_signal_starts_the_heap_at_the_first_turn(self):
        reactor = FakeReactor()
        dhcp = DhcpService.__new__(DhcpService)
        self.runtime.dhcp = dhcp
        self.runtime.heap = None
        service = ReloadOnSignal(self.reloader, reactor, heap=Heap(reactor, self.gc))
        service.startService()
        self.addCleanup(service.stopService)
        self.assertEqual(self.gc.calls, [])  # not inside startService
        reactor.advance(0)
        self.assertIs(self.runtime.heap, service.heap)
        self.assertIs(dhcp.heap, service.heap)
        self.assertEqual(service.heap.busy, self.runtime.transfers_busy)
        self.assertEqual(self.gc.calls, [("collect", 2), ("freeze",)])

    def test_stopped_before_the_first_turn_leaves_the_collector_alone(self):
        reactor = FakeReactor()
        self.runtime.heap = None
        service = ReloadOnSignal(self.reloader, reactor, heap=Heap(reactor, self.gc))
        service.startService()
        service.stopService()
        reactor.advance(1)
        self.assertEqual(self.gc.calls, [])
        self.assertIsNone(self.runtime.heap)


class QuietSweepTests(unittest.TestCase):
    """The DHCP service sweeps the heap only when no request came for QUIET s."""

    class Store:
        """A store without checkpoints (as PostgreSQL): the idle check still runs."""

        def close(self):
            return None

    class Server:
        last_activity = 0.0

    def _service(self):
        """A DHCP service with only what its once-a-second check needs, and
        a heap on a fake collector, started."""
        clock = Clock()
        gc = FakeCollector()
        service = DhcpService.__new__(DhcpService)
        service.reactor = clock
        service.store = self.Store()
        service.server = self.Server()
        service.heap = Heap(clock, gc)
        service.heap.start()
        return clock, gc, service

    def test_sweeps_only_when_quiet(self):
        from ownsocket.dhcp import service as dhcp_service
        clock, gc, service = self._service()
        del gc.calls[:]
        service._start_loops()
        self.addCleanup(service._stop_loops)
        for _ in range(int(SWEEP_EVERY) * 2 + 10):
            clock.advance(dhcp_service.CHECKPOINT_POLL / 2)
            service.server.last_activity = clock.seconds()  # requests twice a second
        self.assertNotIn(("unfreeze",), gc.calls)  # settled now and then, never swept
        self.assertIn(("freeze",), gc.calls)
        del gc.calls[:]
        clock.advance(dhcp_service.QUIET + dhcp_service.CHECKPOINT_POLL)
        self.assertEqual(gc.calls, [])  # quiet at one tick only: not yet
        clock.advance(dhcp_service.CHECKPOINT_POLL)
        self.assertEqual(gc.calls, [("unfreeze",), ("collect", 2), ("freeze",)])

    def test_a_stalled_reactor_is_not_a_quiet_network(self):
        """
        A reactor starved of CPU runs its timers before it reads its
        sockets: the first tick after a 1.5 s stall sees no request for
        1.5 s although the socket is full.  No sweep on that alone.
        """
        clock, gc, service = self._service()
        clock.advance(SWEEP_EVERY)
        del gc.calls[:]
        service._start_loops()
        self.addCleanup(service._stop_loops)
        quiet_ticks = []
        tick = service.heap.tick
        service.heap.tick = lambda quiet: (quiet_ticks.append(quiet), tick(quiet))
        for _ in range(20):
            for _ in range(6):  # a storm: requests all the time...
                clock.advance(0.5)
                service.server.last_activity = clock.seconds()
            clock.advance(1.6)  # ...then a stall: the tick comes before the reads
            service.server.last_activity = clock.seconds()  # the reactor reads the backlog
        self.assertEqual(quiet_ticks.count(True), 20)  # each stall looked quiet to one tick
        self.assertNotIn(("unfreeze",), gc.calls)  # settled now and then, never swept
        self.assertNotIn(("collect", 2), gc.calls)


class StubDhcp(Service):
    """The running DHCPv4 service, as far as DHCPv6's start and stop care."""

    def reconfigure(self, config, selector, backend):
        return None


class Dhcp6StartStopTests(unittest.TestCase):
    """
    A reload that adds the first [subnet6:...] starts DHCPv6 (socket and
    Router Advertisements), one that removes the last stops it, as a start
    with that file would.  Fake sockets here; tests/test_reload_dhcp6.py
    does it with real clients in network namespaces.
    """

    SUBNET6 = "[subnet6:lab]\nnetwork = fd99::/64\npool = fd99::100-fd99::1ff\n"

    def setUp(self):
        from tests.test_dhcp6_service import FakeReactor as FakeReactor6
        self.reactor = FakeReactor6()
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.path = os.path.join(self.dir, "site.ini")
        self.write(default="first.efi")
        config, text = read_config(self.path)
        self.bus = EventBus(self.reactor)
        self.seen = EventList()
        self.bus.subscribe(self.seen)
        self.runtime = Runtime(prepare(config, text, self.reactor), self.reactor, self.bus,
                               config_path=self.path)
        self.tree = MultiService()
        self.runtime.dhcp = StubDhcp()
        self.runtime.dhcp.setServiceParent(self.tree)
        self.tree.privilegedStartService()
        self.tree.startService()
        self.addCleanup(self.tree.stopService)
        self.sockets = []
        self.refuse = None
        self.runtime.make_dhcp6 = self.make_dhcp6
        self.reloader = Reloader(self.runtime)
        self.log = Log(self)

    def make_dhcp6(self, prepared):
        from tests.test_dhcp6_service import fake_service
        return fake_service(prepared.config, prepared.selector, self.reactor, self.sockets,
                            events=self.bus, refuse=self.refuse)

    def write(self, subnet6=False, default="first.efi", mode="server"):
        text = (f"[dhcp]\nmode = {mode}\nleases = {self.dir}/leases.sqlite\n"
                f"[tftp]\nroot = {self.dir}\nport = 16969\n[boot]\ndefault = {default}\n")
        if subnet6:
            text += self.SUBNET6
        with open(self.path, "w") as handle:
            handle.write(text)

    def in_tree(self):
        return [service for service in self.tree if service.name == "dhcp6"]

    @defer.inlineCallbacks
    def test_first_subnet6_starts_and_last_one_gone_stops(self):
        self.write(subnet6=True, default="second.efi")
        self.assertTrue((yield run_reload(self.reloader)))
        service = self.runtime.dhcp6
        self.assertIsNotNone(service)
        self.assertEqual(self.in_tree(), [service])
        self.assertTrue(service.running)
        self.assertIs(service.config, self.runtime.config)
        self.assertEqual(sorted(service.ports), ["br0"])
        self.assertEqual(sorted(service.advertisers), ["br0"])
        udp, raw = self.sockets
        self.assertEqual(len(raw.sent), 1)  # the first Router Advertisement, at once
        self.assertEqual(raw.sent[0][0][0], ra.ROUTER_ADVERTISEMENT)
        self.assertIn(("dhcp6", "dhcp6"), [(name, s.name) for name, s in self.runtime.services()])
        self.assertTrue(any("DHCPv6 started" in line for line in self.log.lines()), self.log.lines())
        # it answers a Solicit with the new config's boot file
        from ownsocket.dhcp6 import wire
        from tests.fixtures_loader import load_hex6
        port = service.ports["br0"]
        port.protocol.datagramReceived(load_hex6("ovmf_pxe6_solicit"), ("fe80::5054:ff:fe99:10", 546))
        ((data, _),) = port.written
        self.assertEqual(wire.parse_server_message(data).option(59), b"tftp://[fd99::1]/second.efi")

        self.write(subnet6=False, default="third.efi")
        self.assertTrue((yield run_reload(self.reloader)))
        self.assertIsNone(self.runtime.dhcp6)
        self.assertEqual(self.in_tree(), [])
        self.assertFalse(service.running)
        self.assertTrue(port.stopped)
        self.assertTrue(raw.closed)
        self.assertEqual(self.reactor.getDelayedCalls(), [])  # no RA timer left
        self.assertTrue(any("DHCPv6 and Router Advertisements stopped" in line
                            for line in self.log.lines()), self.log.lines())

        # and back again: a new service, new sockets
        self.write(subnet6=True, default="fourth.efi")
        self.assertTrue((yield run_reload(self.reloader)))
        self.assertIsNot(self.runtime.dhcp6, service)
        self.assertTrue(self.runtime.dhcp6.running)
        self.assertEqual(len(self.sockets), 4)

    @defer.inlineCallbacks
    def test_running_dhcp6_is_reconfigured_not_restarted(self):
        self.write(subnet6=True)
        self.assertTrue((yield run_reload(self.reloader)))
        service = self.runtime.dhcp6
        self.write(subnet6=True, default="second.efi")
        self.assertTrue((yield run_reload(self.reloader)))
        self.assertIs(self.runtime.dhcp6, service)
        self.assertIs(service.config, self.runtime.config)
        self.assertEqual(len(self.sockets), 2)

    @defer.inlineCallbacks
    def test_cannot_open_port_547_fails_cleanly(self):
        from ownsocket.dhcp.sockets import SocketError
        self.refuse = SocketError("cannot open DHCPv6 UDP port 547 on interface br0: permission denied")
        self.write(subnet6=True, default="second.efi")
        self.assertFalse((yield run_reload(self.reloader)))
        self.assertIsNone(self.runtime.dhcp6)
        self.assertEqual(self.in_tree(), [])
        self.assertEqual(self.runtime.config.boot.default, "second.efi")  # the rest is in force
        [event] = [e for e in self.seen.events if (e.service, e.kind) == ("server", "reload")]
        self.assertEqual(event.fields["result"], "failed")
        self.assertIn("dhcp6: cannot start: cannot open DHCPv6 UDP port 547 on interface br0: "
                      "permission denied", event.fields["error"])
        # a later reload tries again
        self.refuse = None
        self.write(subnet6=True, default="third.efi")
        self.assertTrue((yield run_reload(self.reloader)))
        self.assertTrue(self.runtime.dhcp6.running)

    @defer.inlineCallbacks
    def test_no_dhcp_service_no_dhcp6(self):
        self.runtime.dhcp.disownServiceParent()
        self.runtime.dhcp = None  # [dhcp] enabled = false at start-up
        self.write(subnet6=True)
        self.assertTrue((yield run_reload(self.reloader)))
        self.assertIsNone(self.runtime.dhcp6)
        self.assertEqual(self.in_tree(), [])


def _free_port_both_families():
    """A port free for TCP and UDP on 0.0.0.0 and [::] (IPv6-only) alike."""
    for _ in range(50):
        probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        probe.bind(("0.0.0.0", 0))
        port = probe.getsockname()[1]
        probe.close()
        try:
            for family, kind in ((socket.AF_INET, socket.SOCK_DGRAM), (socket.AF_INET6, socket.SOCK_STREAM),
                                 (socket.AF_INET6, socket.SOCK_DGRAM)):
                with socket.socket(family, kind) as other:
                    if family == socket.AF_INET6:
                        other.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                    other.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", port))
        except OSError:
            continue
        return port
    raise unittest.SkipTest("no port free on both families")


class StubDhcp6(Service):
    """DHCPv6 as far as these tests care: it starts, stops and reconfigures."""

    name = "dhcp6"

    def __init__(self, config):
        self.config = config

    def reconfigure(self, config, selector, backend):
        self.config = config


class Ipv6ListenersOnReloadTests(unittest.TestCase):
    """
    The first [subnet6:...] on reload opens TFTP's and HTTP's "::"
    listeners (where they name no addresses), the last one gone closes
    them; the IPv4 listeners stay open throughout.  Real services on real
    sockets (curl over ::1 as the client), the real reactor.
    """

    if shutil.which("curl") is None:
        skip = "needs curl"
    elif not has_ipv6_loopback():
        skip = "no IPv6 on the loopback interface"

    def setUp(self):
        from twisted.internet import reactor
        self.reactor = reactor
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        with open(os.path.join(self.dir, "snponly.efi"), "wb") as handle:
            handle.write(b"first stage\n" * 500)
        self.tftp_port = _free_port_both_families()
        self.http_port = _free_port_both_families()
        self.path = os.path.join(self.dir, "site.ini")
        self.write(subnet6=False)
        config, text = read_config(self.path)
        prepared = prepare(config, text, reactor)
        self.runtime = Runtime(prepared, reactor, EventBus(reactor), config_path=self.path)
        self.tree = MultiService()
        self.runtime.dhcp = StubDhcp()
        self.runtime.dhcp.setServiceParent(self.tree)
        self.runtime.make_dhcp6 = lambda prepared: StubDhcp6(prepared.config)
        self.runtime.tftp = TFTPService(config.tftp, backend=prepared.tftp_backend, reactor=reactor)
        self.runtime.tftp.setServiceParent(self.tree)
        self.runtime.http = HTTPService(config.http, prepared.http_backend, reactor=reactor)
        self.runtime.http.setServiceParent(self.tree)
        self.tree.privilegedStartService()
        self.tree.startService()
        self.addCleanup(self.tree.stopService)
        self.reloader = Reloader(self.runtime)
        self.log = Log(self)

    def write(self, subnet6, tftp_addresses=""):
        text = (f"[dhcp]\nleases = {self.dir}/leases.sqlite\n"
                f"[tftp]\nroot = {self.dir}\nport = {self.tftp_port}\n")
        if tftp_addresses:
            text += f"addresses = {tftp_addresses}\n"
        text += f"[http]\nenabled = true\nport = {self.http_port}\n"
        if subnet6:
            text += "[subnet6:lab]\nnetwork = fd99::/64\npool = fd99::100-fd99::1ff\n"
        with open(self.path, "w") as handle:
            handle.write(text)

    def hosts(self, service):
        return sorted(host for host, _ in service.listening_addresses())

    def ipv4_port(self, service):
        [port] = [port for port in service.ports if port.getHost().host == "0.0.0.0"]
        return port

    async def fetch(self, scheme, port):
        """(exit code, body) of curl over ::1."""
        from twisted.internet import utils
        out = os.path.join(self.dir, "out")
        if os.path.exists(out):
            os.remove(out)
        _, err, code = await utils.getProcessOutputAndValue(
            "curl", ["-s", "-S", "-g", "--max-time", "10", "-o", out,
                     f"{scheme}://[::1]:{port}/snponly.efi"], env=os.environ)
        if code != 0:
            return code, err
        with open(out, "rb") as handle:
            return code, handle.read()

    async def test_first_subnet6_opens_ipv6_listeners_last_one_gone_closes_them(self):
        tftp, http = self.runtime.tftp, self.runtime.http
        self.assertEqual(self.hosts(tftp), ["0.0.0.0"])
        self.assertEqual(self.hosts(http), ["0.0.0.0"])
        ipv4 = self.ipv4_port(tftp), self.ipv4_port(http)

        self.write(subnet6=True)
        self.assertTrue(await self.reloader.reload())
        self.assertIsNotNone(self.runtime.dhcp6)
        self.assertEqual(self.hosts(tftp), ["0.0.0.0", "::"])
        self.assertEqual(self.hosts(http), ["0.0.0.0", "::"])
        self.assertEqual((self.ipv4_port(tftp), self.ipv4_port(http)), ipv4)  # not re-bound
        self.assertEqual({port for _, port in tftp.listening_addresses()}, {self.tftp_port})
        self.assertEqual(await self.fetch("tftp", self.tftp_port), (0, b"first stage\n" * 500))
        self.assertEqual(await self.fetch("http", self.http_port), (0, b"first stage\n" * 500))
        self.assertTrue(any(f"tftp: now listening on 0.0.0.0:{self.tftp_port}, [::]:{self.tftp_port}"
                            in line for line in self.log.lines(None)), self.log.lines(None))

        # a reload that changes nothing about them keeps every port
        ports = list(tftp.ports), list(http.ports)
        self.assertTrue(await self.reloader.reload())
        self.assertEqual((tftp.ports, http.ports), ports)

        self.write(subnet6=False)
        self.assertTrue(await self.reloader.reload())
        self.assertIsNone(self.runtime.dhcp6)
        self.assertEqual(self.hosts(tftp), ["0.0.0.0"])
        self.assertEqual(self.hosts(http), ["0.0.0.0"])
        self.assertEqual((self.ipv4_port(tftp), self.ipv4_port(http)), ipv4)
        code, _ = await self.fetch("http", self.http_port)
        self.assertNotEqual(code, 0)  # nobody on [::1] any more

    async def test_named_addresses_get_no_ipv6_listener(self):
        self.write(subnet6=True, tftp_addresses="127.0.0.1")
        self.assertTrue(await self.reloader.reload())
        self.assertEqual(self.runtime.tftp.listening_addresses(), [("127.0.0.1", self.tftp_port)])
        self.assertEqual(self.hosts(self.runtime.http), ["0.0.0.0", "::"])

    async def test_ipv6_port_taken_keeps_ipv4_and_says_so(self):
        taken = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        self.addCleanup(taken.close)
        taken.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        taken.bind(("::", self.tftp_port))
        ipv4 = self.ipv4_port(self.runtime.tftp)
        self.write(subnet6=True)
        self.assertFalse(await self.reloader.reload())
        tftp = self.runtime.tftp
        self.assertEqual(tftp.listening_addresses(), [("0.0.0.0", self.tftp_port)])
        self.assertIs(self.ipv4_port(tftp), ipv4)
        self.assertFalse(tftp.listen_ipv6)
        self.assertEqual(self.hosts(self.runtime.http), ["0.0.0.0", "::"])  # HTTP could
        self.assertTrue(any(f"tftp: cannot bind UDP [::]:{self.tftp_port}: address already in use" in line
                            for line in self.log.lines()), self.log.lines())
        # once the port is free, the next reload opens it
        taken.close()
        self.assertTrue(await self.reloader.reload())
        self.assertEqual(self.hosts(tftp), ["0.0.0.0", "::"])
