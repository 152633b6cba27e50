"""
Selector plugins found with twisted.plugin.

Extending __path__ lets a site drop its own plugin modules into any
C{ownsocket/plugins} directory on sys.path, as Twisted does for twisted.plugins.
"""

from twisted.plugin import pluginPackagePaths

__path__.extend(pluginPackagePaths(__name__))
__all__ = []
