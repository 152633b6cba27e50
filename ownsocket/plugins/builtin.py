"""
The built-in selectors, offered as twisted.plugin factories.

They are found exactly as a site's own plugins are (getPlugins over
ownsocket.plugins), so the plugin path is exercised on every start-up, not
only by sites that write plugins.
"""

from __future__ import annotations

import re

from zope.interface import implementer
from twisted.plugin import IPlugin

from ownsocket.boot import selectors
from ownsocket.interfaces import ISelectorFactory, SettingError

_MAC_PREFIX = re.compile(r"^[0-9a-f]{2}([:-][0-9a-f]{2}){0,5}$")


def _no_settings(name, settings):
    for key in settings:
        raise SettingError(key, f"unknown key: the {name!r} selector takes its settings from "
                                f"{'[host:NAME] sections' if name == 'host' else '[boot]'}")


def _allowed(settings, keys, prefixes=()):
    for key in settings:
        if key not in keys and not key.startswith(tuple(prefixes)):
            shown = ", ".join(sorted(keys) + [prefix + "N" for prefix in prefixes])
            raise SettingError(key, f"unknown key (known keys: {shown})")


@implementer(IPlugin, ISelectorFactory)
class _Factory:
    def __init__(self, name, build):
        self.name = name
        self._build = build

    def build(self, settings, context):
        return self._build(settings, context)

    def __repr__(self):
        return f"<built-in selector factory {self.name!r}>"


def _host(settings, context):
    _no_settings("host", settings)
    return selectors.HostSelector(context.config.hosts)


def _arch(settings, context):
    _no_settings("arch", settings)
    boot = context.config.boot
    return selectors.ArchTableSelector(dict(boot.arch), boot.default, boot.next_server, boot.sname)


def _mac(settings, context):
    table = {}
    for key, filename in settings.items():
        prefix = key.strip().lower().rstrip(":*").replace("-", ":")
        if not _MAC_PREFIX.match(prefix):
            raise SettingError(key, "is not a MAC address or prefix such as 52:54:00 or 52:54:00:12:34:56")
        if not filename:
            raise SettingError(key, "needs a boot file name")
        table[prefix] = filename
    return selectors.MacSelector(table)


def _vendor(settings, context):
    patterns = []
    for key, filename in settings.items():
        if not filename:
            raise SettingError(key, "needs a boot file name")
        patterns.append((key, filename))
    return selectors.VendorClassSelector(patterns)


def _ipxe(settings, context):
    _allowed(settings, {"script", "mode", "remember"})
    mode = settings.get("mode", "stateful").strip().lower()
    if mode not in ("stateful", "stateless"):
        raise SettingError("mode", f"{mode!r} is neither stateful nor stateless")
    try:
        remember = float(settings.get("remember", "300"))
    except ValueError:
        raise SettingError("remember", f"{settings['remember']!r} is not a number of seconds") from None
    if remember <= 0:
        raise SettingError("remember", "must be positive")
    return selectors.IpxeChainSelector(settings.get("script") or None, stateful=(mode == "stateful"),
                                       remember=remember, clock=context.clock)


def _uefi_http(settings, context):
    _allowed(settings, {"base_url"}, prefixes=("arch.",))
    urls = {}
    for key, url in settings.items():
        if key.startswith("arch."):
            try:
                code = int(key[len("arch."):])
            except ValueError:
                raise SettingError(key, "the architecture must be a number from option 93") from None
            if not url.lower().startswith(("http://", "https://")):
                raise SettingError(key, f"{url!r} is not an http:// or https:// URL")
            urls[code] = url
    base_url = settings.get("base_url")
    http = context.config.http
    if base_url is None and http.enabled:
        port = "" if http.port == 80 else f":{http.port}"
        base_url = f"http://@server@{port}/"
    if base_url is not None and not base_url.lower().startswith(("http://", "https://")):
        raise SettingError("base_url", f"{base_url!r} is not an http:// or https:// URL")
    boot = context.config.boot
    return selectors.UefiHttpSelector(urls, base_url, dict(boot.arch), boot.default)


def _rpi(settings, context):
    _allowed(settings, {"tftp_server", "ouis"})
    ouis = selectors.RASPBERRY_PI_OUIS
    if "ouis" in settings:
        ouis = tuple(part.strip().lower() for part in re.split(r"[,\s]+", settings["ouis"]) if part.strip())
        for oui in ouis:
            if not re.match(r"^[0-9a-f]{2}(:[0-9a-f]{2}){2}$", oui):
                raise SettingError("ouis", f"{oui!r} is not an OUI such as b8:27:eb")
    return selectors.RaspberryPiSelector(ouis, settings.get("tftp_server") or None)


host = _Factory("host", _host)
mac = _Factory("mac", _mac)
arch = _Factory("arch", _arch)
vendor = _Factory("vendor", _vendor)
ipxe = _Factory("ipxe", _ipxe)
uefi_http = _Factory("uefi-http", _uefi_http)
rpi = _Factory("rpi", _rpi)


def _template(settings, context):
    import os
    from ownsocket.boot import templates
    # Template files are found next to the config, so a config and its
    # templates can be moved (or shipped as an example) together.
    source = context.config.source
    base = os.path.dirname(os.path.abspath(source)) if os.path.isfile(source) else os.getcwd()
    return templates.build(settings, context.config.hosts, SettingError, base=base)


template = _Factory("template", _template)
