"""
Request packets for tests, built with plain struct so that the tests do not
trust the code they test to build its own input.
"""

import ipaddress
import struct

MAGIC = b"\x63\x82\x53\x63"


def option(code, value):
    return bytes((code, len(value))) + value


def request(mac="52:54:00:99:00:10", message_type=1, options=(), xid=0x12345678, flags=0,
            ciaddr="0.0.0.0", giaddr="0.0.0.0", hops=0, cookie=True, end=True, pad_to=0,
            op=1, htype=1, hlen=6, sname=b"", file=b""):
    chaddr = bytes(int(part, 16) for part in mac.split(":")).ljust(16, b"\0")
    header = struct.pack(
        "!BBBBIHH4s4s4s4s16s64s128s", op, htype, hlen, hops, xid, 0, flags,
        ipaddress.IPv4Address(ciaddr).packed, bytes(4), bytes(4),
        ipaddress.IPv4Address(giaddr).packed, chaddr, sname.ljust(64, b"\0"), file.ljust(128, b"\0"))
    body = b""
    if cookie:
        body = MAGIC
        if message_type is not None:
            body += option(53, bytes((message_type,)))
        for code, value in options:
            body += option(code, value)
        if end:
            body += b"\xff"
    packet = header + body
    return packet.ljust(pad_to, b"\0")


def ovmf_pxe_discover(mac="52:54:00:99:00:10", xid=0x1234, message_type=1, extra=()):
    """The option set of FIRMWARE-FACTS §1c, in its order."""
    params = bytes([1, 2, 3, 4, 5, 6, 12, 13, 15, 17, 18, 22, 23, 28, 40, 41, 42, 43, 50, 51, 54,
                    58, 59, 60, 66, 67, 97, 128, 129, 130, 131, 132, 133, 134, 135])
    return request(mac=mac, xid=xid, message_type=message_type, flags=0x8000, options=[
        *extra,
        (57, struct.pack("!H", 1472)), (55, params), (97, bytes(17)), (94, b"\x01\x03\x00"),
        (93, b"\x00\x07"), (60, b"PXEClient:Arch:00007:UNDI:003000")])


def ipxe_bios_discover(mac="52:54:00:99:00:10", xid=0x4321, message_type=1, extra=()):
    """The option set of FIRMWARE-FACTS §1a (SeaBIOS + iPXE ROM)."""
    params = bytes([1, 3, 6, 7, 12, 15, 17, 26, 43, 60, 66, 67, 119, 128, 129, 130, 131, 132, 133,
                    134, 135, 175, 203])
    return request(mac=mac, xid=xid, message_type=message_type, options=[
        (57, struct.pack("!H", 1472)), (93, b"\x00\x00"), (94, b"\x01\x02\x01"),
        (60, b"PXEClient:Arch:00000:UNDI:002001"), (77, b"iPXE"), (55, params),
        (175, b"\xb1\x05\x01\x80\x86\x10\x0e\xeb\x03\x01\x00\x00\x17\x01\x01"),
        (61, b"\x01" + bytes.fromhex(mac.replace(":", ""))), (97, bytes(17)), *extra])


# ---------------------------------------------------------------------------
# Reading packets: the one DHCP/BOOTP reader of the test code.
#
# Deliberately independent of ownsocket.dhcp.wire: the unit tests check the
# server's own builder (wire.build) with it, and tests/dhcp_client.py runs it
# inside a namespace as a script, where a bug shared with the server's parser
# would hide itself.  Standard library only for the same reason.

HEADER = struct.Struct("!BBBBIHH4s4s4s4s16s64s128s")


def walk_options(data):
    """
    ``([(code, value)] in wire order, [errors])`` of the options after the
    magic cookie: pad skipped, stop at End.  Repeated codes stay separate
    (RFC 3396 concatenation is the caller's choice); an option that runs
    past the end of ``data`` stops the walk and is reported, not returned
    (and so, then, is the End option it hid).
    """
    found, errors = [], []
    if len(data) < HEADER.size + 4 or data[HEADER.size:HEADER.size + 4] != MAGIC:
        return found, ["no magic cookie"]
    position = HEADER.size + 4
    while position < len(data):
        code = data[position]
        if code == 0:
            position += 1
            continue
        if code == 255:
            return found, errors
        if position + 1 >= len(data) or position + 2 + data[position + 1] > len(data):
            errors.append("option %d runs past the end" % code)
            break
        length = data[position + 1]
        found.append((code, bytes(data[position + 2:position + 2 + length])))
        position += 2 + length
    return found, errors + ["no End option"]


def dhcp_options(payload):
    """``[(code, value)]`` in wire order ([] without a cookie), so tests can check option order."""
    return walk_options(payload)[0]


def dhcp_message_type(payload):
    """Option 53 of a BOOTP/DHCP payload, or None (plain BOOTP, or not DHCP at all)."""
    for code, value in dhcp_options(payload):
        if code == 53 and value:
            return value[0]
    return None


def _cstring(field):
    return field.split(b"\0", 1)[0]


def decode(data):
    """
    A BOOTP/DHCP packet as a dict, or None if it is shorter than the header.

    Never raises on bad input: what is wrong with the packet is listed in
    ``errors`` (no cookie, an option running past the end, no End), so a
    caller can assert on it or report it.  ``options`` maps each code to its
    value (repeats concatenated, RFC 3396), ``order`` lists the codes as
    they came; ``sname`` and ``file`` are bytes up to the first NUL.
    """
    if len(data) < HEADER.size:
        return None
    (op, htype, hlen, hops, xid, secs, flags, ciaddr, yiaddr, siaddr, giaddr, chaddr, sname,
     filename) = HEADER.unpack_from(data)
    found, errors = walk_options(data)
    options = {}
    for code, value in found:
        options[code] = options.get(code, b"") + value
    message_type = options.get(53, b"")
    return {
        "op": op, "htype": htype, "hlen": hlen, "hops": hops, "xid": xid, "secs": secs, "flags": flags,
        "ciaddr": str(ipaddress.IPv4Address(ciaddr)), "yiaddr": str(ipaddress.IPv4Address(yiaddr)),
        "siaddr": str(ipaddress.IPv4Address(siaddr)), "giaddr": str(ipaddress.IPv4Address(giaddr)),
        "chaddr": ":".join("%02x" % b for b in chaddr[:hlen if 0 < hlen <= 16 else 6]),
        "sname": _cstring(sname), "file": _cstring(filename),
        "options": options, "order": [code for code, _ in found], "size": len(data),
        "type": message_type[0] if len(message_type) == 1 else None,
        "errors": errors,
    }


def parse_reply(data):
    """L{decode} for a reply the server under test built: anything malformed fails the test."""
    reply = decode(data)
    assert reply is not None, "reply is shorter than a BOOTP header (%d bytes)" % len(data)
    assert not reply["errors"], "malformed reply: %s" % "; ".join(reply["errors"])
    return reply
