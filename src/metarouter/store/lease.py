"""Budget leases: a limited key's holds served from memory while its budget is far from its limit.

Holding a request's worst case in the store costs a transaction before the request and a hold to settle after it.
Instead, a process holds a *lease* on a key: one hold in the store (the process's row of ``reservations`` for that
key), taken a chunk at a time, from which the holds of its requests are served in memory. A request's record
settles its hold against that same row, in the record's own transaction, exactly as before; a hold given back
without a record (a failed attempt) returns to the lease, not to the store.

Every guarantee of a hold per request stays:

- **Never past the limit.** The store only grants a chunk that the key and the account can cover, and requests
  hold no more than the chunks granted: the sum of what requests hold never exceeds what the store holds for them.
- **Exact near the limit.** A chunk is only granted while the key would keep ``spare`` times as much free for the
  other processes (and the account likewise). Nearer its limit a key's requests are held one by one in the store,
  and what they give back goes back to the store at once; a lease that sees its key near the limit, or that is
  idle for ``idle`` seconds, gives back what it does not use, and so does every :meth:`BudgetLeases.flush`.
- **Dead instances.** A lease is a hold of its process's store instance: when that instance's lease runs out (or its
  process dies) it is reclaimed with the rest. A process serves from its leases only while its instance's lease is
  surely alive (renewed within half of its length), else per request from the store.
- **What a key shows.** ``get_key`` and ``list_keys`` count as held what requests hold: this process's unused
  lease is left out (other processes' are given back within seconds, and by their ``flush``).
- **Limits that change.** A key's limit lowered through this process takes effect at once (its lease is given
  back); through another replica, within ``view_ttl`` seconds (when this one next reads the key).
- **Budgets that reset.** With a ``limit_reset`` the store grants a chunk only out of the current period's
  remaining budget (the period rolled over in the same transaction), so a lease never holds more than that; a
  record of the key cached here is read afresh once its period has ended, so the new period's budget is seen
  at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from typing import Any

from .base import KeyRecord, Store

log = logging.getLogger("metarouter.store")

#: a top-up holds room for this many more holds like the one that asked for it (or for as much as requests hold
#: at the time, when that is more)
LEASE_HOLDS = 32
#: ... and is granted only if the key (and the account) would keep this many times the top-up free afterwards
LEASE_SPARE = 4
#: seconds a key's record may be served from memory while a lease covers it (a limit changed elsewhere binds then)
VIEW_TTL = 1.0
#: seconds after which a lease nobody used gives back what it does not use
IDLE = 1.0


class _Lease:
    """One key's lease in this process: ``granted`` of the store's hold is the lease's, ``in_use`` of it is held
    by requests; ``keep`` whether unused budget may stay (False near the limit)."""

    __slots__ = ("granted", "in_use", "taken", "keep", "view", "view_at", "used_at", "refused_at", "lock", "refill")

    def __init__(self) -> None:
        self.granted = 0
        self.in_use = 0
        self.taken = 0  # what requests took from the lease since its last top-up
        self.keep = False
        self.view: KeyRecord | None = None
        self.view_at = float("-inf")
        self.used_at = time.monotonic()
        self.refused_at = float("-inf")  # when the store last refused a top-up (none is tried for ``idle`` then)
        self.lock = asyncio.Lock()
        self.refill: asyncio.Task | None = None  # a top-up in the background, before the lease runs dry

    @property
    def free(self) -> int:
        return self.granted - self.in_use


class BudgetLeases:
    """A store whose ``reserve``/``release``/``record_generation`` serve a key's holds from a per-process lease of
    its budget where that budget is far from its limit; everything else is the wrapped store's."""

    def __init__(self, store: Store, *, holds: int = LEASE_HOLDS, spare: int = LEASE_SPARE,
                 view_ttl: float = VIEW_TTL, idle: float = IDLE):
        self.store = store
        self.holds, self.spare, self.view_ttl, self.idle = holds, spare, view_ttl, idle
        self._leases: dict[str, _Lease] = {}
        self._ticker: asyncio.Task | None = None
        #: a key's re-read in flight: the requests that find its view stale meanwhile wait for it (one store read
        #: per key per ``view_ttl``, not one per request that arrives before the first read returns)
        self._reads: dict[str, asyncio.Task] = {}

    def __getattr__(self, name: str) -> Any:  # the rest of the Store interface (and a backend's attributes)
        return getattr(self.store, name)

    @property
    def clock(self) -> Any:
        """The wrapped store's clock (setting it sets the store's: tests move time)."""
        return self.store.clock

    @clock.setter
    def clock(self, fn: Any) -> None:
        self.store.clock = fn

    # --- lifecycle -------------------------------------------------------------------------------------------
    async def open(self) -> None:
        await self.store.open()

    async def close(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
            self._ticker = None
        refills = [lease.refill for lease in self._leases.values() if lease.refill is not None]
        await asyncio.gather(*refills, return_exceptions=True)
        await self.give_back()
        await self.store.close()

    async def flush(self) -> None:
        """Every queued record written, and every lease's unused budget given back: what the store then says of a
        key's holds is what requests in flight hold."""
        await self.store.flush()
        await self.give_back()

    async def give_back(self) -> None:
        """Give back the unused part of every lease."""
        for key_id, lease in list(self._leases.items()):
            await self._give_back(key_id, lease)

    # --- keys ------------------------------------------------------------------------------------------------
    async def budget_view(self, key_id: str) -> KeyRecord | None:
        """The key as a budget decision needs it: from the store, or, while a lease covers the key, a record up to
        ``view_ttl`` seconds old (and of the current period)."""
        lease = self._leases.get(key_id)
        now = time.monotonic()
        if (lease is not None and lease.keep and lease.view is not None and now - lease.view_at < self.view_ttl
                and lease.view.as_of(self.clock()) is lease.view):
            return lease.view
        read = self._reads.get(key_id)
        if read is None:
            read = self._reads[key_id] = asyncio.ensure_future(self._read_view(key_id, now))
            read.add_done_callback(lambda t, k=key_id: self._reads.pop(k, None) if self._reads.get(k) is t else None)
        return await asyncio.shield(read)  # a waiter that is cancelled leaves the read to the others

    async def _read_view(self, key_id: str, now: float) -> KeyRecord | None:
        view = await self.store.get_key(key_id)
        lease = self._leases.get(key_id)
        if lease is not None:
            if lease.view is not None and (view is None or view.disabled or view.limit_pico != lease.view.limit_pico
                                           or view.limit_reset != lease.view.limit_reset):
                lease.keep = False  # the key changed: no budget stays idle until it is looked at afresh
                await self._give_back(key_id, lease)
            lease.view, lease.view_at = view, now
        elif view is not None:
            lease = self._leases[key_id] = _Lease()
            lease.view, lease.view_at = view, now
        return view

    async def get_key(self, public_id: str) -> KeyRecord | None:
        return self._as_held(await self.store.get_key(public_id))

    async def list_keys(self) -> list[KeyRecord]:
        return [self._as_held(k) for k in await self.store.list_keys()]

    def _as_held(self, rec: KeyRecord | None) -> KeyRecord | None:
        """``rec`` with what this process's lease holds unused taken out of its holds: what it says is held is
        what requests hold (and the unused parts of other processes' leases, given back within seconds)."""
        lease = self._leases.get(rec.public_id) if rec is not None else None
        if lease is None or lease.free <= 0:
            return rec
        return dataclasses.replace(rec, reserved_pico=max(0, rec.reserved_pico - lease.free))

    async def update_key(self, public_id: str, **fields: Any) -> KeyRecord | None:
        lease = self._leases.get(public_id)
        self._reads.pop(public_id, None)  # a read begun before the change: requests from now on read afresh
        if lease is not None:  # the key changes: its lease goes back first (a lowered limit binds at once)
            lease.keep, lease.view = False, None
            await self._give_back(public_id, lease)
        return self._as_held(await self.store.update_key(public_id, **fields))

    # --- money -----------------------------------------------------------------------------------------------
    async def reserve(self, key_id: str, amount_pico: int, *, spare_pico: int = 0) -> bool:
        amount = int(amount_pico)
        if amount <= 0 or spare_pico:
            return await self.store.reserve(key_id, amount, spare_pico=spare_pico)
        lease = self._leases.get(key_id)
        if lease is None:
            lease = self._leases[key_id] = _Lease()
        live = self._live()
        if live and lease.free >= amount:  # the common case: no round trip
            return self._take(key_id, lease, amount)
        if live and self._far(lease.view, amount) and time.monotonic() - lease.refused_at >= self.idle:
            async with lease.lock:  # one top-up at a time: those who waited find the lease topped up
                if self._live() and lease.free >= amount:
                    return self._take(key_id, lease, amount)
                if await self._hold(key_id, lease, amount, self._chunk(lease, amount), spare=True):
                    lease.keep = True
                    self._start_ticker()
                    return True
                lease.refused_at = time.monotonic()
        # near the limit (or the account's): this request's hold alone, from the store, with what the lease has
        # left (if its instance is alive: else that goes back); nothing stays idle from now on
        lease.keep = False
        if not live:
            await self._give_back(key_id, lease)
        return await self._hold(key_id, lease, amount, 0, spare=False)

    def _take(self, key_id: str, lease: _Lease, amount: int) -> bool:
        """Hold ``amount`` from what the lease has free; with less than half a top-up left, top it up in the
        background."""
        lease.in_use += amount
        lease.taken += amount
        lease.used_at = time.monotonic()
        if lease.keep and lease.refill is None and lease.free < self._chunk(lease, amount) // 2:
            lease.refill = asyncio.get_running_loop().create_task(self._refill(key_id, lease, amount))
        return True

    async def _refill(self, key_id: str, lease: _Lease, amount: int) -> None:
        """Top the lease up by a chunk while it still has half of one: requests need not wait for it."""
        try:
            async with lease.lock:
                want = self._chunk(lease, amount)
                if not lease.keep or not self._live() or lease.free >= want // 2:
                    return
                if await self.store.reserve(key_id, want, spare_pico=self.spare * want):
                    lease.granted += want
                    lease.taken = 0
                else:  # near the limit: what is left is used, then requests are held one by one
                    lease.keep, lease.refused_at = False, time.monotonic()
        except Exception:  # the store is away: requests find out for themselves
            log.warning("topping up key %s's budget lease failed", key_id, exc_info=True)
        finally:
            lease.refill = None

    async def _hold(self, key_id: str, lease: _Lease, amount: int, extra: int, *, spare: bool) -> bool:
        """Hold ``amount`` for a request: what the lease has free (claimed before any wait) and the rest, plus
        ``extra`` for the lease, from the store (with ``spare`` times that left free, for a top-up)."""
        own = max(0, min(lease.free, amount)) if self._live() else 0
        lease.in_use += own
        want = amount - own + extra
        try:
            ok = await self.store.reserve(key_id, want, spare_pico=self.spare * want if spare else 0)
        except BaseException:
            lease.in_use -= own
            raise
        if not ok:
            lease.in_use -= own
            return False
        lease.granted += want
        lease.in_use += amount - own
        lease.taken = 0 if extra else lease.taken
        lease.used_at = time.monotonic()
        return True

    async def release(self, key_id: str, amount_pico: int) -> None:
        amount = int(amount_pico)
        lease = self._leases.get(key_id)
        if lease is None or amount <= 0 or lease.in_use < amount:  # not a hold of ours
            await self.store.release(key_id, amount)
            return
        lease.in_use -= amount
        if not lease.keep or not self._live():
            await self._give_back(key_id, lease)

    def record_generation(self, record: dict[str, Any], reserved_pico: int = 0) -> "asyncio.Future[bool] | None":
        """The record settles its hold against this process's row in the store, in its own transaction: the
        lease's share of that row shrinks by the hold, what it has free is unchanged."""
        fut = self.store.record_generation(record, reserved_pico)
        key_id = record.get("key_id")
        lease = self._leases.get(key_id) if key_id and reserved_pico else None
        if lease is not None and lease.in_use >= reserved_pico:
            lease.in_use -= reserved_pico
            lease.granted -= reserved_pico
        return fut

    # --- inside ----------------------------------------------------------------------------------------------
    def _live(self) -> bool:
        """Whether this process's instance lease is surely alive (renewed within half of its length): only then
        are its holds safe from being reclaimed by another instance."""
        renewed = getattr(self.store, "renewed_at", float("-inf"))
        return time.monotonic() < renewed + getattr(self.store, "lease", 0.0) / 2

    def _chunk(self, lease: _Lease, amount: int) -> int:
        """How much a top-up takes: ``holds`` holds of ``amount``, or twice what requests took since the last
        one when that is more (a busy process tops up no more often than an idle one, and in time)."""
        return max(self.holds * amount, 2 * lease.taken)

    def _far(self, view: KeyRecord | None, amount: int) -> bool:
        """Whether a top-up for ``amount`` looks grantable (the store decides; this spares it a refusal)."""
        if view is None or view.disabled:
            return False
        if view.limit_pico is None:
            return True  # only the account's credit applies: the store checks it
        free = view.limit_pico - view.limit_usage_pico - view.reserved_pico
        return free >= (self.holds + 1) * amount * (self.spare + 1)

    async def _give_back(self, key_id: str, lease: _Lease) -> None:
        free = lease.free
        if free <= 0:
            return
        lease.granted -= free
        try:
            await self.store.release(key_id, free)
        except Exception:  # the store is away: the lease keeps it, and gives it back later
            lease.granted += free
            log.warning("could not give back %d picodollars of key %s's lease", free, key_id, exc_info=True)

    def _start_ticker(self) -> None:
        if self._ticker is None or self._ticker.done():
            self._ticker = asyncio.get_running_loop().create_task(self._tick(), name="metarouter-budget-leases")

    async def _tick(self) -> None:
        """Every ``idle`` seconds: leases nobody used since give back what they do not use; forgotten ones go."""
        while True:
            await asyncio.sleep(self.idle)
            now = time.monotonic()
            for key_id, lease in list(self._leases.items()):
                if now - lease.used_at >= self.idle or not self._live():
                    await self._give_back(key_id, lease)
                    if lease.granted == 0 and lease.in_use == 0 and now - lease.used_at >= 60 * self.idle:
                        self._leases.pop(key_id, None)
