"""
Load the captured firmware packets in tests/fixtures/*.hex (DHCPv4, TFTP)
and tests/fixtures6/*.hex (DHCPv6).

The fixtures are hex text rather than binary so that a diff shows which bytes
a re-capture changed and the comment lines say where the bytes came from
(see tests/fixtures/README.md and tests/fixtures/capture_firmware.py).
"""

import os

FIXTURES_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
FIXTURES6_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures6")


def fixture_path(name, directory=FIXTURES_DIR):
    """Path of fixture ``name`` (with or without ``.hex``)."""
    if not name.endswith(".hex"):
        name += ".hex"
    return os.path.join(directory, name)


def load_hex(name, directory=FIXTURES_DIR):
    """
    The payload bytes of fixture ``name``, e.g. ``load_hex("ovmf_pxe_discover")``.

    Lines starting with ``#`` are comments; all whitespace is ignored, so the
    wrapping of the hex does not matter.
    """
    with open(fixture_path(name, directory), "r", encoding="ascii") as f:
        text = "".join(
            "".join(line.split())
            for line in f
            if not line.lstrip().startswith("#")
        )
    try:
        return bytes.fromhex(text)
    except ValueError as e:
        raise ValueError("%s: not a hex fixture: %s" % (fixture_path(name, directory), e)) from None


def fixture_names(directory=FIXTURES_DIR):
    """All fixture names (without ``.hex``), sorted; for tests that loop over them."""
    return sorted(n[:-4] for n in os.listdir(directory) if n.endswith(".hex"))


def load_hex6(name):
    """The payload bytes of tests/fixtures6/``name``.hex (a DHCPv6 message)."""
    return load_hex(name, FIXTURES6_DIR)


def fixture6_names():
    return fixture_names(FIXTURES6_DIR)
