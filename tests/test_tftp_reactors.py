"""
The transfer ports on every kind of reactor: the seam into the epoll
reactor's insides (L{ownsocket.tftp.reactorhold}) is found only where it
exists and is dropped cleanly when it fails; the port/protocol contract is
a checked interface; and the real-client TFTP tests pass on a reactor
without the seam (select), run in a subprocess.
"""

import os
import select
import socket
import subprocess
import sys

from twisted.internet import protocol, reactor
from twisted.internet.interfaces import IReadDescriptor
from twisted.internet.task import Clock
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from ownsocket.tftp.fastport import SessionMux, SessionPort, session_factory
from ownsocket.tftp.protocol import SessionProtocol
from ownsocket.tftp.reactorhold import ReactorHold
from ownsocket.tftp.session import Session
from ownsocket.files import BytesReader
from ownsocket.tftp.transport import IPeerDatagramReceiver, ISessionTransport

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOOPBACK = "127.0.0.1"
CHILD = "OWNSOCKET_TFTP_REACTOR_CHILD"


def _own(reactor_class):
    """A fresh reactor of C{reactor_class}, never run, closed afterwards."""
    made = reactor_class()

    def close():
        made.waker.connectionLost(None)
        poller = getattr(made, "_poller", None)
        if hasattr(poller, "close"):
            poller.close()
    return made, close


class ProbeTests(unittest.TestCase):

    def test_epoll_reactor_has_the_hold(self):
        from twisted.internet.epollreactor import EPollReactor
        made, close = _own(EPollReactor)
        self.addCleanup(close)
        hold = ReactorHold.probe(made)
        self.assertIsNotNone(hold)
        self.assertEqual(hold.reactor_fd(), made._poller.fileno())
        self.assertEqual(hold.until_next_call(0.05), 0.05)   # no timed calls
        call = made.callLater(0.01, lambda: None)
        self.addCleanup(call.cancel)
        self.assertLessEqual(hold.until_next_call(0.05), 0.01)

    def test_other_reactors_have_none(self):
        from twisted.internet.pollreactor import PollReactor
        from twisted.internet.selectreactor import SelectReactor
        for reactor_class in (SelectReactor, PollReactor):
            made, close = _own(reactor_class)
            self.addCleanup(close)
            self.assertIsNone(ReactorHold.probe(made), reactor_class)
        self.assertIsNone(ReactorHold.probe(Clock()))
        self.assertIsNone(ReactorHold.probe(object()))

    def test_changed_insides_mean_no_hold(self):
        from twisted.internet.epollreactor import EPollReactor
        made, close = _own(EPollReactor)
        self.addCleanup(close)
        poller = made._poller
        made._poller = object()        # a Twisted whose epoll reactor changed
        self.assertIsNone(ReactorHold.probe(made))
        made._poller = poller
        made.timeout = None
        self.assertIsNone(ReactorHold.probe(made))


class BrokenHold:
    """A hold whose reactor side fails, as a changed Twisted might."""

    def until_next_call(self, longest):
        return longest

    def reactor_fd(self):
        raise AttributeError("'EPollReactor' object has no attribute '_poller'")


class FallbackTests(unittest.TestCase):

    def test_failing_hold_is_dropped_and_the_datagram_still_served(self):
        from twisted.internet.selectreactor import SelectReactor
        made, close = _own(SelectReactor)
        self.addCleanup(close)
        mux = SessionMux(made, BrokenHold())
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(sock.close)
        sock.bind((LOOPBACK, 0))
        sock.setblocking(False)
        served = []
        mux.add(sock, lambda: served.append(sock.recv(64)))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            sender.sendto(b"ack", sock.getsockname())
        select.select([mux.fileno()], [], [], 2)
        mux.doRead()
        self.assertEqual(served, [b"ack"])
        self.assertIsNone(mux._hold_with)
        self.assertIn(mux, made.getReaders())
        self.assertEqual(len(self.flushLoggedErrors(AttributeError)), 1)
        mux.remove(sock)
        self.assertNotIn(mux, made.getReaders())


class ContractTests(unittest.TestCase):

    def test_port_and_protocol_provide_the_contract(self):
        peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(peer.close)
        peer.bind((LOOPBACK, 0))
        port = SessionPort(None, protocol.DatagramProtocol(), LOOPBACK, peer.getsockname())
        self.addCleanup(port._socket.close)
        self.addCleanup(port._catcher.close)
        verifyObject(ISessionTransport, port)
        session = Session(BytesReader(b"x"))
        verifyObject(IPeerDatagramReceiver, SessionProtocol(session, ("127.0.0.1", 1), Clock(), None))
        verifyObject(IReadDescriptor, SessionMux(Clock()))

    def test_plain_transport_is_adapted(self):
        from tests.fakes import FakeDatagramTransport
        transport = FakeDatagramTransport()
        self.assertFalse(ISessionTransport.providedBy(transport))
        proto = SessionProtocol(Session(BytesReader(b"")), ("192.0.2.1", 7), Clock(), lambda p: None)
        proto.makeConnection(transport)
        proto._send_window([b"a", b"b"])
        self.assertEqual(transport.written, [(b"a", ("192.0.2.1", 7)), (b"b", ("192.0.2.1", 7))])


class ReactorPathTests(unittest.TestCase):

    def test_this_reactor_takes_the_expected_path(self):
        """Under trial's default reactor on Linux (epoll) the hold is used;
        under --reactor=select (the subprocess below) it is not."""
        listen = session_factory(reactor)
        mux = getattr(listen, "mux", None)
        self.assertIsNotNone(mux, "no lean ports on this reactor")
        expected = ReactorHold.probe(reactor) is not None
        self.assertEqual(mux._hold_with is not None, expected)
        if os.environ.get(CHILD) == "select":
            self.assertIsNone(mux._hold_with)

    def test_real_client_tests_pass_on_the_select_reactor(self):
        if os.environ.get(CHILD):
            raise unittest.SkipTest("already the child run")
        env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
        env[CHILD] = "select"
        work = self.mktemp()
        os.makedirs(work)
        result = subprocess.run(
            [sys.executable, "-m", "twisted.trial", "--reactor=select",
             "tests.test_tftp_clients", "tests.test_tftp_reactors"],
            cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=600)
        output = result.stdout.decode(errors="replace")
        self.assertEqual(result.returncode, 0, output[-5000:])
        self.assertIn("PASSED", output)
