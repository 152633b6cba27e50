#!/usr/bin/env python3
"""
TFTP throughput and CPU benchmark: ownsocket vs tftpd-hpa vs dnsmasq.

Everything runs inside a network namespace this script creates (and deletes):
dnsmasq's TFTP port is fixed at 69, and a private loopback keeps the
benchmark's traffic away from everything else on the machine.  The servers
are run one after the other on the same files with the same client, each on
127.0.0.1 inside the namespace.

The client is in this file: a small epoll-driven TFTP client (RFC 2347/2348/
7440) that verifies a CRC-32 of every download, and whose own CPU time is
reported so one can see it is not the bottleneck.  Server CPU is read from
/proc/PID/stat (utime+stime+cutime+cstime: tftpd-hpa forks a child per
transfer and reaps it, so children count).

Usage (as root):  python3 bench/tftp_bench.py [--quick]

Lock-step results depend on where the scheduler puts server and client:
on the same CPU a round trip costs both processes' CPU time per packet, on
two CPUs it costs two cross-CPU wake-ups (on a VM, tens of microseconds),
whatever the server does.  Unpinned runs mix both; C{--pin same} and
C{--pin apart} measure one each.
"""

from __future__ import annotations

import argparse
import os
import resource
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
LOOPBACK = "127.0.0.1"
TICK = os.sysconf("SC_CLK_TCK")
MiB = 1024 * 1024

_HDR = struct.Struct("!HH")
RRQ, DATA, ACK, ERROR, OACK = 1, 3, 4, 5, 6
_ACKS = [_HDR.pack(ACK, block) for block in range(65536)]


# ---------------------------------------------------------------------------
# The client

class Fetch:
    """One download on a non-blocking socket; lock-step or RFC 7440 windows."""

    def __init__(self, server, name, blksize=512, windowsize=1, timeout=1.0, retries=8):
        self.server = server
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.sock.bind((LOOPBACK, 0))
        options = b""
        if blksize != 512:
            options += b"blksize\x00%d\x00" % blksize
        if windowsize != 1:
            options += b"windowsize\x00%d\x00" % windowsize
        self.request = b"\x00\x01" + name.encode() + b"\x00octet\x00" + options
        self.blksize = 512
        self.window = 1
        self.timeout = timeout
        self.retries = retries
        self.tid = None
        self.next = 1
        self.in_window = 0
        self.gap_reported = False
        self.crc = 0
        self.size = 0
        self.last_sent = self.request
        self.deadline = 0.0
        self.tries = 0
        self.done = False
        self.error = None
        self.negotiated = ""
        self.buffer = bytearray(65536 + 4)
        self.view = memoryview(self.buffer)

    def start(self, now):
        self.sock.sendto(self.request, self.server)
        self.deadline = now + self.timeout

    def _send(self, packet):
        self.last_sent = packet
        try:
            self.sock.send(packet)
        except (BlockingIOError, ConnectionRefusedError):
            pass

    def readable(self, now):
        buffer, view = self.buffer, self.view
        sock = self.sock
        while not self.done:
            try:
                if self.tid is None:
                    n, addr = sock.recvfrom_into(buffer)
                    # The server's transfer port: connect to it, so the
                    # kernel filters strangers and every later packet is a
                    # cheap recv_into and send (the client's CPU time must
                    # not be what limits a storm).
                    self.tid = addr
                    sock.connect(addr)
                else:
                    n = sock.recv_into(buffer)
            except (BlockingIOError, ConnectionRefusedError):
                return
            if n < 4:
                continue
            opcode, block = _HDR.unpack_from(buffer)
            if opcode == DATA:
                self.deadline = now + self.timeout
                self.tries = 0
                if block == self.next & 0xFFFF:
                    payload = n - 4
                    self.crc = zlib.crc32(view[4:n], self.crc)
                    self.size += payload
                    self.next += 1
                    self.gap_reported = False
                    self.in_window += 1
                    if payload < self.blksize:
                        self._send(_ACKS[block])
                        self.done = True
                        self.sock.close()
                        return
                    if self.in_window >= self.window:
                        self.in_window = 0
                        self._send(_ACKS[block])
                        if self.window == 1:
                            # Lock-step: nothing else can be queued; polling
                            # again is cheaper than a failing recv.
                            return
                elif not self.gap_reported:
                    # RFC 7440: report the last in-order block once per gap.
                    self.gap_reported = True
                    self.in_window = 0
                    self._send(_ACKS[(self.next - 1) & 0xFFFF])
            elif opcode == OACK and self.next == 1:
                fields = bytes(view[2:n]).split(b"\x00")
                options = dict(zip(fields[0::2], fields[1::2]))
                self.blksize = int(options.get(b"blksize", 512))
                self.window = int(options.get(b"windowsize", 1))
                self.negotiated = f"b{self.blksize}/w{self.window}"
                self.deadline = now + self.timeout
                self._send(_ACKS[0])
            elif opcode == ERROR:
                self.error = bytes(view[4:n]).split(b"\x00")[0].decode("ascii", "replace")
                self.done = True
                self.sock.close()
                return

    def expire(self, now):
        if self.done or now < self.deadline:
            return
        self.tries += 1
        if self.tries > self.retries:
            self.error = "timeout"
            self.done = True
            self.sock.close()
            return
        self.deadline = now + self.timeout
        if self.tid is None:
            self.sock.sendto(self.request, self.server)
        else:
            self._send(self.last_sent)


def fetch_all(fetches, limit):
    """Run downloads concurrently until all end or C{limit} seconds pass."""
    poller = select.epoll()
    by_fd = {}
    now = time.monotonic()
    for fetch in fetches:
        by_fd[fetch.sock.fileno()] = fetch
        poller.register(fetch.sock.fileno(), select.EPOLLIN)
        fetch.start(now)
    active = len(fetches)
    end = now + limit
    next_check = now + 0.05
    try:
        while active and now < end:
            events = poller.poll(0.05)
            now = time.monotonic()
            for fd, _ in events:
                fetch = by_fd.get(fd)
                if fetch is None:
                    continue
                fetch.readable(now)
                if fetch.done:
                    del by_fd[fd]
                    active -= 1
            if now >= next_check:
                next_check = now + 0.05
                for fd, fetch in list(by_fd.items()):
                    fetch.expire(now)
                    if fetch.done:
                        del by_fd[fd]
                        active -= 1
    finally:
        poller.close()
        for fetch in fetches:
            if not fetch.done:
                fetch.error = fetch.error or "time limit"
                fetch.done = True
                fetch.sock.close()


# ---------------------------------------------------------------------------
# The servers

CGROUP_CPUACCT = "/sys/fs/cgroup/cpuacct"
#: (server CPU, client CPU) when --pin is given.
PIN = None


class CpuMeter:
    """
    Server CPU time including every child, even ones that are never reaped
    by the server itself: a cgroup (v1 cpuacct) when one can be made, else
    /proc/PID/stat utime+stime+cutime+cstime.
    """

    def __init__(self, name):
        self.path = None
        if os.path.isdir(CGROUP_CPUACCT):
            path = os.path.join(CGROUP_CPUACCT, f"tftpbench-{os.getpid()}-{name}")
            try:
                os.mkdir(path)
                self.path = path
            except OSError:
                self.path = None
        self.pid = None

    def enter(self):
        """preexec_fn: put the child in the cgroup (and on its CPU) before it execs."""
        if PIN is not None:
            os.sched_setaffinity(0, {PIN[0]})
        if self.path:
            with open(os.path.join(self.path, "cgroup.procs"), "w") as f:
                f.write(str(os.getpid()))

    def seconds(self):
        if self.path:
            with open(os.path.join(self.path, "cpuacct.usage")) as f:
                return int(f.read()) / 1e9
        return cpu_seconds(self.pid)

    @property
    def method(self):
        return "cgroup cpuacct" if self.path else "/proc/PID/stat"

    def remove(self):
        if self.path:
            # Children the server left behind (tftpd-hpa forks per transfer)
            # are ours too: end them by PID before removing the group.
            try:
                with open(os.path.join(self.path, "cgroup.procs")) as f:
                    for pid in f.read().split():
                        try:
                            os.kill(int(pid), signal.SIGKILL)
                        except OSError:
                            pass
            except OSError:
                pass
            for _ in range(50):
                try:
                    os.rmdir(self.path)
                    break
                except OSError:
                    time.sleep(0.1)
            self.path = None


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # fields[11..14] are utime, stime, cutime, cstime (stat fields 14-17).
    return sum(int(x) for x in fields[11:15]) / TICK


OWNSOCKET_MAIN = """
import sys
from twisted.internet import reactor
from twisted.logger import globalLogBeginner, textFileLogObserver
from ownsocket.config import TftpConfig
from ownsocket.tftp.service import TFTPService
import ipaddress
root, port, log = sys.argv[1], int(sys.argv[2]), sys.argv[3]
globalLogBeginner.beginLoggingTo([textFileLogObserver(open(log, "a"))])
config = TftpConfig(port=port, root=root, addresses=(ipaddress.IPv4Address("127.0.0.1"),),
                    max_blksize=8192, max_windowsize=64, max_bytes_in_flight=65536,
                    max_sessions=1024, max_sessions_per_client=1024, timeout=1.0, retries=6)
service = TFTPService(config, reactor=reactor)
service.privilegedStartService()
service.startService()
reactor.run()
"""


class Server:
    def __init__(self, name, argv, port, env=None):
        self.name, self.argv, self.port, self.env = name, argv, port, env
        self.process = None

    def start(self, probe_name):
        # A file, not a pipe: nobody reads stderr during the run, and a full
        # pipe would stall the server mid-benchmark.
        self.errors = tempfile.TemporaryFile()
        self.meter = CpuMeter(self.name)
        self.process = subprocess.Popen(self.argv, env=self.env, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=self.errors,
                                        preexec_fn=self.meter.enter)
        self.meter.pid = self.process.pid
        try:
            self._wait_ready(probe_name)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, probe_name):
        for _ in range(100):
            if self.process.poll() is not None:
                self.errors.seek(0)
                raise RuntimeError(f"{self.name} exited: {self.errors.read().decode(errors='replace')[-500:]}")
            probe = Fetch((LOOPBACK, self.port), probe_name, timeout=0.1, retries=1)
            fetch_all([probe], 1.0)
            if probe.error is None:
                return
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not answer on port {self.port}")

    def cpu(self):
        return self.meter.seconds()

    def stop(self):
        if self.process is None:
            return
        try:
            self._stop()
        finally:
            self.meter.remove()

    def _stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.errors.close()
        self.process = None


def make_servers(root, work):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    servers = [Server("ownsocket", [sys.executable, "-c", OWNSOCKET_MAIN, root, "6969",
                                    os.path.join(work, "ownsocket.log")], 6969, env)]
    if shutil.which("in.tftpd"):
        servers.append(Server("tftpd-hpa", [shutil.which("in.tftpd"), "-L", "-s", root,
                                            "-a", f"{LOOPBACK}:6970"], 6970))
    else:
        print("tftpd-hpa (in.tftpd) not installed: skipped")
    if shutil.which("dnsmasq"):
        servers.append(Server("dnsmasq", [
            shutil.which("dnsmasq"), "-d", "--port=0", "--conf-file=/dev/null", "--no-resolv",
            "--no-hosts", "--bind-interfaces", f"--listen-address={LOOPBACK}", "--interface=lo",
            "--enable-tftp", f"--tftp-root={root}", "--tftp-max=1024", "--user=root",
            f"--pid-file={os.path.join(work, 'dnsmasq.pid')}",
            f"--log-facility={os.path.join(work, 'dnsmasq.log')}"], 69))
    else:
        print("dnsmasq not installed: skipped")
    return servers


# ---------------------------------------------------------------------------
# Scenarios

def scenarios(quick):
    big = 16 * MiB if quick else 64 * MiB
    small = 1 * MiB if quick else 4 * MiB
    tag = f"{big // MiB}MiB"
    return big, small, [
        (f"{tag} blksize 512", "big.bin", 1, 512, 1),
        (f"{tag} blksize 1468", "big.bin", 1, 1468, 1),
        (f"{tag} blksize 8192", "big.bin", 1, 8192, 1),
        (f"{tag} b1468 window 4", "big.bin", 1, 1468, 4),
        (f"{tag} b1468 window 16", "big.bin", 1, 1468, 16),
        (f"storm 32x{small // MiB}MiB b1468", "small.bin", 32, 1468, 1),
        (f"storm 100x{small // MiB}MiB b1468", "small.bin", 100, 1468, 1),
    ]


def run_scenario(server, name, clients, blksize, windowsize, expected):
    fetches = [Fetch((LOOPBACK, server.port), name, blksize, windowsize) for _ in range(clients)]
    client_before = resource.getrusage(resource.RUSAGE_SELF)
    cpu_before = server.cpu()
    start = time.monotonic()
    fetch_all(fetches, limit=120)
    elapsed = time.monotonic() - start
    cpu = server.cpu() - cpu_before
    client_after = resource.getrusage(resource.RUSAGE_SELF)
    client_cpu = (client_after.ru_utime - client_before.ru_utime
                  + client_after.ru_stime - client_before.ru_stime)
    size, crc = expected
    good = [f for f in fetches if f.error is None and f.size == size and f.crc == crc]
    failed = len(fetches) - len(good)
    moved = sum(f.size for f in good)
    negotiated = sorted({f.negotiated or "b512/w1" for f in good})
    errors = sorted({f.error or f"bad data ({f.size} bytes)" for f in fetches if f not in good})
    return dict(mbps=moved / elapsed / 1e6 if elapsed else 0.0, failed=failed, seconds=elapsed,
                cpu_per_gib=cpu / (moved / 2 ** 30) if moved else float("nan"),
                client_cpu_share=client_cpu / elapsed if elapsed else 0.0,
                negotiated=",".join(negotiated), errors=errors)


def write_file(path, size):
    crc = 0
    with open(path, "wb") as f:
        left = size
        while left:
            chunk = os.urandom(min(left, MiB))
            crc = zlib.crc32(chunk, crc)
            f.write(chunk)
            left -= len(chunk)
    return size, crc


def inside(args):
    work = tempfile.mkdtemp(prefix="tftp-bench-")
    root = os.path.join(work, "root")
    os.mkdir(root)
    try:
        big, small, plan = scenarios(args.quick)
        files = {"big.bin": write_file(os.path.join(root, "big.bin"), big),
                 "small.bin": write_file(os.path.join(root, "small.bin"), small),
                 "probe.bin": write_file(os.path.join(root, "probe.bin"), 100)}
        wanted = args.servers.split(",")
        servers = [server for server in make_servers(root, work) if server.name in wanted]
        plan = [step for step in plan if args.only in step[0]]
        results = {}
        started = []
        try:
            for server in servers:
                server.start("probe.bin")
                started.append(server)
            print(f"servers: {', '.join(f'{s.name} (CPU via {s.meter.method})' for s in servers)}; "
                  f"{args.repeat} run(s) per scenario, interleaved, best kept", flush=True)
            for label, name, clients, blksize, windowsize in plan:
                for rep in range(args.repeat):
                    # Rotate the order so background load hits every server alike.
                    shift = rep % len(servers)
                    for server in servers[shift:] + servers[:shift]:
                        result = run_scenario(server, name, clients, blksize, windowsize, files[name])
                        best = results.get((server.name, label))
                        if best is None:
                            results[(server.name, label)] = result
                        else:
                            failed = best["failed"] + result["failed"]
                            if result["mbps"] > best["mbps"]:
                                best = result
                            results[(server.name, label)] = dict(best, failed=failed)
                        time.sleep(0.1)
                print(f"  {label}: " + ", ".join(
                    f"{s.name} {results[(s.name, label)]['mbps']:.1f}" for s in servers), flush=True)
        finally:
            for server in started:
                server.stop()
        log = os.path.join(work, "ownsocket.log")
        if os.path.exists(log):
            import re
            with open(log, errors="replace") as f:
                counts = [int(n) for n in re.findall(r"result=ok .* retransmits=(\d+)", f.read())]
            print(f"ownsocket log: {len(counts)} transfers ok, {sum(counts)} blocks retransmitted, "
                  f"{sum(1 for n in counts if n)} transfers with retransmissions")
        report(servers, plan, results)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def report(servers, plan, results):
    names = [s.name for s in servers]
    print()
    print(f"{'scenario':<26} {'server':<10} {'MB/s':>8} {'fail':>4} {'srv CPU s/GiB':>13} "
          f"{'client CPU':>10} {'negotiated':>12}")
    for label, *_ in plan:
        for name in names:
            r = results.get((name, label))
            if r is None:
                continue
            print(f"{label:<26} {name:<10} {r['mbps']:8.1f} {r['failed']:4d} {r['cpu_per_gib']:13.2f} "
                  f"{r['client_cpu_share']:9.0%} {r['negotiated']:>12}"
                  + (f"  errors: {'; '.join(r['errors'])}" if r["errors"] else ""))
    peers = [n for n in names if n != "ownsocket"]
    if peers and "ownsocket" in names:
        print()
        header = f"{'ownsocket ratio':<26} " + " ".join(f"{'speed vs ' + p:>18} {'CPU/GiB vs ' + p:>20}" for p in peers)
        print(header)
        for label, *_ in plan:
            own = results.get(("ownsocket", label))
            cells = []
            for peer in peers:
                other = results.get((peer, label))
                if own is None or other is None or not other["mbps"]:
                    cells.append(f"{'-':>18} {'-':>20}")
                    continue
                cpu = (f"{own['cpu_per_gib'] / other['cpu_per_gib']:19.2f}x"
                       if other["cpu_per_gib"] > 0 else f"{'-':>20}")
                cells.append(f"{own['mbps'] / other['mbps']:17.2f}x {cpu}")
            print(f"{label:<26} " + " ".join(cells))
        hpa = {label: results.get(("tftpd-hpa", label)) for label, *_ in plan}
        window16 = [l for l, *_ in plan if "window 16" in l]
        lock1468 = [l for l, *_ in plan if l.endswith("blksize 1468")]
        if window16 and lock1468 and hpa[lock1468[0]] and results.get(("ownsocket", window16[0])):
            print(f"\nownsocket window 16 vs tftpd-hpa lock-step at blksize 1468: "
                  f"{results[('ownsocket', window16[0])]['mbps'] / hpa[lock1468[0]]['mbps']:.2f}x")
    print("\nMB/s = verified bytes / wall time (10^6 B/s), best run; fail = failed or corrupt downloads "
          "over all runs; srv CPU s/GiB = server CPU (user+system, children included) per GiB delivered; "
          "client CPU = the bench client's CPU time as a share of wall time (100% = one core busy).")


# ---------------------------------------------------------------------------
# The namespace wrapper

def enter_namespace(name):
    """
    Move this (single-threaded) process into the namespace with setns(2).
    Unlike re-running under C{ip netns exec}, this keeps the host's /sys
    mounts, so the cgroup used for CPU accounting stays reachable.
    """
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/var/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(fd, 0x40000000) != 0:  # CLONE_NEWNET
            error = ctypes.get_errno()
            raise OSError(error, f"setns into {name}: {os.strerror(error)}")
    finally:
        os.close(fd)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="16 MiB and 1 MiB files instead of 64 and 4")
    parser.add_argument("--servers", default="ownsocket,tftpd-hpa,dnsmasq",
                        help="comma-separated subset of ownsocket,tftpd-hpa,dnsmasq")
    parser.add_argument("--pin", nargs="?", const="apart", choices=("apart", "same"),
                        help="pin the server to CPU 0 and the client to CPU 1 ('apart', the default: "
                             "lock-step then measures cross-CPU wake-up latency), or both to CPU 0 "
                             "('same': lock-step then measures server plus client CPU per packet)")
    parser.add_argument("--repeat", type=int, default=None,
                        help="runs per scenario and server, best kept (default 3, 2 with --quick)")
    parser.add_argument("--only", default="", help="run only scenarios whose label contains this text")
    args = parser.parse_args()
    if args.repeat is None:
        args.repeat = 2 if args.quick else 3
    args.repeat = max(1, min(args.repeat, 10))
    if os.geteuid() != 0 or not shutil.which("ip"):
        sys.exit("run as root: the benchmark creates a network namespace (dnsmasq's TFTP port is 69)")
    namespace = f"tftpbench{os.getpid()}"
    subprocess.run(["ip", "netns", "add", namespace], check=True)
    try:
        run = ["ip", "netns", "exec", namespace]
        subprocess.run(run + ["ip", "link", "set", "lo", "up"], check=True)
        # tftpd-hpa resolves its -a address with AI_ADDRCONFIG, which fails
        # when 127.0.0.1 is the only IPv4 address: give the namespace's
        # loopback a documentation address too (no traffic ever uses it).
        subprocess.run(run + ["ip", "addr", "add", "192.0.2.1/32", "dev", "lo"], check=True)
        enter_namespace(namespace)
        if args.pin:
            global PIN
            PIN = (0, 1) if args.pin == "apart" else (0, 0)
            os.sched_setaffinity(0, {PIN[1]})
        inside(args)
    finally:
        subprocess.run(["ip", "netns", "del", namespace], check=False)


if __name__ == "__main__":
    main()
