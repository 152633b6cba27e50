"""
Free-address bookkeeping for one subnet.

Finding a free address by scanning the pool costs one check per held address;
under a flood of DISCOVERs from random MACs that scan would run on every
packet once the pool fills.  A set of free addresses plus an ordered record of
outstanding offers makes allocation O(1), and lets the oldest offer be reused
when nothing else is left, so a flood delays real clients instead of starving
them.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from typing import Iterable, Optional, Set

IPv4 = ipaddress.IPv4Address


class AddressPool:
    def __init__(self, subnet, reserved: Iterable[IPv4] = ()):
        self.subnet = subnet
        self._reserved: Set[IPv4] = set(reserved)
        # Integers, not IPv4Address objects: their hash is that of a string,
        # which Python randomises per process, and allocation order should
        # not change from one run to the next.
        self._free: Set[int] = set()
        for pool in subnet.pools:
            for address in pool.addresses():
                if address not in self._reserved:
                    self._free.add(int(address))
        self._offers: "OrderedDict[IPv4, str]" = OrderedDict()
        self.size = len(self._free)

    def __contains__(self, address: IPv4) -> bool:
        return self.subnet.in_pool(address) and address not in self._reserved

    @property
    def free_count(self) -> int:
        return len(self._free)

    def is_free(self, address: IPv4) -> bool:
        return int(address) in self._free

    def take(self, address: Optional[IPv4] = None) -> Optional[IPv4]:
        """Take C{address} if it is free, else any free address, else None."""
        if address is not None:
            value = int(address)
            if value in self._free:
                self._free.discard(value)
                return address
            return None
        if self._free:
            return IPv4(self._free.pop())
        return None

    def claim(self, address: IPv4) -> None:
        """Mark an address used without asking (a lease loaded at start-up)."""
        self._free.discard(int(address))

    def give_back(self, address: IPv4) -> None:
        self._offers.pop(address, None)
        if address in self:
            self._free.add(int(address))

    def note_offer(self, address: IPv4, mac: str) -> None:
        if address not in self:
            return  # a reservation is never lent to someone else
        self._offers.pop(address, None)
        self._offers[address] = mac

    def settle_offer(self, address: IPv4) -> None:
        self._offers.pop(address, None)

    def oldest_offer(self) -> Optional[IPv4]:
        for address in self._offers:
            return address
        return None
