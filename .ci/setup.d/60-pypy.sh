#!/usr/bin/env bash
# tests/test_pypy.py runs the whole server under PyPy: give Debian's pypy3 a
# virtual environment with ownsocket and its dependencies (Twisted,
# dhcppython, prometheus_client, from PyPI).  The test skips, saying why,
# when this environment is missing.
set -euo pipefail
VENV=${OWNSOCKET_PYPY_VENV:-/opt/ownsocket/pypy-venv}
if ! command -v pypy3 > /dev/null; then
    echo "ci: pypy3 missing; tests/test_pypy.py will skip"
    exit 0
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
if [ ! -x "$VENV/bin/python" ]; then
    $SUDO mkdir -p "$(dirname "$VENV")"
    $SUDO pypy3 -m venv "$VENV"
fi
$SUDO "$VENV/bin/python" -m pip install -q --upgrade pip wheel setuptools
$SUDO "$VENV/bin/python" -m pip install -q . \
    || echo "ci: ownsocket not installed under PyPy; tests/test_pypy.py will skip"
