"""
Throw-away network namespaces joined by veth pairs, for tests that run real
DHCP clients against a real server.

DHCP cannot be tested honestly on loopback: clients broadcast from 0.0.0.0,
servers must answer out of the interface a request came in on, and a relay
needs a routed giaddr.  Namespaces give each test its own little LAN that no
other host can see, so broadcasts never leave the machine and port 67 never
clashes with anything running on it.

Only the standard library is used so that this module can be imported by
trial tests and by the benchmark alike, and so that a failing import never
hides the real reason a test was skipped.

Every veth leg is created directly inside its namespace (C{ip -n NS link add
... peer ... netns OTHER}): nothing ever appears in the host's own namespace,
so interface names can be short fixed names (C{srv0}, C{cli0}) without
clashing between concurrent runs, while namespace names carry the PID.
"""

import itertools
import os
import re
import shutil
import signal
import subprocess
import time

__all__ = ["available", "skip_reason", "Lab", "Namespace", "NetnsError", "remove_stale", "stop",
           "server_client", "two_subnets", "relayed"]

_counter = itertools.count()


class NetnsError(Exception):
    """An C{ip} command failed; carries its output because that is the only
    clue to why (missing kernel module, name taken, ...)."""


def available():
    """
    Whether namespaces can be used here, and if not, why (for a skip reason).

    The probe really creates and deletes a namespace: a container may have
    root and C{ip} but no right to call setns/unshare, and only trying tells.

    @return: C{(True, "")} or C{(False, reason)}.
    """
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return False, "needs root (network namespaces, veth pairs and port 67)"
    if shutil.which("ip") is None:
        return False, "the 'ip' command (package iproute2) is not installed"
    name = f"owsprobe{os.getpid()}x{next(_counter)}"
    try:
        made = subprocess.run(["ip", "netns", "add", name], capture_output=True,
                              text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as error:
        return False, f"'ip netns add' failed: {error}"
    if made.returncode != 0:
        return False, f"network namespaces are not usable here: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)
    return True, ""


def skip_reason(tools=()):
    """
    Why a namespace test with these real clients cannot run here, or None.

    @param tools: (command, Debian package) pairs the test runs.
    """
    ok, why = available()
    if not ok:
        return why
    for tool, package in tools:
        if shutil.which(tool) is None:
            return f"needs {tool} (Debian package {package})"
    return None


def _ip(*args, timeout=10):
    try:
        done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise NetnsError(f"ip {' '.join(args)}: timed out after {timeout}s") from None
    if done.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: {done.stderr.strip() or done.returncode}")
    return done.stdout


class Namespace:
    """One namespace of a L{Lab}; knows how to run things inside itself."""

    def __init__(self, lab, name, role):
        self.lab, self.name, self.role = lab, name, role

    def __repr__(self):
        return f"<Namespace {self.name} ({self.role})>"

    def ip(self, *args, timeout=10):
        """Run C{ip -n NAME ARGS}; -n is cheaper than 'netns exec' (no fork of
        a second binary) and fails loudly if the namespace has gone."""
        return _ip("-n", self.name, *args, timeout=timeout)

    def argv(self, argv):
        """The command line that runs C{argv} inside this namespace.  'ip netns
        exec' execs the command in place, so the PID of the Popen is the
        command's own PID: stopping by PID reaches the right process."""
        return ["ip", "netns", "exec", self.name, *argv]

    def run(self, argv, timeout=30, check=True, **kwargs):
        """
        Run a command to completion inside the namespace.

        The timeout is mandatory because a DHCP client that never gets an
        answer may wait forever, and a hung test run is worse than a failure.
        """
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        try:
            done = subprocess.run(self.argv(argv), timeout=timeout, **kwargs)
        except subprocess.TimeoutExpired as error:
            raise NetnsError(f"in {self.name}: {' '.join(map(str, argv))}: "
                             f"no exit after {timeout}s; output so far: {error.stdout!r} {error.stderr!r}") from None
        if check and done.returncode != 0:
            raise NetnsError(f"in {self.name}: {' '.join(map(str, argv))}: exit {done.returncode}\n"
                             f"stdout: {done.stdout}\nstderr: {done.stderr}")
        return done

    def spawn(self, argv, **kwargs):
        """Start a long-running process inside the namespace; the lab stops
        it on close even if the test forgets or fails first."""
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        process = subprocess.Popen(self.argv(argv), **kwargs)
        self.lab._processes.append(process)
        return process

    def pids(self):
        """PIDs of every process living in this namespace.  All of them were
        started by this lab (the namespace is ours and unique), including
        clients that daemonised themselves behind our back."""
        try:
            out = _ip("netns", "pids", self.name)
        except NetnsError:
            return []
        return [int(word) for word in out.split() if word.isdigit()]

    def addresses(self, interface):
        """IPv4 addresses (with prefix) configured on C{interface}."""
        out = self.ip("-4", "-o", "addr", "show", "dev", interface)
        found = []
        for line in out.splitlines():
            words = line.split()
            if "inet" in words:
                found.append(words[words.index("inet") + 1])
        return found

    def set_mac(self, interface, mac):
        """Change a leg's MAC: the cheapest way for one namespace to look
        like several DHCP clients one after another."""
        self.ip("link", "set", "dev", interface, "address", mac)


def stop(process, timeout=5.0):
    """
    Stop one process we started, by its PID: SIGTERM, then SIGKILL.

    SIGTERM first so that a server gets to flush its lease database and a
    client gets to release; SIGKILL after C{timeout} so a wedged process can
    never hang the test run.
    """
    if process.poll() is not None:
        return process.returncode
    try:
        os.kill(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.kill(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return process.wait(timeout)


_NAME = re.compile(r"^ows(\d+)x\d+-\w+$")


def remove_stale():
    """
    Delete namespaces left behind by a run of this module that was killed
    before it could clean up (SIGKILL, a power cut).  Only names of our own
    pattern whose creating PID is gone and that hold no process are
    touched: another run in progress keeps its namespaces.

    @return: the names deleted.
    """
    try:
        out = _ip("netns", "list")
    except NetnsError:
        return []
    removed = []
    for line in out.splitlines():
        name = line.split()[0] if line.split() else ""
        match = _NAME.match(name)
        if not match or int(match.group(1)) == os.getpid() or os.path.exists(f"/proc/{match.group(1)}"):
            continue
        try:
            if _ip("netns", "pids", name).split():
                continue
            _ip("netns", "del", name)
            removed.append(name)
        except NetnsError:
            pass
    return removed


class Lab:
    """
    A set of namespaces that live exactly as long as a C{with} block.

    Names are C{ows<pid>x<n>-<role>} so that two test runs (or a test run and
    the benchmark) on one machine never collide, and so that a leftover from
    a crashed run names the process that made it.
    """

    def __init__(self):
        remove_stale()
        self.prefix = f"ows{os.getpid()}x{next(_counter)}"
        self.namespaces = []
        self._processes = []

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()
        return False

    def namespace(self, role):
        """Create a namespace with loopback up (some clients and Kea bind
        loopback control sockets and fail without it)."""
        name = f"{self.prefix}-{role}"
        _ip("netns", "add", name)
        space = Namespace(self, name, role)
        self.namespaces.append(space)
        space.ip("link", "set", "lo", "up")
        return space

    def link(self, left, left_if, right, right_if, left_addr=None, right_addr=None):
        """
        Join two namespaces with a veth pair and bring both legs up.

        @param left_addr: e.g. C{"10.77.0.1/24"}, or None to leave the leg
            unconfigured (a DHCP client's leg must start without an address).
        """
        left.ip("link", "add", left_if, "type", "veth", "peer", "name", right_if, "netns", right.name)
        for space, interface, address in ((left, left_if, left_addr), (right, right_if, right_addr)):
            if address:
                space.ip("addr", "add", address, "dev", interface)
            space.ip("link", "set", interface, "up")

    def close(self):
        """Stop every process, then delete every namespace; never raises, so
        it cannot mask the failure that brought us here."""
        for process in reversed(self._processes):
            try:
                stop(process)
            except Exception:
                pass
        for space in self.namespaces:
            for pid in space.pids():
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
        for space in reversed(self.namespaces):
            deadline = time.monotonic() + 5
            while space.pids() and time.monotonic() < deadline:
                time.sleep(0.05)
            try:
                _ip("netns", "del", space.name)
            except NetnsError:
                pass
        self.namespaces = []
        self._processes = []


# ---------------------------------------------------------------------------
# The topologies the DHCP tests and the benchmark use.

class Topology:
    """Plain record of what a topology function built (names and addresses
    the tests need to write a config and to check a client's result)."""

    def __init__(self, **fields):
        self.__dict__.update(fields)


def server_client(lab, network="10.77.0", server_if="srv0", client_if="cli0", prefix=24,
                  client_addr=None):
    """
    A server namespace and a client namespace on one LAN.

    The server leg gets C{network}.1; the client leg stays unconfigured so a
    DHCP client has something to configure (unless C{client_addr} is given,
    as perfdhcp needs a source address to act as a relay).
    """
    server = lab.namespace("server")
    client = lab.namespace("client")
    lab.link(server, server_if, client, client_if, f"{network}.1/{prefix}",
             f"{client_addr}/{prefix}" if client_addr else None)
    return Topology(server=server, client=client, server_if=server_if, client_if=client_if,
                    server_address=f"{network}.1", network=f"{network}.0/{prefix}")


def two_subnets(lab):
    """
    One server namespace with two legs, each into its own client namespace.

    This is the case a single listenUDP(67) socket gets wrong (every
    broadcast reply leaves by one interface), so it is the test of
    per-interface sockets.
    """
    server = lab.namespace("server")
    client_a = lab.namespace("clienta")
    client_b = lab.namespace("clientb")
    lab.link(server, "srva", client_a, "clia", "10.77.0.1/24")
    lab.link(server, "srvb", client_b, "clib", "10.78.0.1/24")
    return Topology(server=server, client_a=client_a, client_b=client_b,
                    server_ifs=("srva", "srvb"), client_a_if="clia", client_b_if="clib",
                    networks=("10.77.0.0/24", "10.78.0.0/24"))


def relayed(lab):
    """
    A server, and a relay agent one router hop away.

    The relay namespace has a leg towards the server (10.77.0.2) and a
    second leg (10.79.0.1, the giaddr) into a client namespace; the server
    routes 10.79.0.0/24 via the relay, as a real server behind a router
    would.  The server sees only unicast from 10.77.0.2 or 10.79.0.1 and must
    answer to giaddr:67.
    """
    server = lab.namespace("server")
    relay = lab.namespace("relay")
    client = lab.namespace("client")
    lab.link(server, "srv0", relay, "up0", "10.77.0.1/24", "10.77.0.2/24")
    lab.link(relay, "down0", client, "cli0", "10.79.0.1/24")
    server.ip("route", "add", "10.79.0.0/24", "via", "10.77.0.2")
    return Topology(server=server, relay=relay, client=client, server_if="srv0",
                    server_address="10.77.0.1", giaddr="10.79.0.1",
                    relay_network="10.79.0.0/24", client_if="cli0")
