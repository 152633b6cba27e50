#!/usr/bin/env python3
"""
Several servers, one PostgreSQL: ownsocket against Kea on PostgreSQL.

Side by side, in one run, on one throw-away PostgreSQL cluster (fsync on,
Unix socket in a temporary directory, started and stopped by this script):

  ownsocket-pg1   one ownsocket, [dhcp] leases = postgresql://...
  ownsocket-pg3   three ownsockets in three namespaces, one database, each
                  loaded by its own perfdhcp at a third of the rate
  ownsocket-sqlite one ownsocket on its SQLite file
  kea-pg          kea-dhcp4 with its PostgreSQL lease backend
                  (schema by `kea-admin db-init pgsql`)

Same pool, same PXE options, and the same load for every set-up: three
perfdhcp, each a relay in its own namespace at a third of the rate (with
one server, all three reach it over a bridge).  A perfdhcp takes about a
third of a core at any rate, so one generator for one server and three for
three servers would hand the one server two thirds of a core more on a
two-core machine.  Prints ACKs/s, loss, duplicate bindings found in the
database afterwards (an address or a client twice among live bindings) and
ownsocket's ratio to Kea-on-PostgreSQL.  With --memory it also fills the
store with 100,000 leases, loads one server and reports its peak RSS.

Needs root (namespaces).  Usage:
    sudo python3 bench/pg_bench.py [--rates 1000,5000,20000] [--duration 10] [--memory]
"""

import argparse
import os
import re
import resource
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from statistics import median

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)
sys.path.insert(0, HERE)

from tests import netns, pgcluster  # noqa: E402
from dhcp_bench import (PXE_OPTIONS, TWISTD, cpu_seconds, kea_config, listening,  # noqa: E402
                        parse_perfdhcp)

SERVER_IP, RELAY_IP = "10.80.0.1", "10.80.0.2"
HUB_RELAYS = ("10.80.0.2", "10.80.0.3", "10.80.0.4")
POOL = ("10.80.1.0", "10.80.60.255")
BIG_POOL = ("10.80.1.0", "10.82.255.255")  # room for 100,000 leases and more (in 10.80.0.0/14)
MAC_BASES = ("00:0c:01:00:00:00", "00:0c:02:00:00:00", "00:0c:03:00:00:00")


def ownsocket_argv(directory, leases, pool):
    path = os.path.join(directory, "ownsocket.ini")
    with open(path, "w") as handle:
        handle.write(f"""\
[dhcp]
interfaces = srv0
leases = {leases}

[tftp]
enabled = false

[subnet:bench]
network = {"10.80.0.0/14" if pool == BIG_POOL else "10.80.0.0/16"}
pool = {pool[0]}-{pool[1]}
router = {SERVER_IP}
lease_time = 3600

[boot]
default = undionly.kpxe
arch.7 = snponly.efi
""")
    return [sys.executable, *TWISTD, "-n", "--pidfile=", "--logfile",
            os.path.join(directory, "ownsocket.log"), "ownsocket", "--config", path]


def kea_argv(directory, cluster, dbname, pool):
    """The same Kea as bench/dhcp_bench.py, with its leases in PostgreSQL."""
    return kea_config(directory, {"type": "postgresql", "name": dbname, "host": cluster.socket_dir,
                                  "user": "kea", "password": "kea"}, pool)


class Bench:
    def __init__(self, lab, cluster, workdir):
        self.lab, self.cluster, self.workdir = lab, cluster, workdir
        self.pairs = []
        self.hub, self.hub_generators = None, []
        for n in range(3 if lab is not None else 0):
            server = lab.namespace(f"srv{n}")
            perf = lab.namespace(f"perf{n}")
            lab.link(server, "srv0", perf, "rel0", f"{SERVER_IP}/16", f"{RELAY_IP}/16")
            self.pairs.append((server, perf))
        if lab is not None:
            # One server, loaded by three generators as the three servers are:
            # a perfdhcp costs a third of a core here whatever its rate, so a
            # set-up with one generator would have two thirds of a core more
            # for its server than the three-server set-up, on two cores.  The
            # hub's bridge is called srv0, so every server's config is alike.
            self.hub = lab.namespace("hub")
            self.hub.ip("link", "add", "srv0", "type", "bridge")
            self.hub.ip("addr", "add", f"{SERVER_IP}/16", "dev", "srv0")
            self.hub.ip("link", "set", "srv0", "up")
            for n, relay in enumerate(HUB_RELAYS):
                generator = lab.namespace(f"gen{n}")
                lab.link(self.hub, f"port{n}", generator, "rel0", None, f"{relay}/16")
                self.hub.ip("link", "set", f"port{n}", "master", "srv0")
                self.hub_generators.append((generator, relay))
        self.runs = 0
        self.baseline = None  # another ownsocket tree (--baseline)

    def servers(self, count):
        """The namespaces C{count} servers run in."""
        return [self.hub] if count == 1 else [server for server, _ in self.pairs[:count]]

    def generators(self, count):
        """(namespace, relay address) of the three perfdhcp that load them."""
        return self.hub_generators if count == 1 else [(perf, RELAY_IP) for _, perf in self.pairs]

    def fresh_database(self, kind):
        self.runs += 1
        name = f"{kind.replace('-', '_')}{self.runs}"
        if kind == "kea-pg":
            if self.runs == 1 or not self.cluster.sql("SELECT 1 FROM pg_roles WHERE rolname = 'kea'"):
                self.cluster.sql("CREATE ROLE kea LOGIN PASSWORD 'kea'")
            self.cluster.sql(f"CREATE DATABASE {name} OWNER kea")
            subprocess.run(["kea-admin", "db-init", "pgsql", "-u", "kea", "-p", "kea", "-n", name,
                            "-h", self.cluster.socket_dir], check=True, capture_output=True, timeout=120)
            return name, None
        if not self.cluster.sql("SELECT 1 FROM pg_roles WHERE rolname = 'ownsocket'"):
            self.cluster.sql("CREATE ROLE ownsocket LOGIN")
        self.cluster.sql(f"CREATE DATABASE {name} OWNER ownsocket")
        return name, self.cluster.dsn(name, "ownsocket")

    def start(self, kind, count, pool=POOL, dsn_hook=None):
        """Start C{count} servers; returns (processes, directories, dbname).
        A kind ending in "@base" runs the ownsocket of --baseline."""
        code = REPO
        if kind.endswith("@base"):
            kind, code = kind[:-len("@base")], self.baseline
        dbname, dsn = (None, None) if kind == "ownsocket-sqlite" else self.fresh_database(kind)
        if dsn_hook is not None:
            dsn_hook(dbname)
        processes, directories = [], []
        for n in range(count):
            directory = tempfile.mkdtemp(prefix=f"{kind}-{n}-", dir=self.workdir)
            if kind == "kea-pg":
                argv = kea_argv(directory, self.cluster, dbname, pool)
            else:
                leases = dsn if dsn else os.path.join(directory, "leases.sqlite")
                argv = ownsocket_argv(directory, leases, pool)
            env = dict(os.environ, PYTHONPATH=code, KEA_LOCKFILE_DIR=directory, KEA_PIDFILE_DIR=directory)
            with open(os.path.join(directory, "console.txt"), "w") as console:
                processes.append(self.servers(count)[n].spawn(argv, cwd=directory, env=env, stdout=console,
                                                              stderr=subprocess.STDOUT))
            directories.append(directory)
        for n, process in enumerate(processes):
            space = self.servers(count)[n]
            deadline = time.monotonic() + 30
            while process.poll() is None and not listening(space) and time.monotonic() < deadline:
                time.sleep(0.1)
            if process.poll() is not None or not listening(space):
                with open(os.path.join(directories[n], "console.txt"), errors="replace") as handle:
                    raise RuntimeError(f"{kind} server {n} did not start: {handle.read()[-800:]}")
        time.sleep(1.0)
        return processes, directories, dbname

    def load(self, count, rate, duration, clients):
        """Three perfdhcp at a third of the rate each, whether they load
        three servers (one each) or one."""
        running = []
        generators = self.generators(count)
        for n, (space, relay) in enumerate(generators):
            argv = ["perfdhcp", "-4", "-l", relay, "-r", str(max(rate // len(generators), 1)),
                    "-p", str(duration), "-R", str(max(clients // len(generators), 1)),
                    "-b", f"mac={MAC_BASES[n]}", "-W", "500000", "-g", "single"]
            for option in PXE_OPTIONS:
                argv += ["-o", option]
            argv.append(SERVER_IP)
            running.append(space.spawn(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        totals = {"discovers": 0, "acks": 0}
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        for process in running:
            out, _ = process.communicate(timeout=duration + 60)
            stats = parse_perfdhcp(out)
            totals["discovers"] += int(stats.get("DISCOVER-OFFER", {}).get("sent", 0))
            totals["acks"] += int(stats.get("REQUEST-ACK", {}).get("received", 0))
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        # the load generators' own CPU (they share the machine with the servers)
        totals["perf_cpu_s"] = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
        return totals

    def duplicates(self, kind, dbname, directories):
        """Live bindings that share an address or a client (0 is the only right answer)."""
        if kind == "kea-pg":
            rows = self.cluster.sql("SELECT count(*) FROM (SELECT hwaddr FROM lease4 WHERE state = 0 AND "
                                    "expire > now() GROUP BY hwaddr HAVING count(*) > 1) AS d", dbname=dbname)
            return rows[0][0]
        if kind == "ownsocket-sqlite":
            db = sqlite3.connect(os.path.join(directories[0], "leases.sqlite"))
            try:
                return db.execute("SELECT count(*) FROM (SELECT mac FROM leases WHERE state = 'bound' "
                                  "GROUP BY mac HAVING count(*) > 1)").fetchone()[0]
            finally:
                db.close()
        return self.cluster.sql("SELECT count(*) FROM (SELECT mac FROM ownsocket_leases WHERE state = 'bound' "
                                "AND expires > now() GROUP BY mac, subnet HAVING count(*) > 1) AS d",
                                dbname=dbname)[0][0]


def udp_drops(space):
    """Datagrams the kernel dropped in a namespace so far because a UDP
    socket's receive queue was full (RcvbufErrors)."""
    text = space.run(["cat", "/proc/net/snmp"], timeout=10).stdout
    header, values = [line.split() for line in text.splitlines() if line.startswith("Udp:")][:2]
    return int(values[header.index("RcvbufErrors")])


def postgres_cpu(cluster):
    """CPU seconds the whole cluster used so far: the postmaster, its live
    children (backends, WAL writer, checkpointer) and the children it has
    reaped (a backend whose client disconnected)."""
    pid = cluster.pid
    if pid is None:
        return 0.0
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        total += sum(int(value) for value in fields[11:15]) / tick  # utime stime cutime cstime
    except (OSError, ValueError):
        return 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def top_statements(cluster, limit=6):
    """What the database spent its time on in the last run (pg_stat_statements)."""
    rows = cluster.sql("SELECT calls, total_exec_time, rows, shared_blks_hit + shared_blks_read,"
                       " wal_bytes, left(regexp_replace(query, '\\s+', ' ', 'g'), 110)"
                       " FROM pg_stat_statements WHERE toplevel ORDER BY total_exec_time DESC LIMIT %d" % limit)
    return ["      %7d calls %8.0f ms %7d rows %8d blocks %8.0f kB WAL  %s" % (calls, ms, nrows, blocks,
                                                                             (wal or 0) / 1024, query)
            for calls, ms, nrows, blocks, wal, query in rows]


def server_metrics(bench, count):
    """What the servers say they did (their /metrics on 127.0.0.1:9067 in
    each namespace): replies sent and requests dropped, by kind."""
    found = {}
    for n in range(count):
        try:
            text = bench.servers(count)[n].run(["curl", "-s", "--max-time", "10", "http://127.0.0.1:9067/metrics"],
                                         timeout=20).stdout
        except Exception:
            continue
        for name, labels, value in re.findall(r'^ownsocket_dhcp_(sent|dropped)_total\{([^}]*)\} (\S+)$', text, re.M):
            key = name + ":" + ",".join(v for _, v in re.findall(r'(\w+)="([^"]*)"', labels) if v != "dhcp")
            found[key] = found.get(key, 0) + int(float(value))
    return found


def acked_twice(directories):
    """Addresses some server log shows ACKed to two different clients."""
    acked = {}
    for directory in directories:
        try:
            with open(os.path.join(directory, "ownsocket.log"), errors="replace") as handle:
                for mac, address in re.findall(r"REQUEST from (\S+) .*?-> ACK (\d+\.\d+\.\d+\.\d+)", handle.read()):
                    acked.setdefault(address, set()).add(mac)
        except OSError:
            pass
    return sum(1 for macs in acked.values() if len(macs) > 1)


def run(bench, label, rate, duration, clients, profile=False):
    kind = label.split("@")[0]
    count = 3 if kind == "ownsocket-pg3" else 1
    row = {"server": label, "rate": rate, "error": None}
    processes = []
    try:
        processes, directories, dbname = bench.start(label, count)
        if bench.cluster.statistics:
            bench.cluster.sql("SELECT pg_stat_statements_reset()")
        cpu = [cpu_seconds(p.pid) for p in processes]
        pg_cpu = postgres_cpu(bench.cluster)
        spies = []
        if profile and kind != "kea-pg" and shutil.which("py-spy"):
            for process, directory in zip(processes, directories):
                spies.append(subprocess.Popen(
                    ["py-spy", "record", "--nonblocking", "--threads", "-d", str(duration), "-r", "200",
                     "-f", "raw", "-o", os.path.join(directory, f"profile-{rate}.txt"), "-p", str(process.pid)],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        drops = [udp_drops(space) for space in bench.servers(count)]
        generator_drops = [udp_drops(space) for space, _ in bench.generators(count)]
        totals = bench.load(count, rate, duration, clients)
        row["kernel_drops"] = (sum(udp_drops(space) for space in bench.servers(count)) - sum(drops),
                               sum(udp_drops(space) for space, _ in bench.generators(count)) - sum(generator_drops))
        for spy in spies:
            spy.wait(timeout=60)
        if kind != "kea-pg":
            row["metrics"] = server_metrics(bench, count)
        row["cpu_s"] = sum(cpu_seconds(p.pid) - c for p, c in zip(processes, cpu))
        row["pg_cpu_s"] = postgres_cpu(bench.cluster) - pg_cpu
        if bench.cluster.statistics:
            row["statements"] = top_statements(bench.cluster)
        time.sleep(0.5)
        row.update(totals, acks_per_s=totals["acks"] / duration,
                   loss_pct=100.0 * (1 - totals["acks"] / totals["discovers"]) if totals["discovers"] else 100.0,
                   duplicates=bench.duplicates(kind, dbname, directories)
                   + (acked_twice(directories) if kind != "kea-pg" else 0))
    except Exception as error:
        row["error"] = str(error)[:300]
    finally:
        for process in processes:
            netns.stop(process)
    return row


def memory(bench, leases=100_000, rate=1000, duration=10, profile=False):
    """Peak RSS of one server with C{leases} bound rows in its store, under
    load, and what it got done meanwhile."""
    results = {}
    labels = ["ownsocket-pg1", "ownsocket-sqlite"]
    if bench.baseline:
        labels = ["ownsocket-pg1", "ownsocket-pg1@base", "ownsocket-sqlite", "ownsocket-sqlite@base"]
    for label in labels:
        kind = label.split("@")[0]
        code = bench.baseline if label.endswith("@base") else REPO

        def fill(dbname):
            if dbname is not None:
                bench.cluster.sql(_fill_pg(leases), dbname=dbname)
        processes = []
        try:
            if kind == "ownsocket-sqlite":
                directory = tempfile.mkdtemp(prefix="memory-", dir=bench.workdir)
                path = os.path.join(directory, "leases.sqlite")
                _fill_sqlite(path, leases)
                # started by hand: the file must exist before the server reads it
                argv = ownsocket_argv(directory, path, BIG_POOL)
                with open(os.path.join(directory, "console.txt"), "w") as console:
                    processes = [bench.servers(1)[0].spawn(argv, cwd=directory, stdout=console,
                                                           stderr=subprocess.STDOUT,
                                                           env=dict(os.environ, PYTHONPATH=code))]
                deadline = time.monotonic() + 60
                while not listening(bench.servers(1)[0]) and time.monotonic() < deadline:
                    time.sleep(0.2)
            else:
                processes, _, _ = bench.start(label, 1, pool=BIG_POOL, dsn_hook=fill)
            # the PostgreSQL store reads its leases after the port is open:
            # load only once the server counts them all
            loaded = wait_loaded(bench, leases)
            if bench.cluster.statistics:
                bench.cluster.sql("SELECT pg_stat_statements_reset()")
            spy = None
            if profile and shutil.which("py-spy"):
                spy = subprocess.Popen(
                    ["py-spy", "record", "--nonblocking", "--threads", "-d", str(duration), "-r", "200", "-f",
                     "raw", "-o", os.path.join(bench.workdir, f"profile-memory-{label}.txt"),
                     "-p", str(processes[0].pid)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            cpu, pg_cpu = cpu_seconds(processes[0].pid), postgres_cpu(bench.cluster)
            totals = bench.load(1, rate, duration, 20000)
            if spy is not None:
                spy.wait(timeout=60)
            results[label] = {"peak_rss_mib": _peak_rss(processes[0].pid) / 1024, "acks": totals["acks"],
                             "discovers": totals["discovers"], "loaded_s": loaded,
                             "cpu_s": cpu_seconds(processes[0].pid) - cpu,
                             "pg_cpu_s": postgres_cpu(bench.cluster) - pg_cpu,
                             "statements": top_statements(bench.cluster) if bench.cluster.statistics else []}
        except Exception as error:
            results[label] = {"error": str(error)[:300]}
        finally:
            for process in processes:
                netns.stop(process)
    return results


def wait_loaded(bench, leases, timeout=90):
    """Seconds until the server's /metrics count C{leases} bound addresses
    (None if they never did)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            text = bench.servers(1)[0].run(["curl", "-s", "--max-time", "5", "http://127.0.0.1:9067/metrics"],
                                         timeout=10, check=False).stdout
        except Exception:
            text = ""
        found = re.search(r'^ownsocket_dhcp_addresses\{[^}]*state="bound"[^}]*\} (\S+)$', text, re.M)
        if found and float(found.group(1)) >= leases:
            return time.monotonic() - started
        time.sleep(0.5)
    return None


def _fill_pg(count):
    # ownsocket's own migrations, up to version 2 (the oldest with every
    # column filled here): the server under test upgrades it to its own
    # version, so a --baseline tree with an older schema can read it too
    from ownsocket.dhcp.pgstore import _MIGRATIONS
    steps = range(1, 3)
    return ("SET ROLE ownsocket;" + "".join(_MIGRATIONS[step] for step in steps)
            + "CREATE TABLE ownsocket_schema (version integer NOT NULL);"
            + "".join(f"INSERT INTO ownsocket_schema VALUES ({step});" for step in steps)
            + "INSERT INTO ownsocket_leases (address, mac, subnet, state, expires)"
            f" SELECT '10.80.1.0'::inet + i, 'aa:' || lpad(to_hex(i), 14, '0'), 'bench', 'bound',"
            f" now() + interval '1 hour' FROM generate_series(0, {count - 1}) AS i;")


def _fill_sqlite(path, count):
    from ownsocket.dhcp.leases import SqliteLeaseStore
    SqliteLeaseStore(path).close()
    db = sqlite3.connect(path)
    base = int.from_bytes(bytes([10, 80, 1, 0]), "big")
    expires = time.time() + 3600
    db.executemany("INSERT INTO leases (address, mac, state, expires, subnet) VALUES (?, ?, 'bound', ?, 'bench')",
                   ((".".join(str((base + i) >> s & 255) for s in (24, 16, 8, 0)), f"aa:{i:014x}", expires)
                    for i in range(count)))
    db.commit()
    db.close()


def _peak_rss(pid):
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def table(rows):
    """Medians over the repetitions; the ratio to Kea is the median of each
    repetition's ratio (both ran minutes apart at most, on the same machine)."""
    groups = {}
    for row in rows:
        groups.setdefault((row["rate"], row["server"]), []).append(row)
    kea = {(row["rate"], row.get("repetition", 0)): row for row in rows
           if row["server"] == "kea-pg" and not row["error"]}
    lines = ["| rate/s | server | runs | DISCOVER | ACK | ACK/s | loss % | duplicates | CPU s | PG CPU s "
             "| CPU ms/ACK | vs Kea-PG |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for (rate, server), group in groups.items():
        good = [row for row in group if not row["error"]]
        if not good:
            lines.append(f"| {rate} | {server} | {len(group)} | error: {group[0]['error'].splitlines()[0][:100]} |")
            continue
        ratios = []
        for row in good:
            reference = kea.get((rate, row.get("repetition", 0)))
            if server != "kea-pg" and reference and reference["acks_per_s"]:
                ratios.append(row["acks_per_s"] / reference["acks_per_s"])
        ratio = f"{median(ratios):.2f}x" if ratios else ""
        if len(ratios) > 1:
            ratio += " (" + ", ".join(f"{r:.2f}" for r in ratios) + ")"
        pick = lambda key: median([row[key] for row in good])
        lines.append(f"| {rate} | {server} | {len(good)} | {pick('discovers'):.0f} | {pick('acks'):.0f} | "
                     f"{pick('acks_per_s'):.0f} | {pick('loss_pct'):.1f} | {max(row['duplicates'] for row in good)} | "
                     f"{pick('cpu_s'):.1f} | {pick('pg_cpu_s'):.1f} | {per_ack(good)} | {ratio} |")
    return "\n".join(lines)


#: Run by --store-cost in a child with PYTHONPATH set to the tree under test
#: (so an older tree can be measured too): offer and bind claims straight
#: into the store, in batches, as the DHCP server makes them; prints its
#: own CPU and wall time.
_STORE_COST = """
import ipaddress, json, sys, time
from twisted.internet import defer, reactor
from ownsocket.dhcp import pgstore
dsn, exchanges, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
IP = ipaddress.IPv4Address
first, last = IP("10.80.1.0"), IP("10.80.255.255")
store = pgstore.PostgresLeaseStore(dsn, reactor, server_name="cost")
store.offer_lag = None
pgstore.OFFERS_OUT_MAX = 10 ** 9
result = {}

@defer.inlineCallbacks
def main():
    try:
        yield store.all_leases()  # connected, schema made
        cpu, wall = time.process_time(), time.monotonic()
        for start in range(0, exchanges, size):
            macs = ["02:00:%02x:%02x:%02x:%02x" % tuple((i >> s) & 255 for s in (24, 16, 8, 0))
                    for i in range(start, min(start + size, exchanges))]
            with store.batch():
                offers = [store.claim(mac, "bench", [first + start + n, first + 40000 + start + n], "offered", 30,
                                      own=(((first, last),), frozenset())) for n, mac in enumerate(macs)]
            leases = yield defer.gatherResults(offers)
            with store.batch():
                binds = [store.claim(mac, "bench", [lease.address], "bound", 3600) for mac, lease in zip(macs, leases)]
            yield defer.gatherResults(binds)
        result.update(cpu=time.process_time() - cpu, wall=time.monotonic() - wall)
    finally:
        yield store.close()
        reactor.stop()

reactor.callWhenRunning(main)
reactor.run()
print(json.dumps(result))
"""


def store_cost(bench, trees, exchanges=4000, size=50, repeat=2):
    """CPU per exchange (an offer and a binding) of the store alone, its
    own and the database's, for each tree, taking turns."""
    import json
    rows = []
    for repetition in range(repeat):
        for label, tree in trees:
            dbname, dsn = bench.fresh_database("ownsocket-pg1")
            pg = postgres_cpu(bench.cluster)
            out = subprocess.run([sys.executable, "-c", _STORE_COST, dsn, str(exchanges), str(size)],
                                 env=dict(os.environ, PYTHONPATH=tree), cwd=tree, capture_output=True,
                                 text=True, timeout=600)  # (cwd: "-c" puts it first on sys.path)
            pg = postgres_cpu(bench.cluster) - pg
            try:
                result = json.loads(out.stdout.strip().splitlines()[-1])
            except (ValueError, IndexError):
                rows.append(f"  {label}: failed: {out.stderr[-300:]}")
                continue
            bound = bench.cluster.sql("SELECT count(*) FROM ownsocket_leases WHERE state = 'bound'",
                                      dbname=dbname)[0][0]
            time.sleep(0.6)  # (table statistics are sent every 500 ms)
            updates, hot = bench.cluster.sql("SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables"
                                             " WHERE relname = 'ownsocket_leases'", dbname=dbname)[0]
            rows.append(f"  [{repetition + 1}] {label}: {exchanges} exchanges in batches of {size}: "
                        f"{1e6 * result['cpu'] / exchanges:.0f} us server CPU + {1e6 * pg / exchanges:.0f} us "
                        f"PostgreSQL CPU per exchange, {exchanges / result['wall']:.0f} exchanges/s, "
                        f"{bound} bound, {hot} of {updates} row updates in place (HOT)")
            print(rows[-1], file=sys.stderr, flush=True)
    return rows


def per_ack(rows):
    """Server and database CPU together per ACK (median over runs)."""
    values = [1000 * (row["cpu_s"] + row.get("pg_cpu_s", 0)) / row["acks"] for row in rows if row["acks"]]
    return f"{median(values):.2f}" if values else ""


def main(argv=None):
    parser = argparse.ArgumentParser(description="ownsocket on PostgreSQL vs Kea on PostgreSQL")
    parser.add_argument("--rates", default="1000,5000,20000")
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--clients", type=int, default=10000)
    parser.add_argument("--servers", default="ownsocket-pg1,ownsocket-pg3,ownsocket-sqlite,kea-pg")
    parser.add_argument("--memory", action="store_true", help="also: 100,000 leases, peak RSS under load")
    parser.add_argument("--repeat", type=int, default=1,
                        help="run everything this many times, taking turns; the table shows medians")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--store-cost", action="store_true",
                        help="only the store's own CPU per exchange (no DHCP, no namespaces): 4,000 offers "
                             "and bindings in batches of 50, this tree and --baseline taking turns")
    parser.add_argument("--baseline", metavar="TREE",
                        help="another ownsocket source tree (e.g. a `git archive` of an older commit): each "
                             "ownsocket server is also run from it, right after this tree's (KIND@base)")
    parser.add_argument("--statistics", action="store_true",
                        help="pg_stat_statements and track_io_timing in the cluster (for every server "
                             "alike); prints each run's costliest statements")
    parser.add_argument("--profile", action="store_true",
                        help="py-spy each ownsocket server under load (raw stacks kept with --keep)")
    args = parser.parse_args(argv)
    ok, reason = netns.available()
    if not ok:
        sys.exit(f"cannot run: {reason}")
    reason = pgcluster.available()
    if reason:
        sys.exit(f"cannot run: {reason}")
    for binary, package in (("perfdhcp", "kea-admin"), ("kea-dhcp4", "kea-dhcp4-server"), ("ss", "iproute2")):
        if shutil.which(binary) is None:
            sys.exit(f"cannot run: {binary} is missing (Debian package {package})")
    if args.store_cost:
        reason = pgcluster.available()
        if reason:
            sys.exit(f"cannot run: {reason}")
        trees = [("this tree", REPO)] + ([("baseline", os.path.abspath(args.baseline))] if args.baseline else [])
        with pgcluster.Cluster(fsync=True, max_connections=50) as cluster:
            load_before = os.getloadavg()[0]
            rows = store_cost(Bench(None, cluster, None), trees, repeat=args.repeat)
        print(f"\nstore alone, PostgreSQL 15 fsync on; load average {load_before:.2f} -> "
              f"{os.getloadavg()[0]:.2f}, {os.cpu_count()} CPUs")
        print("\n".join(rows))
        return 0
    workdir = tempfile.mkdtemp(prefix="pg-bench-")
    os.chmod(workdir, 0o755)
    load_before = os.getloadavg()[0]
    started = time.monotonic()
    rows, mem = [], None
    cluster = pgcluster.Cluster(fsync=True, max_connections=200, statistics=args.statistics)
    try:
        cluster.start()
        if args.statistics:
            cluster.sql("CREATE EXTENSION pg_stat_statements")
        with netns.Lab() as lab:
            bench = Bench(lab, cluster, workdir)
            kinds = []
            for kind in filter(None, args.servers.split(",")):
                kinds.append(kind)
                if args.baseline and kind.startswith("ownsocket"):
                    kinds.append(kind + "@base")
            bench.baseline = os.path.abspath(args.baseline) if args.baseline else None
            for repetition in range(args.repeat):
                for rate in [int(r) for r in args.rates.split(",")]:
                    for kind in kinds:
                        row = run(bench, kind, rate, args.duration, args.clients, args.profile)
                        row["repetition"] = repetition
                        metrics = {key: value for key, value in row.get("metrics", {}).items() if value}
                        print(f"  [{repetition + 1}] {kind} @ {rate}/s: " + (row["error"] or
                              f"{row['acks_per_s']:.0f} ACK/s, loss {row['loss_pct']:.1f} %, "
                              f"duplicates {row['duplicates']}, CPU {row['cpu_s']:.1f} s, "
                              f"PostgreSQL CPU {row['pg_cpu_s']:.1f} s, perfdhcp CPU {row['perf_cpu_s']:.1f} s, "
                              f"kernel drops (full queue) at the servers {row['kernel_drops'][0]}, "
                              f"at the generators {row['kernel_drops'][1]} {metrics}"),
                              file=sys.stderr, flush=True)
                        for line in row.get("statements", ()):
                            print(line, file=sys.stderr, flush=True)
                        rows.append(row)
            if args.memory:
                mem = [memory(bench, profile=args.profile) for _ in range(args.repeat)]
    finally:
        cluster.close()
        if args.keep:
            print(f"logs kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"\nperfdhcp -g single as a relay, 4-way, {args.clients} clients, {args.duration} s per run, "
          f"UEFI PXE options, pool {POOL[0]}-{POOL[1]}, PostgreSQL 15 fsync on (Unix socket); "
          f"load average {load_before:.2f} -> {os.getloadavg()[0]:.2f}, {os.cpu_count()} CPUs; "
          f"total {time.monotonic() - started:.0f} s\n")
    print(table(rows))
    for repetition, results in enumerate(mem or ()):
        print(f"\n100,000 leases in the store, one server at 1,000/s for 10 s ({repetition + 1}):")
        for kind, result in results.items():
            print(f"  {kind}: " + (result.get("error") or
                                   f"peak RSS {result['peak_rss_mib']:.0f} MiB, {result['acks']} ACKs for "
                                   f"{result['discovers']} DISCOVERs, CPU {result['cpu_s']:.1f} s, PostgreSQL "
                                   f"CPU {result['pg_cpu_s']:.1f} s (leases loaded "
                                   f"{result['loaded_s'] if result['loaded_s'] is None else round(result['loaded_s'], 1)} s "
                                   f"after the port opened)"))
            for line in result.get("statements", ()):
                print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
