"""
The admin listener on a real loopback port: status page, /metrics through
prometheus_client's Twisted resource, the JSON API, the trail command, and
bind failures as one line.
"""

import io
import json
import socket
from dataclasses import replace

from twisted.internet import defer, reactor, threads
from twisted.trial import unittest
from twisted.web.client import Agent, readBody

from ownsocket.admin import make_admin_service
from ownsocket.admin import cli
from ownsocket.listening import BindError
from tests.test_admin_fakes import (MAC, FakeAdminConfig, FakeConfig, FakeDhcp, FakeRuntime,
                                    FakeTransfers, dhcp_exchange, tftp_transfer)


def real_runtime(**kwargs):
    runtime = FakeRuntime(reactor=reactor, **kwargs)
    runtime.started_at = reactor.seconds() - 3725
    return runtime


class ListenerTests(unittest.TestCase):
    def setUp(self):
        self.runtime = real_runtime(dhcp=FakeDhcp(), tftp=FakeTransfers(
            [{"peer": "10.0.0.100", "file": "undionly.kpxe", "bytes": 20000, "block": 14, "blksize": 1432,
              "windowsize": 4, "started": reactor.seconds() - 1}]), http=FakeTransfers())
        self.service = make_admin_service(self.runtime)
        self.service.privilegedStartService()
        self.service.startService()
        self.addCleanup(self.service.stopService)
        host, port = self.service.listening_addresses()[0]
        self.assertEqual(host, "127.0.0.1")
        self.base = "http://127.0.0.1:%d" % port
        self.agent = Agent(reactor)

    @defer.inlineCallbacks
    def get(self, path):
        response = yield self.agent.request(b"GET", (self.base + path).encode())
        body = yield readBody(response)
        return response, body

    @defer.inlineCallbacks
    def test_metrics_endpoint_counts_what_was_published(self):
        dhcp_exchange(self.runtime.events)
        tftp_transfer(self.runtime.events)
        response, body = yield self.get("/metrics")
        self.assertEqual(response.code, 200)
        text = body.decode()
        self.assertIn('ownsocket_dhcp_received_total{message="discover",service="dhcp"} 1.0', text)
        self.assertIn('ownsocket_tftp_requests_total{result="ok"} 1.0', text)
        self.assertIn("ownsocket_tftp_sent_bytes_total 70000.0", text)
        self.assertIn('ownsocket_dhcp_addresses{state="bound",subnet="lab"} 7.0', text)
        self.assertIn("ownsocket_tftp_transfers_in_flight 1.0", text)

    @defer.inlineCallbacks
    def test_api_lists_boots_and_one_machine(self):
        dhcp_exchange(self.runtime.events)
        tftp_transfer(self.runtime.events)
        response, body = yield self.get("/api/boots")
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders(b"content-type"), [b"application/json; charset=utf-8"])
        data = json.loads(body)
        self.assertEqual(data["count"], 1)
        self.assertEqual(data["boots"][0]["mac"], MAC)
        self.assertEqual(data["boots"][0]["stage"], "first-stage")
        self.assertNotIn("events", data["boots"][0])
        self.assertEqual(data["limits"], {"boots": 1000, "events_per_boot": 64, "stall_after": 30.0})
        response, body = yield self.get("/api/boots/" + MAC.replace(":", "-").upper())
        self.assertEqual(response.code, 200)
        data = json.loads(body)
        [boot] = data["boots"]
        self.assertEqual([e["kind"] for e in boot["events"]],
                         ["received", "sent", "received", "sent", "committed", "started", "finished"])
        self.assertEqual(boot["first_stage"]["bytes"], 70000)
        response, body = yield self.get("/api/boots/52:54:00:00:00:99")
        self.assertEqual(response.code, 404)
        self.assertIn("no boot of 52:54:00:00:00:99", json.loads(body)["error"])
        response, body = yield self.get("/api/boots/%3Cscript%3E")
        self.assertEqual(response.code, 400)

    @defer.inlineCallbacks
    def test_status_page(self):
        dhcp_exchange(self.runtime.events)
        response, body = yield self.get("/")
        self.assertEqual(response.code, 200)
        csp = response.headers.getRawHeaders(b"content-security-policy")[0]
        self.assertIn(b"default-src 'none'", csp)
        text = body.decode()
        self.assertIn('http-equiv="refresh"', text)
        self.assertIn(MAC, text)
        self.assertIn("/etc/ownsocket/site.ini", text)
        self.assertIn("sha256:0123456789abcdef", text)
        self.assertIn("1 h 2 min", text)  # uptime
        response, _ = yield self.get("/nothing-here")
        self.assertEqual(response.code, 404)

    @defer.inlineCallbacks
    def test_trail_command_talks_to_the_running_server(self):
        dhcp_exchange(self.runtime.events, file="snponly.efi", arch="efi-x64")
        tftp_transfer(self.runtime.events, file="snponly.efi", result="aborted", block=812,
                      error="client gone")
        out, err = io.StringIO(), io.StringIO()
        code = yield threads.deferToThread(cli.main, ["--admin", self.base, MAC], out, err)
        self.assertEqual((code, err.getvalue()), (0, ""))
        text = out.getvalue()
        self.assertIn("%s boot #" % MAC, text)
        self.assertIn("[dhcp]", text)
        self.assertIn("OFFER 10.0.0.100 boot snponly.efi by arch", text)
        self.assertIn("[first-stage]", text)
        self.assertIn("TFTP snponly.efi: aborted at block 812: client gone", text)
        out, err = io.StringIO(), io.StringIO()
        code = yield threads.deferToThread(cli.main, ["--admin", self.base, "52:54:00:00:00:99"], out, err)
        self.assertEqual(code, 1)
        self.assertIn("ownsocket trail: no boot of 52:54:00:00:00:99 is kept", err.getvalue())

    def test_reconfigure_rebinds_only_when_the_port_changes(self):
        old = self.service.ports[0]
        d = self.service.reconfigure(self.runtime.config)
        self.assertIs(self.service.ports[0], old)
        new_config = replace(self.runtime.config, admin=replace(self.runtime.config.admin, port=0,
                                                                addresses=("127.0.0.2",)))
        d.addCallback(lambda _: self.service.reconfigure(new_config))

        def check(_):
            self.assertEqual([host for host, _ in self.service.listening_addresses()], ["127.0.0.2"])
        return d.addCallback(check)

    def test_reconfigure_to_a_busy_port_keeps_the_old_one(self):
        holder = socket.socket()
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        self.addCleanup(holder.close)
        before = self.service.listening_addresses()
        busy = replace(self.runtime.config, admin=replace(self.runtime.config.admin,
                                                          port=holder.getsockname()[1]))
        d = self.service.reconfigure(busy)

        def check(result):
            self.assertIsNone(result)
            self.assertEqual(self.service.listening_addresses(), before)
        return d.addCallback(check)


class UnreachableTests(unittest.TestCase):
    def test_trail_command_says_clearly_when_nothing_listens(self):
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()
        out, err = io.StringIO(), io.StringIO()
        code = cli.main(["--admin", "http://127.0.0.1:%d" % port, MAC], out, err)
        self.assertEqual(code, 1)
        line = err.getvalue().strip()
        self.assertEqual(len(line.splitlines()), 1)
        self.assertIn("cannot reach the admin listener at http://127.0.0.1:%d" % port, line)
        self.assertIn("refused", line.lower())

    def test_port_in_use_is_one_line(self):
        holder = socket.socket()
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        self.addCleanup(holder.close)
        port = holder.getsockname()[1]
        runtime = real_runtime()
        runtime.config = FakeConfig(admin=FakeAdminConfig(port=port))
        service = make_admin_service(runtime)
        error = self.assertRaises(BindError, service.privilegedStartService)
        self.assertEqual(str(error), "cannot bind TCP 127.0.0.1:%d: address already in use "
                                     "(another ownsocket, or change [admin] port)" % port)
        self.assertEqual(service.ports, [])


class ConfigLookupTests(unittest.TestCase):
    def write(self, text):
        path = self.mktemp() + ".ini"
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_admin_url_from_the_config_file(self):
        try:
            from ownsocket.config import AdminConfig  # noqa: F401
        except ImportError:
            raise unittest.SkipTest("this checkout has no [admin] configuration section yet")
        path = self.write("[admin]\naddresses = 127.0.0.5\nport = 9999\n")
        self.assertEqual(cli.url_from_config(path), "http://127.0.0.5:9999")
        path = self.write("[admin]\nenabled = false\n")
        error = self.assertRaises(cli.TrailError, cli.url_from_config, path)
        self.assertIn("[admin] enabled = false", str(error))

    def test_bad_config_is_one_line(self):
        path = self.write("[dhcp]\nno_such_key = 1\n")
        out, err = io.StringIO(), io.StringIO()
        self.assertEqual(cli.main(["--config", path, MAC], out, err), 1)
        self.assertEqual(len(err.getvalue().strip().splitlines()), 1)
        self.assertIn("no_such_key", err.getvalue())
