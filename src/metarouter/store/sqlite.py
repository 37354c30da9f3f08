"""The embedded store: one SQLite database in WAL mode, owned by one writer thread.

Every operation runs on that thread, in arrival order, so the event loop never blocks on disk and a read that
follows a write sees it. Generation records arrive through a synchronous, non-blocking queue and are written in
batches: each batch is one transaction holding the records, the key charges and the account charge together.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import queue
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Callable

from .base import (
    GENERATION_FIELDS,
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
    SQLITE,
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
    run_sync,
)

log = logging.getLogger("metarouter.store")

MIGRATIONS = migrations(SQLITE)
CORE = Core(SQLITE)

_BATCH = 512
LINGER = 0.002  # seconds a record may wait for others to share its transaction
_STOP = object()


_MULTI_INSERT: dict[int, str] = {}


def _multi_insert(n: int) -> str:
    """``INSERT OR IGNORE INTO generations (…) VALUES (…), …`` for ``n`` rows (cached per ``n``)."""
    sql = _MULTI_INSERT.get(n)
    if sql is None:
        one = f"({', '.join('?' for _ in GENERATION_FIELDS)})"
        sql = f"INSERT OR IGNORE INTO generations ({GEN_COLS}) VALUES {', '.join([one] * n)}"
        if len(_MULTI_INSERT) < 1024:
            _MULTI_INSERT[n] = sql
    return sql


class SQLiteStore:
    def __init__(self, path: str | Path, linger: float = LINGER, clock: Callable[[], float] = time.time):
        self.path = str(path)
        self.clock = clock  # the time periods roll over and keys expire by (epoch seconds)
        self.linger = linger
        self.lease = instance_lease()
        self.holder = new_holder()  # this store, in ``reservations.holder`` and ``instances``
        self._next_sweep = float("inf")  # set once the schema is migrated
        #: ``time.monotonic()`` when this store's lease was last renewed (its holds are safe until then + lease)
        self.renewed_at = float("-inf")
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._urgent = threading.Event()  # set with every operation someone awaits: cuts a group commit's wait short
        self._thread: threading.Thread | None = None
        self._conn: sqlite3.Connection | None = None
        self._pending = 0
        self._max_vars = 999
        self._pending_lock = threading.Lock()
        self._drained = threading.Condition(self._pending_lock)
        self._reader: concurrent.futures.ThreadPoolExecutor | None = None  # Activity's reads: see _read
        self._reader_conn: sqlite3.Connection | None = None

    # --- lifecycle -------------------------------------------------------------------------------------------
    async def open(self) -> None:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._run, name="metarouter-sqlite", daemon=True)
        self._thread.start()
        await self._call(self._migrate)

    async def close(self) -> None:
        if self._thread is None:
            return
        await self.flush()
        await self._call(self._retire)
        self._q.put(_STOP)
        self._urgent.set()
        await asyncio.get_running_loop().run_in_executor(None, self._thread.join)
        self._thread = None
        if self._reader is not None:
            if self._reader_conn is not None:
                self._reader.submit(self._reader_conn.close)
            self._reader.shutdown(wait=True)
            self._reader = self._reader_conn = None
        closed_holder(self.holder)

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")  # durable across process crashes; fsync at checkpoints
        conn.execute("PRAGMA busy_timeout=5000")
        conn.execute("PRAGMA foreign_keys=ON")
        return conn

    def _migrate(self, conn: sqlite3.Connection) -> int:
        # Read the version inside the write lock: several worker processes may open the database at once.
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            current = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] or 0
            for version, statements in enumerate(MIGRATIONS[current:], start=current + 1):
                for stmt in statements:
                    conn.execute(stmt)
                conn.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        self._sweep(conn)
        return len(MIGRATIONS)

    # --- the writer thread -------------------------------------------------------------------------------------
    def _run(self) -> None:
        self._conn = self._connect()
        conn = self._conn
        # bound parameters per statement (SQLite's compile-time limit: 999 before 3.32, 32,766 since)
        self._max_vars = min(conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER), 32_766)
        last_batch = 0  # records in the last transaction: more than one means load, worth gathering for
        try:
            while True:
                try:
                    item = self._q.get(timeout=self.lease / 3)
                except queue.Empty:
                    item = None
                if time.monotonic() >= self._next_sweep:
                    try:
                        self._sweep(conn)
                    except Exception:  # the sweep must never stop the writer
                        log.exception("renewing the lease or reclaiming holds failed")
                if item is None:
                    continue
                if item is _STOP:
                    return
                if item[0] == "rec":
                    # Group commit under load: when the last batch held several records (or more are queued), let
                    # records gather for up to LINGER after the first, so one transaction and one wake-up serve many
                    # requests. The thread sleeps on an event that only awaited operations (and stop) set, not on
                    # the queue: a record put during the wait does not wake it (each wake-up would take the GIL from
                    # the event loop). A lone record is written at once: its answer waits for it to be durable.
                    if self.linger > 0 and (last_batch > 1 or not self._q.empty()):
                        self._urgent.wait(self.linger)
                    self._urgent.clear()
                    batch = [item]
                    other = None
                    while len(batch) < _BATCH:
                        try:
                            nxt = self._q.get_nowait()
                        except queue.Empty:
                            break
                        if nxt is not _STOP and nxt[0] == "rec":
                            batch.append(nxt)
                        else:
                            other = nxt
                            break
                    self._write_records(conn, batch)
                    last_batch = len(batch)
                    if other is None:
                        continue
                    if other is _STOP:
                        return
                    item = other
                _, fn, args, fut, loop = item
                try:
                    result = fn(conn, *args)
                except BaseException as exc:  # delivered to the awaiting coroutine
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    loop.call_soon_threadsafe(_set_exc, fut, exc)
                else:
                    loop.call_soon_threadsafe(_set_result, fut, result)
        finally:
            conn.close()

    def _write_records(self, conn: sqlite3.Connection, batch: list[tuple]) -> None:
        """Write ``("rec", record, reserved, future, loop)`` items, then tell each waiting future (once committed)."""
        written = [True] * len(batch)
        try:
            try:
                self._apply_records(conn, [(b[1], b[2]) for b in batch])
            except Exception:
                log.exception("writing %d generation records failed; retrying one by one", len(batch))
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                for i, one in enumerate(batch):
                    if len(batch) == 1:
                        written[i] = False
                        break
                    try:
                        self._apply_records(conn, [(one[1], one[2])])
                    except Exception:
                        log.exception("generation record %s could not be written", one[1].get("id"))
                        written[i] = False
                        if conn.in_transaction:
                            conn.execute("ROLLBACK")
        finally:
            with self._pending_lock:
                self._pending -= len(batch)
                if self._pending <= 0:
                    self._drained.notify_all()
            per_loop: dict[Any, list] = {}
            for item, ok in zip(batch, written):
                if item[3] is not None:
                    per_loop.setdefault(item[4], []).append((item[3], ok))
            for loop, futs in per_loop.items():  # one wake-up per event loop and batch
                try:
                    loop.call_soon_threadsafe(_set_results, futs)
                except RuntimeError:  # that loop has closed: nobody is waiting any more
                    pass

    def _apply_records(self, conn: sqlite3.Connection, batch: list[tuple[dict[str, Any], int]]) -> None:
        """One transaction: insert the records, charge only those newly inserted, settle their holds.

        A handful of statements per batch, not a few per record: every statement releases the GIL and must win it
        back from the busy event loop, and with a statement per record the writer fell behind a loaded loop
        (the queue, and memory, grew without bound)."""
        self._transaction(conn, CORE.write_records(self.holder, batch, self.clock()))

    def _transaction(self, conn: sqlite3.Connection, script: Script) -> Any:
        """Run a script of :mod:`.sql` in one transaction (rolled back if it raises)."""

        def do(op: Op) -> Any:
            if isinstance(op, Execute):
                return conn.execute(op.sql, op.args).rowcount
            if isinstance(op, Fetch):
                return conn.execute(op.sql, op.args).fetchall()
            return self._insert(conn, op.records)

        conn.execute("BEGIN IMMEDIATE")
        try:
            result = run_sync(script, do)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return result

    def _insert(self, conn: sqlite3.Connection, records: list[dict[str, Any]]) -> set:
        """Insert the records not stored yet, with as few statements as the parameter limit allows; the ids
        inserted. When some were stored before (a retried record) the insert is undone and redone without them:
        rare, so the common case pays for no look-up."""
        conn.execute("SAVEPOINT insert_generations")
        if self._insert_all(conn, records) != len(records):
            conn.execute("ROLLBACK TO insert_generations")
            ids = [r.get("id") for r in records]
            stored = set()
            step = max(1, self._max_vars - 1)
            for i in range(0, len(ids), step):
                chunk = ids[i:i + step]
                stored.update(rid for (rid,) in conn.execute(
                    f"SELECT id FROM generations WHERE id IN ({','.join('?' * len(chunk))})", chunk))
            records = [r for r in records if r.get("id") not in stored]
            if self._insert_all(conn, records) != len(records):
                raise sqlite3.IntegrityError("generation ids changed during the batch")
        conn.execute("RELEASE insert_generations")
        return {r.get("id") for r in records}

    def _insert_all(self, conn: sqlite3.Connection, records: list[dict[str, Any]]) -> int:
        per_insert = max(1, self._max_vars // len(GENERATION_FIELDS))
        inserted = 0
        for i in range(0, len(records), per_insert):
            rows = records[i:i + per_insert]
            inserted += conn.execute(_multi_insert(len(rows)),
                                     [v for rec in rows for v in generation_values(SQLITE, rec)]).rowcount
        return inserted

    def _sweep(self, conn: sqlite3.Connection) -> int:
        """Renew this store's lease, then give back the holds of instances that are gone."""
        self._next_sweep = time.monotonic() + self.lease / 3
        renewed, now = time.monotonic(), time.time()
        conn.execute("INSERT INTO instances (holder, host, pid, lease_until) VALUES (?, ?, ?, ?) ON CONFLICT (holder) "
                     "DO UPDATE SET lease_until = excluded.lease_until",
                     (self.holder, this_host(), os.getpid(), now + self.lease))
        self.renewed_at = renewed
        return self._reclaim(conn)

    def _retire(self, conn: sqlite3.Connection) -> None:
        """A clean shutdown: this store's lease ends now (whatever it still holds is given back by the next sweep)."""
        conn.execute("DELETE FROM instances WHERE holder = ?", (self.holder,))

    def _reclaim(self, conn: sqlite3.Connection) -> int:
        """Give back the holds of every instance without a live lease, and of instances on this host whose process
        has exited."""
        def script() -> Script:
            for holder, host, pid in (yield Fetch("SELECT holder, host, pid FROM instances WHERE holder != ?",
                                                  (self.holder,))):
                if dead_here(host, pid, holder):
                    yield Execute("DELETE FROM instances WHERE holder = ?", (holder,))
            yield Execute("DELETE FROM instances WHERE lease_until < ? AND holder != ?", (time.time(), self.holder))
            return (yield from CORE.reclaim(self.holder))

        n = self._transaction(conn, script())
        if n:
            log.warning("gave back %d budget holds of instances that are gone", n)
        return n

    async def reclaim_reservations(self) -> int:
        return await self._call(self._reclaim)

    async def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self._thread is None:
            raise RuntimeError("store is not open")
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._q.put(("call", fn, args, fut, loop))
        self._urgent.set()
        return await fut

    # --- keys --------------------------------------------------------------------------------------------------
    async def create_key(
        self, label: str, *, limit_pico: int | None = None, rpm: int | None = None, tpm: int | None = None,
        limit_reset: str | None = None, expires_at: float | None = None,
    ) -> tuple[str, KeyRecord]:
        plaintext, public_id, key_hash = new_key()
        rec, row = CORE.new_key(public_id, key_hash, label, limit_pico, rpm, tpm, self.clock(), limit_reset,
                                expires_at)
        await self._call(lambda conn: conn.execute(CORE.insert_key, row))
        return plaintext, rec

    async def get_key(self, public_id: str) -> KeyRecord | None:
        def get(conn: sqlite3.Connection) -> KeyRecord | None:
            row = conn.execute(CORE.get_key, (public_id,)).fetchone()
            return key_from_row(row, self.clock()) if row else None

        return await self._call(get)

    async def budget_view(self, key_id: str) -> KeyRecord | None:
        return await self.get_key(key_id)

    async def list_keys(self) -> list[KeyRecord]:
        return await self._call(lambda conn: [key_from_row(r, self.clock()) for r in conn.execute(CORE.list_keys)])

    async def update_key(self, public_id: str, **fields: Any) -> KeyRecord | None:
        script = CORE.update_key(public_id, fields, self.clock())
        return await self._call(lambda conn: self._transaction(conn, script))

    # --- money -------------------------------------------------------------------------------------------------
    async def reserve(self, key_id: str, amount_pico: int, *, spare_pico: int = 0) -> bool:
        def res(conn: sqlite3.Connection) -> bool:
            try:
                return self._transaction(conn, CORE.reserve(self.holder, key_id, int(amount_pico), int(spare_pico),
                                                            now=self.clock()))
            except Refused:
                return False

        return await self._call(res)

    async def release(self, key_id: str, amount_pico: int) -> None:
        if amount_pico > 0:
            await self._call(lambda conn: self._transaction(conn, CORE.release(self.holder, key_id,
                                                                               int(amount_pico))))

    async def get_credits(self, *, flush: bool = True) -> tuple[int | None, int]:
        # Operations run in arrival order on one thread, so earlier records are seen without a flush.
        return await self._call(lambda conn: tuple(conn.execute(CORE.get_credits).fetchone()))

    async def add_credits(self, amount_pico: int) -> tuple[int | None, int]:
        return await self._call(lambda conn: self._transaction(conn, CORE.add_credit(amount_pico)))

    async def key_spend_windows(self, key_id: str) -> dict[str, int]:
        """A key's spend since the start of the current UTC day, ISO week and month, picodollars."""
        args = CORE.spend_windows_args(key_id, spend_window_starts(self.clock()))
        await self.flush()
        row = await self._call(lambda conn: conn.execute(CORE.spend_windows, args).fetchone())
        return {"day": int(row[0]), "week": int(row[1]), "month": int(row[2])}

    # --- ledger ------------------------------------------------------------------------------------------------
    @property
    def pending_records(self) -> int:
        """Records accepted by :meth:`record_generation` and not yet written."""
        return self._pending

    def record_generation(self, record: dict[str, Any], reserved_pico: int = 0) -> asyncio.Future | None:
        try:
            loop = asyncio.get_running_loop()
            fut = loop.create_future()
        except RuntimeError:  # no event loop in this thread: nobody can wait for it
            loop = fut = None
        with self._pending_lock:
            self._pending += 1
        self._q.put(("rec", record, reserved_pico, fut, loop))
        return fut

    async def flush(self) -> None:
        def wait() -> None:
            with self._pending_lock:
                while self._pending > 0:
                    self._drained.wait(timeout=1.0)

        if self._pending > 0:
            self._urgent.set()  # a group commit in wait writes now
            await asyncio.get_running_loop().run_in_executor(None, wait)

    async def get_generation(self, gen_id: str) -> dict[str, Any] | None:
        def get(conn: sqlite3.Connection) -> dict[str, Any] | None:
            row = conn.execute(CORE.get_generation, (gen_id,)).fetchone()
            return generation_from_row(row) if row else None

        return await self._call(get)

    async def list_generations(
        self, *, limit: int = 50, key_id: str | None = None, since: float | None = None
    ) -> list[dict[str, Any]]:
        sql, args = CORE.list_generations(limit, key_id, since)
        return await self._call(lambda conn: [generation_from_row(r) for r in conn.execute(sql, args).fetchall()])

    async def app_ranking(
        self, *, since: float | None = None, key_id: str | None = None, limit: int = 20
    ) -> list[dict[str, Any]]:
        sql, args = CORE.app_ranking(since, key_id, limit)
        await self.flush()
        return await self._call(lambda conn: [dict(zip(APP_RANKING_COLUMNS, r)) for r in conn.execute(sql, args)])

    async def activity(
        self, *, since: float | None = None, until: float | None = None, key_id: str | None = None,
        app: str | None = None,
    ) -> list[dict[str, Any]]:
        sql, args = CORE.activity(since, until, key_id, app)
        await self.flush()
        return await self._call(lambda conn: [dict(zip(ACTIVITY_COLUMNS, r)) for r in conn.execute(sql, args)])

    async def search_generations(
        self, query: ActivityQuery, *, limit: int = 50, offset: int = 0, before: tuple[float, str] | None = None
    ) -> list[dict[str, Any]]:
        sql, args = CORE.search(query, limit, offset, before)
        return await self._read(lambda conn: [generation_from_row(r) for r in conn.execute(sql, args).fetchall()])

    async def activity_breakdown(
        self, query: ActivityQuery, *, by: str | None = None, bucket: int | None = None, limit: int | None = None
    ) -> list[dict[str, Any]]:
        sql, names, args = CORE.breakdown(query, by, bucket, limit)
        return await self._read(lambda conn: [breakdown_row(names, r) for r in conn.execute(sql, args).fetchall()])

    async def endpoint_samples(self, since: float, per_endpoint: int = 200, scan: int = 50_000) -> list[tuple]:
        sql, args = CORE.endpoint_samples(since, per_endpoint, scan)
        return await self._read(lambda conn: [tuple(r) for r in conn.execute(sql, args).fetchall()], flush=False)

    async def _read(self, fn: Callable[[sqlite3.Connection], Any], *, flush: bool = True) -> Any:
        """Run a read-only query on a connection of its own, on a thread of its own, after every queued record is
        written (unless not ``flush``): a dashboard's scans of many records neither wait for the writer thread nor
        hold up the reservations and charges queued behind them (WAL readers and the writer do not block each
        other)."""
        if flush:
            await self.flush()
        if self.path == ":memory:":  # a second connection would open another, empty database
            return await self._call(fn)
        if self._reader is None:
            self._reader = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="metarouter-sqlite-read")

        def run() -> Any:
            if self._reader_conn is None:
                self._reader_conn = self._connect()
            return fn(self._reader_conn)

        return await asyncio.get_running_loop().run_in_executor(self._reader, run)


def _set_result(fut: asyncio.Future, value: Any) -> None:
    if not fut.done():
        fut.set_result(value)


def _set_results(futs: list[tuple[asyncio.Future, bool]]) -> None:
    for fut, ok in futs:
        if not fut.done():
            fut.set_result(ok)


def _set_exc(fut: asyncio.Future, exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)
