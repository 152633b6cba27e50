"""
The admin listener: Prometheus metrics, the per-boot trail (JSON) and the
status page, on their own TCP port apart from the boot services.

C{make_admin_service(runtime)} is the one entry point the server uses.
"""


def make_admin_service(runtime):
    """A Twisted service listening on C{runtime.config.admin} (see L{ownsocket.admin.service})."""
    from ownsocket.admin.service import make_admin_service as make
    return make(runtime)


__all__ = ["make_admin_service"]
