"""
The last DHCP request of each client, by the address it was given.

TFTP and HTTP only see a peer address; a file backend that renders per-client
content (an iPXE script per MAC) needs the DHCP facts behind that address.
"""

from collections import OrderedDict


class RecentRequests:
    """A bounded map address -> BootRequest; the oldest entries fall out."""

    def __init__(self, limit=65536):
        self._limit = limit
        self._by_address = OrderedDict()

    def remember(self, address, request):
        key = str(address)
        self._by_address.pop(key, None)
        self._by_address[key] = request
        while len(self._by_address) > self._limit:
            self._by_address.popitem(last=False)

    def get(self, address):
        return self._by_address.get(str(address))
