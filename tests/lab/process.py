"""
Processes started inside a lab namespace (servers, QEMU, capture), each
tracked by PID so that tear-down stops exactly what the test started.
"""

import subprocess
import time

from tests import netns
from tests.lab.waits import read_text


class Process:
    """
    A process started inside the namespace, stopped by its PID only.

    ``ip netns exec`` execs the command in place (no fork), so the PID of the
    Popen is the PID of the server or QEMU itself, and a signal reaches it.
    """

    def __init__(self, popen, name, argv, log=None):
        self.popen = popen
        self.name = name
        self.argv = argv
        self.log = log
        self.started = time.monotonic()
        self.started_wall = time.time()

    @property
    def pid(self):
        return self.popen.pid

    @property
    def running(self):
        return self.popen.poll() is None

    @property
    def returncode(self):
        return self.popen.poll()

    def elapsed(self):
        """Seconds since start, for timing firmware under TCG."""
        return time.monotonic() - self.started

    def wait(self, timeout=None):
        """Return the exit code, or ``None`` if it still runs after ``timeout`` s."""
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, grace=5.0):
        """SIGTERM, then SIGKILL after ``grace`` s: servers get a chance to flush."""
        # Pipes are left to their reader (a Capture drains what is buffered).
        return netns.stop(self.popen, grace)

    def read_log(self):
        """The log file's text so far ('' if there is none yet)."""
        return read_text(self.log)

    def __repr__(self):
        return "<Process %s pid=%s rc=%s>" % (self.name, self.pid, self.returncode)
