#!/usr/bin/env python3
"""
DHCP throughput: ownsocket against ISC Kea, with Kea's own load generator.

perfdhcp (Debian package kea-admin) plays a relay agent: it runs in a client
namespace with an address on the server's LAN and unicasts DISCOVER/REQUEST
from port 67 with giaddr set, so it can simulate thousands of clients
without raw sockets and without clashing with the server's port 67 (the
server lives in another namespace).  Every packet carries the options of a
UEFI PXE client (60, 93, 94, 97), so the boot-file path of both servers is
exercised, not just address allocation.

Both servers get the same pool (15,360 addresses in 10.80.0.0/16), persist
leases to disk (ownsocket: sqlite; Kea: memfile CSV with persist=true,
single-threaded, its default), and start from an empty lease file for each
run.  Each offered rate runs once per server, one right after the other, so
they see the same machine load.

Results: ACKs/s = completed 4-way exchanges / test period; loss = 1 - ACKs
/ DISCOVERs sent; drops as perfdhcp counts them (no reply within 1 s);
server CPU = user+system seconds the server process used during the run.

Needs root (namespaces).  Usage:
    sudo python3 bench/dhcp_bench.py [--quick] [--rates 1000,5000,20000]
"""

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

from tests import netns  # noqa: E402

# twistd with this interpreter: "python -m twisted" is the newer "twist" runner,
# which has no -n/--pidfile, and the twistd on PATH may belong to another Python.
TWISTD = ["-c", "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"]

SERVER_IP, RELAY_IP = "10.80.0.1", "10.80.0.2"
POOL = ("10.80.1.0", "10.80.60.255")
PXE_OPTIONS = [
    "60," + b"PXEClient:Arch:00007:UNDI:003000".hex(),
    "93,0007",
    "94,010300",
    "97,00" + "00" * 16,
]


def ownsocket_config(directory):
    path = os.path.join(directory, "ownsocket.ini")
    with open(path, "w") as handle:
        handle.write(f"""\
[dhcp]
interfaces = srv0
leases = {directory}/leases.sqlite

[tftp]
enabled = false

[subnet:bench]
network = 10.80.0.0/16
pool = {POOL[0]}-{POOL[1]}
router = {SERVER_IP}
lease_time = 3600

[boot]
default = undionly.kpxe
arch.7 = snponly.efi
""")
    return [sys.executable, *TWISTD, "-n", "--pidfile=", "--logfile",
            os.path.join(directory, "ownsocket.log"), "ownsocket", "--config", path]


def kea_config(directory, lease_database=None, pool=POOL):
    """kea-dhcp4's argv for the bench subnet; leases in a memfile unless
    another C{lease-database} is given (bench/pg_bench.py: PostgreSQL)."""
    path = os.path.join(directory, "kea.json")
    if lease_database is None:
        lease_database = {"type": "memfile", "persist": True, "lfc-interval": 0,
                          "name": os.path.join(directory, "leases4.csv")}
    config = {"Dhcp4": {
        "interfaces-config": {"interfaces": ["srv0"], "dhcp-socket-type": "udp"},
        "lease-database": lease_database,
        "valid-lifetime": 3600,
        "client-classes": [{"name": "uefi", "test": "option[93].hex == 0x0007",
                            "boot-file-name": "snponly.efi"}],
        "subnet4": [{"id": 1, "subnet": "10.80.0.0/16",
                     "pools": [{"pool": f"{pool[0]} - {pool[1]}"}],
                     "option-data": [{"name": "routers", "data": SERVER_IP}]}],
        "loggers": [{"name": "kea-dhcp4", "output_options": [{"output": "stdout"}],
                     "severity": "WARN"}],
    }}
    with open(path, "w") as handle:
        json.dump(config, handle, indent=1)
    return ["kea-dhcp4", "-c", path]


SERVERS = {"ownsocket": ownsocket_config, "kea": kea_config}


def cpu_seconds(pid):
    """utime+stime of a live process, from /proc (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def listening(namespace):
    out = namespace.run(["ss", "-H", "-uln", "sport", "=", ":67"], check=False).stdout
    return any(line.strip() for line in out.splitlines())


def parse_perfdhcp(text):
    """The two exchange sections of perfdhcp's report, as dicts."""
    result = {}
    for name, section in re.findall(r"\*\*\*Statistics for: ([A-Z-]+)\*\*\*\n(.*?)(?=\n\*\*\*|\Z)",
                                    text, re.S):
        values = {}
        for key, pattern in (("sent", r"sent packets: (\d+)"), ("received", r"received packets: (\d+)"),
                             ("drops", r"drops: (\d+)"), ("drops_pct", r"drops ratio: ([\d.]+) %"),
                             ("avg_ms", r"avg delay: ([\d.]+) ms")):
            match = re.search(pattern, section)
            if match:
                values[key] = float(match.group(1))
        result[name] = values
    rate = re.search(r"Rate: ([\d.]+) 4-way", text)
    if rate:
        result["perfdhcp_rate"] = float(rate.group(1))
    return result


def run_one(topology, server_name, rate, duration, clients, workdir, mode="single", warmup=0):
    """One server, one offered rate, fresh lease file; returns a result row.
    C{warmup}: seconds of 1,000/s from 1,000 other MACs first, not counted
    (lets a JIT such as PyPy's compile the hot path before the measurement)."""
    directory = tempfile.mkdtemp(prefix=f"{server_name}-{rate}-", dir=workdir)
    for name in ("leases.sqlite", "leases4.csv"):
        if os.path.exists(os.path.join(directory, name)):
            os.remove(os.path.join(directory, name))
    argv = SERVERS[server_name](directory)
    env = dict(os.environ, PYTHONPATH=REPO, KEA_LOCKFILE_DIR=directory, KEA_PIDFILE_DIR=directory)
    row = {"server": server_name, "rate": rate, "duration": duration, "error": None,
           "directory": directory}
    console = open(os.path.join(directory, "console.txt"), "w")
    with console:
        server = topology.server.spawn(argv, cwd=directory, env=env, stdout=console,
                                       stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while server.poll() is None and not listening(topology.server) and time.monotonic() < deadline:
            time.sleep(0.1)
        if server.poll() is not None or not listening(topology.server):
            with open(os.path.join(directory, "console.txt"), errors="replace") as handle:
                row["error"] = f"server did not start: {handle.read()[-500:]}"
            return row
        time.sleep(0.5)
        if warmup:
            warm = ["perfdhcp", "-4", "-l", RELAY_IP, "-r", "1000", "-p", str(warmup), "-R", "1000",
                    "-b", "mac=02:77:00:00:00:00", "-W", "500000", "-g", mode]
            for option in PXE_OPTIONS:
                warm += ["-o", option]
            topology.client.run(warm + [SERVER_IP], timeout=warmup + 30, check=False)
        cpu_before = cpu_seconds(server.pid)
        perf = ["perfdhcp", "-4", "-l", RELAY_IP, "-r", str(rate), "-p", str(duration),
                "-R", str(clients), "-W", "500000"] + ["-g", mode]
        for option in PXE_OPTIONS:
            perf += ["-o", option]
        perf.append(SERVER_IP)
        try:
            done = topology.client.run(perf, timeout=duration + 30, check=False)
        except netns.NetnsError as error:
            row["error"] = str(error)[:300]
            return row
        row["cpu_s"] = cpu_seconds(server.pid) - cpu_before
        with open(os.path.join(directory, "perfdhcp.txt"), "w") as handle:
            handle.write(done.stdout + done.stderr)
        stats = parse_perfdhcp(done.stdout)
        do, ra = stats.get("DISCOVER-OFFER", {}), stats.get("REQUEST-ACK", {})
        if not do:
            row["error"] = f"perfdhcp output not understood (exit {done.returncode}): {done.stderr[-300:]}"
            return row
        acks = ra.get("received", 0.0)
        row.update(discovers=int(do.get("sent", 0)), offers=int(do.get("received", 0)),
                   requests=int(ra.get("sent", 0)), acks=int(acks),
                   acks_per_s=acks / duration,
                   loss_pct=100.0 * (1 - acks / do["sent"]) if do.get("sent") else 100.0,
                   do_drops_pct=do.get("drops_pct"), ra_drops_pct=ra.get("drops_pct"),
                   do_avg_ms=do.get("avg_ms"), ra_avg_ms=ra.get("avg_ms"),
                   server_alive=server.poll() is None)
        return row
    finally:
        netns.stop(server)


def pick_row(runs, how="best"):
    """
    One run to stand for several: the best by ACK/s, or the (lower) median.

    Best is the default because on a shared machine a neighbour's load can
    only lower a run's result, never raise it: the best run is the closest
    to what the server itself can do.  Every run's ACK/s is printed too.
    """
    good = sorted((row for row in runs if not row["error"]), key=lambda row: row["acks_per_s"])
    if not good:
        return runs[-1]
    row = dict(good[-1] if how == "best" else good[(len(good) - 1) // 2])
    row["runs"] = [round(r["acks_per_s"]) for r in runs if not r["error"]]
    return row


def table(rows):
    header = ("rate/s", "server", "DISCOVER", "ACK", "ACK/s", "loss %", "DO drop %", "RA drop %",
              "DO avg ms", "RA avg ms", "CPU s", "vs Kea")
    kea = {row["rate"]: row for row in rows if row["server"] == "kea" and not row["error"]}
    lines = [header]
    for row in rows:
        if row["error"]:
            lines.append((str(row["rate"]), row["server"], "error: " + row["error"].splitlines()[0][:80]))
            continue
        ratio = ""
        if row["server"] != "kea" and row["rate"] in kea and kea[row["rate"]]["acks_per_s"]:
            ratio = f"{row['acks_per_s'] / kea[row['rate']]['acks_per_s']:.2f}x"

        def fmt(value, spec):
            return "-" if value is None else format(value, spec)
        lines.append((str(row["rate"]), row["server"], str(row["discovers"]), str(row["acks"]),
                      f"{row['acks_per_s']:.0f}", f"{row['loss_pct']:.1f}",
                      fmt(row["do_drops_pct"], ".1f"), fmt(row["ra_drops_pct"], ".1f"),
                      fmt(row["do_avg_ms"], ".2f"), fmt(row["ra_avg_ms"], ".2f"),
                      f"{row.get('cpu_s', 0):.1f}", ratio))
    widths = [max(len(line[i]) for line in lines if i < len(line) and len(line) == len(header))
              for i in range(len(header))]
    out = []
    for number, line in enumerate(lines):
        if len(line) != len(header):
            out.append("| " + " | ".join(line) + " |")
            continue
        out.append("| " + " | ".join(cell.rjust(widths[i]) for i, cell in enumerate(line)) + " |")
        if number == 0:
            out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(out)


def main(argv=None):
    parser = argparse.ArgumentParser(description="perfdhcp: ownsocket vs Kea")
    parser.add_argument("--quick", action="store_true", help="3 s per run instead of 10")
    parser.add_argument("--rates", default="1000,5000,20000")
    parser.add_argument("--duration", type=int, default=None, help="seconds per run (perfdhcp -p)")
    parser.add_argument("--clients", type=int, default=10000, help="distinct clients (perfdhcp -R)")
    parser.add_argument("--servers", default="ownsocket,kea")
    parser.add_argument("--perfdhcp-threads", choices=("single", "multi"), default="single",
                        help="perfdhcp -g; single is default because on a 2-core machine "
                             "multi-threaded perfdhcp starves the server and itself")
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs per server and rate (interleaved); see --pick")
    parser.add_argument("--pick", choices=("best", "median"), default="best",
                        help="which of the repeated runs the table shows")
    parser.add_argument("--json", help="also write the rows here")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    args = parser.parse_args(argv)
    duration = args.duration or (3 if args.quick else 10)
    rates = [int(rate) for rate in args.rates.split(",")]
    servers = args.servers.split(",")

    ok, reason = netns.available()
    if not ok:
        sys.exit(f"cannot run: {reason}")
    for binary, package in (("perfdhcp", "kea-admin"), ("ss", "iproute2")) + (
            (("kea-dhcp4", "kea-dhcp4-server"),) if "kea" in servers else ()):
        if shutil.which(binary) is None:
            sys.exit(f"cannot run: {binary} is missing (Debian package {package})")

    load_before = os.getloadavg()[0]
    workdir = tempfile.mkdtemp(prefix="dhcp-bench-")
    rows = []
    started = time.monotonic()
    try:
        with netns.Lab() as lab:
            topology = netns.server_client(lab, network="10.80.0", prefix=16, client_addr=RELAY_IP)
            for rate in rates:
                runs = {name: [] for name in servers}
                for repeat in range(args.repeat):
                    for server_name in servers:
                        row = run_one(topology, server_name, rate, duration, args.clients, workdir,
                                      args.perfdhcp_threads)
                        runs[server_name].append(row)
                        print(f"  {server_name} @ {rate}/s: "
                              + (row["error"] or f"{row['acks_per_s']:.0f} ACK/s, loss {row['loss_pct']:.1f} %"),
                              file=sys.stderr, flush=True)
                for server_name in servers:
                    rows.append(pick_row(runs[server_name], args.pick))
    finally:
        if args.keep:
            print(f"logs kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"\nperfdhcp -g {args.perfdhcp_threads}, 4-way, {args.clients} clients, {duration} s per run, "
          f"UEFI PXE options, {args.pick} of {args.repeat}, load average {load_before:.2f} -> "
          f"{os.getloadavg()[0]:.2f}, {os.cpu_count()} CPUs, "
          f"pool {POOL[0]}-{POOL[1]}; total {time.monotonic() - started:.0f} s\n")
    print(table(rows))
    if args.repeat > 1:
        print("\nACK/s of every run: " + "; ".join(
            f"{row['server']}@{row['rate']}: {row.get('runs')}" for row in rows))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
