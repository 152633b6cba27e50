#!/usr/bin/env python3
"""
DHCP throughput of the whole ownsocket server under two interpreters
(CPython and PyPy) and ISC Kea, in one run, with perfdhcp.

Everything but the interpreter is bench/dhcp_bench.py: the same namespaces,
perfdhcp options, pool, SQLite lease file (leases committed before every
ACK) and result rows.  The servers take turns within each repetition, so
every repetition gives a same-load ratio; on a shared machine those ratios
are what means something, not the absolute numbers.

A JIT compiles the hot path only after it has run a while, so by default
each server first gets a few seconds of warm-up traffic from other MACs
(not counted); --warmup 0 measures the cold start instead.

The PyPy interpreter needs Twisted, zope.interface, dhcppython and
prometheus_client installed for it; with Debian's pypy3 a virtual
environment does it:

    pypy3 -m venv /opt/ownsocket/pypy-venv
    /opt/ownsocket/pypy-venv/bin/pip install .

Needs root (namespaces).  Usage:
    sudo python3 bench/interpreters.py --pypy /opt/ownsocket/pypy-venv/bin/python \\
        [--rates 5000,20000] [--repeat 3]
"""

import argparse
import glob
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import dhcp_bench  # noqa: E402
from dhcp_bench import netns  # noqa: E402

REQUIRED = "import twisted, zope.interface, dhcppython, prometheus_client"


def interpreter_server(python):
    """A dhcp_bench server factory: ownsocket's config, run by C{python}."""
    def config(directory):
        argv = dhcp_bench.ownsocket_config(directory)
        argv[0] = python
        return argv
    return config


def check_interpreter(python):
    """None if C{python} can run ownsocket, else why not (one line)."""
    if shutil.which(python) is None:
        return f"{python}: not found"
    done = subprocess.run([python, "-c", REQUIRED], capture_output=True, text=True)
    if done.returncode != 0:
        return f"{python} cannot import ownsocket's dependencies: {done.stderr.strip().splitlines()[-1]}"
    return None


def handled(row):
    """DISCOVERs and REQUESTs the server answered in the measured run (its
    log has a line for each; warm-up MACs start 02:77, perfdhcp's 00:0c)."""
    count = 0
    for path in glob.glob(os.path.join(row["directory"], "ownsocket.log*")):  # twistd rotates at 1 MB
        with open(path, errors="replace") as handle:
            count += sum(1 for line in handle if " from 00:0c:" in line and " -> " in line)
    return count


def version(python):
    return subprocess.run([python, "-c", "import sys; print(sys.version.split()[0], "
                           "sys.implementation.name)"], capture_output=True, text=True).stdout.strip()


def main(argv=None):
    parser = argparse.ArgumentParser(description="perfdhcp: ownsocket on CPython and PyPy, and Kea")
    parser.add_argument("--cpython", default=sys.executable, help="default: this interpreter")
    parser.add_argument("--pypy", default=os.environ.get("OWNSOCKET_PYPY", "/opt/ownsocket/pypy-venv/bin/python"),
                        help="a PyPy with ownsocket's dependencies (default $OWNSOCKET_PYPY)")
    parser.add_argument("--rates", default="5000,20000")
    parser.add_argument("--duration", type=int, default=10, help="seconds per run (perfdhcp -p)")
    parser.add_argument("--warmup", type=int, default=5, help="seconds of warm-up traffic per run")
    parser.add_argument("--clients", type=int, default=10000, help="distinct clients (perfdhcp -R)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-kea", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    args = parser.parse_args(argv)

    for python in (args.cpython, args.pypy):
        problem = check_interpreter(python)
        if problem:
            sys.exit(f"cannot run: {problem}")
    ok, reason = netns.available()
    if not ok:
        sys.exit(f"cannot run: {reason}")
    for binary in ("perfdhcp", "ss") + (() if args.no_kea else ("kea-dhcp4",)):
        if shutil.which(binary) is None:
            sys.exit(f"cannot run: {binary} is missing")

    dhcp_bench.SERVERS["cpython"] = interpreter_server(args.cpython)
    dhcp_bench.SERVERS["pypy"] = interpreter_server(args.pypy)
    servers = ["cpython", "pypy"] + ([] if args.no_kea else ["kea"])
    rates = [int(rate) for rate in args.rates.split(",")]

    load_before = os.getloadavg()[0]
    workdir = tempfile.mkdtemp(prefix="interp-bench-")
    runs = {}
    started = time.monotonic()
    try:
        with netns.Lab() as lab:
            topology = netns.server_client(lab, network="10.80.0", prefix=16, client_addr=dhcp_bench.RELAY_IP)
            for rate in rates:
                for repeat in range(args.repeat):
                    for name in servers:
                        row = dhcp_bench.run_one(topology, name, rate, args.duration, args.clients,
                                                 workdir, warmup=args.warmup)
                        if name != "kea" and not row["error"]:
                            row["handled"] = handled(row)
                        runs.setdefault((name, rate), []).append(row)
                        print(f"  {name} @ {rate}/s #{repeat + 1}: "
                              + (row["error"] or f"{row['acks_per_s']:.0f} ACK/s, "
                                 f"CPU {row.get('cpu_s', 0):.1f} s, loss {row['loss_pct']:.1f} %, "
                                 f"answered {row.get('handled', '-')}"),
                              file=sys.stderr, flush=True)
    finally:
        if args.keep:
            print(f"logs kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    print(f"\nCPython {version(args.cpython)} vs PyPy {version(args.pypy)}; perfdhcp -g single, 4-way, "
          f"{args.clients} clients, {args.duration} s per run after {args.warmup} s warm-up, "
          f"SQLite leases committed; best of {args.repeat}; load average {load_before:.2f} -> "
          f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs; total {time.monotonic() - started:.0f} s\n")
    rows = [dhcp_bench.pick_row(runs[(name, rate)]) for rate in rates for name in servers]
    print(dhcp_bench.table(rows))
    print("\nSame-repetition ratios (median over repetitions):")
    for rate in rates:
        pairs = list(zip(runs[("cpython", rate)], runs[("pypy", rate)]))
        ratios = [p["acks_per_s"] / c["acks_per_s"] for c, p in pairs
                  if not c["error"] and not p["error"] and c["acks_per_s"]]
        # CPU per ACK is the load-independent cost of one exchange.
        cost = {name: [1e3 * r["cpu_s"] / r["acks"] for r in runs[(name, rate)]
                       if not r["error"] and r.get("acks")] for name in servers}
        line = f"  {rate}/s: PyPy/CPython ACK/s " + (
            f"{statistics.median(ratios):.2f}x (each: {', '.join(f'{r:.2f}' for r in ratios)})"
            if ratios else "n/a")
        line += "; server CPU ms per ACK: " + ", ".join(
            f"{name} {statistics.median(values):.3f}" for name, values in cost.items() if values)
        # Under overload ACK/s collapses faster than the server slows down
        # (replies to stale DISCOVERs count as drops): CPU per answered
        # packet is the interpreter's cost, whatever the machine's load.
        per_packet = {name: [1e6 * r["cpu_s"] / r["handled"] for r in runs[(name, rate)]
                             if not r["error"] and r.get("handled")] for name in ("cpython", "pypy")}
        if all(per_packet.values()):
            line += "; server CPU us per answered packet: " + ", ".join(
                f"{name} {statistics.median(values):.0f}" for name, values in per_packet.items())
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
