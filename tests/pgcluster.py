"""
A throw-away PostgreSQL cluster for tests and benchmarks.

Debian's PostgreSQL binaries (package C{postgresql}) run under an
unprivileged user, because PostgreSQL refuses to run as root.  The cluster
listens only on a Unix socket in its own temporary directory (no TCP port):
a path-based socket is reachable from every network namespace on the host,
so servers in several namespaces can share it.  It is stopped by the PID in
its C{postmaster.pid} and its directory deleted afterwards.

Standard library only, so that a missing driver never hides the reason a
test was skipped.
"""

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time

__all__ = ["available", "Cluster", "ClusterError"]

SUPERUSER = "postgres"


class ClusterError(Exception):
    """initdb or the server failed; carries their output."""


def bindir():
    """The newest installed /usr/lib/postgresql/N/bin, or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
                   key=lambda path: int(path.split("/")[4]) if path.split("/")[4].isdigit() else 0)
    return os.path.dirname(found[-1]) if found else None


def _run_as():
    """(uid, gid) to run PostgreSQL as: ourselves, or an unprivileged user if we are root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        return entry.pw_uid, entry.pw_gid
    return None


def available():
    """None when a cluster can be started here, else why not (for SkipTest)."""
    if bindir() is None:
        return "PostgreSQL server binaries not found (Debian package postgresql)"
    if os.geteuid() == 0 and _run_as() is None:
        return "running as root and no unprivileged user (postgres, nobody) to run PostgreSQL as"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg (3) is not installed"
    return None


class Cluster:
    """
    @param fsync: False for tests (faster; a crash of the test machine
        loses the throw-away cluster anyway); True for benchmarks.
    @param statistics: load pg_stat_statements and time I/O (benchmarks
        that say where the database's time went; every database of the
        cluster pays the same for it).
    """

    def __init__(self, fsync=False, max_connections=100, statistics=False):
        self.bindir = bindir()
        self.owner = _run_as()
        self.root = tempfile.mkdtemp(prefix="ownsocket-pg-")
        os.chmod(self.root, 0o755)  # the socket must be reachable by our clients
        self.data = os.path.join(self.root, "data")
        self.socket_dir = self.root
        self.log_path = os.path.join(self.root, "postgres.log")
        self.fsync = fsync
        self.max_connections = max_connections
        self.statistics = statistics
        if self.owner is not None:
            os.chown(self.root, *self.owner)
        self._initdb()

    def _as_owner(self):
        if self.owner is None:
            return {}
        uid, gid = self.owner
        return {"user": uid, "group": gid, "extra_groups": []}

    def _run(self, *argv, timeout=120):
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=self.root,
                                **self._as_owner())
        if result.returncode != 0:
            raise ClusterError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr or result.stdout}")
        return result.stdout

    def _initdb(self):
        self._run(os.path.join(self.bindir, "initdb"), "-D", self.data, "-U", SUPERUSER,
                  "--auth=trust", "--no-sync", "-E", "UTF8", "--locale=C")

    @property
    def host(self):
        return self.socket_dir

    def dsn(self, dbname="postgres", user=SUPERUSER, password=None):
        auth = f"{user}:{password}" if password else user
        return f"postgresql://{auth}@/{dbname}?host={self.socket_dir}"

    def start(self, timeout=120):  # generous: a loaded machine starts slowly
        options = (f"-k {self.socket_dir} -c listen_addresses='' -c fsync={'on' if self.fsync else 'off'} "
                   f"-c max_connections={self.max_connections} -c shared_buffers=64MB "
                   f"-c unix_socket_permissions=0777")
        if self.statistics:
            options += (" -c shared_preload_libraries=pg_stat_statements -c pg_stat_statements.track=all"
                        " -c track_io_timing=on")
        self._run(os.path.join(self.bindir, "pg_ctl"), "-D", self.data, "-l", self.log_path,
                  "-o", options, "-w", "-t", str(timeout), "start", timeout=timeout + 30)
        return self

    @property
    def pid(self):
        try:
            with open(os.path.join(self.data, "postmaster.pid")) as handle:
                return int(handle.readline().strip())
        except (OSError, ValueError):
            return None

    def stop(self, timeout=30):
        """Fast shutdown by PID (SIGINT), SIGKILL if it does not go."""
        pid = self.pid
        if pid is None:
            return
        for sig, wait in ((signal.SIGINT, timeout), (signal.SIGKILL, 10)):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                return
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    self._remove_pid_file()
                    return
                time.sleep(0.05)

    def _remove_pid_file(self):
        try:
            os.unlink(os.path.join(self.data, "postmaster.pid"))
        except FileNotFoundError:
            pass

    def restart(self):
        self.stop()
        return self.start()

    def sql(self, statement, dbname="postgres"):
        """Run one statement as the superuser; the rows as tuples."""
        import psycopg
        with psycopg.connect(self.dsn(dbname), autocommit=True) as connection:
            cursor = connection.execute(statement)
            return cursor.fetchall() if cursor.description else []

    def create_database(self, name, owner=None, password=None):
        """A database, and a login role that owns it (the least it needs:
        it creates its own tables in it and nothing else)."""
        if owner is not None:
            clause = f" PASSWORD '{password}'" if password else ""
            self.sql(f'CREATE ROLE "{owner}" LOGIN{clause}')
        self.sql(f'CREATE DATABASE "{name}"' + (f' OWNER "{owner}"' if owner else ""))
        return self.dsn(name, owner or SUPERUSER)

    def close(self):
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info):
        self.close()
