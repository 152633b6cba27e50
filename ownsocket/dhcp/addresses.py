"""
The one owner of "which address belongs to whom until when".

The message policy (L{ownsocket.dhcp.server}) asks this unit to offer, bind,
release or decline and never touches a pool, an expiry heap or the store
itself.  Every change is settled by the store (a compare-and-set on the
address's row: SQLite for one server, PostgreSQL for several); what this
unit keeps in memory is a hint of which addresses look free, so a DISCOVER
usually costs one claim.  A hint that is wrong costs a retry, never a
duplicate: losing a claim marks the address used and the next candidate is
tried.

With a store that other servers share (C{store.shared}), the hint is
refreshed from the store now and then (L{resync}), because addresses other
servers gave or freed do not pass through here.
"""

from __future__ import annotations

import heapq
import ipaddress
from typing import Dict, List, Optional, Tuple

from twisted.internet import defer
from twisted.logger import Logger

from ownsocket.dhcp.leases import BOUND, DECLINED, FOREVER, OFFERED, Lease, LeaseStoreUnavailable
from ownsocket.dhcp.pool import AddressPool

IPv4 = ipaddress.IPv4Address

#: Claims tried per DISCOVER before the pool counts as exhausted: each round
#: proposes a few candidates and marks those lost to other servers as used.
ROUNDS = 3
CANDIDATES = 4


class Addresses:
    """
    @param config: the L{ownsocket.config.Config} (subnets, reservations).
    @param store: an asynchronous L{ILeaseStore}.
    @param clock: anything with C{seconds()}.
    """

    log = Logger()

    def __init__(self, config, store, clock):
        self.store = store
        #: True once the hint was filled from the store (load or refresh)
        self.synced = False
        self.clock = clock
        self._leases: Dict[IPv4, Lease] = {}  # what we last saw of each address
        self._expiries: List[Tuple[float, int, IPv4]] = []
        #: where the last look at a shared store's changes ended (its clock)
        self._changes_mark = None
        self.configure(config)

    # -- configuration and the hint ------------------------------------------

    def configure(self, config):
        """Take a new config's subnets (by name) and reservations.  Leases of
        a subnet that is gone stay in the store until they lapse."""
        reserved = {host.address for host in config.hosts if host.address}
        self.subnets = {subnet.name: subnet for subnet in config.subnets}
        old_pools = getattr(self, "pools", {})
        pools: Dict[str, AddressPool] = {}
        rebuilt = False
        for subnet in config.subnets:
            pool = old_pools.get(subnet.name)
            if (pool is not None and pool.subnet.network == subnet.network
                    and pool.subnet.pools == subnet.pools and pool.reserved == reserved):
                # A reload that leaves this pool as it was keeps its hint:
                # rebuilding 64k addresses and re-marking every lease held
                # the reactor for ~0.5 s, long enough for a boot storm's
                # packets to overflow the socket (drops caused by reloads).
                pool.subnet = subnet
            else:
                pool = AddressPool(subnet, reserved)
                rebuilt = True
            pools[subnet.name] = pool
        self.pools = pools
        if rebuilt:
            now = self.clock.seconds()
            for lease in self._leases.values():
                self._mark(lease, now)

    def load(self):
        """Fill the hint from the store: a Deferred that fires when done.

        A database that cannot be reached at start-up is not an error of
        its own: the store has said so in its one line about the outage,
        the store decides every claim meanwhile, and the hint is filled at
        the next refresh (L{synced} stays False until then)."""
        d = self.store.all_leases().addCallback(self.resync)
        d.addErrback(self._unreachable_at_start)
        return d

    @staticmethod
    def _unreachable_at_start(failure):
        failure.trap(LeaseStoreUnavailable)
        return None

    def resync(self, leases):
        """Make the hint what the store says (every row, lapsed ones too).
        Done in bulk: with 100,000 leases this runs on the reactor thread."""
        self.synced = True
        now = self.clock.seconds()
        self._leases = {lease.address: lease for lease in leases}
        self._expiries = [(lease.expires, int(lease.address), lease.address) for lease in leases
                          if lease.expires != FOREVER and lease.active(now)]
        heapq.heapify(self._expiries)
        per_pool = {name: ([], [], []) for name in self.pools}
        for lease in leases:
            name = lease.subnet if lease.subnet in per_pool else self._subnet_name(lease.address)
            if name is None or name not in per_pool:
                continue
            used, lapsed, offers = per_pool[name]
            if lease.active(now):
                used.append(int(lease.address))
                if lease.state == OFFERED:
                    offers.append((lease.expires, lease.address, lease.mac))
            elif lease.state == BOUND:
                lapsed.append(int(lease.address))
        for name, (used, lapsed, offers) in per_pool.items():
            offers.sort()
            self.pools[name].reset(used, lapsed, [(address, mac) for _, address, mac in offers])
        return self

    def pool(self, subnet_name) -> AddressPool:
        return self.pools[subnet_name]

    def in_pool(self, subnet, address) -> bool:
        return address in self.pools[subnet.name]

    def counts(self):
        """{(subnet name, state): count} for free, offered, bound, declined."""
        now = self.clock.seconds()
        counts = {}
        for name, pool in self.pools.items():
            counts[(name, "free")] = pool.free_count
            for state in (OFFERED, BOUND, DECLINED):
                counts[(name, state)] = 0
        for lease in self._leases.values():
            if lease.active(now):
                name = self._subnet_name(lease.address)
                if name is not None:
                    counts[(name, lease.state)] += 1
        return counts

    def known(self, address) -> Optional[Lease]:
        """The last row seen for C{address} (a hint: for logs and tests)."""
        return self._leases.get(address)

    # -- transitions -------------------------------------------------------------

    def offer(self, mac, subnet, requested=None, hold=30, reserved=None):
        """
        Choose and hold an address for an offer: the client's reservation,
        its current lease, the address it asked for, a new one; when the
        pool is exhausted, the oldest outstanding offer.

        @return: a Deferred of (address, why), address None when none.
        """
        if reserved is not None:
            d = self.store.claim(mac, subnet.name, [reserved], OFFERED, hold)
            return d.addCallback(self._reserved_offer, mac, reserved)
        pool = self.pools[subnet.name]
        first = []
        if requested is not None and requested in pool:
            first.append((requested, "requested by the client (option 50)"))
        # The client's own offer or binding (if still in the pool) is tried
        # before all of these, by the store, in the same round trip.
        return self._claim_rounds(mac, subnet, first, hold, ROUNDS, pool.bounds)

    def _reserved_offer(self, lease, mac, address):
        if lease is None or lease.mac != mac:
            self._lost([address])
            return None, f"reserved address {address} is still held by another client"
        self._see(lease)
        return address, None

    def _claim_rounds(self, mac, subnet, first, hold, rounds, own=None):
        pool = self.pools[subnet.name]
        tries = list(first)
        for address in pool.candidates(mac, CANDIDATES):
            if all(address != a for a, _ in tries):
                tries.append((address, "new address from the pool"))
        addresses = [address for address, _ in tries]
        if not addresses and own is None:
            return self._reuse_oldest_offer(mac, subnet, hold)
        d = self.store.claim(mac, subnet.name, addresses, OFFERED, hold, own=own)

        def claimed(lease):
            if lease is None:
                self._lost(addresses)
                if rounds > 1:
                    return self._claim_rounds(mac, subnet, [], hold, rounds - 1)
                return self._reuse_oldest_offer(mac, subnet, hold)
            before = self._leases.get(lease.address)
            self._see(lease)
            if lease.address not in addresses or (before is not None and before.mac == mac):
                return lease.address, "the client's current lease"
            self._lost(addresses[:addresses.index(lease.address)])
            return lease.address, tries[addresses.index(lease.address)][1]

        return d.addCallback(claimed)

    def _reuse_oldest_offer(self, mac, subnet, hold):
        """A flood must delay real clients, not starve them: take back the
        oldest offer still out (the client it went to may never REQUEST)."""
        pool = self.pools[subnet.name]
        exhausted = (None, f"pool of [subnet:{subnet.name}] exhausted ({pool.size} addresses); no offer")
        victim = pool.oldest_offer()
        if victim is None:
            return exhausted
        address, owner = victim
        pool.settle_offer(address)
        d = self.store.forget(owner, address)
        d.addCallback(lambda _: self.store.claim(mac, subnet.name, [address], OFFERED, hold))

        def claimed(lease):
            if lease is None or lease.mac != mac:
                self._lost([address])
                return exhausted
            self._see(lease)
            return address, f"pool exhausted: reused the oldest outstanding offer ({owner})"

        return d.addCallback(claimed)

    def bind(self, mac, subnet, address, seconds, hostname=None):
        """
        Bind C{address} to C{mac} for C{seconds} (None: for good, BOOTP),
        durably: the Deferred fires after the store has the binding, with
        (lease, "") or (None, why not).
        """
        d = self.store.claim(mac, subnet.name, [address], BOUND, seconds, hostname)

        def claimed(lease):
            if lease is not None and lease.mac == mac:
                self._see(lease)
                return lease, ""
            return self.store.holder(address).addCallback(refused)

        def refused(holder):
            if holder is not None:
                self._see(holder)
                if holder.state == DECLINED:
                    return None, "declined by a client, quarantined"
                return None, f"held by {holder.mac}"
            return None, "lost to another server"

        return d.addCallback(claimed)

    def withdraw(self, mac, subnet):
        """The client chose another server: free our offer (not a binding)."""
        def found(lease):
            if lease is None or lease.state != OFFERED:
                return False
            return self.store.forget(mac, lease.address).addCallback(forgotten, lease.address)

        def forgotten(done, address):
            if done:
                self._gone(address)
            return done

        return self.store.lookup(mac, subnet.name).addCallback(found)

    def release(self, mac, address):
        """The client gives C{address} back: Deferred of True if it held it."""
        def released(done):
            if done:
                self._gone(address)
            return done
        return self.store.release(mac, address).addCallback(released)

    def decline(self, mac, address, seconds):
        """The client found C{address} in use: quarantine it for C{seconds}
        if the client held it.  Deferred of True if it did."""
        def declined(lease):
            if lease is None:
                return False
            self._see(lease)
            return True
        return self.store.decline(mac, address, seconds).addCallback(declined)

    def expire(self):
        """Put addresses whose offer, quarantine or binding ran out back in
        the hint (cheap: called on every request).  The store's rows stay
        until L{reclaim}; a lapsed binding's client may come back for it."""
        now = self.clock.seconds()
        expiries = self._expiries
        while expiries and expiries[0][0] <= now:
            _, _, address = heapq.heappop(expiries)
            lease = self._leases.get(address)
            if lease is None or lease.active(now):
                continue
            if lease.state != BOUND:
                del self._leases[address]
            pool = self._pool_of(address)
            if pool is not None:
                pool.freed(address, lapsed=lease.state == BOUND)

    def reclaim(self, refresh=True):
        """Delete lapsed offers and quarantines from the store.  With a
        shared store, also learn what other servers did: every row when
        C{refresh} (deletions are seen only so), else just the rows changed
        since the last look, where the store can say (C{changed_since}), so
        the hint and the address counts lag by one reclaim round, not by a
        full refresh."""
        d = self.store.reclaim()
        if not getattr(self.store, "shared", False):
            return d
        if refresh:
            d.addCallback(lambda _: self.store.all_leases())
            d.addCallback(self.resync)
        elif getattr(self.store, "changed_since", None) is not None:
            d.addCallback(lambda _: self.store.changed_since(self._changes_mark))
            d.addCallback(self._changed)
        return d

    def _changed(self, result):
        leases, self._changes_mark = result
        for lease in leases:
            self._see(lease)
        return len(leases)

    # -- the hint ----------------------------------------------------------------

    def _see(self, lease):
        self._leases[lease.address] = lease
        now = self.clock.seconds()
        self._mark(lease, now)
        if lease.expires != FOREVER and lease.active(now):
            heapq.heappush(self._expiries, (lease.expires, int(lease.address), lease.address))

    def _mark(self, lease, now):
        pool = self._pool_of(lease.address, lease.subnet)
        if pool is None:
            return
        if lease.active(now):
            pool.used(lease.address)
            if lease.state == OFFERED:
                pool.note_offer(lease.address, lease.mac)
            else:
                pool.settle_offer(lease.address)
        else:
            pool.freed(lease.address, lapsed=lease.state == BOUND)

    def _gone(self, address):
        self._leases.pop(address, None)
        pool = self._pool_of(address)
        if pool is not None:
            pool.freed(address)

    def _lost(self, addresses):
        """Someone else holds these (a claim on them failed)."""
        for address in addresses:
            pool = self._pool_of(address)
            if pool is not None:
                pool.used(address)

    def _pool_of(self, address, subnet=None):
        pool = self.pools.get(subnet)
        if pool is not None and address in pool.subnet.network:
            return pool
        for pool in self.pools.values():
            if address in pool.subnet.network:
                return pool
        return None

    def _subnet_name(self, address):
        for name, subnet in self.subnets.items():
            if address in subnet.network:
                return name
        return None
