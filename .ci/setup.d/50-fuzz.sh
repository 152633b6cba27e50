#!/usr/bin/env bash
# tests/test_fuzz.py runs the fuzz/ harnesses: they need atheris (a wheel on
# PyPI for CPython on x86_64 Linux; the test skips where it is missing).
set -euo pipefail
python3 -m pip install -q 'atheris>=2.3' || echo "ci: atheris not installed; tests/test_fuzz.py will skip"
