"""
The status page at / of the admin listener.

Server-rendered with twisted.web.template, which escapes every string it is
given: MACs, host names and file names come from clients, and a hostile one
must show as text, never become markup.  A Content-Security-Policy that
allows no script at all backs that up.  The page refreshes itself with a
meta refresh; there is no JavaScript.
"""

from __future__ import annotations

import time

from twisted.web.resource import Resource
from twisted.web.template import flattenString, tags

from ownsocket import __version__
from ownsocket.admin.metrics import ADDRESS_STATES, address_counts, transfers_in_flight

#: Seconds between refreshes of the page.
REFRESH = 2
#: Rows shown per table (the JSON API has them all).
MAX_ROWS = 100

STYLE = """
body { font-family: sans-serif; margin: 1em 2em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.1em; margin-top: 1.5em; }
table { border-collapse: collapse; } td, th { padding: 2px 8px; border-bottom: 1px solid #ddd; text-align: left; }
th { background: #f0f0f0; } .num { text-align: right; } .none { color: #888; }
.outcome-complete { color: #060; } .outcome-failed, .outcome-stalled { color: #b00; font-weight: bold; }
.outcome-booting { color: #036; } code { font-size: 0.95em; }
"""


def duration(seconds) -> str:
    if seconds is None:
        return "n/a"
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"


def _clock(timestamp) -> str:
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(timestamp))
    except (OverflowError, ValueError, OSError, TypeError):
        return "n/a"


def _size(count) -> str:
    if not isinstance(count, (int, float)):
        return "n/a"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(count) < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024.0
    return str(count)


def _text(value) -> str:
    return "" if value is None else str(value)


def _table(table_id, headers, rows, empty):
    head = tags.tr(*[tags.th(h) for h in headers])
    if not rows:
        return tags.table(head, tags.tr(tags.td(empty, colspan=str(len(headers)), class_="none")), id=table_id)
    return tags.table(head, *rows, id=table_id)


def _boot_rows(boots, now, mac_label):
    rows = []
    for boot in boots[:MAX_ROWS]:
        outcome = boot.outcome or "booting"
        last = boot.entries()[-1].text if boot.entries() else ""
        elapsed = (boot.ended or now) - boot.started
        rows.append(tags.tr(
            tags.td(tags.code(mac_label(boot)), class_="mac"),
            tags.td(_text(boot.hostname), class_="hostname"),
            tags.td(_text(boot.address or boot.peer), class_="address"),
            tags.td(_text(boot.arch), class_="arch"),
            tags.td(boot.firmware, class_="firmware"),
            tags.td(_text(boot.file), class_="file"),
            tags.td(boot.phase, class_="stage"),
            tags.td(duration(elapsed), class_="elapsed num"),
            tags.td(outcome, class_="outcome outcome-" + outcome),
            tags.td(_text(boot.summary or last), class_="detail"),
            class_="boot", **{"data-mac": boot.mac or "", "data-stage": boot.phase, "data-outcome": outcome}))
    return rows


def status_tree(runtime, trail):
    """The whole page as a tag tree (flatten it to get escaped HTML)."""
    now = runtime.reactor.seconds()
    config = runtime.config
    boots = trail.all_boots() if trail is not None else []
    booting = [b for b in boots if b.outcome is None]
    recent = [b for b in boots if b.outcome is not None]

    def mac_label(boot):
        return boot.mac or f"unknown MAC ({boot.peer})"

    boot_headers = ("MAC", "host name", "address", "architecture", "firmware", "file", "stage",
                    "elapsed", "outcome", "last event / summary")
    more = lambda items: ([tags.p(f"and {len(items) - MAX_ROWS} more (see /api/boots)", class_="none")]
                          if len(items) > MAX_ROWS else [])

    counts = address_counts(runtime)
    if counts is None:
        pools = tags.p("n/a (the DHCP service is off or cannot say)", id="pools", class_="none")
    else:
        by_subnet = {}
        for (subnet, state), value in counts.items():
            by_subnet.setdefault(str(subnet), {})[state] = value
        rows = []
        for subnet in sorted(by_subnet):
            states = by_subnet[subnet]
            total = sum(states.values())
            used = total - states.get("free", 0)
            cells = [tags.td(subnet, class_="subnet")]
            cells += [tags.td(str(states.get(state, 0)), class_=state + " num") for state in ADDRESS_STATES]
            cells += [tags.td(str(total), class_="num"),
                      tags.td(f"{100.0 * used / total:.0f} %" if total else "n/a", class_="used num")]
            rows.append(tags.tr(*cells, class_="pool"))
        pools = _table("pools", ("subnet",) + ADDRESS_STATES + ("total", "in use"), rows, "no subnet")

    transfer_rows, unknown = [], []
    for name in ("tftp", "http"):
        service = getattr(runtime, name, None)
        transfers = transfers_in_flight(runtime, name)
        if transfers is None:
            if service is not None:
                unknown.append(name.upper())
            continue
        for t in transfers[:MAX_ROWS]:
            peer = _text(t.get("peer"))
            mac = trail.mac_for_peer(peer) if trail is not None else None
            started = t.get("started")
            transfer_rows.append(tags.tr(
                tags.td(name.upper()), tags.td(peer, class_="peer"), tags.td(_text(mac), class_="mac"),
                tags.td(_text(t.get("file")), class_="file"), tags.td(_size(t.get("bytes")), class_="num"),
                tags.td(_text(t.get("block")), class_="num"), tags.td(_text(t.get("blksize")), class_="num"),
                tags.td(_text(t.get("windowsize")), class_="num"),
                tags.td(duration(now - started) if isinstance(started, (int, float)) else "n/a", class_="num"),
                tags.td(_text(t.get("state") or "sending"), class_="state"),
                class_="transfer"))
    transfers = _table("transfers", ("protocol", "peer", "MAC", "file", "sent", "block", "blksize",
                                     "windowsize", "elapsed", "state"), transfer_rows, "none")
    transfer_note = [tags.p(f"n/a for {', '.join(unknown)} (the service cannot say)", class_="none")] if unknown else []

    uptime = now - runtime.started_at if getattr(runtime, "started_at", None) is not None else None
    summary = tags.table(
        tags.tr(tags.th("version"), tags.td(__version__)),
        tags.tr(tags.th("configuration"), tags.td(tags.code(_text(getattr(config, "source", None))), id="config")),
        tags.tr(tags.th("configuration hash"), tags.td(tags.code(_text(getattr(runtime, "config_hash", None))),
                                                       id="config-hash")),
        tags.tr(tags.th("started"), tags.td(_clock(getattr(runtime, "started_at", None)))),
        tags.tr(tags.th("uptime"), tags.td(duration(uptime), id="uptime")),
        tags.tr(tags.th("now"), tags.td(_clock(now))),
        id="server")

    return tags.html(
        tags.head(
            tags.meta(charset="utf-8"),
            tags.meta(**{"http-equiv": "refresh", "content": str(REFRESH)}),
            tags.title("ownsocket status"),
            tags.style(STYLE)),
        tags.body(
            tags.h1("ownsocket"),
            summary,
            tags.h2(f"Booting now ({len(booting)})"),
            _table("booting", boot_headers, _boot_rows(booting, now, mac_label), "no machine is booting"),
            *more(booting),
            tags.h2(f"Recent boots ({len(recent)})"),
            _table("recent", boot_headers, _boot_rows(recent, now, mac_label), "none yet"),
            *more(recent),
            tags.h2("Address pools"),
            pools,
            tags.h2("Transfers in flight"),
            transfers,
            *transfer_note,
            tags.p(tags.a("metrics", href="/metrics"), " · ", tags.a("boots as JSON", href="/api/boots"),
                   class_="none")))


def render_status(runtime, trail) -> bytes:
    """The page as bytes (the tree has no Deferreds, so this is synchronous)."""
    out = []
    flattenString(None, status_tree(runtime, trail)).addCallback(out.append)
    return b"<!DOCTYPE html>\n" + out[0]


class StatusPage(Resource):
    isLeaf = True

    def __init__(self, runtime, trail):
        Resource.__init__(self)
        self.runtime = runtime
        self.trail = trail

    def render_GET(self, request):
        if request.postpath not in ([], [b""]):
            request.setResponseCode(404)
            return b"not found\n"
        body = render_status(self.runtime, self.trail)
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        request.setHeader(b"content-security-policy",
                          b"default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'")
        request.setHeader(b"x-content-type-options", b"nosniff")
        request.setHeader(b"cache-control", b"no-store")
        return body

