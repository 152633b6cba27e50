#!/usr/bin/env python3
"""
The config loader: arbitrary INI text ends in ConfigError or a valid
Config, never another exception (an operator must get one line naming
the file, section and key, not a traceback).  A valid config's built-in
selectors are then built from their [selector:NAME] settings, as at
start-up: a bad setting must be a ConfigError naming it, not a crash.

Input: UTF-8 text (undecodable bytes are replaced; the loader's own
UTF-8 check is for files).  Seeds: conf/*.ini and the embedded defaults.
"""

import glob
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _harness  # noqa: E402

import atheris  # noqa: E402

# configparser and ipaddress do the lexing: coverage inside them is what
# lets the fuzzer learn the syntax.
with atheris.instrument_imports(include=["ownsocket", "configparser", "ipaddress"]):
    from ownsocket import config as configuration
    from ownsocket.boot import loader
    import ownsocket.plugins  # noqa: F401  (the built-in selector factories)

from twisted.internet.task import Clock  # noqa: E402

# Plugin discovery reads the dropin cache each time: once is enough here.
loader.check_plugin_modules("<fuzz>")
_PLUGINS = loader.available_plugins()
loader.available_plugins = lambda: _PLUGINS
loader.check_plugin_modules = lambda source: None

INTERFACES = {"eth0", "eth1", "br0"}


def test_one_input(data: bytes) -> None:
    text = data.decode("utf-8", "replace")
    try:
        config = configuration.load(text=text, known_interfaces=INTERFACES)
    except configuration.ConfigError as error:
        # One line, naming where.
        message = str(error)
        assert "\n" not in message, message
        assert message.startswith("<text>"), message
        return
    assert isinstance(config, configuration.Config)
    # A valid config is internally consistent where the loader promises it.
    tftp = config.tftp
    assert tftp.max_bytes_in_flight >= tftp.max_blksize
    for subnet in config.subnets:
        for pool in subnet.pools:
            assert pool.first in subnet.network and pool.last in subnet.network, (pool, subnet)
        for router in subnet.routers:
            assert router in subnet.network, (router, subnet)
    if config.dhcp.mode == "proxy":
        assert not any(subnet.pools for subnet in config.subnets)
    # The [selector:NAME] settings are read when the selectors are built,
    # at start-up too.  Dotted names import and call arbitrary code: only
    # the built-in selectors are built here.
    if any("." in name for name in config.boot.selectors):
        return
    try:
        loader.load_selectors(config, Clock())
    except configuration.ConfigError as error:
        message = str(error)
        assert "\n" not in message, message
        # The loader turns a selector's unexpected exception into this
        # line; for a built-in selector that is a missing check.
        assert "failed to start" not in message, message


def seeds():
    paths = sorted(glob.glob(os.path.join(_harness.REPO, "conf", "*.ini")))
    for path in paths:
        with open(path, "rb") as f:
            yield f.read()
    yield configuration.EMBEDDED_DEFAULTS.encode()


if __name__ == "__main__":
    _harness.main("config", test_one_input, seeds())
