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
    # 1: keys, account, generations
    """
    CREATE TABLE keys (
        public_id TEXT PRIMARY KEY,
        key_hash TEXT NOT NULL,
        label TEXT NOT NULL,
        limit_pico INTEGER,
        usage_pico INTEGER NOT NULL DEFAULT 0,
        reserved_pico INTEGER NOT NULL DEFAULT 0,
        disabled INTEGER NOT NULL DEFAULT 0,
        rpm INTEGER,
        tpm INTEGER,
        created_at REAL NOT NULL
    );
    CREATE TABLE account (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        credits_pico INTEGER,
        usage_pico INTEGER NOT NULL DEFAULT 0,
        reserved_pico INTEGER NOT NULL DEFAULT 0
    );
    INSERT INTO account (id, credits_pico, usage_pico, reserved_pico) VALUES (1, NULL, 0, 0);
    CREATE TABLE generations (
        id TEXT PRIMARY KEY,
        created_at REAL NOT NULL,
        key_id TEXT,
        app_referer TEXT,
        app_title TEXT,
        requested_model TEXT,
        model TEXT,
        provider TEXT,
        router TEXT,
        streamed INTEGER NOT NULL DEFAULT 0,
        status TEXT NOT NULL,
        prompt_tokens INTEGER NOT NULL DEFAULT 0,
        completion_tokens INTEGER NOT NULL DEFAULT 0,
        reasoning_tokens INTEGER NOT NULL DEFAULT 0,
        cached_tokens INTEGER NOT NULL DEFAULT 0,
        usage_estimated INTEGER NOT NULL DEFAULT 0,
        cost_pico INTEGER NOT NULL DEFAULT 0,
        latency_ms REAL,
        ttft_ms REAL,
        finish_reason TEXT,
        native_finish_reason TEXT,
        upstream_id TEXT,
        user_tag TEXT,
        session_id TEXT,
        error TEXT,
        attempts TEXT,
        routing TEXT
    );
    CREATE INDEX generations_created ON generations (created_at);
    CREATE INDEX generations_key ON generations (key_id, created_at);
    """,
    # 2: each budget hold is a row, so a process that dies (or another process opening the file: a worker, the
    # CLI) neither leaks nor wipes holds; rows older than the TTL are given back by whichever process sees them.
    """
    CREATE TABLE reservations (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        holder TEXT NOT NULL,
        key_id TEXT NOT NULL,
        amount_pico INTEGER NOT NULL,
        created_at REAL NOT NULL
    );
    CREATE INDEX reservations_holder ON reservations (holder, key_id, amount_pico);
    CREATE INDEX reservations_created ON reservations (created_at);
    UPDATE keys SET reserved_pico = 0;
    UPDATE account SET reserved_pico = 0;
    """,
    # 3: what an answer cost beyond its hold (the key is charged at most the hold), and the live instances: the
    # holds of one whose lease ran out, or whose process is gone, are given back (no fixed time-to-live)
    """
    ALTER TABLE generations ADD COLUMN overage_pico INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE instances (
        holder TEXT PRIMARY KEY,
        host TEXT NOT NULL,
        pid INTEGER NOT NULL,
        lease_until REAL NOT NULL
    );
    """,
    # 4: an answer not charged under zero completion insurance (no content; an error or no output tokens)
    """
    ALTER TABLE generations ADD COLUMN insured INTEGER NOT NULL DEFAULT 0;
    """,
]

_BATCH = 512
LINGER = 0.002  # seconds a record may wait for others to share its transaction
_STOP = object()


def _row_to_key(row: sqlite3.Row | tuple) -> KeyRecord:
    (public_id, key_hash, label, limit_pico, usage, reserved, disabled, rpm, tpm, created) = row
    return KeyRecord(public_id, label, key_hash, limit_pico, usage, reserved, bool(disabled), rpm, tpm, created)


_KEY_COLS = "public_id, key_hash, label, limit_pico, usage_pico, reserved_pico, disabled, rpm, tpm, created_at"


_MULTI_INSERT: dict[int, str] = {}


def _multi_insert(n: int) -> str:
    """``INSERT OR IGNORE INTO generations (…) VALUES (…), …`` for ``n`` rows (cached per ``n``)."""
    sql = _MULTI_INSERT.get(n)
    if sql is None:
        one = f"({', '.join('?' for _ in GENERATION_FIELDS)})"
        sql = f"INSERT OR IGNORE INTO generations ({', '.join(GENERATION_FIELDS)}) VALUES {', '.join([one] * n)}"
        if len(_MULTI_INSERT) < 1024:
            _MULTI_INSERT[n] = sql
    return sql


def generation_row(record: dict[str, Any]) -> tuple:
    vals = []
    for f in GENERATION_FIELDS:
        v = record.get(f)
        if f in JSON_FIELDS and v is not None:
            v = orjson.dumps(v).decode()
        elif f == "overage_pico":
            v = int(v or 0)
        elif f == "insured":
            v = int(bool(v))
        elif isinstance(v, bool):
            v = int(v)
        vals.append(v)
    return tuple(vals)


def generation_from_row(cols: list[str], row: tuple) -> dict[str, Any]:
    d = dict(zip(cols, row))
    for f in JSON_FIELDS:
        if d.get(f):
            d[f] = orjson.loads(d[f])
    for f in ("streamed", "usage_estimated", "insured"):
        if f in d:
            d[f] = bool(d[f])
    return d


class SQLiteStore:
    def __init__(self, path: str | Path, linger: float = LINGER):
        self.path = str(path)
        self.linger = linger
        self.lease = instance_lease()
        self.holder = new_holder()  # this store, in ``reservations.holder`` and ``instances``
        self._next_sweep = float("inf")  # set once the schema is migrated
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
            for version, sql in enumerate(MIGRATIONS[current:], start=current + 1):
                for stmt in [s.strip() for s in sql.split(";") if s.strip()]:
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
        fresh: dict[Any, tuple[dict[str, Any], int]] = {}
        for record, reserved in batch:  # a record repeated within the batch is the same record: charged once
            fresh.setdefault(record.get("id"), (record, reserved))
        todo = list(fresh.values())
        conn.execute("BEGIN IMMEDIATE")
        if not self._insert(conn, todo):
            # Some were written before (a retried record): they were charged then. Start again without them;
            # rare, so the common case pays for no look-up.
            conn.execute("ROLLBACK")
            conn.execute("BEGIN IMMEDIATE")
            ids = list(fresh)
            step = max(1, self._max_vars - 1)
            for i in range(0, len(ids), step):
                chunk = ids[i:i + step]
                for (rid,) in conn.execute(
                        f"SELECT id FROM generations WHERE id IN ({','.join('?' * len(chunk))})", chunk):
                    fresh.pop(rid, None)
            todo = list(fresh.values())
            if not self._insert(conn, todo):
                raise sqlite3.IntegrityError("generation ids changed during the batch")
        per_key: dict[str, list[int]] = {}  # key -> [cost, held] summed over the batch: one UPDATE per key
        total_cost = total_held = 0
        for record, reserved in todo:
            cost = int(record.get("cost_pico") or 0)
            key_id = record.get("key_id")
            held = self._drop_hold(conn, key_id, reserved) if key_id and reserved else 0
            if key_id:
                acc = per_key.get(key_id)
                if acc is None:
                    per_key[key_id] = [cost, held]
                else:
                    acc[0] += cost
                    acc[1] += held
            total_cost += cost
            total_held += held
        for key_id, (cost, held) in per_key.items():
            conn.execute(
                "UPDATE keys SET usage_pico = usage_pico + ?, reserved_pico = MAX(0, reserved_pico - ?) "
                "WHERE public_id = ?",
                (cost, held, key_id),
            )
        conn.execute(
            "UPDATE account SET usage_pico = usage_pico + ?, reserved_pico = MAX(0, reserved_pico - ?) WHERE id = 1",
            (total_cost, total_held),
        )
        conn.execute("COMMIT")

    def _insert(self, conn: sqlite3.Connection, todo: list[tuple[dict[str, Any], int]]) -> bool:
        """Insert the records with as few statements as the parameter limit allows; False if any id was already
        there (those rows are left as they were)."""
        per_insert = max(1, self._max_vars // len(GENERATION_FIELDS))
        inserted = 0
        for i in range(0, len(todo), per_insert):
            rows = todo[i:i + per_insert]
            inserted += conn.execute(_multi_insert(len(rows)),
                                     [v for rec, _ in rows for v in generation_row(rec)]).rowcount
        return inserted == len(todo)

    def _drop_hold(self, conn: sqlite3.Connection, key_id: str, amount: int) -> int:
        """Delete this process's oldest matching hold; its amount, or 0 if it had already expired."""
        row = conn.execute(
            "SELECT id FROM reservations WHERE holder = ? AND key_id = ? AND amount_pico = ? ORDER BY id LIMIT 1",
            (self.holder, key_id, amount),
        ).fetchone()
        if row is None:
            return 0
        conn.execute("DELETE FROM reservations WHERE id = ?", (row[0],))
        return amount

    def _sweep(self, conn: sqlite3.Connection) -> int:
        """Renew this store's lease, then give back the holds of instances that are gone."""
        self._next_sweep = time.monotonic() + self.lease / 3
        now = time.time()
        conn.execute("INSERT INTO instances (holder, host, pid, lease_until) VALUES (?, ?, ?, ?) ON CONFLICT (holder) "
                     "DO UPDATE SET lease_until = excluded.lease_until",
                     (self.holder, this_host(), os.getpid(), now + self.lease))
        return self._reclaim(conn)

    def _retire(self, conn: sqlite3.Connection) -> None:
        """A clean shutdown: this store's lease ends now (whatever it still holds is given back by the next sweep)."""
        conn.execute("DELETE FROM instances WHERE holder = ?", (self.holder,))

    def _reclaim(self, conn: sqlite3.Connection) -> int:
        """Give back the holds of every instance without a live lease, and of instances on this host whose process
        has exited."""
        now = time.time()
        conn.execute("BEGIN IMMEDIATE")
        try:
            for holder, host, pid in conn.execute("SELECT holder, host, pid FROM instances WHERE holder != ?",
                                                  (self.holder,)).fetchall():
                if dead_here(host, pid, holder):
                    conn.execute("DELETE FROM instances WHERE holder = ?", (holder,))
            conn.execute("DELETE FROM instances WHERE lease_until < ? AND holder != ?", (now, self.holder))
            rows = conn.execute("SELECT id, key_id, amount_pico FROM reservations WHERE holder != ? AND holder NOT IN "
                                "(SELECT holder FROM instances)", (self.holder,)).fetchall()
            per_key: dict[str, int] = {}
            for _, key_id, amount in rows:
                per_key[key_id] = per_key.get(key_id, 0) + amount
            conn.executemany("DELETE FROM reservations WHERE id = ?", [(r[0],) for r in rows])
            for key_id, amount in per_key.items():
                conn.execute("UPDATE keys SET reserved_pico = MAX(0, reserved_pico - ?) WHERE public_id = ?",
                             (amount, key_id))
            if rows:
                conn.execute("UPDATE account SET reserved_pico = MAX(0, reserved_pico - ?) WHERE id = 1",
                             (sum(per_key.values()),))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        if rows:
            log.warning("gave back %d budget holds of instances that are gone", len(rows))
        return len(rows)

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
        self, label: str, *, limit_pico: int | None = None, rpm: int | None = None, tpm: int | None = None
    ) -> tuple[str, KeyRecord]:
        plaintext, public_id, key_hash = new_key()
        rec = KeyRecord(public_id, label, key_hash, limit_pico, 0, 0, False, rpm, tpm, time.time())

        def insert(conn: sqlite3.Connection) -> None:
            conn.execute(
                f"INSERT INTO keys ({_KEY_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (public_id, key_hash, label, limit_pico, 0, 0, 0, rpm, tpm, rec.created_at),
            )

        await self._call(insert)
        return plaintext, rec

    async def get_key(self, public_id: str) -> KeyRecord | None:
        def get(conn: sqlite3.Connection) -> KeyRecord | None:
            row = conn.execute(f"SELECT {_KEY_COLS} FROM keys WHERE public_id = ?", (public_id,)).fetchone()
            return _row_to_key(row) if row else None

        return await self._call(get)

    async def list_keys(self) -> list[KeyRecord]:
        def get(conn: sqlite3.Connection) -> list[KeyRecord]:
            return [_row_to_key(r) for r in conn.execute(f"SELECT {_KEY_COLS} FROM keys ORDER BY created_at")]

        return await self._call(get)

    async def update_key(self, public_id: str, **fields: Any) -> KeyRecord | None:
        allowed = {"label", "limit_pico", "disabled", "rpm", "tpm"}
        bad = set(fields) - allowed
        if bad:
            raise ValueError(f"cannot update {', '.join(sorted(bad))}")

        def upd(conn: sqlite3.Connection) -> KeyRecord | None:
            if fields:
                cols = ", ".join(f"{k} = ?" for k in fields)  # names from the allow-list above only
                vals = [int(v) if isinstance(v, bool) else v for v in fields.values()]
                conn.execute(f"UPDATE keys SET {cols} WHERE public_id = ?", (*vals, public_id))
            row = conn.execute(f"SELECT {_KEY_COLS} FROM keys WHERE public_id = ?", (public_id,)).fetchone()
            return _row_to_key(row) if row else None

        return await self._call(upd)

    # --- money -------------------------------------------------------------------------------------------------
    async def reserve(self, key_id: str, amount_pico: int) -> bool:
        def res(conn: sqlite3.Connection) -> bool:
            conn.execute("BEGIN IMMEDIATE")
            cur = conn.execute(
                "UPDATE keys SET reserved_pico = reserved_pico + ? WHERE public_id = ? AND "
                "(limit_pico IS NULL OR usage_pico + reserved_pico + ? <= limit_pico)",
                (amount_pico, key_id, amount_pico),
            )
            if cur.rowcount != 1:
                conn.execute("ROLLBACK")
                return False
            cur = conn.execute(
                "UPDATE account SET reserved_pico = reserved_pico + ? WHERE id = 1 AND "
                "(credits_pico IS NULL OR usage_pico + reserved_pico + ? <= credits_pico)",
                (amount_pico, amount_pico),
            )
            if cur.rowcount != 1:
                conn.execute("ROLLBACK")
                return False
            if amount_pico:
                conn.execute("INSERT INTO reservations (holder, key_id, amount_pico, created_at) VALUES (?, ?, ?, ?)",
                             (self.holder, key_id, amount_pico, time.time()))
            conn.execute("COMMIT")
            return True

        return await self._call(res)

    async def release(self, key_id: str, amount_pico: int) -> None:
        def rel(conn: sqlite3.Connection) -> None:
            conn.execute("BEGIN IMMEDIATE")
            held = self._drop_hold(conn, key_id, amount_pico)
            if held:
                conn.execute("UPDATE keys SET reserved_pico = MAX(0, reserved_pico - ?) WHERE public_id = ?",
                             (held, key_id))
                conn.execute("UPDATE account SET reserved_pico = MAX(0, reserved_pico - ?) WHERE id = 1", (held,))
            conn.execute("COMMIT")

        if amount_pico > 0:
            await self._call(rel)

    async def get_credits(self, *, flush: bool = True) -> tuple[int | None, int]:
        # Operations run in arrival order on one thread, so earlier records are seen without a flush.
        def get(conn: sqlite3.Connection) -> tuple[int | None, int]:
            row = conn.execute("SELECT credits_pico, usage_pico FROM account WHERE id = 1").fetchone()
            return row[0], row[1]

        return await self._call(get)

    async def add_credits(self, amount_pico: int) -> tuple[int | None, int]:
        def add(conn: sqlite3.Connection) -> tuple[int | None, int]:
            conn.execute("UPDATE account SET credits_pico = COALESCE(credits_pico, 0) + ? WHERE id = 1", (amount_pico,))
            row = conn.execute("SELECT credits_pico, usage_pico FROM account WHERE id = 1").fetchone()
            return row[0], row[1]

        return await self._call(add)

    async def key_spend_windows(self, key_id: str) -> dict[str, int]:
        """A key's spend since the start of the current UTC day, ISO week and month, picodollars."""
        starts = spend_window_starts(time.time())

        def get(conn: sqlite3.Connection) -> dict[str, int]:
            out = {}
            for name, since in starts.items():
                row = conn.execute("SELECT COALESCE(SUM(cost_pico), 0) FROM generations WHERE key_id = ? AND "
                                   "created_at >= ?", (key_id, since)).fetchone()
                out[name] = int(row[0])
            return out

        await self.flush()
        return await self._call(get)

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
            cur = conn.execute(f"SELECT {', '.join(GENERATION_FIELDS)} FROM generations WHERE id = ?", (gen_id,))
            row = cur.fetchone()
            return generation_from_row(list(GENERATION_FIELDS), row) if row else None

        return await self._call(get)

    async def list_generations(
        self, *, limit: int = 50, key_id: str | None = None, since: float | None = None
    ) -> list[dict[str, Any]]:
        def get(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            where, args = ["1=1"], []
            if key_id:
                where.append("key_id = ?")
                args.append(key_id)
            if since is not None:
                where.append("created_at >= ?")
                args.append(since)
            cur = conn.execute(
                f"SELECT {', '.join(GENERATION_FIELDS)} FROM generations WHERE {' AND '.join(where)} "
                "ORDER BY created_at DESC LIMIT ?",
                (*args, int(limit)),
            )
            return [generation_from_row(list(GENERATION_FIELDS), r) for r in cur.fetchall()]

        return await self._call(get)

    async def app_ranking(
        self, *, since: float | None = None, key_id: str | None = None, limit: int = 20
    ) -> list[dict[str, Any]]:
        def get(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            where, args = "", []
            if since is not None:
                where += " AND created_at >= ?"
                args.append(since)
            if key_id is not None:
                where += " AND key_id = ?"
                args.append(key_id)
            cur = conn.execute(APP_RANKING_SQL.format(where=where, limit=int(limit)), args)
            return [dict(zip(("app", "requests", "tokens", "cost_pico"), r)) for r in cur.fetchall()]

        await self.flush()
        return await self._call(get)

    async def activity(
        self, *, since: float | None = None, until: float | None = None, key_id: str | None = None,
        app: str | None = None,
    ) -> list[dict[str, Any]]:
        def get(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            where, args = ["1=1"], []
            for cond, val in (("created_at >= ?", since), ("created_at < ?", until), ("key_id = ?", key_id)):
                if val is not None:
                    where.append(cond)
                    args.append(val)
            if app is not None:
                where.append("(app_title = ? OR app_referer = ?)")
                args += [app, app]
            cur = conn.execute(
                "SELECT date(created_at, 'unixepoch') AS day, model, COUNT(*), SUM(prompt_tokens), "
                "SUM(completion_tokens), SUM(reasoning_tokens), SUM(cost_pico) FROM generations "
                f"WHERE {' AND '.join(where)} GROUP BY day, model ORDER BY day DESC, model",
                args,
            )
            cols = ["date", "model", "requests", "prompt_tokens", "completion_tokens", "reasoning_tokens", "cost_pico"]
            return [dict(zip(cols, r)) for r in cur.fetchall()]

        await self.flush()
        return await self._call(get)

    async def search_generations(
        self, query: ActivityQuery, *, limit: int = 50, offset: int = 0, before: tuple[float, str] | None = None
    ) -> list[dict[str, Any]]:
        where, args = activity_where(query, lambda _: "?")
        if before is not None:
            where += " AND (created_at, id) < (?, ?)"
            args += [float(before[0]), str(before[1])]

        def get(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            cur = conn.execute(
                f"SELECT {', '.join(GENERATION_FIELDS)} FROM generations WHERE {where} "
                "ORDER BY created_at DESC, id DESC LIMIT ? OFFSET ?",
                (*args, int(limit), int(offset)),
            )
            return [generation_from_row(list(GENERATION_FIELDS), r) for r in cur.fetchall()]

        return await self._read(get)

    async def activity_breakdown(
        self, query: ActivityQuery, *, by: str | None = None, bucket: int | None = None, limit: int | None = None
    ) -> list[dict[str, Any]]:
        # created_at is positive, so the integer cast floors
        sql, names, args = breakdown_sql(query, by, bucket, limit, lambda _: "?",
                                         lambda b: f"CAST(created_at / {b} AS INTEGER) * {b}")

        def get(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            return [breakdown_row(names, r) for r in conn.execute(sql, args).fetchall()]

        return await self._read(get)

    async def _read(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        """Run a read-only query on a connection of its own, on a thread of its own, after every queued record is
        written: a dashboard's scans of many records neither wait for the writer thread nor hold up the
        reservations and charges queued behind them (WAL readers and the writer do not block each other)."""
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


APP_RANKING_SQL = (
    "SELECT COALESCE(app_title, app_referer) AS app, COUNT(*) AS requests, "
    "SUM(prompt_tokens + completion_tokens) AS tokens, SUM(cost_pico) AS cost_pico FROM generations "
    "WHERE COALESCE(app_title, app_referer) IS NOT NULL {where} GROUP BY 1 ORDER BY tokens DESC, app LIMIT {limit}"
)


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
