"""The shared store: PostgreSQL through an asyncpg pool, for several replicas behind one database.

Same semantics as ``SQLiteStore``:

- **Budgets.** ``reserve`` is one transaction of two conditional UPDATEs (the key, then the account): PostgreSQL
  re-checks the ``WHERE`` on the latest row version after a lock wait, so concurrent reserves from any number of
  replicas can never hold more than the limit. Each hold is also a row in ``reservations`` (which replica, which
  key, how much), and each replica holds a lease in ``instances`` that it renews every third of
  ``METAROUTER_INSTANCE_LEASE`` seconds (default 30): the holds of a replica whose lease ran out, or whose process
  on this host has exited, are given back by whichever replica sweeps first (every replica sweeps at start-up and
  with each renewal). A release (or a charge) subtracts only what it actually finds in that table, so a late
  release after a reclaim never subtracts twice.
- **Ledger.** ``record_generation`` is synchronous and non-blocking: it appends to an in-memory queue that a
  background task drains in batches, each batch one transaction: insert the generations (``ON CONFLICT DO
  NOTHING``: idempotent by id), charge keys and the account only for the rows actually inserted, and release the
  reservations. A batch that fails on a lost connection is retried (with backoff) until it is written.
- **Schema.** Migrations are the ``MIGRATIONS`` list below; ``schema_version`` holds the applied count, and
  replicas starting together serialize on an advisory lock. The schema lives in the connection's ``search_path``
  (e.g. ``postgresql://u@h/db?search_path=metarouter``: extra URL query parameters are server settings).

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
from typing import Any

import asyncpg
import orjson

from .base import (
    GENERATION_FIELDS,
    JSON_FIELDS,
    ActivityQuery,
    KeyRecord,
    activity_where,
    breakdown_row,
    breakdown_sql,
    closed_holder,
    dead_here,
    instance_lease,
    new_holder,
    new_key,
    spend_window_starts,
    this_host,
)

log = logging.getLogger("metarouter.store")

MIGRATIONS: list[str] = [
    # 1: keys, account, generations, budget holds
    """
    CREATE TABLE keys (
        public_id TEXT PRIMARY KEY,
        key_hash TEXT NOT NULL,
        label TEXT NOT NULL,
        limit_pico BIGINT,
        usage_pico BIGINT NOT NULL DEFAULT 0,
        reserved_pico BIGINT NOT NULL DEFAULT 0,
        disabled BOOLEAN NOT NULL DEFAULT FALSE,
        rpm INTEGER,
        tpm INTEGER,
        created_at DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE account (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        credits_pico BIGINT,
        usage_pico BIGINT NOT NULL DEFAULT 0,
        reserved_pico BIGINT NOT NULL DEFAULT 0
    );
    INSERT INTO account (id, credits_pico, usage_pico, reserved_pico) VALUES (1, NULL, 0, 0);
    CREATE TABLE generations (
        id TEXT PRIMARY KEY,
        created_at DOUBLE PRECISION NOT NULL,
        key_id TEXT,
        app_referer TEXT,
        app_title TEXT,
        requested_model TEXT,
        model TEXT,
        provider TEXT,
        router TEXT,
        streamed BOOLEAN NOT NULL DEFAULT FALSE,
        status TEXT NOT NULL,
        prompt_tokens BIGINT NOT NULL DEFAULT 0,
        completion_tokens BIGINT NOT NULL DEFAULT 0,
        reasoning_tokens BIGINT NOT NULL DEFAULT 0,
        cached_tokens BIGINT NOT NULL DEFAULT 0,
        usage_estimated BOOLEAN NOT NULL DEFAULT FALSE,
        cost_pico BIGINT NOT NULL DEFAULT 0,
        latency_ms DOUBLE PRECISION,
        ttft_ms DOUBLE PRECISION,
        finish_reason TEXT,
        native_finish_reason TEXT,
        upstream_id TEXT,
        user_tag TEXT,
        session_id TEXT,
        error TEXT,
        attempts JSONB,
        routing JSONB
    );
    CREATE INDEX generations_created ON generations (created_at);
    CREATE INDEX generations_key ON generations (key_id, created_at);
    CREATE TABLE reservations (
        id BIGSERIAL PRIMARY KEY,
        holder TEXT NOT NULL,
        key_id TEXT NOT NULL,
        amount_pico BIGINT NOT NULL,
        created_at TIMESTAMPTZ NOT NULL DEFAULT now()
    );
    CREATE INDEX reservations_holder ON reservations (holder, key_id, amount_pico);
    CREATE INDEX reservations_created ON reservations (created_at);
    """,
    # 2: what an answer cost beyond its hold (the key is charged at most the hold), and the live replicas: the
    # holds of one whose lease ran out, or whose process is gone, are given back (no fixed time-to-live)
    """
    ALTER TABLE generations ADD COLUMN overage_pico BIGINT NOT NULL DEFAULT 0;
    CREATE TABLE instances (
        holder TEXT PRIMARY KEY,
        host TEXT NOT NULL,
        pid INTEGER NOT NULL,
        lease_until TIMESTAMPTZ NOT NULL
    );
    """,
    # 3: an answer not charged under zero completion insurance (no content; an error or no output tokens)
    """
    ALTER TABLE generations ADD COLUMN insured BOOLEAN NOT NULL DEFAULT FALSE;
    """,
]

#: advisory lock taken while migrating, so replicas starting together apply each migration once
_MIGRATION_LOCK = 0x6D6574726F757465  # "metroute"
_BATCH = 512
_KEY_COLS = "public_id, key_hash, label, limit_pico, usage_pico, reserved_pico, disabled, rpm, tpm, created_at"
_GEN_COLS = ", ".join(GENERATION_FIELDS)
_GEN_TYPES = {
    "created_at": "float8", "streamed": "bool", "usage_estimated": "bool", "insured": "bool", "prompt_tokens": "int8",
    "completion_tokens": "int8", "reasoning_tokens": "int8", "cached_tokens": "int8", "cost_pico": "int8",
    "overage_pico": "int8", "latency_ms": "float8", "ttft_ms": "float8", "attempts": "jsonb", "routing": "jsonb",
}
_INT_FIELDS = ("prompt_tokens", "completion_tokens", "reasoning_tokens", "cached_tokens", "cost_pico", "overage_pico")
# One multi-row INSERT from parallel arrays; RETURNING tells which ids were new.
_GEN_INSERT = (
    f"INSERT INTO generations ({_GEN_COLS}) SELECT "
    + ", ".join(f"u.{f}::jsonb" if f in JSON_FIELDS else f"u.{f}" for f in GENERATION_FIELDS)
    + " FROM unnest("
    + ", ".join(f"${i}::{'text' if f in JSON_FIELDS else _GEN_TYPES.get(f, 'text')}[]"
                for i, f in enumerate(GENERATION_FIELDS, start=1))
    + f") AS u({_GEN_COLS}) ON CONFLICT (id) DO NOTHING RETURNING id"
)
# Release one hold of this replica: the oldest matching row (a concurrent release of an identical hold waits for
# the row lock, then moves on to the next row).
_RELEASE_ONE = (
    "DELETE FROM reservations WHERE id = (SELECT id FROM reservations WHERE holder = $1 AND key_id = $2 AND "
    "amount_pico = $3 ORDER BY id LIMIT 1 FOR UPDATE) RETURNING amount_pico"
)
# Connection-level failures: the batch is retried; anything else is a bad record.
_RETRYABLE = (OSError, asyncio.TimeoutError, asyncpg.InterfaceError, asyncpg.PostgresConnectionError,
              asyncpg.CannotConnectNowError, asyncpg.DeadlockDetectedError, asyncpg.SerializationError)


class _Refused(Exception):
    """A conditional UPDATE matched no row: roll the reservation back."""


def _key(row: asyncpg.Record) -> KeyRecord:
    return KeyRecord(row["public_id"], row["label"], row["key_hash"], row["limit_pico"], row["usage_pico"],
                     row["reserved_pico"], row["disabled"], row["rpm"], row["tpm"], row["created_at"])


def _generation(row: asyncpg.Record) -> dict[str, Any]:
    d = dict(row)
    for f in JSON_FIELDS:
        if d.get(f) is not None:
            d[f] = orjson.loads(d[f])
    return d


def _columns(records: list[dict[str, Any]]) -> list[list[Any]]:
    """Parallel arrays, one per generation field, for ``unnest``."""
    cols: list[list[Any]] = []
    for f in GENERATION_FIELDS:
        col = []
        for r in records:
            v = r.get(f)
            if f in JSON_FIELDS:
                v = orjson.dumps(v).decode() if v is not None else None
            elif f in ("streamed", "usage_estimated", "insured"):
                v = bool(v)
            elif f in _INT_FIELDS:
                v = int(v or 0)
            elif f in ("created_at", "latency_ms", "ttft_ms"):
                v = float(v) if v is not None else None
            elif v is not None and not isinstance(v, str):
                v = str(v)
            col.append(v)
        cols.append(col)
    return cols


class PostgresStore:
    def __init__(self, url: str, *, min_size: int = 1, max_size: int = 10):
        self.url = url
        self.min_size, self.max_size = min_size, max_size
        #: seconds this replica's lease lasts; renewed every third of it (the holds of a replica that stops
        #: renewing are given back by the others)
        self.lease = instance_lease()
        self.close_timeout = 60.0
        self.holder = new_holder()  # this replica, in ``reservations.holder`` and ``instances``
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
                                               command_timeout=60)
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
            for version, sql in enumerate(MIGRATIONS[current:], start=current + 1):
                await conn.execute(sql)
                await conn.execute("INSERT INTO schema_version (version) VALUES ($1)", version)
        return len(MIGRATIONS)

    def _require(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("store is not open")
        return self._pool

    # --- keys --------------------------------------------------------------------------------------------------
    async def create_key(
        self, label: str, *, limit_pico: int | None = None, rpm: int | None = None, tpm: int | None = None
    ) -> tuple[str, KeyRecord]:
        plaintext, public_id, key_hash = new_key()
        rec = KeyRecord(public_id, label, key_hash, limit_pico, 0, 0, False, rpm, tpm, time.time())
        await self._require().execute(
            f"INSERT INTO keys ({_KEY_COLS}) VALUES ($1, $2, $3, $4, 0, 0, FALSE, $5, $6, $7)",
            public_id, key_hash, label, limit_pico, rpm, tpm, rec.created_at,
        )
        return plaintext, rec

    async def get_key(self, public_id: str) -> KeyRecord | None:
        row = await self._require().fetchrow(f"SELECT {_KEY_COLS} FROM keys WHERE public_id = $1", public_id)
        return _key(row) if row else None

    async def list_keys(self) -> list[KeyRecord]:
        rows = await self._require().fetch(f"SELECT {_KEY_COLS} FROM keys ORDER BY created_at")
        return [_key(r) for r in rows]

    async def update_key(self, public_id: str, **fields: Any) -> KeyRecord | None:
        allowed = {"label", "limit_pico", "disabled", "rpm", "tpm"}
        bad = set(fields) - allowed
        if bad:
            raise ValueError(f"cannot update {', '.join(sorted(bad))}")
        if not fields:
            return await self.get_key(public_id)
        names = list(fields)
        cols = ", ".join(f"{k} = ${i}" for i, k in enumerate(names, start=2))  # names from the allow-list only
        vals = [bool(fields[k]) if k == "disabled" else fields[k] for k in names]
        row = await self._require().fetchrow(
            f"UPDATE keys SET {cols} WHERE public_id = $1 RETURNING {_KEY_COLS}", public_id, *vals
        )
        return _key(row) if row else None

    # --- money -------------------------------------------------------------------------------------------------
    async def reserve(self, key_id: str, amount_pico: int) -> bool:
        amount = int(amount_pico)
        try:
            async with self._require().acquire() as conn, conn.transaction():
                if await conn.execute(
                    "UPDATE keys SET reserved_pico = reserved_pico + $2 WHERE public_id = $1 AND "
                    "(limit_pico IS NULL OR usage_pico + reserved_pico + $2 <= limit_pico)",
                    key_id, amount,
                ) != "UPDATE 1":
                    raise _Refused
                if await conn.execute(
                    "UPDATE account SET reserved_pico = reserved_pico + $1 WHERE id = 1 AND "
                    "(credits_pico IS NULL OR usage_pico + reserved_pico + $1 <= credits_pico)",
                    amount,
                ) != "UPDATE 1":
                    raise _Refused
                if amount:
                    await conn.execute(
                        "INSERT INTO reservations (holder, key_id, amount_pico) VALUES ($1, $2, $3)",
                        self.holder, key_id, amount,
                    )
        except _Refused:
            return False
        return True

    async def release(self, key_id: str, amount_pico: int) -> None:
        amount = int(amount_pico)
        if amount <= 0:
            return
        async with self._require().acquire() as conn, conn.transaction():
            found = await conn.fetchval(_RELEASE_ONE, self.holder, key_id, amount)
            if found:  # already reclaimed otherwise: nothing left to subtract
                await conn.execute(
                    "UPDATE keys SET reserved_pico = GREATEST(0, reserved_pico - $2) WHERE public_id = $1",
                    key_id, found,
                )
                await conn.execute(
                    "UPDATE account SET reserved_pico = GREATEST(0, reserved_pico - $1) WHERE id = 1", found
                )

    async def _renew(self) -> None:
        await self._require().execute(
            "INSERT INTO instances (holder, host, pid, lease_until) VALUES ($1, $2, $3, now() + make_interval(secs => $4))"
            " ON CONFLICT (holder) DO UPDATE SET lease_until = excluded.lease_until",
            self.holder, this_host(), os.getpid(), float(self.lease),
        )

    async def reclaim_reservations(self) -> int:
        """Give back the holds of every replica without a live lease (on the database's clock), and of replicas on
        this host whose process has exited; returns how many holds were given back."""
        pool = self._require()
        for r in await pool.fetch("SELECT holder, host, pid FROM instances WHERE holder <> $1", self.holder):
            if dead_here(r["host"], r["pid"], r["holder"]):
                await pool.execute("DELETE FROM instances WHERE holder = $1", r["holder"])
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("DELETE FROM instances WHERE lease_until < now() AND holder <> $1", self.holder)
            rows = await conn.fetch(
                "DELETE FROM reservations WHERE id IN (SELECT id FROM reservations r WHERE holder <> $1 AND NOT EXISTS "
                "(SELECT 1 FROM instances i WHERE i.holder = r.holder) ORDER BY id FOR UPDATE SKIP LOCKED) "
                "RETURNING key_id, amount_pico",
                self.holder,
            )
            if not rows:
                return 0
            per_key: dict[str, int] = collections.defaultdict(int)
            for r in rows:
                per_key[r["key_id"]] += r["amount_pico"]
            for key_id in sorted(per_key):
                await conn.execute(
                    "UPDATE keys SET reserved_pico = GREATEST(0, reserved_pico - $2) WHERE public_id = $1",
                    key_id, per_key[key_id],
                )
            await conn.execute("UPDATE account SET reserved_pico = GREATEST(0, reserved_pico - $1) WHERE id = 1",
                               sum(per_key.values()))
        log.warning("gave back %d budget holds of replicas that are gone", len(rows))
        return len(rows)

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
        row = await self._require().fetchrow("SELECT credits_pico, usage_pico FROM account WHERE id = 1")
        return row["credits_pico"], row["usage_pico"]

    async def add_credits(self, amount_pico: int) -> tuple[int | None, int]:
        row = await self._require().fetchrow(
            "UPDATE account SET credits_pico = COALESCE(credits_pico, 0) + $1 WHERE id = 1 "
            "RETURNING credits_pico, usage_pico",
            int(amount_pico),
        )
        return row["credits_pico"], row["usage_pico"]

    async def key_spend_windows(self, key_id: str) -> dict[str, int]:
        starts = spend_window_starts(time.time())
        await self.flush()
        row = await self._require().fetchrow(
            "SELECT COALESCE(SUM(cost_pico) FILTER (WHERE created_at >= $2), 0)::bigint AS day, "
            "COALESCE(SUM(cost_pico) FILTER (WHERE created_at >= $3), 0)::bigint AS week, "
            "COALESCE(SUM(cost_pico) FILTER (WHERE created_at >= $4), 0)::bigint AS month "
            "FROM generations WHERE key_id = $1 AND created_at >= LEAST($2, $3, $4)",
            key_id, starts["day"], starts["week"], starts["month"],
        )
        return {"day": row["day"], "week": row["week"], "month": row["month"]}

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
        # the same id twice in one batch: the first one wins, as it would across batches
        seen: dict[str, tuple[dict[str, Any], int]] = {}
        extra_releases: list[tuple[str, int]] = []
        for record, reserved in batch:
            if record["id"] in seen:
                if reserved and record.get("key_id"):
                    extra_releases.append((record["key_id"], reserved))
                continue
            seen[record["id"]] = (record, reserved)
        records = [r for r, _ in seen.values()]
        async with self._require().acquire() as conn, conn.transaction():
            inserted = {r["id"] for r in await conn.fetch(_GEN_INSERT, *_columns(records))}
            releases = [(r["key_id"], res) for r, res in seen.values() if res and r.get("key_id")] + extra_releases
            freed: dict[str, int] = collections.defaultdict(int)
            for key_id, amount in sorted(releases):
                found = await conn.fetchval(_RELEASE_ONE, self.holder, key_id, amount)
                if found:
                    freed[key_id] += found
            charge: dict[str, int] = collections.defaultdict(int)
            for r in records:
                if r["id"] in inserted and r.get("key_id"):
                    charge[r["key_id"]] += int(r.get("cost_pico") or 0)
            total = sum(int(r.get("cost_pico") or 0) for r in records if r["id"] in inserted)
            for key_id in sorted(set(charge) | set(freed)):
                await conn.execute(
                    "UPDATE keys SET usage_pico = usage_pico + $2, reserved_pico = GREATEST(0, reserved_pico - $3) "
                    "WHERE public_id = $1",
                    key_id, charge.get(key_id, 0), freed.get(key_id, 0),
                )
            if total or freed:
                await conn.execute(
                    "UPDATE account SET usage_pico = usage_pico + $1, reserved_pico = GREATEST(0, reserved_pico - $2) "
                    "WHERE id = 1",
                    total, sum(freed.values()),
                )

    async def get_generation(self, gen_id: str) -> dict[str, Any] | None:
        row = await self._require().fetchrow(
            f"SELECT {_GEN_COLS} "
            "FROM generations WHERE id = $1", gen_id,
        )
        return _generation(row) if row else None

    async def list_generations(
        self, *, limit: int = 50, key_id: str | None = None, since: float | None = None
    ) -> list[dict[str, Any]]:
        where, args = ["TRUE"], []
        if key_id:
            args.append(key_id)
            where.append(f"key_id = ${len(args)}")
        if since is not None:
            args.append(float(since))
            where.append(f"created_at >= ${len(args)}")
        args.append(int(limit))
        rows = await self._require().fetch(
            f"SELECT {_GEN_COLS} "
            f"FROM generations WHERE {' AND '.join(where)} ORDER BY created_at DESC LIMIT ${len(args)}",
            *args,
        )
        return [_generation(r) for r in rows]

    async def app_ranking(
        self, *, since: float | None = None, key_id: str | None = None, limit: int = 20
    ) -> list[dict[str, Any]]:
        where, args = ["COALESCE(app_title, app_referer) IS NOT NULL"], []
        for cond, val in (("created_at >= ${}", since), ("key_id = ${}", key_id)):
            if val is not None:
                args.append(val)
                where.append(cond.format(len(args)))
        args.append(int(limit))
        await self.flush()
        rows = await self._require().fetch(
            "SELECT COALESCE(app_title, app_referer) AS app, COUNT(*)::bigint AS requests, "
            "SUM(prompt_tokens + completion_tokens)::bigint AS tokens, SUM(cost_pico)::bigint AS cost_pico "
            f"FROM generations WHERE {' AND '.join(where)} GROUP BY 1 ORDER BY tokens DESC, app LIMIT ${len(args)}",
            *args,
        )
        return [dict(r) for r in rows]

    async def activity(
        self, *, since: float | None = None, until: float | None = None, key_id: str | None = None,
        app: str | None = None,
    ) -> list[dict[str, Any]]:
        where, args = ["TRUE"], []
        for cond, val in (("created_at >= ${}", since), ("created_at < ${}", until), ("key_id = ${}", key_id)):
            if val is not None:
                args.append(val)
                where.append(cond.format(len(args)))
        if app is not None:
            args.append(app)
            where.append(f"(app_title = ${len(args)} OR app_referer = ${len(args)})")
        await self.flush()
        rows = await self._require().fetch(
            "SELECT to_char(to_timestamp(created_at) AT TIME ZONE 'UTC', 'YYYY-MM-DD') AS date, model, "
            "COUNT(*)::bigint AS requests, SUM(prompt_tokens)::bigint AS prompt_tokens, "
            "SUM(completion_tokens)::bigint AS completion_tokens, SUM(reasoning_tokens)::bigint AS reasoning_tokens, "
            f"SUM(cost_pico)::bigint AS cost_pico FROM generations WHERE {' AND '.join(where)} "
            "GROUP BY 1, model ORDER BY 1 DESC, model",
            *args,
        )
        return [dict(r) for r in rows]

    async def search_generations(
        self, query: ActivityQuery, *, limit: int = 50, offset: int = 0, before: tuple[float, str] | None = None
    ) -> list[dict[str, Any]]:
        where, args = activity_where(query, lambda n: f"${n}")
        if before is not None:
            args += [float(before[0]), str(before[1])]
            where += f" AND (created_at, id) < (${len(args) - 1}, ${len(args)})"
        args += [int(limit), int(offset)]
        await self.flush()
        rows = await self._require().fetch(
            f"SELECT {_GEN_COLS} FROM generations WHERE {where} "
            f"ORDER BY created_at DESC, id DESC LIMIT ${len(args) - 1} OFFSET ${len(args)}",
            *args,
        )
        return [_generation(r) for r in rows]

    async def activity_breakdown(
        self, query: ActivityQuery, *, by: str | None = None, bucket: int | None = None, limit: int | None = None
    ) -> list[dict[str, Any]]:
        sql, names, args = breakdown_sql(query, by, bucket, limit, lambda n: f"${n}",
                                         lambda b: f"(floor(created_at / {b}) * {b})::bigint")
        await self.flush()
        return [breakdown_row(names, tuple(r)) for r in await self._require().fetch(sql, *args)]
