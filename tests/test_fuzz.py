"""
The fuzz harnesses in fuzz/ run in CI: each replays its saved crash inputs
(fuzz/regressions/<name>/) and then fuzzes for a short, fixed number of
runs from a fixed seed, in a subprocess (libFuzzer owns the process).  A
crash fails the test with the harness's own report.  Long runs: see the
README's "Fuzzing" section.
"""

import os
import shutil
import subprocess
import sys
import tempfile

from twisted.trial import unittest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FUZZ = os.path.join(REPO, "fuzz")

try:
    import atheris  # noqa: F401
    NO_ATHERIS = None
except ImportError:
    NO_ATHERIS = "atheris is not installed (pip install atheris, or the 'fuzz' extra)"

#: Runs per harness: together about 30 s of CPU on the 2-core CI machine
#: (the lease harness writes a database file per run, hence fewer).
RUNS = {"dhcp": 1000, "tftp": 3000, "http": 5000, "config": 2000, "leases": 300}


class HarnessTests(unittest.TestCase):
    skip = NO_ATHERIS

    def run_harness(self, name):
        script = os.path.join(FUZZ, f"fuzz_{name}.py")
        work = tempfile.mkdtemp(prefix=f"ownsocket-fuzz-{name}-")
        self.addCleanup(shutil.rmtree, work, True)
        env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
        regressions = os.path.join(FUZZ, "regressions", name)
        if os.path.isdir(regressions) and os.listdir(regressions):
            inputs = sorted(os.path.join(regressions, f) for f in os.listdir(regressions))
            self.run_checked([sys.executable, script, f"-artifact_prefix={work}/"] + inputs, env, work)
        corpus = os.path.join(work, "corpus")
        os.mkdir(corpus)
        self.run_checked([sys.executable, script, f"-runs={RUNS[name]}", "-seed=1",
                          f"-artifact_prefix={work}/", "-max_len=4096", corpus], env, work)

    def run_checked(self, argv, env, work):
        result = subprocess.run(argv, env=env, cwd=work, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, timeout=300)
        output = result.stdout.decode(errors="replace")
        report = "\n".join(line for line in output.splitlines() if "Instrumenting" not in line)
        self.assertEqual(result.returncode, 0, report[-4000:])

    def test_dhcp(self):
        self.run_harness("dhcp")

    def test_tftp(self):
        self.run_harness("tftp")

    def test_http(self):
        self.run_harness("http")

    def test_config(self):
        self.run_harness("config")

    def test_leases(self):
        self.run_harness("leases")
