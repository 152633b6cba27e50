"""
Log lines as twistd writes them, at a fraction of the cost.

Under a boot storm the server writes two lines per DHCP exchange, and
twisted.logger's text observer spends about 40 us on each (a timezone
lookup, C{datetime} and C{strftime} for the timestamp, a PEP 3101 parse of
the format, a flush): a seventh of the CPU of an exchange.  This observer
writes the same text (C{"<time> [<system>] <message>"}, continuation lines
indented with a tab, tracebacks included), formats the timestamp once per
second, takes a line the server prepared itself (C{log_format} C{"{line}"})
as it is, and flushes once per reactor turn instead of once per line.

L{install} puts it where twistd would have put its own text observer (the
application's L{ILogObserver} component, which twistd consults before its
C{--logfile} options), for the same destinations: standard output with
C{-n}, C{--logfile -}, or a file with C{--logfile FILE} (rotated at 1 MB and
on SIGUSR1 like twistd's).  C{--logger} and C{--syslog} are left to twistd.
"""

from __future__ import annotations

import signal
import sys

from twisted.logger import ILogObserver, formatEventAsClassicLogText, formatTime
from twisted.python import logfile
from zope.interface import implementer

#: the format of a line the server built itself (an f-string is cheaper
#: than twisted.logger's own expansion); its text is the field C{line}
LINE_FORMAT = "{line}"


@implementer(ILogObserver)
class TextObserver:
    """
    @param out: a text file (C{write} and C{flush}).
    @param call_later: C{reactor.callLater}, to flush at the end of a turn;
        None flushes after every event (no reactor yet, tests).
    """

    def __init__(self, out, call_later=None):
        self.out = out
        self.call_later = call_later
        self._second = None
        self._stamp = ""
        self._flush_pending = False

    def _time(self, when):
        if when is None:
            return "-"
        second = int(when)
        if second != self._second:
            self._second, self._stamp = second, formatTime(second)
        return self._stamp

    def __call__(self, event):
        if (event.get("log_format") == LINE_FORMAT and "log_failure" not in event
                and "log_flattened" not in event and isinstance(event.get("line"), str)):
            system = event.get("log_system")
            if system is None:
                level = event.get("log_level")
                system = f"{event.get('log_namespace', '-')}#{level.name if level is not None else '-'}"
            line = event["line"]
            if "\n" in line:
                line = line.replace("\n", "\n\t")
            text = f"{self._time(event.get('log_time'))} [{system}] {line}\n"
        else:
            text = formatEventAsClassicLogText(event, formatTime=self._time)
            if not text:
                return
        try:
            self.out.write(text)
        except (OSError, ValueError):
            return  # a closed or full log cannot stop the server
        if self.call_later is None:
            self._flush()
        elif not self._flush_pending:
            self._flush_pending = True
            self.call_later(0, self._flush)

    def _flush(self):
        self._flush_pending = False
        try:
            self.out.flush()
        except (OSError, ValueError):
            pass


def _reactor_call_later(delay, function):
    from twisted.internet import reactor
    return reactor.callLater(delay, function)


def observer_for(twistd_options, call_later=_reactor_call_later):
    """
    The observer twistd's own text observer would be, for these twistd
    options, or None where twistd should choose (C{--logger}, C{--syslog}, a
    daemon logging to stdout, which twistd refuses with its own message).
    """
    if twistd_options is None:
        return None
    get = twistd_options.get
    if get("logger") or get("syslog"):
        return None
    name, foreground = get("logfile"), get("nodaemon")
    if name == "-" or (foreground and not name):
        if not foreground:
            return None
        return TextObserver(sys.stdout, call_later)
    out = logfile.LogFile.fromFullPath(name or "twistd.log")
    if hasattr(signal, "SIGUSR1"):
        def rotate(signum, frame):
            from twisted.internet import reactor
            reactor.callFromThread(out.rotate)
        signal.signal(signal.SIGUSR1, rotate)
    return TextObserver(out, call_later)


def install(application, twistd_options):
    """Make C{application} log through a L{TextObserver}, unless it has an
    observer already or twistd should choose (see L{observer_for})."""
    getComponent = getattr(application, "getComponent", None)
    if getComponent is None or getComponent(ILogObserver, None) is not None:
        return None
    observer = observer_for(twistd_options)
    if observer is not None:
        application.setComponent(ILogObserver, observer)
    return observer
