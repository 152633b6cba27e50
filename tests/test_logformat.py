"""The faster text observer writes what twistd's own would, and takes its place."""

import io
import os
import sys

from twisted.application.service import Application
from twisted.internet import task
from twisted.logger import ILogObserver, LogLevel, Logger, LogPublisher, textFileLogObserver
from twisted.python.failure import Failure
from twisted.trial import unittest

from ownsocket import logformat


def events():
    when = 1764500000.25
    try:
        1 / 0
    except ZeroDivisionError:
        failure = Failure()
    return [
        {"log_format": "{line}", "line": "DISCOVER from 52:54:00:00:00:01 -> OFFER 10.0.0.5",
         "log_time": when, "log_namespace": "ownsocket.dhcp.server.DhcpServer", "log_level": LogLevel.info},
        {"log_format": "{line}", "line": "two\nlines", "log_time": when + 1.5,
         "log_namespace": "x", "log_level": LogLevel.warn},
        {"log_format": "{line}", "line": "own system", "log_time": when, "log_system": "sys"},
        {"log_format": "subnet {name}: {free} free", "name": "lab", "free": 3, "log_time": when,
         "log_namespace": "ownsocket.dhcp.service", "log_level": LogLevel.info},
        {"log_format": "{line}", "line": "braces {not} a format", "log_time": when + 3600},
        {"log_format": "failed for {mac}", "mac": "aa", "log_failure": failure, "log_time": when,
         "log_namespace": "n", "log_level": LogLevel.critical},
        {"log_format": "{line}", "line": 42, "log_time": when},  # not text: the general path
        {"log_format": None, "log_time": when},  # nothing to say: no line
        {"log_format": "no time", "log_namespace": "n", "log_level": LogLevel.info},
    ]


class TextObserverTests(unittest.TestCase):
    def test_same_text_as_twisted(self):
        ours, theirs = io.StringIO(), io.StringIO()
        observer, reference = logformat.TextObserver(ours), textFileLogObserver(theirs)
        for event in events():
            observer(dict(event))
            reference(dict(event))
        self.assertEqual(ours.getvalue(), theirs.getvalue())
        self.assertIn("DISCOVER from 52:54:00:00:00:01", ours.getvalue())
        self.assertIn("ZeroDivisionError", ours.getvalue())

    def test_through_a_logger(self):
        out = io.StringIO()
        publisher = LogPublisher(logformat.TextObserver(out))
        Logger(namespace="ns", observer=publisher).info("{line}", line="hello", mac="x")
        self.assertRegex(out.getvalue(), r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4} \[ns#info\] hello\n$")

    def test_flushes_once_per_turn(self):
        flushed = []

        class Out(io.StringIO):
            def flush(self):
                flushed.append(len(self.getvalue()))

        clock = task.Clock()
        out = Out()
        observer = logformat.TextObserver(out, clock.callLater)
        for event in events()[:3]:
            observer(dict(event))
        self.assertEqual(flushed, [])
        clock.advance(0)
        self.assertEqual(flushed, [len(out.getvalue())])

    def test_broken_output_is_not_fatal(self):
        class Broken:
            def write(self, text):
                raise OSError(28, "No space left on device")

            def flush(self):
                raise OSError(28, "No space left on device")

        logformat.TextObserver(Broken())(dict(events()[0]))


class ChoiceTests(unittest.TestCase):
    def test_foreground_is_stdout(self):
        for options in ({"nodaemon": 1, "logfile": None}, {"nodaemon": 1, "logfile": "-"}):
            observer = logformat.observer_for(options)
            self.assertIs(observer.out, sys.stdout)

    def test_left_to_twistd(self):
        for options in (None, {"logger": "ownsocket.logfile.observer"}, {"syslog": 1},
                        {"nodaemon": 0, "logfile": "-"}):
            self.assertIsNone(logformat.observer_for(options))

    def test_file(self):
        path = os.path.join(self.mktemp() + "-dir", "ownsocket.log")
        os.makedirs(os.path.dirname(path))
        clock = task.Clock()
        observer = logformat.observer_for({"nodaemon": 1, "logfile": path}, clock.callLater)
        self.addCleanup(observer.out.close)
        observer(dict(events()[0]))
        clock.advance(0)
        with open(path) as handle:
            self.assertIn("DISCOVER from", handle.read())

    def test_install_on_an_application(self):
        application = Application("ownsocket")
        observer = logformat.install(application, {"nodaemon": 1})
        self.assertIs(application.getComponent(ILogObserver), observer)
        # an observer the application has already is kept
        self.assertIsNone(logformat.install(application, {"nodaemon": 1}))
        self.assertIs(application.getComponent(ILogObserver), observer)

    def test_twistd_picks_it(self):
        """The plugin's service offers it to twistd's application."""
        from ownsocket import tap
        from twisted.application.service import IServiceCollection
        from twisted.python import usage

        class Twistd(usage.Options):
            optParameters = [["logfile", "l", None, ""], ["logger", None, None, ""]]
            optFlags = [["nodaemon", "n", ""], ["syslog", None, ""]]

        twistd = Twistd()
        twistd.parseOptions(["-n"])
        options = tap.Options()
        options.parent = twistd
        path = self.mktemp()
        with open(path, "w") as handle:
            handle.write("[tftp]\nenabled = false\n[admin]\nenabled = false\n")
        options.parseOptions(["--config", path])
        service = tap.makeService(options, reactor=task.Clock())
        application = Application("ownsocket")
        service.setServiceParent(application)
        self.assertIsInstance(application.getComponent(ILogObserver), logformat.TextObserver)
        self.assertIn(service, list(IServiceCollection(application)))
