#!/usr/bin/env python3
"""
The config loader: arbitrary INI text ends in ConfigError or a valid
Config, never another exception (an operator must get one line naming
the file, section and key, not a traceback).

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


def seeds():
    paths = sorted(glob.glob(os.path.join(_harness.REPO, "conf", "*.ini")))
    for path in paths:
        with open(path, "rb") as f:
            yield f.read()
    yield configuration.EMBEDDED_DEFAULTS.encode()


if __name__ == "__main__":
    _harness.main("config", test_one_input, seeds())
