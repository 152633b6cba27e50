"""
python -m ownsocket trail MAC: the recent boots of one machine, asked of the
running server's admin listener.

Where the listener is: --admin URL, or the [admin] section of --config
FILE, or http://127.0.0.1:9067.  Only the standard library is used: this
runs on the server host, often over ssh, and must not need Twisted's
reactor.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

DEFAULT_URL = "http://127.0.0.1:9067"


class TrailError(Exception):
    """One line for the person at the terminal."""


def build_parser():
    parser = argparse.ArgumentParser(
        prog="ownsocket trail",
        description="Show the recent boots of one machine, phase by phase, from the running server.")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--admin", metavar="URL", help=f"the admin listener (default {DEFAULT_URL})")
    where.add_argument("--config", "-c", metavar="FILE", help="take the admin listener from this config's [admin]")
    parser.add_argument("--json", action="store_true", help="print the server's JSON as it is")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the server (default 5)")
    parser.add_argument("mac", help="the machine's MAC address (or its IP address)")
    return parser


def url_from_config(path):
    """http://HOST:PORT of the admin listener that FILE configures."""
    from ownsocket import config as configuration
    try:
        config = configuration.load(path)
    except configuration.ConfigError as error:
        raise TrailError(str(error)) from None
    admin = getattr(config, "admin", None)
    if admin is None:
        return DEFAULT_URL
    if not getattr(admin, "enabled", True):
        raise TrailError(f"{path}: [admin] enabled = false: the server has no admin listener to ask")
    hosts = [str(a) for a in getattr(admin, "addresses", ())]
    host = next((h for h in hosts if h not in ("", "0.0.0.0", "::")), "127.0.0.1")
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{getattr(admin, 'port', 9067)}"


def fetch(base, mac, timeout):
    url = base.rstrip("/") + "/api/boots/" + urllib.parse.quote(mac, safe="")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            body = response.read()
    except urllib.error.HTTPError as error:
        body = error.read()
        try:
            message = json.loads(body).get("error")
        except (ValueError, AttributeError):
            message = None
        if error.code == 404 and message:
            raise TrailError(message) from None
        raise TrailError(f"{url}: HTTP {error.code} {message or error.reason}") from None
    except urllib.error.URLError as error:
        reason = getattr(error.reason, "strerror", None) or str(error.reason)
        raise TrailError(f"cannot reach the admin listener at {base} ({reason}): is ownsocket running "
                         f"with [admin] enabled, and is this the right address (--admin URL)?") from None
    except (OSError, ValueError) as error:
        raise TrailError(f"cannot reach the admin listener at {base} ({error})") from None
    try:
        return json.loads(body)
    except ValueError:
        raise TrailError(f"{url} did not answer with JSON: is this ownsocket's admin listener?") from None


def _when(timestamp):
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(timestamp)) + " UTC"
    except (TypeError, ValueError, OverflowError, OSError):
        return "?"


def render(data):
    """The trail as text: one block per boot, newest first."""
    lines = []
    who = data.get("mac") or f"{data.get('peer')} (MAC unknown)"
    for boot in data.get("boots", []):
        outcome = boot.get("outcome") or "booting"
        head = f"{who} boot #{boot.get('boot')}: {outcome} after {boot.get('elapsed', 0):.1f} s"
        if boot.get("summary"):
            head += f": {boot['summary']}"
        lines.append(head)
        details = [f"started {_when(boot.get('started'))}"]
        for key, label in (("address", "address"), ("arch", "arch"), ("firmware", "firmware"),
                           ("stage", "stage"), ("file", "file")):
            if boot.get(key):
                details.append(f"{label} {boot[key]}")
        lines.append("  " + ", ".join(details))
        phases = boot.get("phases") or []
        if phases:
            lines.append("  phases: " + ", ".join(
                f"{p['phase']} at +{p['since_start']:.3f} s ({p['seconds']:.3f} s)" for p in phases))
        phase = None
        for event in boot.get("events", []):
            if event.get("phase") != phase:
                phase = event.get("phase")
                lines.append(f"  [{phase}]")
            lines.append(f"    +{event['since_start']:8.3f} s (+{event['since_previous']:.3f})  "
                         f"{event.get('service', '?'):5} {event.get('text', '')}")
        if boot.get("events_dropped"):
            lines.append(f"    ({boot['events_dropped']} events in the middle were not kept)")
        lines.append("")
    return "\n".join(lines)


def main(argv=None, out=None, err=None):
    out = out or sys.stdout
    err = err or sys.stderr
    args = build_parser().parse_args(argv)
    try:
        base = args.admin or (url_from_config(args.config) if args.config else DEFAULT_URL)
        if not base.startswith(("http://", "https://")):
            base = "http://" + base
        data = fetch(base, args.mac, args.timeout)
    except TrailError as error:
        print(f"ownsocket trail: {error}", file=err)
        return 1
    if args.json:
        out.write(json.dumps(data, indent=1) + "\n")
    else:
        out.write(render(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
