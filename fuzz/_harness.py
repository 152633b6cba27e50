"""
What every harness in fuzz/ shares: the import path, the seed corpus, a
log observer that turns "caught and logged" failures into crashes, and the
atheris entry point.

A harness is run as a script:

    python3 fuzz/fuzz_dhcp.py [libFuzzer flags] [CORPUS_DIR ...]

With no corpus directory, C{fuzz/corpus/<name>/} is used (created and
seeded on first use; git ignores it).  Seeds are written there only when
the directory is empty, so a long run's corpus survives and grows.
"""

from __future__ import annotations

import hashlib
import os
import sys

FUZZ = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(FUZZ)
if REPO not in sys.path:
    sys.path.insert(0, REPO)


class LoggedFailure(Exception):
    """An exception the code under test caught and logged as a failure
    (C{log.failure}): a bug, even though it did not escape."""


class FailureTrap:
    """
    Collects C{log.failure} events from the global log publisher.

    The protocols catch exceptions so one bad packet cannot stop the
    server; for the fuzzer such an exception is exactly what it looks for.
    """

    def __init__(self):
        self.failures = []

    def __call__(self, event):
        failure = event.get("log_failure")
        if failure is not None:
            self.failures.append(failure)

    def install(self):
        from twisted.logger import globalLogBeginner, globalLogPublisher
        globalLogPublisher.addObserver(self)
        # Nothing else observes: without this, the publisher buffers
        # every event of a long run in memory.
        globalLogBeginner.beginLoggingTo([self], discardBuffer=True, redirectStandardIO=False)
        return self

    def check(self):
        if self.failures:
            failure, self.failures = self.failures[0], []
            raise LoggedFailure(failure.getTraceback())


def corpus_dir(name: str) -> str:
    return os.path.join(FUZZ, "corpus", name)


def write_seeds(directory: str, seeds) -> None:
    os.makedirs(directory, exist_ok=True)
    if os.listdir(directory):
        return
    for seed in seeds:
        digest = hashlib.sha1(seed).hexdigest()
        with open(os.path.join(directory, f"seed-{digest}"), "wb") as f:
            f.write(seed)


def main(name: str, test_one_input, seeds=()) -> None:
    """Run C{test_one_input} under atheris with C{sys.argv}'s flags."""
    import atheris
    argv = list(sys.argv)
    positional = [arg for arg in argv[1:] if not arg.startswith("-")]
    if not positional:
        directory = corpus_dir(name)
        write_seeds(directory, list(seeds))
        argv.append(directory)
    else:
        for directory in positional:
            if not os.path.exists(directory):
                os.makedirs(directory)
            if os.path.isdir(directory):
                write_seeds(directory, list(seeds))
    dictionary = os.path.join(FUZZ, f"{name}.dict")
    if os.path.exists(dictionary) and not any(arg.startswith("-dict=") for arg in argv):
        argv.insert(1, f"-dict={dictionary}")
    if not any(arg.startswith("-artifact_prefix=") for arg in argv):
        artifacts = os.path.join(FUZZ, "artifacts")
        os.makedirs(artifacts, exist_ok=True)
        argv.insert(1, f"-artifact_prefix={artifacts}{os.sep}{name}-")
    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()
