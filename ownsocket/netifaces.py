"""
The names of this host's network interfaces.

C{socket.if_nameindex} is missing on PyPy (7.3 at least), and ownsocket
needs the list both to validate C{interfaces =} in the config and to open one
DHCP socket per interface.  On Linux C{/sys/class/net} holds the same names
(in the current network namespace: sysfs follows the namespace of the
process that mounted it, and C{ip netns exec} remounts it), so that is the
fallback; elsewhere there is none and the caller hears C{OSError}.
"""

import os
import socket

SYS_CLASS_NET = "/sys/class/net"

if_nameindex = getattr(socket, "if_nameindex", None)


def interface_names(sys_class_net=SYS_CLASS_NET):
    """Every interface name, in kernel index order where it is known.

    @raise OSError: the platform can list no interfaces.
    """
    if if_nameindex is not None:
        return [name for _, name in if_nameindex()]
    return sorted(os.listdir(sys_class_net), key=lambda name: (_ifindex(sys_class_net, name), name))


def _ifindex(sys_class_net, name):
    try:
        with open(os.path.join(sys_class_net, name, "ifindex")) as handle:
            return int(handle.read())
    except (OSError, ValueError):
        return 1 << 31
