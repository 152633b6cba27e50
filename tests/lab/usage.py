"""
CPU time of the lab's processes and of the whole machine, sampled while a
guest boots.

Under TCG the wall-clock time a firmware needs before its first packet
depends on how much CPU it got, which on a shared machine depends on
everyone else.  Sampling the QEMU process, the server and the machine's
total busy time lets a benchmark say *why* a run was slow: the firmware
needed more CPU (it did more work), the server used CPU meanwhile (it
competed with the guest), or other processes on the machine did.
"""

import os
import threading
import time

_TICK = os.sysconf("SC_CLK_TCK")


def process_cpu(pid):
    """user + system CPU seconds of ``pid`` so far (None once it is gone)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / _TICK


def machine_busy():
    """CPU seconds all cores spent busy since boot (everything but idle and iowait)."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal [guest guest_nice: inside user]
    return (sum(values[:8]) - values[3] - values[4]) / _TICK


class Usage:
    """
    Every ``interval`` s, in a daemon thread: the wall time, the machine's
    busy CPU seconds and the CPU seconds of each watched PID.  ``at(t)``
    gives the sample nearest before wall time ``t``; ``between(t0, t1)``
    the differences over a window.
    """

    def __init__(self, interval=0.05):
        self.interval = interval
        self.pids = {}
        self.samples = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="usage", daemon=True)
        self._thread.start()

    def watch(self, name, pid):
        """Sample ``pid`` as ``name`` from now on (before that it counts as 0 s)."""
        with self._lock:
            self.pids[name] = pid
        self._sample()

    def _sample(self):
        with self._lock:
            pids = dict(self.pids)
        sample = (time.time(), machine_busy(), {name: process_cpu(pid) for name, pid in pids.items()})
        with self._lock:
            self.samples.append(sample)

    def _run(self):
        while not self._stop.wait(self.interval):
            self._sample()

    def stop(self):
        self._stop.set()
        self._thread.join(2)
        self._sample()

    def at(self, when):
        """The last sample taken at or before wall time ``when`` (the first one if none)."""
        with self._lock:
            samples = list(self.samples)
        best = samples[0]
        for sample in samples:
            if sample[0] > when:
                break
            best = sample
        return best

    def between(self, start, end):
        """
        {"wall": s, "machine": busy CPU s, NAME: CPU s of each watched
        process, "others": machine minus the watched processes} from the
        sample before ``start`` to the sample before ``end``.
        """
        t0, busy0, cpu0 = self.at(start)
        t1, busy1, cpu1 = self.at(end)
        out = {"wall": t1 - t0, "machine": busy1 - busy0}
        mine = 0.0
        for name, value in cpu1.items():
            if value is None:
                continue
            used = value - (cpu0.get(name) or 0.0)
            out[name] = used
            mine += used
        out["others"] = out["machine"] - mine
        return out
