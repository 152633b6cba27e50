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


def parse_reply(data):
    """A minimal independent reply reader: header fields and options."""
    fields = struct.unpack("!BBBBIHH4s4s4s4s16s64s128s", data[:236])
    assert data[236:240] == MAGIC, "reply has no magic cookie"
    options, order, position = {}, [], 240
    while position < len(data):
        code = data[position]
        if code == 0:
            position += 1
            continue
        if code == 255:
            break
        length = data[position + 1]
        options[code] = options.get(code, b"") + data[position + 2:position + 2 + length]
        order.append(code)
        position += 2 + length
    else:
        raise AssertionError("reply has no End option")
    return {
        "op": fields[0], "xid": fields[4], "flags": fields[6],
        "ciaddr": str(ipaddress.IPv4Address(fields[7])), "yiaddr": str(ipaddress.IPv4Address(fields[8])),
        "siaddr": str(ipaddress.IPv4Address(fields[9])), "giaddr": str(ipaddress.IPv4Address(fields[10])),
        "sname": fields[12].rstrip(b"\0"), "file": fields[13].rstrip(b"\0"),
        "options": options, "order": order, "size": len(data),
        "type": options.get(53, b"\0")[0] if 53 in options else None,
    }
