"""The pieces twistd ownsocket is assembled from."""

import os
import sys
import types

from twisted.application.service import Service
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest

from twisted.internet import defer
from zope.interface import implementer

from ownsocket.filechain import BackendChain, FileSizes
from ownsocket.files import FilesystemBackend
from ownsocket.interfaces import FileNotFound, IFileBackend


class BootFileSizeTests(unittest.TestCase):
    """Option 13 asks the TFTP backend chain (ownsocket.filechain.FileSizes)."""

    def chain(self, root, generated=()):
        return BackendChain(list(generated) + [FilesystemBackend(root)], observers=[self])

    def file_opened(self, request):
        self.opened.append(request.path)

    def setUp(self):
        self.opened = []

    def test_size_from_tftp_root_remembered_briefly(self):
        root = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(root, "efi"))
        with open(os.path.join(root, "efi", "snponly.efi"), "wb") as handle:
            handle.write(b"x" * 1000)
        os.symlink("/etc/passwd", os.path.join(root, "escape"))
        os.makedirs(os.path.join(root, "adir"))
        clock = Clock()
        chain = self.chain(root)
        size = FileSizes(lambda: chain, clock, ttl=5)
        self.assertEqual(size("efi/snponly.efi"), 1000)
        self.assertEqual(size("/efi/snponly.efi"), 1000)
        with open(os.path.join(root, "efi", "snponly.efi"), "ab") as handle:
            handle.write(b"y" * 24)
        self.assertEqual(size("efi/snponly.efi"), 1000)
        clock.advance(6)
        self.assertEqual(size("efi/snponly.efi"), 1024)
        self.assertIsNone(size("missing.efi"))
        self.assertIsNone(size("../etc/passwd"))
        self.assertIsNone(size("escape"))
        self.assertIsNone(size("adir"))
        self.assertEqual(self.opened, [], "a size is not a fetch: observers are not told")
        # a missing file is remembered as missing too (no path resolution per reply)
        with open(os.path.join(root, "missing.efi"), "wb") as handle:
            handle.write(b"z" * 10)
        self.assertIsNone(size("missing.efi"))
        clock.advance(6)
        self.assertEqual(size("missing.efi"), 10)

    def test_generated_file_gets_its_size_per_client(self):
        root = os.path.abspath(self.mktemp())
        os.makedirs(root)

        @implementer(IFileBackend)
        class Scripts:
            def get_reader(self, request):
                if request.path != "boot.ipxe" or request.boot_request == "none":
                    return defer.fail(FileNotFound(request.path))
                text = f"#!ipxe\necho {request.boot_request}\n".encode()
                return defer.succeed(BytesReader(text))

        chain = self.chain(root, [Scripts()])
        size = FileSizes(lambda: chain, Clock())
        self.assertEqual(size("boot.ipxe", "aa"), len(b"#!ipxe\necho aa\n"))
        self.assertEqual(size("boot.ipxe", "aaaa"), len(b"#!ipxe\necho aaaa\n"))
        self.assertIsNone(size("other.efi", "aa"))
        # a client the generator has nothing for: its miss is not remembered
        # for the name, since others get the file
        self.assertIsNone(size("boot.ipxe", "none"))
        self.assertEqual(size("boot.ipxe", "bb"), len(b"#!ipxe\necho bb\n"))
        self.assertEqual(self.opened, [])

    def test_a_reload_brings_a_new_chain(self):
        roots = []
        for content in (b"a" * 10, b"b" * 20):
            root = os.path.abspath(self.mktemp())
            os.makedirs(root)
            with open(os.path.join(root, "f.efi"), "wb") as handle:
                handle.write(content)
            roots.append(self.chain(root))
        current = [roots[0]]
        size = FileSizes(lambda: current[0], Clock(), ttl=60)
        self.assertEqual(size("f.efi"), 10)
        current[0] = roots[1]
        self.assertEqual(size("f.efi"), 20)


class BytesReader:
    def __init__(self, data):
        self.size = len(data)
        self.finished = False

    def finish(self):
        self.finished = True


class MakeServiceTests(unittest.TestCase):
    def test_startup_summary_and_missing_root_warning(self):
        from twisted.logger import globalLogPublisher, formatEvent
        from ownsocket.tap import Options, makeService
        from tests.fakes import FakeUDPReactor
        path = self.mktemp()
        missing = os.path.abspath(self.mktemp())
        with open(path, "w") as handle:
            handle.write(f"[dhcp]\nenabled = false\n[tftp]\nport = 16969\nroot = {missing}\n"
                         "[admin]\nenabled = false\n")
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        options = Options()
        options.parseOptions(["--config", path])
        reactor = FakeUDPReactor()
        service = makeService(options, reactor=reactor)
        service.privilegedStartService()
        service.startService()
        self.addCleanup(service.stopService)
        lines = [formatEvent(event) for event in events]
        self.assertTrue(any("DHCP off, TFTP port 16969" in line for line in lines), lines)
        self.assertTrue(any(f"[tftp] root {missing} is not a directory" in line for line in lines), lines)
        self.assertEqual([port for port, _, _, _ in reactor.ports], [16969])


class FakeAdmin(Service):
    def __init__(self, runtime):
        self.runtime = runtime


class RuntimeWiringTests(unittest.TestCase):
    """makeService builds one Runtime that the admin listener and the reload share."""

    def make(self, text, admin_factory=None):
        from ownsocket.tap import Options, makeService, make_admin
        from tests.fakes import FakeUDPReactor
        path = os.path.abspath(self.mktemp())
        root = os.path.abspath(self.mktemp())
        os.makedirs(root)
        with open(path, "w") as handle:
            handle.write(f"[dhcp]\nenabled = false\n[tftp]\nport = 16969\nroot = {root}\n" + text)
        self.log = []
        globalLogPublisher.addObserver(self.log.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.log.append)
        options = Options()
        options.parseOptions(["--config", path])
        self.reactor = FakeUDPReactor()
        self.reactor.advance(42)
        service = makeService(options, reactor=self.reactor, admin_factory=admin_factory or make_admin)
        return service, path

    def start(self, service):
        service.privilegedStartService()
        service.startService()
        self.addCleanup(service.stopService)

    def lines(self):
        return [formatEvent(event) for event in self.log]

    def test_runtime_attributes(self):
        import hashlib
        made = []
        service, path = self.make("", lambda runtime: made.append(FakeAdmin(runtime)) or made[-1])
        self.start(service)
        [admin] = made
        runtime = admin.runtime
        self.assertIs(service.runtime, runtime)
        self.assertTrue(admin.running)
        with open(path, "rb") as handle:
            self.assertEqual(runtime.config_hash, hashlib.sha256(handle.read()).hexdigest())
        self.assertEqual(runtime.config.source, path)
        self.assertEqual(runtime.started_at, 42)
        self.assertIs(runtime.reactor, self.reactor)
        self.assertIsNone(runtime.dhcp)
        self.assertIsNone(runtime.http)
        self.assertIs(runtime.tftp.events, runtime.events)
        self.assertIs(runtime.admin, admin)
        self.assertEqual(runtime.selectors, list(runtime.config.boot.selectors))
        self.assertTrue(any(f"sha256 {runtime.config_hash[:12]}" in line and
                            "admin 127.0.0.1 port 9067" in line for line in self.lines()))
        self.assertFalse(any("reachable from the network" in line for line in self.lines()))

    def test_embedded_defaults_hash(self):
        import hashlib
        from ownsocket.config import EMBEDDED_DEFAULTS
        from ownsocket.tap import Options, makeService
        from tests.fakes import FakeUDPReactor
        options = Options()
        options.parseOptions([])
        service = makeService(options, reactor=FakeUDPReactor(), admin_factory=lambda runtime: None)
        self.assertEqual(service.runtime.config_hash,
                         hashlib.sha256(EMBEDDED_DEFAULTS.encode()).hexdigest())

    def test_admin_off(self):
        service, _ = self.make("[admin]\nenabled = false\n", lambda runtime: self.fail("called"))
        self.assertIsNone(service.runtime.admin)

    def test_non_loopback_admin_is_a_warning(self):
        service, _ = self.make("[admin]\naddresses = 127.0.0.1, 10.9.8.7\n", FakeAdmin)
        self.start(service)
        self.assertTrue(any("[admin] addresses 127.0.0.1, 10.9.8.7: the admin listener is reachable "
                            "from the network" in line for line in self.lines()), self.lines())

    def with_module(self, module):
        saved = sys.modules.get("ownsocket.admin", None)
        had = "ownsocket.admin" in sys.modules
        sys.modules["ownsocket.admin"] = module

        def restore():
            if had:
                sys.modules["ownsocket.admin"] = saved
            else:
                del sys.modules["ownsocket.admin"]
        self.addCleanup(restore)

    def test_build_without_admin_package_warns(self):
        self.with_module(None)  # import then raises ModuleNotFoundError for ownsocket.admin
        service, _ = self.make("")
        self.assertIsNone(service.runtime.admin)
        self.assertTrue(any("has no admin listener" in line for line in self.lines()))

    def test_admin_that_cannot_import_stops_startup(self):
        broken = types.ModuleType("ownsocket.admin")

        def missing(name):
            raise ModuleNotFoundError("No module named 'prometheus_client'", name="prometheus_client")
        broken.__getattr__ = missing
        self.with_module(broken)
        error = self.assertRaises(SystemExit, self.make, "")
        self.assertIn("[admin] enabled: the admin listener cannot start: No module named "
                      "'prometheus_client' (install it, or set [admin] enabled = false)", str(error))
        self.assertTrue(str(error).startswith("ownsocket: /"))

    def test_admin_dependency_missing_when_built_stops_startup(self):
        module = types.ModuleType("ownsocket.admin")

        def make_admin_service(runtime):
            raise ModuleNotFoundError("No module named 'prometheus_client'", name="prometheus_client")
        module.make_admin_service = make_admin_service
        self.with_module(module)
        error = self.assertRaises(SystemExit, self.make, "")
        self.assertIn("the admin listener cannot start: No module named 'prometheus_client'", str(error))

    def test_admin_module_used_when_present(self):
        module = types.ModuleType("ownsocket.admin")
        module.make_admin_service = FakeAdmin
        self.with_module(module)
        service, _ = self.make("")
        self.assertIsInstance(service.runtime.admin, FakeAdmin)

    def test_sighup_handler_installed_while_running(self):
        import signal
        from ownsocket.reload import ReloadOnSignal
        previous = signal.getsignal(signal.SIGHUP)
        service, _ = self.make("[admin]\nenabled = false\n")
        self.start(service)
        handler = signal.getsignal(signal.SIGHUP)
        self.assertIsInstance(getattr(handler, "__self__", None), ReloadOnSignal)
        self.assertIs(handler.__self__.reloader.runtime, service.runtime)
        service.stopService()
        self.assertEqual(signal.getsignal(signal.SIGHUP), previous)
