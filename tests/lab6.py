"""
Small helpers of the IPv6 tests: the captured fixtures in tests/fixtures6/
and (for the namespace tests) what a lab with fd99::1/64 needs.
"""

import os

FIXTURES6 = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures6")


def load_hex6(name):
    """Payload bytes of tests/fixtures6/NAME.hex (# lines are comments)."""
    path = os.path.join(FIXTURES6, name if name.endswith(".hex") else name + ".hex")
    with open(path, encoding="ascii") as handle:
        text = "".join("".join(line.split()) for line in handle if not line.lstrip().startswith("#"))
    return bytes.fromhex(text)


def fixture6_names():
    return sorted(n[:-4] for n in os.listdir(FIXTURES6) if n.endswith(".hex"))
