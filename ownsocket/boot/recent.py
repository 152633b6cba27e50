"""
The last DHCP request of each client, by the address it was given.

TFTP and HTTP only see a peer address; a file backend that renders per-client
content (an iPXE script per MAC), and the stateful iPXE selector, need the
DHCP facts behind that address.  In proxyDHCP mode another server gave the
address, so the request is also kept by MAC and the address is mapped to a
MAC through the kernel's ARP table.
"""

from collections import OrderedDict


def read_arp_table(path="/proc/net/arp"):
    """address -> MAC from the Linux ARP cache ({} elsewhere)."""
    table = {}
    try:
        with open(path, encoding="ascii", errors="replace") as handle:
            next(handle, None)
            for line in handle:
                fields = line.split()
                if len(fields) >= 4 and fields[3] != "00:00:00:00:00:00":
                    table[fields[0]] = fields[3].lower()
    except OSError:
        pass
    return table


class RecentRequests:
    """Bounded maps address -> BootRequest and MAC -> BootRequest."""

    def __init__(self, limit=65536, arp_table=read_arp_table):
        self._limit = limit
        self._by_address = OrderedDict()
        self._by_mac = OrderedDict()
        self._arp_table = arp_table

    def remember(self, address, request):
        self._put(self._by_address, str(address), request)

    def remember_mac(self, request):
        """For proxyDHCP, where the address is not ours to know."""
        self._put(self._by_mac, request.mac, request)

    def _put(self, mapping, key, request):
        mapping.pop(key, None)
        mapping[key] = request
        while len(mapping) > self._limit:
            mapping.popitem(last=False)

    def get(self, address):
        key = str(address)
        request = self._by_address.get(key)
        if request is None and self._by_mac:
            mac = self._arp_table().get(key)
            if mac is not None:
                request = self._by_mac.get(mac)
        return request
