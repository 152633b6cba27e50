"""
Real TFTP clients against the in-process server on the real reactor.

Loopback only (127.0.0.1, an ephemeral port picked by the kernel).  Every
download is compared byte for byte with the served file.  A test skips,
naming the missing binary, when a client is not installed (Debian packages
tftp-hpa, atftp, curl, busybox).
"""

import errno
import hashlib
import ipaddress
import os
import shutil
import socket

from twisted.internet import defer, protocol, reactor, task
from twisted.trial import unittest

from ownsocket.config import TftpConfig
from ownsocket.tftp import wire
from ownsocket.tftp.service import TFTPService

LOOPBACK = "127.0.0.1"
CLIENT_TIMEOUT = 90


def need(binary):
    """A skip reason when C{binary} is missing, else None."""
    if shutil.which(binary) is None:
        return f"{binary} is not installed (apt-get install the package that ships it)"
    return None


class _Collect(protocol.ProcessProtocol):
    def __init__(self, done):
        self.done = done
        self.out, self.err = [], []

    def outReceived(self, data):
        self.out.append(data)

    def errReceived(self, data):
        self.err.append(data)

    def processEnded(self, reason):
        self.done.callback((b"".join(self.out), b"".join(self.err), reason.value.exitCode))


def run(argv, cwd, timeout=CLIENT_TIMEOUT):
    """Run a client; kill it (by its own PID) if it outlives C{timeout}."""
    done = defer.Deferred()
    collector = _Collect(done)
    process = reactor.spawnProcess(collector, shutil.which(argv[0]), argv, env=os.environ, path=cwd)

    def kill():
        try:
            process.signalProcess("KILL")
        except Exception:
            pass
    killer = reactor.callLater(timeout, kill)

    def stop_killer(result):
        if killer.active():
            killer.cancel()
        return result
    return done.addBoth(stop_killer)


def threads_recvfrom(sock):
    """A blocking recvfrom off the reactor thread (the server runs on it)."""
    from twisted.internet import threads
    return threads.deferToThread(sock.recvfrom, 65536)


class ClientTestCase(unittest.TestCase):
    timeout = 240

    def setUp(self):
        self.root = os.path.abspath(self.mktemp())
        self.work = os.path.abspath(self.mktemp())
        os.makedirs(self.root)
        os.makedirs(self.work)
        config = TftpConfig(port=0, root=self.root, addresses=(ipaddress.IPv4Address(LOOPBACK),),
                            max_blksize=8192, max_windowsize=64)
        self.service = TFTPService(config, reactor=reactor)
        self.service.privilegedStartService()
        self.service.startService()
        self.port = self.service.listening_addresses()[0][1]
        self.addCleanup(self.cleanup)

    def cleanup(self):
        d = self.service.stopService()
        shutil.rmtree(self.root, ignore_errors=True)
        shutil.rmtree(self.work, ignore_errors=True)
        return d

    def serve(self, name, size=None, data=None):
        if data is None:
            data = os.urandom(size)
        path = os.path.join(self.root, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
        return data

    def local(self, name="out.bin"):
        return os.path.join(self.work, name)

    @defer.inlineCallbacks
    def fetch_and_compare(self, argv, expected, local=None):
        out, err, code = yield run(argv, self.work)
        local = local or self.local()
        self.assertEqual(code, 0, f"{argv[0]} failed: {out!r} {err!r}")
        with open(local, "rb") as f:
            got = f.read()
        self.assertEqual(len(got), len(expected))
        self.assertEqual(hashlib.sha256(got).hexdigest(), hashlib.sha256(expected).hexdigest())
        os.unlink(local)


class TftpHpaTests(ClientTestCase):
    skip = need("tftp")

    def test_binary(self):
        data = self.serve("pxelinux.0", 300000)
        return self.fetch_and_compare(
            ["tftp", "-m", "binary", LOOPBACK, str(self.port), "-c", "get", "pxelinux.0", self.local()], data)

    def test_nested_and_backslash_name(self):
        data = self.serve("boot/x64/wdsmgfw.efi", 5000)
        return self.fetch_and_compare(
            ["tftp", "-m", "binary", LOOPBACK, str(self.port), "-c", "get", "boot\\x64\\wdsmgfw.efi",
             self.local()], data)

    def test_netascii_round_trips(self):
        text = b"#!ipxe\ndhcp\r\nchain http://boot/menu\n" * 300 + b"\rend"
        self.serve("menu.ipxe", data=text)
        # tftp-hpa decodes netascii back to the local convention (LF).
        return self.fetch_and_compare(
            ["tftp", "-m", "ascii", LOOPBACK, str(self.port), "-c", "get", "menu.ipxe", self.local()], text)

    @defer.inlineCallbacks
    def test_missing_file_reported(self):
        out, err, code = yield run(
            ["tftp", "-m", "binary", LOOPBACK, str(self.port), "-c", "get", "nope", self.local()], self.work)
        self.assertIn(b"Error code 1", out + err)

    def test_rollover_40MiB_blksize_512(self):
        # 81920 blocks of 512 bytes: block numbers wrap past 65535.
        data = self.serve("big.bin", 40 * 1024 * 1024)
        return self.fetch_and_compare(
            ["tftp", "-m", "binary", LOOPBACK, str(self.port), "-c", "get", "big.bin", self.local()], data)


class AtftpTests(ClientTestCase):
    skip = need("atftp")

    def test_blksize_1468(self):
        data = self.serve("snponly.efi", 1000000)
        return self.fetch_and_compare(
            ["atftp", "--option", "blksize 1468", "--option", "tsize 0", "-g", "-r", "snponly.efi",
             "-l", self.local(), LOOPBACK, str(self.port)], data)

    def test_windowsize_16(self):
        # atftp 0.8 speaks RFC 7440.
        data = self.serve("snponly.efi", 3000000)
        return self.fetch_and_compare(
            ["atftp", "--option", "blksize 1468", "--option", "windowsize 16", "-g", "-r", "snponly.efi",
             "-l", self.local(), LOOPBACK, str(self.port)], data)

    def test_windowsize_rollover(self):
        data = self.serve("big.bin", 70000 * 512 + 17)
        return self.fetch_and_compare(
            ["atftp", "--option", "windowsize 8", "-g", "-r", "big.bin",
             "-l", self.local(), LOOPBACK, str(self.port)], data)


class CurlTests(ClientTestCase):
    skip = need("curl")

    def test_blksize_1468(self):
        data = self.serve("undionly.kpxe", 700000)
        return self.fetch_and_compare(
            ["curl", "-sS", "--tftp-blksize", "1468", "-o", self.local(),
             f"tftp://{LOOPBACK}:{self.port}/undionly.kpxe"], data)

    def test_default_and_exact_multiple(self):
        data = self.serve("exact.bin", 512 * 40)
        return self.fetch_and_compare(
            ["curl", "-sS", "-o", self.local(), f"tftp://{LOOPBACK}:{self.port}/exact.bin"], data)

    def test_blksize_8192(self):
        data = self.serve("k.bin", 2000000)
        return self.fetch_and_compare(
            ["curl", "-sS", "--tftp-blksize", "8192", "-o", self.local(),
             f"tftp://{LOOPBACK}:{self.port}/k.bin"], data)


class BusyboxTests(ClientTestCase):
    skip = need("busybox")

    def test_blksize_1468(self):
        data = self.serve("ipxe.efi", 900001)
        return self.fetch_and_compare(
            ["busybox", "tftp", "-b", "1468", "-g", "-r", "ipxe.efi", "-l", self.local(),
             LOOPBACK, str(self.port)], data)

    def test_default_blksize(self):
        data = self.serve("small.bin", 1)
        return self.fetch_and_compare(
            ["busybox", "tftp", "-g", "-r", "small.bin", "-l", self.local(), LOOPBACK, str(self.port)], data)


class FirmwareLikeTests(ClientTestCase):
    """OVMF's probe-then-fetch sequence over a real socket (a thread keeps
    the blocking client off the reactor)."""

    @defer.inlineCallbacks
    def test_ovmf_size_probe_then_windowed_fetch(self):
        from twisted.internet import threads
        data = self.serve("snponly.efi", 123457)
        got = yield threads.deferToThread(self._ovmf, self.port)
        self.assertEqual(got, (str(len(data)), data))

    @staticmethod
    def _ovmf(port):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(5)
            sock.bind((LOOPBACK, 0))
            sock.sendto(wire.build_request(wire.RRQ, b"snponly.efi", "octet",
                                           {"tsize": "0", "blksize": "1468", "windowsize": "4"}),
                        (LOOPBACK, port))
            packet, server = sock.recvfrom(65536)
            size = wire.parse_oack(packet)["tsize"]
            sock.sendto(wire.build_error(8, "User aborted the transfer"), server)
            sock.sendto(wire.build_request(wire.RRQ, b"snponly.efi", "octet",
                                           {"blksize": "1468", "windowsize": "4"}), (LOOPBACK, port))
            packet, server = sock.recvfrom(65536)
            assert wire.parse_oack(packet) == {"blksize": "1468", "windowsize": "4"}
            sock.sendto(wire.build_ack(0), server)
            received, expected = bytearray(), 1
            for _ in range(10000):
                packet, source = sock.recvfrom(65536)
                assert source == server
                opcode, block = wire.unpack_header(packet)
                assert opcode == wire.DATA and block == expected & 0xFFFF
                received += packet[4:]
                expected += 1
                last = len(packet) - 4 < 1468
                if last or block % 4 == 0:
                    sock.sendto(wire.build_ack(block), server)
                if last:
                    return size, bytes(received)
            raise AssertionError("no end of file")


class RealSocketTests(ClientTestCase):
    """The lean transfer ports, driven by a scripted client on real sockets."""

    @defer.inlineCallbacks
    def test_foreign_tid_gets_error_5_and_transfer_continues(self):
        from twisted.internet import threads
        data = self.serve("f.bin", 5000)
        got, error = yield threads.deferToThread(self._intruded, self.port)
        self.assertEqual(got, data)
        self.assertEqual(error, (5, "Unknown transfer ID"))

    @staticmethod
    def _intruded(port):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock, \
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stranger:
            sock.settimeout(5)
            stranger.settimeout(5)
            sock.bind((LOOPBACK, 0))
            stranger.bind((LOOPBACK, 0))
            sock.sendto(wire.build_request(wire.RRQ, b"f.bin"), (LOOPBACK, port))
            received = bytearray()
            packet, server = sock.recvfrom(65536)
            stranger.sendto(wire.build_ack(1), server)
            reply, source = stranger.recvfrom(65536)
            assert source == server, (source, server)
            error = wire.parse_error(reply)
            for _ in range(100):
                received += packet[4:]
                block = wire.unpack_header(packet)[1]
                sock.sendto(wire.build_ack(block), server)
                if len(packet) - 4 < 512:
                    return bytes(received), error
                packet, source = sock.recvfrom(65536)
                assert source == server
            raise AssertionError("no end of file")

    @defer.inlineCallbacks
    def test_reactor_is_served_while_a_transfer_holds_the_wait(self):
        """
        While ACKs flow, the transfer ports wait on their own set instead
        of the reactor's: timed calls and other sockets must still be
        served promptly, and the ports rejoin the reactor afterwards.
        """
        from twisted.internet import threads
        data = self.serve("big.bin", 4 * 1024 * 1024)
        lateness = []
        pending = []

        def tick(expected):
            lateness.append(reactor.seconds() - expected)
            pending[:] = [reactor.callLater(0.01, tick, reactor.seconds() + 0.01)]
        tick(reactor.seconds())

        class Echo(protocol.DatagramProtocol):
            def datagramReceived(self, datagram, addr):
                self.transport.write(datagram, addr)
        echo = reactor.listenUDP(0, Echo(), interface=LOOPBACK)
        self.addCleanup(echo.stopListening)
        try:
            got, pings = yield threads.deferToThread(
                self._lock_step_with_pings, self.port, echo.getHost().port)
        finally:
            pending[0].cancel()
        self.assertEqual(got, data)
        self.assertGreater(len(pings), 10)
        # Starved, a ping or a tick would wait for the whole transfer (8,192
        # lock-step blocks: seconds).  Served, they wait milliseconds; 1 s
        # leaves room for a loaded CI machine (0.25 s failed once at load 14).
        self.assertLess(max(pings), 1.0)
        self.assertGreater(len(lateness), 5)
        self.assertLess(max(lateness), 1.0)
        # The client returns once it has sent the last ACK; the server may
        # not have read it yet.
        for _ in range(100):
            if not self.service.server.transfers:
                break
            yield task.deferLater(reactor, 0.05, lambda: None)
        mux = self.service.server._listen_session.mux
        self.assertFalse(mux._holding)
        self.assertEqual(mux._readers, {})

    @staticmethod
    def _lock_step_with_pings(port, echo_port):
        """Fetch big.bin in lock-step (blksize 512); every 256 blocks, time
        a datagram's round trip through another reactor socket."""
        import time
        pings = []
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock, \
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as pinger:
            sock.settimeout(5)
            pinger.settimeout(5)
            sock.bind((LOOPBACK, 0))
            sock.sendto(wire.build_request(wire.RRQ, b"big.bin"), (LOOPBACK, port))
            received = bytearray()
            packet, server = sock.recvfrom(65536)
            expected = 1
            while True:
                block = wire.unpack_header(packet)[1]
                if block == expected & 0xFFFF:
                    received += packet[4:]
                    expected += 1
                sock.sendto(wire.build_ack(block), server)
                if len(packet) - 4 < 512:
                    return bytes(received), pings
                if block % 256 == 0:
                    sent = time.monotonic()
                    pinger.sendto(b"ping", (LOOPBACK, echo_port))
                    pinger.recvfrom(64)
                    pings.append(time.monotonic() - sent)
                packet, source = sock.recvfrom(65536)
                assert source == server

    @defer.inlineCallbacks
    def test_long_error_from_the_peer_ends_the_transfer(self):
        # The peer's socket is read with a small buffer (ACKs are 4 bytes):
        # a long ERROR is cut short, and still ends the transfer.
        from twisted.internet import task
        from twisted.logger import globalLogPublisher
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        self.serve("f.bin", 5000)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((LOOPBACK, 0))
            sock.settimeout(5)
            sock.sendto(wire.build_request(wire.RRQ, b"f.bin"), (LOOPBACK, self.port))
            packet, server = yield threads_recvfrom(sock)
            sock.sendto(wire.build_error(wire.ERR_UNDEFINED, "x" * 1400), server)
            for _ in range(100):
                yield task.deferLater(reactor, 0.02, lambda: None)
                if not self.service.server.transfers:
                    break
        self.assertEqual(self.service.server.transfers, {})
        details = [e.get("detail", "") for e in events if e.get("tftp_result") == "client error"]
        self.assertEqual(len(details), 1)
        self.assertIn("error 0: xxxx", details[0])

    @defer.inlineCallbacks
    def test_vanished_client_is_dropped_and_reader_finished(self):
        from twisted.internet import task
        from twisted.logger import globalLogPublisher
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        self.serve("f.bin", 5000)
        self.service.server.retries = 1
        self.service.server.timeout = 0.2
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((LOOPBACK, 0))
            sock.sendto(wire.build_request(wire.RRQ, b"f.bin"), (LOOPBACK, self.port))
            for _ in range(50):
                yield task.deferLater(reactor, 0.05, lambda: None)
                if self.service.server.transfers:
                    break
            self.assertEqual(len(self.service.server.transfers), 1)
        for _ in range(100):  # the client is gone: retries run out
            yield task.deferLater(reactor, 0.05, lambda: None)
            if not self.service.server.transfers:
                break
        self.assertEqual(self.service.server.transfers, {})
        self.assertIn("timeout", [e.get("tftp_result") for e in events])


class FloodTests(ClientTestCase):
    """Silent requesters (as spoofed RRQs would be) against a real client."""
    skip = need("curl")

    @defer.inlineCallbacks
    def test_flood_of_silent_requests_does_not_lock_out_a_client(self):
        import time
        data = self.serve("snponly.efi", 200000)
        flooders = []
        try:
            for _ in range(300):
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                sock.bind((LOOPBACK, 0))
                sock.sendto(wire.build_request(wire.RRQ, b"snponly.efi", "octet", {"blksize": "1468"}),
                            (LOOPBACK, self.port))
                flooders.append(sock)
            started = time.monotonic()
            yield self.fetch_and_compare(
                ["curl", "-sS", "--max-time", "20", "--tftp-blksize", "1468", "-o", self.local(),
                 f"tftp://{LOOPBACK}:{self.port}/snponly.efi"], data)
            self.assertLess(time.monotonic() - started, 3.0)
            self.assertLessEqual(len(self.service.server.transfers), self.service.config.max_sessions)
        finally:
            for sock in flooders:
                sock.close()


BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench", "tftp_bench.py")

#: Runs the benchmark's client (one socket per download, all on 127.0.0.1)
#: in a process of its own and prints (error, size, crc) per download.
CONCURRENT_CLIENT = """
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("tftp_bench", sys.argv[1])
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)
port, name, count, blksize = int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
fetches = [bench.Fetch(("127.0.0.1", port), name, blksize) for _ in range(count)]
bench.fetch_all(fetches, limit=float(sys.argv[6]))
print(json.dumps([[f.error, f.size, f.crc] for f in fetches]))
"""


class ConcurrentTests(unittest.TestCase):
    """Many transfers from one address with the shipped defaults (a proxy,
    a NAT, a parallel installer): all of them complete."""

    timeout = 240

    def setUp(self):
        self.root = os.path.abspath(self.mktemp())
        os.makedirs(self.root)
        self.addCleanup(shutil.rmtree, self.root, True)
        # Only what a test must change: the port and the root.
        config = TftpConfig(port=0, root=self.root, addresses=(ipaddress.IPv4Address(LOOPBACK),))
        self.service = TFTPService(config, reactor=reactor)
        self.service.privilegedStartService()
        self.service.startService()
        self.addCleanup(self.service.stopService)
        self.port = self.service.listening_addresses()[0][1]

    @defer.inlineCallbacks
    def test_100_concurrent_transfers_from_one_address(self):
        import json
        import sys
        import zlib
        data = os.urandom(512 * 1024)
        with open(os.path.join(self.root, "small.bin"), "wb") as f:
            f.write(data)
        done = defer.Deferred()
        collector = _Collect(done)
        process = reactor.spawnProcess(
            collector, sys.executable,
            [sys.executable, "-c", CONCURRENT_CLIENT, BENCH, str(self.port), "small.bin", "100",
             "1468", "120"], env=os.environ)
        killer = reactor.callLater(200, lambda: process.signalProcess("KILL"))
        try:
            out, err, code = yield done
        finally:
            if killer.active():
                killer.cancel()
        self.assertEqual(code, 0, err.decode(errors="replace"))
        results = json.loads(out)
        self.assertEqual(len(results), 100)
        expected = [None, len(data), zlib.crc32(data)]
        failed = [r for r in results if r != expected]
        self.assertEqual(failed, [], f"{len(failed)} of 100 failed")
        self.assertEqual(self.service.server.transfers, {})


class BindErrorTests(unittest.TestCase):

    def test_port_in_use(self):
        from ownsocket.tftp.service import BindError
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:
            holder.bind((LOOPBACK, 0))
            port = holder.getsockname()[1]
            config = TftpConfig(port=port, root=self.mktemp(), addresses=(ipaddress.IPv4Address(LOOPBACK),))
            service = TFTPService(config, reactor=reactor)
            error = self.assertRaises(BindError, service.privilegedStartService)
        self.assertEqual(str(error), f"cannot bind UDP 127.0.0.1:{port}: address already in use "
                                     "(is another TFTP server, e.g. tftpd-hpa or dnsmasq, running?)")
        self.assertEqual(service.ports, [])


class SendWindowTests(unittest.TestCase):
    """A transfer port sends a window in one go (UDP segmentation offload
    where the kernel has it) and falls back to one datagram per call."""

    def setUp(self):
        from ownsocket.tftp.fastport import SessionPort
        self.peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(self.peer.close)
        self.peer.bind((LOOPBACK, 0))
        self.peer.settimeout(2)
        self.port = SessionPort(None, protocol.DatagramProtocol(), LOOPBACK,
                                self.peer.getsockname())
        self.addCleanup(self.port._socket.close)
        self.addCleanup(self.port._catcher.close)

    def window(self, count, blksize, last):
        packets = [wire.build_data(n, os.urandom(blksize)) for n in range(1, count)]
        return packets + [wire.build_data(count, os.urandom(last))]

    def received(self, count):
        return [self.peer.recv(65536) for _ in range(count)]

    def test_window_arrives_as_separate_datagrams(self):
        # 100 blocks: more than one segmentation group of 64.
        for count, blksize, last in ((16, 1468, 1468), (16, 1468, 7), (100, 512, 0), (9, 8192, 100)):
            packets = self.window(count, blksize, last)
            self.port.send_window(packets)
            self.assertEqual(self.received(count), packets)
        self.assertTrue(self.port._gso, "the kernel refused UDP_SEGMENT on loopback")

    def test_refused_segmentation_falls_back_for_good(self):
        calls = []

        def refuse(buffers, ancillary):
            calls.append(len(buffers[0]))
            raise OSError(errno.EIO, "no checksum offload")
        self.port._sendmsg = refuse
        packets = self.window(5, 1000, 10)
        self.port.send_window(packets)
        self.assertEqual(self.received(5), packets)
        self.port.send_window(packets)
        self.assertEqual(self.received(5), packets)
        self.assertEqual(len(calls), 1)
        self.assertFalse(self.port._gso)

    def test_other_errors_propagate(self):
        def full(buffers, ancillary):
            raise OSError(errno.ENOBUFS, "No buffer space available")
        self.port._sendmsg = full
        self.assertRaises(OSError, self.port.send_window, self.window(3, 512, 512))
        self.assertTrue(self.port._gso)


class SessionMuxHoldTests(unittest.TestCase):
    """The mux's hold, on an epoll reactor of its own (never run)."""

    def setUp(self):
        from twisted.internet.epollreactor import EPollReactor
        from ownsocket.tftp.fastport import SessionMux
        from ownsocket.tftp.reactorhold import ReactorHold
        self.reactor = EPollReactor()
        self.addCleanup(self.reactor._poller.close)
        self.addCleanup(self.reactor.waker.connectionLost, None)
        self.mux = SessionMux(self.reactor, ReactorHold.probe(self.reactor))
        self.assertIsNotNone(self.mux._hold_with)
        self.session = self.udp()
        self.served = []
        self.mux.add(self.session, lambda: self.served.append(self.session.recv(64)))

    def udp(self):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(sock.close)
        sock.bind((LOOPBACK, 0))
        sock.setblocking(False)
        return sock

    def datagram_to(self, sock):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            sender.sendto(b"ack", sock.getsockname())

    def test_hold_serves_until_the_slice_ends_then_rejoins(self):
        self.mux.slice = 0.05
        self.datagram_to(self.session)
        self.mux.doRead()
        self.assertEqual(self.served, [b"ack"])
        self.assertFalse(self.mux._holding)
        self.assertIn(self.mux, self.reactor.getReaders())
        self.assertEqual(self.mux._plain_events, 0)

    def test_busy_reactor_ends_the_hold_and_backs_off(self):
        from twisted.internet.abstract import FileDescriptor

        class Busy(FileDescriptor):
            def __init__(self, sock):
                FileDescriptor.__init__(self, reactor=None)
                self.sock = sock

            def fileno(self):
                return self.sock.fileno()

            def doRead(self):
                pass
        other = self.udp()
        self.reactor.addReader(Busy(other))
        self.datagram_to(other)      # the reactor has work, and keeps it
        self.datagram_to(self.session)
        self.mux.slice = 5.0         # only the reactor's work may end the hold
        self.mux.doRead()
        self.assertEqual(self.served, [b"ack"])
        self.assertIn(self.mux, self.reactor.getReaders())
        self.assertEqual(self.mux._plain_events, self.mux.busy_backoff)
        # The next events are served without a hold.
        self.datagram_to(self.session)
        self.mux.doRead()
        self.assertEqual(self.served, [b"ack", b"ack"])
        self.assertEqual(self.mux._plain_events, self.mux.busy_backoff - 1)
