"""
python -m ownsocket.plugincache: write twisted.plugin's dropin caches.

twistd finds its plugins (and ownsocket its selector plugins) by scanning
their directories and remembers the result in a C{dropin.cache} next to
them, rewriting it whenever a module is newer.  Under systemd's
ProtectSystem=strict the installation is read-only, so every start would
log "Unable to write to plugin cache" and scan again; the unit runs this
first, with the rights to write, so the caches are fresh after an upgrade.
"""

from __future__ import annotations

import os
import sys

from twisted.plugin import IPlugin, getPlugins


def main() -> int:
    import twisted.plugins

    import ownsocket.plugins
    for package in (twisted.plugins, ownsocket.plugins):
        list(getPlugins(IPlugin, package))
        # written under the unit's UMask=0077; the service's own user must
        # be able to read it, or it tries (and fails) to write it again
        for directory in package.__path__:
            cache = os.path.join(directory, "dropin.cache")
            if os.path.exists(cache) and os.access(cache, os.W_OK):
                os.chmod(cache, 0o644)
    return 0


if __name__ == "__main__":
    sys.exit(main())
