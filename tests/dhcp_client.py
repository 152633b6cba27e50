"""
A tiny scripted DHCP/BOOTP client (and relay agent) for the integration tests.

Real clients (dhclient, udhcpc) cannot send a bare BOOTP request, act as a
relay, or pretend to be five machines at once; this can.  It is run as a
script inside a test's network namespace (C{python3 dhcp_client.py dora
--iface cli0 --mac ...}) and prints one JSON document, so it depends on the
standard library only and never on the server's code: a test that parsed
replies with the server's own wire module could not catch a bug in it.

Every wait is bounded: a missing reply is reported as C{null}, never as a
hang.
"""

import argparse
import json
import random
import select
import socket
import struct
import sys
import time

if __package__:
    from tests import packets
else:  # run as a script (the usual way): tests/ is sys.path[0]
    import packets

DISCOVER, OFFER, REQUEST, DECLINE, ACK, NAK, RELEASE, INFORM = range(1, 9)
TYPE_NAMES = {1: "DISCOVER", 2: "OFFER", 3: "REQUEST", 4: "DECLINE", 5: "ACK", 6: "NAK",
              7: "RELEASE", 8: "INFORM"}
IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)  # Linux value; Python may not export it

# The options a UEFI PXE client (OVMF, arch 7) sends; see FIRMWARE-FACTS.md 1c.
UEFI_PXE_OPTIONS = [
    (93, bytes.fromhex("0007")),
    (94, bytes.fromhex("010300")),
    (60, b"PXEClient:Arch:00007:UNDI:003000"),
    (97, bytes(17)),
]


def build(xid, mac, message_type=DISCOVER, options=(), ciaddr="0.0.0.0", giaddr="0.0.0.0",
          flags=0x8000, hops=0, op=1):
    """
    A BOOTREQUEST; C{message_type=None} makes it plain BOOTP (no option 53),
    which is what old PXE ROMs and embedded devices still send.

    Padded to 300 bytes, the BOOTP minimum some servers and relays insist on.
    """
    return packets.request(mac=mac.replace("-", ":"), message_type=message_type, options=options,
                           xid=xid, flags=flags, ciaddr=ciaddr, giaddr=giaddr, hops=hops, op=op,
                           pad_to=300)


def parse(data):
    """
    A BOOTREPLY as a JSON-ready dict, or None if it is not one.

    Read by the one reader of the test code (L{packets.decode}), which is
    strict enough to catch a malformed reply from the server (truncated
    option, missing End) rather than silently accepting it: the result
    carries C{errors} for the test to assert on.
    """
    decoded = packets.decode(data)
    if decoded is None:
        return None
    options = decoded["options"]
    reply = {key: decoded[key] for key in ("op", "xid", "flags", "hops", "ciaddr", "yiaddr",
                                           "siaddr", "giaddr", "chaddr", "errors")}
    reply.update(sname=decoded["sname"].decode("latin-1"), file=decoded["file"].decode("latin-1"),
                 length=decoded["size"], type=None,
                 options={str(code): value.hex() for code, value in sorted(options.items())})
    if 53 in options and len(options[53]) == 1:
        reply["type"] = TYPE_NAMES.get(options[53][0], options[53][0])
    if 54 in options and len(options[54]) == 4:
        reply["server_id"] = socket.inet_ntoa(options[54])
    if 51 in options and len(options[51]) == 4:
        reply["lease_time"] = struct.unpack("!I", options[51])[0]
    if 1 in options and len(options[1]) == 4:
        reply["netmask"] = socket.inet_ntoa(options[1])
    return reply


class Endpoint:
    """
    A UDP socket for one side of an exchange.

    Bound to a device (SO_BINDTODEVICE) so a broadcast leaves by the leg
    under test even though the namespace has no address or route yet, and so
    only replies that came in on that leg are seen.
    """

    def __init__(self, iface=None, address="0.0.0.0", port=68):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        if iface:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, iface.encode())
        # Record each reply's IP destination, so tests can check RFC 2131
        # 4.1 addressing (broadcast, ciaddr or giaddr), not just delivery.
        self.sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
        self.sock.bind((address, port))

    def close(self):
        self.sock.close()

    def exchange(self, packet, destination, xid, mac, want, timeout=4.0, resend=1.0):
        """
        Send C{packet} and wait for a reply of a type in C{want} (None = BOOTP
        reply without option 53) with our xid and chaddr; resend every
        C{resend} seconds as a real client would; give up after C{timeout}.

        @return: (reply dict or None, list of every other reply seen).
        """
        deadline = time.monotonic() + timeout
        others = []
        next_send = 0.0
        while True:
            now = time.monotonic()
            if now >= deadline:
                return None, others
            if now >= next_send:
                self.sock.sendto(packet, destination)
                next_send = now + resend
            ready, _, _ = select.select([self.sock], [], [], max(0.0, min(deadline, next_send) - now))
            if not ready:
                continue
            data, ancillary, _, source = self.sock.recvmsg(65535, socket.CMSG_SPACE(12))
            reply = parse(data)
            if reply is None or reply["op"] != 2 or reply["xid"] != xid or reply["chaddr"] != mac:
                continue
            reply["from"] = list(source)
            for level, kind, value in ancillary:
                if level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(value) >= 12:
                    reply["to"] = socket.inet_ntoa(value[8:12])
            if reply["type"] in want:
                return reply, others
            others.append(reply)
            if reply["type"] == "NAK":
                return None, others


def _xid():
    return random.getrandbits(32)


def dora(endpoint, mac, destination=("255.255.255.255", 67), giaddr="0.0.0.0", extra=(),
         timeout=4.0, hops=0):
    """DISCOVER, OFFER, REQUEST (selecting), ACK for one MAC."""
    xid = _xid()
    result = {"mac": mac, "offer": None, "ack": None, "nak": None}
    discover = build(xid, mac, DISCOVER, options=list(extra), giaddr=giaddr, hops=hops)
    offer, _ = endpoint.exchange(discover, destination, xid, mac, ("OFFER",), timeout)
    result["offer"] = offer
    if offer is None:
        return result
    options = [(50, socket.inet_aton(offer["yiaddr"]))]
    if "server_id" in offer:
        options.append((54, socket.inet_aton(offer["server_id"])))
    request = build(xid, mac, REQUEST, options=options + list(extra), giaddr=giaddr, hops=hops)
    ack, others = endpoint.exchange(request, destination, xid, mac, ("ACK",), timeout)
    result["ack"] = ack
    result["nak"] = next((o for o in others if o["type"] == "NAK"), None)
    return result


def reboot(endpoint, mac, address, timeout=4.0):
    """INIT-REBOOT: a REQUEST with option 50 and no server id, as a client
    that remembers its lease sends after a power cycle."""
    xid = _xid()
    request = build(xid, mac, REQUEST, options=[(50, socket.inet_aton(address))])
    ack, others = endpoint.exchange(request, ("255.255.255.255", 67), xid, mac, ("ACK",), timeout)
    return {"mac": mac, "requested": address, "ack": ack,
            "nak": next((o for o in others if o["type"] == "NAK"), None)}


def inform(endpoint, mac, ciaddr, server="255.255.255.255", timeout=4.0):
    """DHCPINFORM from a client that already has C{ciaddr}: the answer is an
    ACK without a lease, unicast to ciaddr:68.  Broadcast by default; a
    client on a routed LAN unicasts it to a server it knows."""
    xid = _xid()
    packet = build(xid, mac, INFORM, ciaddr=ciaddr, flags=0, options=[(55, bytes([1, 3, 6]))])
    ack, others = endpoint.exchange(packet, (server, 67), xid, mac, ("ACK",), timeout)
    return {"mac": mac, "ack": ack, "others": others}


def decline(endpoint, mac, extra=(), timeout=4.0):
    """DORA, DECLINE the address (as after a failed ARP probe), DORA again:
    the second address must differ."""
    first = dora(endpoint, mac, extra=extra, timeout=timeout)
    result = {"mac": mac, "first": first, "second": None}
    if first["ack"] is None:
        return result
    options = [(50, socket.inet_aton(first["ack"]["yiaddr"]))]
    if "server_id" in first["ack"]:
        options.append((54, socket.inet_aton(first["ack"]["server_id"])))
    endpoint.sock.sendto(build(_xid(), mac, DECLINE, options=options), ("255.255.255.255", 67))
    time.sleep(0.3)
    result["second"] = dora(endpoint, mac, extra=extra, timeout=timeout)
    return result


def renew(endpoint, mac, ciaddr, server, timeout=4.0):
    """RENEWING (RFC 2131 4.4.5): a REQUEST with ciaddr and neither option
    50 nor 54, unicast straight to the server that granted the lease (not
    through any relay), answered to ciaddr:68."""
    xid = _xid()
    request = build(xid, mac, REQUEST, ciaddr=ciaddr, flags=0)
    ack, others = endpoint.exchange(request, (server, 67), xid, mac, ("ACK",), timeout)
    return {"mac": mac, "ciaddr": ciaddr, "ack": ack,
            "nak": next((o for o in others if o["type"] == "NAK"), None)}


def choose_other(endpoint, mac, other_server, timeout=4.0):
    """DISCOVER, take the OFFER's address but REQUEST it from another server
    (option 54 = C{other_server}), as a client that picked a competing
    offer does; our server must stay silent and drop its offer."""
    xid = _xid()
    offer, _ = endpoint.exchange(build(xid, mac, DISCOVER), ("255.255.255.255", 67), xid, mac,
                                 ("OFFER",), timeout)
    result = {"mac": mac, "offer": offer, "reply": None}
    if offer is None:
        return result
    request = build(xid, mac, REQUEST, options=[(50, socket.inet_aton(offer["yiaddr"])),
                                                (54, socket.inet_aton(other_server))])
    reply, others = endpoint.exchange(request, ("255.255.255.255", 67), xid, mac, ("ACK", "NAK"),
                                      min(timeout, 2.0), resend=5.0)
    result["reply"] = reply or (others[0] if others else None)
    return result


def junk_packets(count, seed=1):
    """
    Datagrams a server must survive: random bytes, truncations of a valid
    DISCOVER, options running past the end, a wrong magic cookie, a reply
    (op 2), absurd hlen, 64 KiB-ish of pad, an option 52 overload pointing
    at garbage, and a DISCOVER with every option duplicated.
    """
    rng = random.Random(seed)
    valid = build(1, "02:00:00:00:00:01", DISCOVER, options=UEFI_PXE_OPTIONS)
    fixed = [
        b"", b"\x01", valid[:100], valid[:236], valid[:240],
        valid[:240] + bytes([53, 1, 1, 55, 200, 1, 2]),            # 55 runs past the end
        valid[:236] + b"\x63\x82\x53\x64" + valid[240:],          # wrong cookie
        b"\x02" + valid[1:],                                        # a BOOTREPLY
        valid[:2] + b"\xff" + valid[3:],                            # hlen 255
        valid[:240] + bytes([53, 1, 1]) + b"\x00" * 60000 + b"\xff",  # pad storm
        valid[:240] + bytes([53, 1, 1, 52, 1, 3]) + b"\xff",         # overload into junk
        valid[:240] + bytes([53, 1, 1, 53, 1, 3, 61, 0, 93, 1, 7, 93, 3, 0, 7, 0]) + b"\xff",
        valid[:240] + bytes([53, 0]) + b"\xff",                      # empty message type
        valid[:240] + bytes([53, 1, 99]) + b"\xff",                  # unknown message type
    ]
    packets = list(fixed)
    while len(packets) < count:
        kind = rng.randrange(3)
        if kind == 0:
            packets.append(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 600))))
        elif kind == 1:
            packets.append(valid[:rng.randrange(len(valid))])
        else:
            mutated = bytearray(valid)
            for _ in range(rng.randrange(1, 8)):
                mutated[rng.randrange(236, len(mutated))] = rng.randrange(256)
            packets.append(bytes(mutated))
    return packets[:max(count, len(fixed))]


def bootp(endpoint, mac, timeout=4.0):
    xid = _xid()
    packet = build(xid, mac, None)
    reply, others = endpoint.exchange(packet, ("255.255.255.255", 67), xid, mac, (None,), timeout)
    return {"mac": mac, "reply": reply, "others": others}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    sub = parser.add_subparsers(dest="command", required=True)
    junk = sub.add_parser("junk", help="send malformed datagrams to port 67 (no replies awaited)")
    junk.add_argument("--iface")
    junk.add_argument("--count", type=int, default=300)
    for name in ("dora", "reboot", "bootp", "relay", "inform", "decline", "choose-other", "renew"):
        command = sub.add_parser(name)
        command.add_argument("--iface", help="device to bind to (SO_BINDTODEVICE)")
        command.add_argument("--mac", action="append", required=True,
                             help="client MAC; repeat for several clients "
                                  "(for reboot: MAC=ADDRESS)")
        command.add_argument("--timeout", type=float, default=4.0)
        command.add_argument("--uefi-pxe", action="store_true",
                             help="add the options an OVMF UEFI PXE client sends")
        command.add_argument("--option", action="append", default=[],
                             help="extra option CODE,HEX (e.g. 82,0104...); repeatable")
    relay = sub.choices["relay"]
    relay.add_argument("--giaddr", required=True, help="relay address; replies come back to it:67")
    relay.add_argument("--server", required=True, help="server address to unicast to")
    sub.choices["inform"].add_argument("--ciaddr", required=True)
    sub.choices["inform"].add_argument("--server", default="255.255.255.255")
    sub.choices["choose-other"].add_argument("--other-server", required=True)
    sub.choices["renew"].add_argument("--ciaddr", required=True)
    sub.choices["renew"].add_argument("--server", required=True)
    args = parser.parse_args(argv)
    extra = list(UEFI_PXE_OPTIONS) if getattr(args, "uefi_pxe", False) else []
    for text in getattr(args, "option", ()):
        code, _, value = text.partition(",")
        extra.append((int(code), bytes.fromhex(value)))

    results = []
    if args.command == "junk":
        endpoint = Endpoint(args.iface, "0.0.0.0", 68)
        sent = 0
        for packet in junk_packets(args.count):
            try:
                endpoint.sock.sendto(packet, ("255.255.255.255", 67))
                sent += 1
            except OSError:  # EMSGSIZE for the biggest: fine, the rest still go
                pass
            if sent % 50 == 0:
                time.sleep(0.01)  # stay below the socket buffers: test parsing, not loss
        endpoint.close()
        json.dump([{"sent": sent}], sys.stdout)
        sys.stdout.write("\n")
        return 0
    if args.command == "relay":
        endpoint = Endpoint(None, args.giaddr, 67)
    elif args.command == "renew" or (args.command == "inform" and args.server != "255.255.255.255"):
        endpoint = Endpoint(args.iface, args.ciaddr, 68)
    else:
        endpoint = Endpoint(args.iface, "0.0.0.0", 68)
    try:
        for entry in args.mac:
            if args.command == "dora":
                results.append(dora(endpoint, entry.lower(), extra=extra, timeout=args.timeout))
            elif args.command == "reboot":
                mac, _, address = entry.partition("=")
                results.append(reboot(endpoint, mac.lower(), address, timeout=args.timeout))
            elif args.command == "bootp":
                results.append(bootp(endpoint, entry.lower(), timeout=args.timeout))
            elif args.command == "inform":
                results.append(inform(endpoint, entry.lower(), args.ciaddr, args.server,
                                      timeout=args.timeout))
            elif args.command == "renew":
                results.append(renew(endpoint, entry.lower(), args.ciaddr, args.server,
                                     timeout=args.timeout))
            elif args.command == "choose-other":
                results.append(choose_other(endpoint, entry.lower(), args.other_server,
                                            timeout=args.timeout))
            elif args.command == "decline":
                results.append(decline(endpoint, entry.lower(), extra=extra, timeout=args.timeout))
            else:
                results.append(dora(endpoint, entry.lower(), destination=(args.server, 67),
                                    giaddr=args.giaddr, extra=extra, timeout=args.timeout, hops=1))
    finally:
        endpoint.close()
    json.dump(results, sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
