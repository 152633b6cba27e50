"""
Turning [boot] selectors = ... into a checked chain, at start-up.

A selector is named by a plugin name (found with twisted.plugin in the
C{ownsocket.plugins} package, which a site extends by dropping a module into
any C{ownsocket/plugins} directory on sys.path) or by a dotted Python path.
Everything is imported, built and checked with verifyObject here, so a typo,
a missing module or a plugin that does not honour the interface stops
start-up with a line naming it instead of failing at the first boot.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Tuple

from twisted.plugin import getPlugins
from twisted.python.modules import getModule
from twisted.python.reflect import namedAny
from zope.interface.exceptions import Invalid
from zope.interface.verify import verifyObject

from ownsocket.config import Config, ConfigError
from ownsocket.interfaces import IBootFileSelector, ISelectorFactory, SettingError

__all__ = ["SettingError", "SelectorContext", "load_selectors", "available_plugins",
           "check_plugin_modules"]


@dataclass(frozen=True)
class SelectorContext:
    """What a factory may look at while building its selector."""

    config: Config
    clock: object


def _plugin_package():
    import ownsocket.plugins
    return ownsocket.plugins


def check_plugin_modules(source: str) -> None:
    """
    Import every module of the plugin package first: twisted.plugin logs an
    import error and carries on, which would turn a broken plugin into a
    confusing "unknown selector" later.
    """
    package = _plugin_package()
    for module in getModule(package.__name__).iterModules():
        try:
            module.load()
        except Exception as error:
            raise ConfigError(source, "boot", "selectors",
                              f"plugin module {module.name} ({module.filePath.path}) cannot be imported: "
                              f"{type(error).__name__}: {error}") from None


def available_plugins() -> Tuple[Dict[str, object], Dict[str, object]]:
    package = _plugin_package()
    factories = {factory.name: factory for factory in getPlugins(ISelectorFactory, package)}
    selectors = {selector.name: selector for selector in getPlugins(IBootFileSelector, package)}
    return factories, selectors


def _build_one(name, config, context, factories, direct):
    settings = config.settings_for(name)
    section = f"selector:{name}"
    if name in factories:
        origin = factories[name]
    elif name in direct:
        origin = direct[name]
    elif "." in name:
        try:
            origin = namedAny(name)
        except Exception as error:
            raise ConfigError(config.source, "boot", "selectors",
                              f"selector {name!r} cannot be imported: {type(error).__name__}: {error}") from None
    else:
        known = ", ".join(sorted(set(factories) | set(direct)))
        raise ConfigError(config.source, "boot", "selectors",
                          f"unknown selector {name!r} (known: {known}; or a dotted path such as mysite.selectors.Inventory)")
    try:
        if ISelectorFactory.providedBy(origin):
            selector = origin.build(settings, context)
        elif IBootFileSelector.providedBy(origin):
            if settings:
                raise SettingError(next(iter(settings)), f"selector {name!r} takes no settings")
            selector = origin
        elif callable(origin):
            selector = origin(settings, context)
        else:
            raise ConfigError(config.source, "boot", "selectors",
                              f"{name!r} is neither a selector, a selector factory nor a callable")
    except SettingError as error:
        raise ConfigError(config.source, section, error.key, str(error)) from None
    except ConfigError:
        raise
    except Exception as error:
        raise ConfigError(config.source, "boot", "selectors",
                          f"selector {name!r} failed to start: {type(error).__name__}: {error}") from None
    try:
        verifyObject(IBootFileSelector, selector)
    except Invalid as error:
        summary = " ".join(str(error).split())
        raise ConfigError(config.source, "boot", "selectors",
                          f"selector {name!r} does not provide IBootFileSelector: {summary}") from None
    return selector


def load_selectors(config: Config, clock) -> List[object]:
    """The configured selectors, built and verified, in chain order."""
    check_plugin_modules(config.source)
    factories, direct = available_plugins()
    context = SelectorContext(config=config, clock=clock)
    names = config.boot.selectors
    if not names:
        raise ConfigError(config.source, "boot", "selectors", "names no selector")
    for section_name, _ in config.selector_settings:
        if section_name not in names:
            raise ConfigError(config.source, f"selector:{section_name}", None,
                              f"{section_name!r} is not listed in [boot] selectors")
    seen = set()
    selectors = []
    for name in names:
        if name in seen:
            raise ConfigError(config.source, "boot", "selectors", f"{name!r} is listed twice")
        seen.add(name)
        selectors.append(_build_one(name, config, context, factories, direct))
    return selectors

