"""
Live reload with fakes and a Clock: build, check, swap.

An invalid file (or plugin) changes nothing and says why in one line; a
valid one reaches every service in one reactor turn; the runtime's config
and hash follow.  The end-to-end run under twistd is tests/test_reload_live.py.
"""

import os
import signal

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest

from ownsocket.events import KINDS, EventBus, EventList
from ownsocket.reload import ReloadOnSignal, Reloader
from ownsocket.runtime import Runtime, config_hash, prepare, read_config

VALID = """\
[dhcp]
enabled = false
[tftp]
root = {root}
port = 16969
[boot]
default = {default}
"""


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
        return [formatEvent(e) for e in self.events if e.get("log_namespace") == namespace]


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
        ok = yield self.reloader.reload("SIGHUP")
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
        yield self.reloader.reload()
        request = BootRequest(mac="52:54:00:00:00:01", xid=1, message_type=1, arch=(0xFFFF,))
        [(_, _, chain, _)] = self.runtime.tftp.calls
        decision = yield defer.maybeDeferred(chain.select, request)
        self.assertEqual(decision.filename, "second.efi")

    @defer.inlineCallbacks
    def test_invalid_file_changes_nothing(self):
        before = self.runtime.config
        before_hash = self.runtime.config_hash
        self.write("[tftp]\nport = 70000\n")
        ok = yield self.reloader.reload()
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
        ok = yield self.reloader.reload()
        self.assertFalse(ok)
        self.assertUnchanged(before)
        [line] = self.log.lines()
        self.assertIn("[boot] selectors: unknown selector 'nosuchplugin'", line)

    @defer.inlineCallbacks
    def test_selector_that_fails_to_build_changes_nothing(self):
        before = self.runtime.config
        self.write(VALID.format(root=self.dir, default="x.efi")
                   + "selectors = tests.test_reload.exploding_selector\n")
        ok = yield self.reloader.reload()
        self.assertFalse(ok)
        self.assertUnchanged(before)
        self.assertIn("selector 'tests.test_reload.exploding_selector' failed to start",
                      self.log.lines()[0])

    @defer.inlineCallbacks
    def test_missing_file_changes_nothing(self):
        before = self.runtime.config
        os.remove(self.path)
        ok = yield self.reloader.reload()
        self.assertFalse(ok)
        self.assertUnchanged(before)
        self.assertIn("cannot read", self.log.lines()[0])

    @defer.inlineCallbacks
    def test_alternating_valid_and_invalid(self):
        for round in range(10):
            self.write(default=f"file{round}.efi")
            self.assertTrue((yield self.reloader.reload()))
            self.assertEqual(self.runtime.config.boot.default, f"file{round}.efi")
            self.write("[boot]\ndefault =\n[nonsense]\n")
            self.assertFalse((yield self.reloader.reload()))
            self.assertEqual(self.runtime.config.boot.default, f"file{round}.efi")
        self.assertEqual(self.runtime.reloads, {"ok": 10, "failed": 10})
        self.assertEqual(len(self.runtime.tftp.calls), 10)

    @defer.inlineCallbacks
    def test_service_without_reconfigure_is_named(self):
        self.runtime.dhcp = OldService()
        self.write(default="second.efi")
        ok = yield self.reloader.reload()
        self.assertTrue(ok)
        self.assertEqual(len(self.runtime.http.calls), 1)
        self.assertTrue(any("the dhcp service cannot be reconfigured" in line
                            for line in self.log.lines()), self.log.lines())

    @defer.inlineCallbacks
    def test_settling_service_and_failed_rebind(self):
        settling = defer.Deferred()
        self.runtime.http.result = settling
        self.write(default="second.efi")
        d = self.reloader.reload()
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
        first = self.reloader.reload()
        self.write(default="third.efi")
        self.reloader.reload()
        self.assertEqual(len(self.runtime.http.calls), 1)
        self.runtime.http.result = None
        settling.callback(None)
        yield first
        self.clock.advance(0)
        self.assertEqual(len(self.runtime.http.calls), 2)
        self.assertEqual(self.runtime.config.boot.default, "third.efi")

    @defer.inlineCallbacks
    def test_enabled_flip_needs_restart(self):
        self.write(VALID.format(root=self.dir, default="x.efi") + "[http]\nenabled = true\n")
        ok = yield self.reloader.reload()
        self.assertTrue(ok)
        self.assertTrue(any("[http] enabled changed from False to True; that takes effect at "
                            "the next restart" in line for line in self.log.lines()))

    @defer.inlineCallbacks
    def test_embedded_defaults(self):
        self.runtime.config_path = None
        ok = yield self.reloader.reload()
        self.assertTrue(ok)
        from ownsocket.config import EMBEDDED_DEFAULTS
        self.assertEqual(self.runtime.config_hash, config_hash(EMBEDDED_DEFAULTS))
        self.assertEqual(self.runtime.config.source, "<embedded defaults>")


def exploding_selector(settings, context):
    raise RuntimeError("inventory database unreachable")


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
        ok = yield Reloader(runtime).reload()
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
