"""
The boot part of a reply, shared by the DHCP server and the proxyDHCP server.

Both answer with the same fields for the same decision (siaddr, sname, file,
options 13, 66, 67 and the selector's own options), so the rules for them
live in one place.
"""

from __future__ import annotations

import struct

from twisted.internet import defer
from twisted.logger import Logger

from ownsocket.dhcp import wire

_log = Logger()


def with_decision(selector, request, then):
    """
    Ask the selector about C{request} and call C{then(decision)} with its
    answer, at once or when its Deferred fires.  A selector that raises gives
    no decision (the reply still goes out, without a boot file).
    """
    try:
        decision = selector.select(request)
    except Exception:
        _log.failure("boot selection failed for {mac}", mac=request.mac)
        decision = None
    if isinstance(decision, defer.Deferred):
        return decision.addCallback(then)
    return then(decision)


def add_boot_fields(reply, message, decision, next_server, boot_file_size=None, boot_request=None):
    """
    Fill in where and what to boot.

    The file goes in the BOOTP C{file} field always and in option 67 when the
    client asks for it (OVMF and iPXE read either); option 13 is the size in
    512-byte blocks of the file as TFTP will serve it.  A selector's extra
    option replaces one of ours with the same code (the Raspberry Pi needs
    its own option 66, for instance).
    """
    reply.siaddr = next_server
    filename = decision.filename if decision is not None and decision.filename else None
    sname = decision.sname if decision is not None and decision.sname else None
    if sname:
        reply.sname = sname.encode("ascii", "replace")
    if filename:
        reply.file = filename.encode("ascii", "replace")
        if boot_file_size is not None and "://" not in filename:
            size = boot_file_size(filename, boot_request)
            if size is not None:
                reply.add(wire.OPT_BOOT_SIZE, struct.pack("!H", min((size + 511) // 512, 0xFFFF)))
        asked = message.parameter_list
        if wire.OPT_TFTP_SERVER in asked:
            reply.add(wire.OPT_TFTP_SERVER, (sname or str(next_server)).encode("ascii", "replace"))
        if wire.OPT_BOOTFILE in asked:
            reply.add(wire.OPT_BOOTFILE, filename.encode("ascii", "replace"))
    if decision is not None and decision.extra_options:
        overridden = {code for code, _ in decision.extra_options}
        reply.options = [(code, value) for code, value in reply.options if code not in overridden]
        for code, value in decision.extra_options:
            reply.add(code, value)


def echo_options(message, reply):
    """RFC 4578 asks for 97 back; RFC 3046 for 82, but only towards a relay."""
    uuid = message.options.get(wire.OPT_CLIENT_UUID)
    if uuid is not None:
        reply.add(wire.OPT_CLIENT_UUID, uuid)
    relay = message.options.get(wire.OPT_RELAY_INFO)
    if relay is not None and message.relayed:
        reply.add(wire.OPT_RELAY_INFO, relay)
