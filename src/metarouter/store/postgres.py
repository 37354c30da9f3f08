"""The shared store: PostgreSQL through an asyncpg pool, for several replicas behind one database.

Same semantics as ``SQLiteStore``:

- **Budgets.** ``reserve`` is one transaction of two conditional UPDATEs (the key, then the account): PostgreSQL
  re-checks the ``WHERE`` on the latest row version after a lock wait, so concurrent reserves from any number of
  replicas can never hold more than the limit. A replica's holds on a key are one row of ``reservations`` (which
  replica, which key, how much in all), and each replica holds a lease in ``instances`` that it renews every third of
  ``METAROUTER_INSTANCE_LEASE`` seconds (default 30): the holds of a replica whose lease ran out, or whose process
  on this host has exited, are given back by whichever replica sweeps first (every replica sweeps at start-up and
  with each renewal). A release (or a charge) subtracts only what it actually finds in that table, so a late
  release after a reclaim never subtracts twice. The transactions themselves are :mod:`.sql`'s, shared with SQLite.
- **Ledger.** ``record_generation`` is synchronous and non-blocking: it appends to an in-memory queue that a
  background task drains in batches, each batch one transaction: insert the generations (``ON CONFLICT DO
  NOTHING``: idempotent by id), charge keys and the account and settle the holds only for the rows actually
  inserted. A batch that fails on a lost connection is retried (with backoff) until it is written.
- **Schema.** Migrations are ``MIGRATIONS`` (:mod:`.sql`'s schema in PostgreSQL's types); ``schema_version``
  holds the applied count, and replicas starting together serialize on an advisory lock. The schema lives in the
  connection's ``search_path`` (e.g. ``postgresql://u@h/db?search_path=metarouter``: extra URL query parameters
  are server settings).

Lock order everywhere is reservations → keys (sorted by id) → account, so concurrent transactions cannot deadlock.
Money is BIGINT picodollars.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import threading
import time
from typing import Any, Callable

import asyncpg

from .base import (
    GENERATION_FIELDS,
    JSON_FIELDS,
    ActivityQuery,
    KeyRecord,
    breakdown_row,
    closed_holder,
    dead_here,
    instance_lease,
    new_holder,
    new_key,
    spend_window_starts,
    this_host,
)
from .sql import (
    ACTIVITY_COLUMNS,
    APP_RANKING_COLUMNS,
    GEN_COLS,
    POSTGRES,
    Core,
    Execute,
    Fetch,
    Op,
    Refused,
    Script,
    generation_from_row,
    generation_values,
    key_from_row,
    migrations,
    run_async,
)

log = logging.getLogger("metarouter.store")

MIGRATIONS = migrations(POSTGRES)
CORE = Core(POSTGRES)

async def release_reset(conn: Any) -> None:
    """The pool's reset of a connection given back: nothing more than asyncpg's own rollback of an unfinished
    transaction (which it runs before calling this). This store sets no session state — no LISTEN, no session-level
    locks or settings (the migration lock is a transaction's) — so asyncpg's full reset query, one more round trip
    on every release, i.e. on every store call, would buy nothing."""


#: advisory lock taken while migrating, so replicas starting together apply each migration once
_MIGRATION_LOCK = 0x6D6574726F757465  # "metroute"
_BATCH = 512
_GEN_TYPES = {
    "created_at": "float8", "streamed": "bool", "usage_estimated": "bool", "insured": "bool", "prompt_tokens": "int8",
    "completion_tokens": "int8", "reasoning_tokens": "int8", "cached_tokens": "int8", "cost_pico": "int8",
    "overage_pico": "int8", "latency_ms": "float8", "ttft_ms": "float8", "attempts": "jsonb", "routing": "jsonb",
}
# One multi-row INSERT from parallel arrays; RETURNING tells which ids were new.
_GEN_INSERT = (
    f"INSERT INTO generations ({GEN_COLS}) SELECT "
    + ", ".join(f"u.{f}::jsonb" if f in JSON_FIELDS else f"u.{f}" for f in GENERATION_FIELDS)
    + " FROM unnest("
    + ", ".join(f"${i}::{'text' if f in JSON_FIELDS else _GEN_TYPES.get(f, 'text')}[]"
                for i, f in enumerate(GENERATION_FIELDS, start=1))
    + f") AS u({GEN_COLS}) ON CONFLICT (id) DO NOTHING RETURNING id"
)
# Connection-level failures: the batch is retried; anything else is a bad record.
_RETRYABLE = (OSError, asyncio.TimeoutError, asyncpg.InterfaceError, asyncpg.PostgresConnectionError,
              asyncpg.CannotConnectNowError, asyncpg.DeadlockDetectedError, asyncpg.SerializationError)


def _columns(records: list[dict[str, Any]]) -> list[list[Any]]:
    """Parallel arrays, one per generation field, for ``unnest``."""
    rows = [generation_values(POSTGRES, r) for r in records]
    return [list(col) for col in zip(*rows)] if rows else [[] for _ in GENERATION_FIELDS]


async def _transaction(conn: asyncpg.Connection, script: Script) -> Any:
    """Run a script of :mod:`.sql` in one transaction on ``conn`` (rolled back if it raises)."""

    async def do(op: Op) -> Any:
        if isinstance(op, Execute):
            status = await conn.execute(op.sql, *op.args)
            return int(status.rsplit(" ", 1)[-1])
        if isinstance(op, Fetch):
            return await conn.fetch(op.sql, *op.args)
        return {r["id"] for r in await conn.fetch(_GEN_INSERT, *_columns(op.records))}

    async with conn.transaction():
        return await run_async(script, do)


class PostgresStore:
    def __init__(self, url: str, *, min_size: int = 1, max_size: int = 10, clock: Callable[[], float] = time.time):
        self.url = url
        self.clock = clock  # the time periods roll over and keys expire by (epoch seconds)
        self.min_size, self.max_size = min_size, max_size
        #: seconds this replica's lease lasts; renewed every third of it (the holds of a replica that stops
        #: renewing are given back by the others)
        self.lease = instance_lease()
        self.close_timeout = 60.0
        self.holder = new_holder()  # this replica, in ``reservations.holder`` and ``instances``
        #: ``time.monotonic()`` when this replica's lease was last renewed (its holds are safe until then + lease)
        self.renewed_at = float("-inf")
        self._pool: asyncpg.Pool | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._queue: collections.deque[tuple[dict[str, Any], int, asyncio.Future | None]] = collections.deque()
        self._pending = 0
        self._wake: asyncio.Event | None = None
        self._drained: asyncio.Event | None = None
        self._writer: asyncio.Task | None = None
        self._reaper: asyncio.Task | None = None

    # --- lifecycle -------------------------------------------------------------------------------------------
    async def open(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._wake, self._drained = asyncio.Event(), asyncio.Event()
        self._drained.set()
        self._pool = await asyncpg.create_pool(self.url, min_size=self.min_size, max_size=self.max_size,
                                               command_timeout=60, reset=release_reset)
        await self._migrate()
        await self._renew()
        await self.reclaim_reservations()
        self._writer = asyncio.create_task(self._write_loop(), name="metarouter-pg-writer")
        self._reaper = asyncio.create_task(self._reap_loop(), name="metarouter-pg-reaper")

    async def close(self) -> None:
        if self._pool is None:
            return
        try:
            await asyncio.wait_for(self.flush(), self.close_timeout)
        except TimeoutError:
            ids = [r.get("id") for r, _, _ in self._queue]
            log.error("closing with %d generation records unwritten (database unreachable): %s", len(ids), ids)
        for task in (self._writer, self._reaper):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._writer = self._reaper = None
        with contextlib.suppress(*_RETRYABLE, asyncpg.PostgresError):  # the lease runs out by itself otherwise
            await self._pool.execute("DELETE FROM instances WHERE holder = $1", self.holder)
        await self._pool.close()
        self._pool = None
        closed_holder(self.holder)

    async def _migrate(self) -> int:
        assert self._pool is not None
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
            await conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            current = await conn.fetchval("SELECT COALESCE(MAX(version), 0) FROM schema_version")
            for version, statements in enumerate(MIGRATIONS[current:], start=current + 1):
                for stmt in statements:
                    await conn.execute(stmt)
                await conn.execute("INSERT INTO schema_version (version) VALUES ($1)", version)
        return len(MIGRATIONS)

    def _require(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("store is not open")
        return self._pool

    # --- keys --------------------------------------------------------------------------------------------------
    async def create_key(
        self, label: str, *, limit_pico: int | None = None, rpm: int | None = None, tpm: int | None = None,
        limit_reset: str | None = None, expires_at: float | None = None,
    ) -> tuple[str, KeyRecord]:
        plaintext, public_id, key_hash = new_key()
        rec, row = CORE.new_key(public_id, key_hash, label, limit_pico, rpm, tpm, self.clock(), limit_reset,
                                expires_at)
        await self._require().execute(CORE.insert_key, *row)
        return plaintext, rec

    async def get_key(self, public_id: str) -> KeyRecord | None:
        row = await self._require().fetchrow(CORE.get_key, public_id)
        return key_from_row(row, self.clock()) if row else None

    async def budget_view(self, key_id: str) -> KeyRecord | None:
        return await self.get_key(key_id)

    async def list_keys(self) -> list[KeyRecord]:
        return [key_from_row(r, self.clock()) for r in await self._require().fetch(CORE.list_keys)]

    async def update_key(self, public_id: str, **fields: Any) -> KeyRecord | None:
        script = CORE.update_key(public_id, fields, self.clock())
        async with self._require().acquire() as conn:
            return await _transaction(conn, script)

    # --- money -------------------------------------------------------------------------------------------------
    async def reserve(self, key_id: str, amount_pico: int, *, spare_pico: int = 0) -> bool:
        """PostgreSQL re-checks each conditional UPDATE's ``WHERE`` on the latest row version after a lock wait, so
        concurrent reserves from any number of replicas can never hold more than the limit."""
        try:
            async with self._require().acquire() as conn:
                return await _transaction(conn, CORE.reserve(self.holder, key_id, int(amount_pico), int(spare_pico),
                                                             now=self.clock()))
        except Refused:
            return False

    async def release(self, key_id: str, amount_pico: int) -> None:
        if amount_pico > 0:
            async with self._require().acquire() as conn:
                await _transaction(conn, CORE.release(self.holder, key_id, int(amount_pico)))

    async def _renew(self) -> None:
        renewed = time.monotonic()
        await self._require().execute(
            "INSERT INTO instances (holder, host, pid, lease_until) VALUES ($1, $2, $3, now() + make_interval(secs => $4))"
            " ON CONFLICT (holder) DO UPDATE SET lease_until = excluded.lease_until",
            self.holder, this_host(), os.getpid(), float(self.lease),
        )
        self.renewed_at = renewed

    async def reclaim_reservations(self) -> int:
        """Give back the holds of every replica without a live lease (on the database's clock), and of replicas on
        this host whose process has exited; returns how many holds were given back."""
        pool = self._require()
        for r in await pool.fetch("SELECT holder, host, pid FROM instances WHERE holder <> $1", self.holder):
            if dead_here(r["host"], r["pid"], r["holder"]):
                await pool.execute("DELETE FROM instances WHERE holder = $1", r["holder"])

        def script() -> Script:
            yield Execute("DELETE FROM instances WHERE lease_until < now() AND holder <> $1", (self.holder,))
            return (yield from CORE.reclaim(self.holder))

        async with pool.acquire() as conn:
            n = await _transaction(conn, script())
        if n:
            log.warning("gave back %d budget holds of replicas that are gone", n)
        return n

    async def _reap_loop(self) -> None:
        while True:
            await asyncio.sleep(self.lease / 3)
            try:
                await self._renew()
                await self.reclaim_reservations()
            except asyncio.CancelledError:
                raise
            except (*_RETRYABLE, asyncpg.PostgresError) as exc:  # the database may be briefly away
                log.warning("renewing the lease or reclaiming holds failed: %s", type(exc).__name__)

    async def get_credits(self, *, flush: bool = True) -> tuple[int | None, int]:
        if flush:
            await self.flush()
        row = await self._require().fetchrow(CORE.get_credits)
        return row[0], row[1]

    async def add_credits(self, amount_pico: int) -> tuple[int | None, int]:
        async with self._require().acquire() as conn:
            return await _transaction(conn, CORE.add_credit(amount_pico))

    async def key_spend_windows(self, key_id: str) -> dict[str, int]:
        args = CORE.spend_windows_args(key_id, spend_window_starts(self.clock()))
        await self.flush()
        row = await self._require().fetchrow(CORE.spend_windows, *args)
        return {"day": int(row[0]), "week": int(row[1]), "month": int(row[2])}

    # --- ledger ------------------------------------------------------------------------------------------------
    @property
    def pending_records(self) -> int:
        """Records accepted by :meth:`record_generation` and not yet written."""
        return self._pending

    def record_generation(self, record: dict[str, Any], reserved_pico: int = 0) -> asyncio.Future | None:
        if self._loop is None:
            raise RuntimeError("store is not open")
        if threading.get_ident() == self._loop_thread:
            fut = self._loop.create_future()
            self._enqueue(record, reserved_pico, fut)
            return fut
        self._loop.call_soon_threadsafe(self._enqueue, record, reserved_pico, None)
        return None

    def _enqueue(self, record: dict[str, Any], reserved_pico: int, fut: asyncio.Future | None) -> None:
        assert self._wake is not None and self._drained is not None
        self._queue.append((record, int(reserved_pico or 0), fut))
        self._pending += 1
        self._drained.clear()
        self._wake.set()
        if self._writer is None or self._writer.done():
            log.error("generation %s queued while the store is closed", record.get("id"))

    async def flush(self) -> None:
        if self._drained is None:
            return
        while self._pending > 0:
            if self._writer is None or self._writer.done():
                raise RuntimeError(f"{self._pending} generation records could not be written: store is closed")
            await self._drained.wait()

    async def _write_loop(self) -> None:
        assert self._wake is not None and self._drained is not None
        backoff = 0.05
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = [self._queue[i][:2] for i in range(min(_BATCH, len(self._queue)))]
            try:
                await self._write_batch(batch)
            except asyncio.CancelledError:
                raise
            except _RETRYABLE as exc:
                # the database is away (or we collided): keep the records and try again
                log.warning("writing %d generation records failed (%s); retrying", len(batch), type(exc).__name__)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            except Exception:
                log.exception("writing %d generation records failed; writing them one by one", len(batch))
                for one in batch:
                    try:
                        await self._write_batch([one])
                    except _RETRYABLE:
                        break  # the rest stay queued and are retried as a batch
                    except Exception:
                        log.exception("dropping generation record %s that cannot be stored", one[0].get("id"))
                        self._done(1, written=False)
                        continue
                    self._done(1)
                continue
            backoff = 0.05
            self._done(len(batch))

    def _done(self, n: int, written: bool = True) -> None:
        """The first ``n`` queued records are written (or, ``written=False``, dropped): tell who waits on them."""
        assert self._drained is not None
        for _ in range(n):
            fut = self._queue.popleft()[2]
            if fut is not None and not fut.done():
                fut.set_result(written)
        self._pending -= n
        if self._pending <= 0:
            self._drained.set()

    async def _write_batch(self, batch: list[tuple[dict[str, Any], int]]) -> None:
        async with self._require().acquire() as conn:
            await _transaction(conn, CORE.write_records(self.holder, batch, self.clock()))

    async def get_generation(self, gen_id: str) -> dict[str, Any] | None:
        row = await self._require().fetchrow(CORE.get_generation, gen_id)
        return generation_from_row(row) if row else None

    async def list_generations(
        self, *, limit: int = 50, key_id: str | None = None, since: float | None = None
    ) -> list[dict[str, Any]]:
        sql, args = CORE.list_generations(limit, key_id, since)
        return [generation_from_row(r) for r in await self._require().fetch(sql, *args)]

    async def app_ranking(
        self, *, since: float | None = None, key_id: str | None = None, limit: int = 20
    ) -> list[dict[str, Any]]:
        sql, args = CORE.app_ranking(since, key_id, limit)
        await self.flush()
        return [dict(zip(APP_RANKING_COLUMNS, r)) for r in await self._require().fetch(sql, *args)]

    async def activity(
        self, *, since: float | None = None, until: float | None = None, key_id: str | None = None,
        app: str | None = None,
    ) -> list[dict[str, Any]]:
        sql, args = CORE.activity(since, until, key_id, app)
        await self.flush()
        return [dict(zip(ACTIVITY_COLUMNS, r)) for r in await self._require().fetch(sql, *args)]

    async def search_generations(
        self, query: ActivityQuery, *, limit: int = 50, offset: int = 0, before: tuple[float, str] | None = None
    ) -> list[dict[str, Any]]:
        sql, args = CORE.search(query, limit, offset, before)
        await self.flush()
        return [generation_from_row(r) for r in await self._require().fetch(sql, *args)]

    async def endpoint_samples(self, since: float, per_endpoint: int = 200, scan: int = 50_000) -> list[tuple]:
        sql, args = CORE.endpoint_samples(since, per_endpoint, scan)
        return [tuple(r) for r in await self._require().fetch(sql, *args)]

    async def activity_breakdown(
        self, query: ActivityQuery, *, by: str | None = None, bucket: int | None = None, limit: int | None = None
    ) -> list[dict[str, Any]]:
        sql, names, args = CORE.breakdown(query, by, bucket, limit)
        await self.flush()
        return [breakdown_row(names, tuple(r)) for r in await self._require().fetch(sql, *args)]
