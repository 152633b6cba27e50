"""
Bounded waits: firmware under TCG has no reliable timing, so tests wait for
an event (a packet, a log line, a listening socket), never without a bound.
"""

import os
import subprocess
import time


def wait_until(predicate, timeout, interval=0.2, watch=()):
    """
    Poll ``predicate`` until true or ``timeout`` seconds pass; return its last value.

    Firmware under TCG has no reliable timing, so tests wait for an event, but
    never without a bound.  If a process in ``watch`` exits, stop waiting early:
    a QEMU that died will not send the packet being waited for.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            return value
        if any(not p.running for p in watch):
            return predicate()
        time.sleep(interval)


def listening(ns, udp=(), tcp=(), netns=None):
    """Whether every port in ``udp``/``tcp`` has a listening socket in the namespace."""
    argv = ns.exec_argv(["ss", "-H", "-ln", "-u", "-t"], netns)
    r = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.DEVNULL, text=True, timeout=10)
    udp_ports, tcp_ports = set(), set()
    for line in r.stdout.splitlines():
        fields = line.split()
        if len(fields) < 5:
            continue
        port = fields[4].rsplit(":", 1)[-1]
        if port.isdigit():
            (udp_ports if fields[0] == "udp" else tcp_ports).add(int(port))
    return set(udp) <= udp_ports and set(tcp) <= tcp_ports


def read_text(path):
    """A log's text so far: '' while the file does not exist yet (a process not started)."""
    if not path or not os.path.exists(path):
        return ""
    with open(path, "r", errors="replace") as f:
        return f.read()


def wait_for_boot(vm, serial_log, marker, server_done, timeout, watch=(), interval=0.1):
    """
    Wait (at most ``timeout`` s) until the guest printed ``marker`` on its
    serial console and ``server_done()`` is true (the server logged the fetch).

    Returns ``(marker_seconds, server_ok)``: the seconds from QEMU's start to
    the first poll that saw the marker (``None`` if it never came), and whether
    the server side was seen.  Stops early if a process in ``watch`` (or the
    guest) exits.
    """
    seen = {}

    def check():
        if "marker" not in seen and marker in read_text(serial_log):
            seen["marker"] = vm.elapsed()
        if "server" not in seen and server_done():
            seen["server"] = vm.elapsed()
        return "marker" in seen and "server" in seen

    wait_until(check, timeout, interval=interval, watch=list(watch) + [vm])
    check()
    return seen.get("marker"), "server" in seen
