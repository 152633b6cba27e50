"""
A log file that cannot fill the disk, for running without the journal.

twistd's own C{--logfile} rotates at 1 MB and keeps every old file, so a
boot storm (about 1.5 MB of log a second at 2,000 DHCP exchanges/s) fills
the disk in the end.  This observer rotates at a size and keeps a fixed
number of old files; the oldest is deleted.  It plugs into twistd's
C{--logger}, which calls a factory without arguments, so its settings come
from the environment:

 - C{OWNSOCKET_LOG}: the file (default C{ownsocket.log});
 - C{OWNSOCKET_LOG_SIZE}: rotate when it reaches this many bytes (C{k},
   C{M}, C{G} suffixes; default C{10M});
 - C{OWNSOCKET_LOG_KEEP}: old files kept (default C{5}).

At most C{(KEEP + 1) x SIZE} bytes (plus one line) are on disk at any time::

    OWNSOCKET_LOG=/var/log/ownsocket/ownsocket.log OWNSOCKET_LOG_SIZE=10M OWNSOCKET_LOG_KEEP=5 \\
        twistd --logger ownsocket.logfile.observer ownsocket --config ...
"""

from __future__ import annotations

import os
import re
import signal

from twisted.python.logfile import LogFile

DEFAULT_PATH = "ownsocket.log"
DEFAULT_SIZE = 10 * 1024 * 1024
DEFAULT_KEEP = 5

_UNITS = {"": 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3}


class LogSettingError(SystemExit):
    """A bad OWNSOCKET_LOG* variable: one line, and twistd stops."""

    def __init__(self, message):
        super().__init__(f"ownsocket: {message}")


def parse_size(text: str) -> int:
    """C{"10M"} -> 10485760; at least 1 KiB, so a typo cannot rotate per line."""
    match = re.fullmatch(r"\s*(\d+)\s*([kKmMgG]?)[iI]?[bB]?\s*", text)
    if not match:
        raise ValueError(f"{text!r} is not a size such as 10M")
    value = int(match.group(1)) * _UNITS[match.group(2).lower()]
    if value < 1024:
        raise ValueError(f"{text!r} is below the smallest size, 1k")
    return value


def settings(environ=None):
    """(path, size, keep) from the environment, checked."""
    environ = os.environ if environ is None else environ
    path = environ.get("OWNSOCKET_LOG") or DEFAULT_PATH
    try:
        size = parse_size(environ.get("OWNSOCKET_LOG_SIZE") or str(DEFAULT_SIZE))
    except ValueError as error:
        raise LogSettingError(f"OWNSOCKET_LOG_SIZE: {error}") from None
    keep_text = environ.get("OWNSOCKET_LOG_KEEP") or str(DEFAULT_KEEP)
    if not keep_text.strip().isdigit() or not 1 <= int(keep_text) <= 1000:
        raise LogSettingError(f"OWNSOCKET_LOG_KEEP: {keep_text!r} is not a whole number from 1 to 1000")
    return os.path.abspath(path), size, int(keep_text)


def open_log(path, size, keep):
    """The rotating file; its directory must exist and be writable."""
    directory = os.path.dirname(path)
    if not os.path.isdir(directory):
        raise LogSettingError(f"OWNSOCKET_LOG: directory {directory} does not exist")
    try:
        return LogFile.fromFullPath(path, rotateLength=size, maxRotatedFiles=keep)
    except OSError as error:
        raise LogSettingError(f"OWNSOCKET_LOG: cannot open {path}: {error.strerror}") from None


def observer(environ=None):
    """
    For C{twistd --logger ownsocket.logfile.observer}: a text observer on a
    bounded rotating file.  SIGUSR1 rotates at once, as with twistd's own
    C{--logfile}, for an external logrotate that prefers to drive it.
    """
    log = open_log(*settings(environ))
    if hasattr(signal, "SIGUSR1") and not signal.getsignal(signal.SIGUSR1):
        def rotate(signum, frame):
            from twisted.internet import reactor
            reactor.callFromThread(log.rotate)
        signal.signal(signal.SIGUSR1, rotate)
    from ownsocket.logformat import TextObserver, _reactor_call_later
    return TextObserver(log, _reactor_call_later)
