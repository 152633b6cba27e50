"""
The JSON API of the admin listener: /api/boots and /api/boots/<mac>.

Plain data out of the trail (L{ownsocket.admin.trail.Boot.as_dict}), for
C{ownsocket trail} and for scripts.  Everything is rendered on the reactor
thread from the trail's own bounded state, so a request costs at most one
walk over C{[admin] boots} boots.
"""

from __future__ import annotations

import json

from twisted.web.resource import Resource

from ownsocket.admin.trail import normalise_mac

#: Boots listed by /api/boots unless ?limit= says otherwise.
DEFAULT_LIST = 200


def _json(request, code, data):
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json; charset=utf-8")
    request.setHeader(b"x-content-type-options", b"nosniff")
    request.setHeader(b"cache-control", b"no-store")
    return json.dumps(data, indent=1, sort_keys=False, default=str).encode("utf-8") + b"\n"


def _arg(request, name):
    values = request.args.get(name.encode("ascii"))
    return values[0].decode("utf-8", "replace") if values else None


def _is_address(text):
    import ipaddress
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False


def limits(runtime):
    admin = getattr(runtime.config, "admin", None)
    return {"boots": getattr(admin, "boots", None), "events_per_boot": getattr(admin, "events_per_boot", None),
            "stall_after": getattr(admin, "stall_after", None)}


class BootsResource(Resource):
    """/api/boots: every boot kept, newest first, without their events."""

    def __init__(self, runtime, trail):
        Resource.__init__(self)
        self.runtime = runtime
        self.trail = trail

    def getChild(self, path, request):
        if path == b"":
            return self
        return OneMachineResource(self.runtime, self.trail, path.decode("utf-8", "replace"))

    def render_GET(self, request):
        try:
            limit = int(_arg(request, "limit") or DEFAULT_LIST)
        except ValueError:
            return _json(request, 400, {"error": "limit must be a whole number"})
        outcome = _arg(request, "outcome")
        now = self.runtime.reactor.seconds()
        boots = self.trail.all_boots()
        if outcome is not None:
            wanted = None if outcome in ("", "none", "booting") else outcome
            boots = [b for b in boots if b.outcome == wanted]
        shown = boots[:max(0, limit)]
        return _json(request, 200, {"now": now, "count": len(boots), "shown": len(shown),
                                    "limits": limits(self.runtime),
                                    "boots": [b.as_dict(now, events=False) for b in shown]})


class OneMachineResource(Resource):
    """/api/boots/<mac>: that machine's boots (newest first) with every event kept."""

    isLeaf = True

    def __init__(self, runtime, trail, key):
        Resource.__init__(self)
        self.runtime = runtime
        self.trail = trail
        self.key = key

    def render_GET(self, request):
        mac = normalise_mac(self.key)
        if mac is None and not _is_address(self.key):
            return _json(request, 400, {"error": "not a MAC address (nor an IP address): %s" % self.key[:64]})
        now = self.runtime.reactor.seconds()
        boots = self.trail.boots_of(mac or self.key)
        if not boots:
            return _json(request, 404, {"error": "no boot of %s is kept (the trail holds the last %s boots)"
                                        % (mac or self.key, limits(self.runtime)["boots"]),
                                        "mac": mac, "boots": []})
        return _json(request, 200, {"now": now, "mac": boots[0].mac, "peer": boots[0].peer,
                                    "limits": limits(self.runtime),
                                    "boots": [b.as_dict(now) for b in boots]})


class ApiResource(Resource):
    def __init__(self, runtime, trail):
        Resource.__init__(self)
        self.putChild(b"boots", BootsResource(runtime, trail))
