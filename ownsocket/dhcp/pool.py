"""
Which addresses of one subnet look free: a hint, never the decision.

The lease store decides who gets an address (a compare-and-set on the
address's row); this pool only proposes candidates, so that a DISCOVER
usually needs one claim.  Under a flood of DISCOVERs from random MACs a scan
over held addresses would run on every packet once the pool fills; a set of
free addresses makes a proposal O(1).

Candidates start at a hash of the client's MAC: a client tends to get the
same address again, and servers sharing one database do not all fight over
the lowest free address.  Addresses whose binding lapsed are proposed only
when nothing else is left, so a client coming back finds its old address.
"""

from __future__ import annotations

import ipaddress
import zlib
from collections import OrderedDict
from itertools import islice
from typing import Iterable, List, Optional, Set

IPv4 = ipaddress.IPv4Address

#: How many neighbours of the hashed start are looked at before any free
#: address will do.
PROBES = 16
#: Then this many addresses spread over the whole pool (strides from the
#: client's hash), before the first free ones in set order: a pool filled in
#: one run from its start (leases imported from a server that hands out the
#: lowest address first) otherwise sent every client whose neighbours were
#: all taken to the same few addresses, and a shared store's claims in one
#: transaction all fought over them (pg_bench --memory: 100,000 leases,
#: half of 2,000 clients had the same first candidate).
SPREAD = 64


class AddressPool:
    def __init__(self, subnet, reserved: Iterable[IPv4] = ()):
        self.subnet = subnet
        self._reserved: Set[IPv4] = set(reserved)
        # Integers, not IPv4Address objects: their hash is that of a string,
        # which Python randomises per process, and allocation order should
        # not change from one run to the next.
        self._all: List[int] = []
        for pool in subnet.pools:
            for address in pool.addresses():
                if address not in self._reserved:
                    self._all.append(int(address))
        self._free: Set[int] = set(self._all)
        self._lapsed: "OrderedDict[int, None]" = OrderedDict()
        self._offers: "OrderedDict[IPv4, str]" = OrderedDict()
        self.size = len(self._all)
        #: (ranges, reserved) for a store's claim(own=...): the client's
        #: own lease counts only while its address is in these ranges
        self.bounds = (tuple((r.first, r.last) for r in subnet.pools), frozenset(self._reserved))

    def reset(self, used: Iterable[int], lapsed: Iterable[int], offers) -> None:
        """Start again from what the store holds (integers; offers as
        (address, mac) oldest first): for a refresh of many leases at once."""
        self._free = set(self._all)
        self._free.difference_update(used)
        self._lapsed = OrderedDict((value, None) for value in lapsed if value in self._free)
        self._free.difference_update(self._lapsed)
        self._offers = OrderedDict((address, mac) for address, mac in offers if address in self)

    def __contains__(self, address: IPv4) -> bool:
        return self.subnet.in_pool(address) and address not in self._reserved

    @property
    def reserved(self) -> Set[IPv4]:
        """The reserved addresses this pool was built without."""
        return self._reserved

    @property
    def free_count(self) -> int:
        return len(self._free) + len(self._lapsed)

    def candidates(self, mac: str, count: int = 4) -> List[IPv4]:
        """Up to C{count} addresses that look free, best first."""
        found: List[int] = []
        if self._free and self.size:
            start = zlib.crc32(mac.encode()) % self.size
            for i in range(min(PROBES, self.size)):
                value = self._all[(start + i) % self.size]
                if value in self._free:
                    found.append(value)
                    if len(found) == count:
                        break
            if len(found) < count and self.size > PROBES:
                # a stride that is odd and about size / golden ratio: visits
                # far-apart addresses, different ones for each client
                stride = (int(self.size * 0.6180339887) | 1) + (start & 0xFFFE)
                for i in range(1, SPREAD + 1):
                    value = self._all[(start + i * stride) % self.size]
                    if value in self._free and value not in found:
                        found.append(value)
                        if len(found) == count:
                            break
            if len(found) < count:
                for value in islice(self._free, count * 2):
                    if value not in found:
                        found.append(value)
                        if len(found) == count:
                            break
        if len(found) < count:
            found.extend(islice(self._lapsed, count - len(found)))
        return [IPv4(value) for value in found]

    def used(self, address: IPv4) -> None:
        """Someone holds C{address} (a claim, a lease seen in the store)."""
        value = int(address)
        self._free.discard(value)
        self._lapsed.pop(value, None)

    def freed(self, address: IPv4, lapsed: bool = False) -> None:
        """C{address} is free again; C{lapsed}: a binding that ran out, whose
        client may still come back for it."""
        self._offers.pop(address, None)
        if address not in self:
            return
        value = int(address)
        if lapsed:
            if value not in self._free:
                self._lapsed[value] = None
        else:
            self._lapsed.pop(value, None)
            self._free.add(value)

    def note_offer(self, address: IPv4, mac: str) -> None:
        if address not in self:
            return  # a reservation is never lent to someone else
        self._offers.pop(address, None)
        self._offers[address] = mac

    def settle_offer(self, address: IPv4) -> None:
        self._offers.pop(address, None)

    def oldest_offer(self):
        """(address, mac) of the oldest offer still out, or None."""
        for address, mac in self._offers.items():
            return address, mac
        return None
