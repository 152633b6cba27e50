"""The bounded log file: rotates at its size, deletes beyond its count."""

import os
import socket
import subprocess
import sys
import time

from twisted.logger import Logger, LogPublisher
from twisted.trial import unittest

from ownsocket import logfile

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TWISTD = ["-c", "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"]


class SettingsTests(unittest.TestCase):

    def test_defaults(self):
        path, size, keep = logfile.settings({})
        self.assertEqual(path, os.path.abspath("ownsocket.log"))
        self.assertEqual((size, keep), (10 * 1024 * 1024, 5))

    def test_sizes(self):
        for text, value in [("2048", 2048), ("4k", 4096), ("10M", 10 * 1024 ** 2),
                            ("1G", 1024 ** 3), ("64KiB", 65536), (" 3 m ", 3 * 1024 ** 2)]:
            self.assertEqual(logfile.parse_size(text), value, text)
        for text in ["", "ten", "10T", "-5M", "100"]:
            self.assertRaises(ValueError, logfile.parse_size, text)

    def test_bad_environment_is_one_line(self):
        error = self.assertRaises(logfile.LogSettingError, logfile.settings,
                                  {"OWNSOCKET_LOG_SIZE": "lots"})
        self.assertEqual(str(error), "ownsocket: OWNSOCKET_LOG_SIZE: 'lots' is not a size such as 10M")
        error = self.assertRaises(logfile.LogSettingError, logfile.settings,
                                  {"OWNSOCKET_LOG_KEEP": "0"})
        self.assertIn("OWNSOCKET_LOG_KEEP: '0' is not a whole number from 1 to 1000", str(error))
        error = self.assertRaises(logfile.LogSettingError, logfile.observer,
                                  {"OWNSOCKET_LOG": "/nonexistent/dir/x.log"})
        self.assertIn("directory /nonexistent/dir does not exist", str(error))


class RotationTests(unittest.TestCase):

    def test_rotates_and_deletes_beyond_the_count(self):
        import signal
        self.addCleanup(signal.signal, signal.SIGUSR1, signal.getsignal(signal.SIGUSR1))
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        path = os.path.join(directory, "ownsocket.log")
        observer = logfile.observer({"OWNSOCKET_LOG": path, "OWNSOCKET_LOG_SIZE": "4k",
                                     "OWNSOCKET_LOG_KEEP": "3"})
        publisher = LogPublisher(observer)
        log = Logger(observer=publisher)
        for number in range(2000):  # ~200 KB of lines: ~50 rotations of 4 KiB
            log.info("line {number:05d} " + "x" * 80, number=number)
        names = sorted(os.listdir(directory))
        self.assertEqual(names, ["ownsocket.log", "ownsocket.log.1", "ownsocket.log.2",
                                 "ownsocket.log.3"])
        sizes = [os.path.getsize(os.path.join(directory, name)) for name in names]
        self.assertTrue(all(size <= 4096 + 200 for size in sizes), sizes)
        with open(path) as handle:
            self.assertIn("line 01999", handle.read())
        with open(path + ".3") as handle:
            first = handle.read()
        self.assertNotIn("line 00000", first)  # the oldest are gone
        total = sum(sizes)
        self.assertLessEqual(total, 4 * (4096 + 200))


class TwistdTests(unittest.TestCase):
    """twistd --logger ownsocket.logfile.observer writes the server's log there."""

    def test_twistd_logs_to_the_bounded_file(self):
        directory = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(directory, "tftpboot"))
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()
        config = os.path.join(directory, "ownsocket.ini")
        with open(config, "w") as handle:
            handle.write(f"[dhcp]\nenabled = false\n[tftp]\nport = {port}\naddresses = 127.0.0.1\n"
                         "[admin]\nenabled = false\n")
        path = os.path.join(directory, "server.log")
        env = dict(os.environ, PYTHONPATH=HERE, OWNSOCKET_LOG=path, OWNSOCKET_LOG_SIZE="8k",
                   OWNSOCKET_LOG_KEEP="2")
        process = subprocess.Popen(
            [sys.executable, *TWISTD, "--nodaemon", "--pidfile=", "--logger",
             "ownsocket.logfile.observer", "ownsocket", "--config", config],
            cwd=directory, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 60
            text = ""
            while time.monotonic() < deadline and process.poll() is None:
                if os.path.exists(path):
                    with open(path) as handle:
                        text = handle.read()
                    if f"TFTP port {port}" in text:
                        break
                time.sleep(0.1)
            self.assertIn(f"TFTP port {port}", text)
        finally:
            process.terminate()
            output, _ = process.communicate(timeout=30)
        self.assertEqual(output, b"")  # nothing bypasses the file
