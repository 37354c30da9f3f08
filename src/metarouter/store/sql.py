"""What the SQLite and PostgreSQL stores share: the schema (in each dialect's types), the key columns and what of a
key may change, the row mappers, the queries, and the money — how a hold is taken, given back, settled by its
generation record, and reclaimed from an instance that is gone.

The money transactions are written once, as *scripts*: generators that yield each statement (:class:`Execute`,
:class:`Fetch`, :class:`InsertGenerations`) and are sent its result. A backend runs a script inside one
transaction of its own, on its own connection (:func:`run_sync` on SQLite's writer thread, :func:`run_async` on an
asyncpg connection): each backend keeps only its connection, its placeholders and its locking.

**Holds.** An instance (``reservations.holder``) has one row per key it holds budget on: the sum of its holds
there. Taking a hold adds to that row, giving one back or settling one subtracts from it — never more than the row
still has (an instance whose lease ran out had its rows reclaimed; its late releases give back nothing more), and
``keys.reserved_pico`` and ``account.reserved_pico`` move by what the row moved. Lock order everywhere: the
instance's rows (by key), then keys (by id), then the account, so concurrent transactions cannot deadlock.

**Periods.** A key with a ``limit_reset`` (daily, weekly, monthly; UTC) has its limit checked against
``period_usage_pico``, the spend since ``period_start``. A hold or a charge first rolls the key's period over (its
spend zeroed, its start moved) where a newer period has begun by the store's clock, in the same transaction and
under the same row lock: replicas roll a period over once, only forward, and a cost lands in the period current
when its record is written. Holds in flight stay in ``reserved_pico`` across the boundary, so the limit holds in
every period.

**Records.** A batch of generation records is one transaction: insert them (idempotent by id), then charge each
newly inserted record's cost to its key and the account and settle its hold. A record that was already stored —
a write retried after its acknowledgement was lost, or the same record sent twice — settles nothing again: its
hold was settled by the write that stored it, and a hold of the same size held now belongs to another request.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Generator, Iterable

import orjson

from .base import (
    GENERATION_FIELDS,
    JSON_FIELDS,
    ActivityQuery,
    KeyRecord,
    activity_where,
    breakdown_sql,
    check_limit_reset,
    current_period_start,
    spend_window_starts,
)


@dataclass(frozen=True)
class Dialect:
    name: str
    #: numbered placeholders (``$1``, asyncpg) rather than ``?`` (sqlite3)
    numbered: bool
    #: the words that differ between the dialects, by the ``{name}`` the statements below use
    words: dict[str, str]

    def sql(self, text: str) -> str:
        """``text`` in this dialect: its ``{word}``s filled in, its ``?`` placeholders numbered where needed."""
        text = text.format(**self.words)
        if self.numbered:
            head, *rest = text.split("?")
            text = head + "".join(f"${i}{part}" for i, part in enumerate(rest, start=1))
        return text

    def placeholder(self, n: int) -> str:
        return f"${n}" if self.numbered else "?"

    def flag(self, value: Any) -> bool | int:
        return bool(value) if self.name == "postgres" else int(bool(value))


SQLITE = Dialect("sqlite", numbered=False, words={
    "bigint": "INTEGER", "double": "REAL", "flag": "INTEGER", "false": "0", "json": "TEXT", "instant": "REAL",
    "serial": "INTEGER PRIMARY KEY AUTOINCREMENT", "default_now": "", "greatest": "MAX", "for_update": "",
    "skip_locked": "", "day": "date(created_at, 'unixepoch')", "distinct": "IS NOT",
    # a response-cache hit (routing.cache.hit, see gateway/cache.py is_cache_hit)
    "cache_hit": "COALESCE(json_extract(routing, '$.cache.hit'), 0) = 1",
})
POSTGRES = Dialect("postgres", numbered=True, words={
    "bigint": "BIGINT", "double": "DOUBLE PRECISION", "flag": "BOOLEAN", "false": "FALSE", "json": "JSONB",
    "instant": "TIMESTAMPTZ", "serial": "BIGSERIAL PRIMARY KEY", "default_now": " DEFAULT now()",
    "greatest": "GREATEST", "for_update": " FOR UPDATE", "skip_locked": " FOR UPDATE SKIP LOCKED",
    "day": "to_char(to_timestamp(created_at) AT TIME ZONE 'UTC', 'YYYY-MM-DD')", "distinct": "IS DISTINCT FROM",
    "cache_hit": "COALESCE(routing->'cache'->>'hit' = 'true', FALSE)",  # (as SQLite's)
})

# --- schema ------------------------------------------------------------------------------------------------------
_KEYS = """CREATE TABLE keys (
    public_id TEXT PRIMARY KEY,
    key_hash TEXT NOT NULL,
    label TEXT NOT NULL,
    limit_pico {bigint},
    usage_pico {bigint} NOT NULL DEFAULT 0,
    reserved_pico {bigint} NOT NULL DEFAULT 0,
    disabled {flag} NOT NULL DEFAULT {false},
    rpm INTEGER,
    tpm INTEGER,
    created_at {double} NOT NULL
)"""
_ACCOUNT = """CREATE TABLE account (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    credits_pico {bigint},
    usage_pico {bigint} NOT NULL DEFAULT 0,
    reserved_pico {bigint} NOT NULL DEFAULT 0
)"""
_ACCOUNT_ROW = "INSERT INTO account (id, credits_pico, usage_pico, reserved_pico) VALUES (1, NULL, 0, 0)"
_GENERATIONS = """CREATE TABLE generations (
    id TEXT PRIMARY KEY,
    created_at {double} NOT NULL,
    key_id TEXT,
    app_referer TEXT,
    app_title TEXT,
    requested_model TEXT,
    model TEXT,
    provider TEXT,
    router TEXT,
    streamed {flag} NOT NULL DEFAULT {false},
    status TEXT NOT NULL,
    prompt_tokens {bigint} NOT NULL DEFAULT 0,
    completion_tokens {bigint} NOT NULL DEFAULT 0,
    reasoning_tokens {bigint} NOT NULL DEFAULT 0,
    cached_tokens {bigint} NOT NULL DEFAULT 0,
    usage_estimated {flag} NOT NULL DEFAULT {false},
    cost_pico {bigint} NOT NULL DEFAULT 0,
    latency_ms {double},
    ttft_ms {double},
    finish_reason TEXT,
    native_finish_reason TEXT,
    upstream_id TEXT,
    user_tag TEXT,
    session_id TEXT,
    error TEXT,
    attempts {json},
    routing {json}
)"""
_GENERATION_INDEXES = ["CREATE INDEX generations_created ON generations (created_at)",
                       "CREATE INDEX generations_key ON generations (key_id, created_at)"]
# each budget hold a row (a process that dies, or another process opening the database, neither leaks nor wipes
# holds); replaced by one row per instance and key (below)
_HOLD_PER_ROW = [
    """CREATE TABLE reservations (
        id {serial},
        holder TEXT NOT NULL,
        key_id TEXT NOT NULL,
        amount_pico {bigint} NOT NULL,
        created_at {instant} NOT NULL{default_now}
    )""",
    "CREATE INDEX reservations_holder ON reservations (holder, key_id, amount_pico)",
    "CREATE INDEX reservations_created ON reservations (created_at)",
]
# what an answer cost beyond its hold (the key is charged at most the hold), and the live instances: the holds of
# one whose lease ran out, or whose process is gone, are given back (no fixed time-to-live)
_OVERAGE_AND_INSTANCES = [
    "ALTER TABLE generations ADD COLUMN overage_pico {bigint} NOT NULL DEFAULT 0",
    """CREATE TABLE instances (
        holder TEXT PRIMARY KEY,
        host TEXT NOT NULL,
        pid INTEGER NOT NULL,
        lease_until {instant} NOT NULL
    )""",
]
# one row per instance and key, the sum of its holds there: a hold can then be given back in part (what a budget
# lease does), and no release has to find a row of its exact size
_HOLD_PER_KEY = [
    """CREATE TABLE holds (
        holder TEXT NOT NULL,
        key_id TEXT NOT NULL,
        amount_pico {bigint} NOT NULL,
        PRIMARY KEY (holder, key_id)
    )""",
    "INSERT INTO holds (holder, key_id, amount_pico) SELECT holder, key_id, SUM(amount_pico) FROM reservations "
    "GROUP BY holder, key_id",
    "DROP TABLE reservations",
    "ALTER TABLE holds RENAME TO reservations",
]
# an answer not charged under zero completion insurance (no content; an error or no output tokens)
_INSURED = ["ALTER TABLE generations ADD COLUMN insured {flag} NOT NULL DEFAULT {false}"]
# budgets that reset and keys that expire: the key's ``limit_reset`` (daily, weekly, monthly or NULL), the start of
# the period its ``period_usage_pico`` counts (zeroed in the transaction that first sees a newer period begin),
# and ``expires_at`` (epoch seconds)
_PERIODS = [
    "ALTER TABLE keys ADD COLUMN limit_reset TEXT",
    "ALTER TABLE keys ADD COLUMN expires_at {double}",
    "ALTER TABLE keys ADD COLUMN period_start {double}",
    "ALTER TABLE keys ADD COLUMN period_usage_pico {bigint} NOT NULL DEFAULT 0",
]

#: each backend's migrations (``schema_version`` counts those applied): the same statements, grouped as each
#: backend's history applied them (SQLite added the hold rows in a migration of their own)
_HISTORY: dict[str, list[list[str]]] = {
    "sqlite": [
        [_KEYS, _ACCOUNT, _ACCOUNT_ROW, _GENERATIONS, *_GENERATION_INDEXES],
        [*_HOLD_PER_ROW, "UPDATE keys SET reserved_pico = 0", "UPDATE account SET reserved_pico = 0"],
        _OVERAGE_AND_INSTANCES,
        _HOLD_PER_KEY,
        _INSURED,
        _PERIODS,
    ],
    "postgres": [
        [_KEYS, _ACCOUNT, _ACCOUNT_ROW, _GENERATIONS, *_GENERATION_INDEXES, *_HOLD_PER_ROW],
        _OVERAGE_AND_INSTANCES,
        _HOLD_PER_KEY,
        _INSURED,
        _PERIODS,
    ],
}


def migrations(d: Dialect) -> list[list[str]]:
    """The migrations of dialect ``d``: a list of statements per schema version."""
    return [[d.sql(s) for s in version] for version in _HISTORY[d.name]]


# --- keys --------------------------------------------------------------------------------------------------------
KEY_COLUMNS = ("public_id", "key_hash", "label", "limit_pico", "usage_pico", "reserved_pico", "disabled", "rpm",
               "tpm", "created_at", "limit_reset", "expires_at", "period_start", "period_usage_pico")
KEY_COLS = ", ".join(KEY_COLUMNS)
#: what ``update_key`` may change (an allow-list: the names go into SQL)
KEY_UPDATABLE = ("label", "limit_pico", "disabled", "rpm", "tpm", "limit_reset", "expires_at")


def key_from_row(row: Any, now: float | None = None) -> KeyRecord:
    """A ``keys`` row (its columns in :data:`KEY_COLUMNS` order) as a record; with ``now``, as of then
    (:meth:`KeyRecord.as_of`: a period that has ended shows no spend)."""
    (public_id, key_hash, label, limit_pico, usage, reserved, disabled, rpm, tpm, created, limit_reset, expires_at,
     period_start, period_usage) = tuple(row)
    rec = KeyRecord(public_id, label, key_hash, limit_pico, usage, reserved, bool(disabled), rpm, tpm, created,
                    limit_reset, expires_at, period_start, int(period_usage or 0))
    return rec if now is None else rec.as_of(now)


def checked_key_fields(fields: dict[str, Any]) -> None:
    bad = set(fields) - set(KEY_UPDATABLE)
    if bad:
        raise ValueError(f"cannot update {', '.join(sorted(bad))}")
    if "limit_reset" in fields:
        check_limit_reset(fields["limit_reset"])


# --- generations -------------------------------------------------------------------------------------------------
GEN_COLS = ", ".join(GENERATION_FIELDS)
_INT_FIELDS = frozenset(("prompt_tokens", "completion_tokens", "reasoning_tokens", "cached_tokens", "cost_pico",
                         "overage_pico"))
_FLOAT_FIELDS = frozenset(("created_at", "latency_ms", "ttft_ms"))
_FLAG_FIELDS = frozenset(("streamed", "usage_estimated", "insured"))


def generation_values(d: Dialect, record: dict[str, Any]) -> list[Any]:
    """One record's values in :data:`GENERATION_FIELDS` order, as the columns take them (JSON fields as text)."""
    vals = []
    for f in GENERATION_FIELDS:
        v = record.get(f)
        if f in JSON_FIELDS:
            v = orjson.dumps(v).decode() if v is not None else None
        elif f in _FLAG_FIELDS:
            v = d.flag(v)
        elif f in _INT_FIELDS:
            v = int(v or 0)
        elif f in _FLOAT_FIELDS:
            v = float(v) if v is not None else None
        elif v is not None and not isinstance(v, str):
            v = str(v)
        vals.append(v)
    return vals


def generation_from_row(row: Any, cols: tuple[str, ...] = GENERATION_FIELDS) -> dict[str, Any]:
    d = dict(zip(cols, tuple(row)))
    for f in JSON_FIELDS:
        if d.get(f):
            d[f] = orjson.loads(d[f])
    for f in _FLAG_FIELDS:
        if f in d:
            d[f] = bool(d[f])
    return d


# --- scripts -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Execute:
    """Run one statement; its result is the number of rows it changed."""

    sql: str
    args: tuple = ()


@dataclass(frozen=True, slots=True)
class Fetch:
    """Run one query; its result is its rows (indexable)."""

    sql: str
    args: tuple = ()


@dataclass(frozen=True, slots=True)
class InsertGenerations:
    """Insert the records whose ids are not stored yet; its result is the set of ids inserted."""

    records: list[dict[str, Any]]


Op = Execute | Fetch | InsertGenerations
Script = Generator[Op, Any, Any]


class Refused(Exception):
    """A conditional UPDATE matched no row: the backend rolls the transaction back."""


def run_sync(script: Script, do: Callable[[Op], Any]) -> Any:
    """Run ``script``, each of its statements by ``do``; its return value."""
    result = None
    while True:
        try:
            op = script.send(result)
        except StopIteration as stop:
            return stop.value
        result = do(op)


async def run_async(script: Script, do: Callable[[Op], Awaitable[Any]]) -> Any:
    result = None
    while True:
        try:
            op = script.send(result)
        except StopIteration as stop:
            return stop.value
        result = await do(op)


@dataclass
class Settlement:
    """What a batch of newly stored records charges: per key (cost, hold to settle), and the account's cost."""

    per_key: dict[str, list[int]] = dataclasses.field(default_factory=dict)
    cost: int = 0


def settlement(stored: Iterable[tuple[dict[str, Any], int]]) -> Settlement:
    """The charges of ``(record, reserved)`` pairs that were newly stored: each record's cost to its key and the
    account, each hold settled against its key."""
    out = Settlement()
    for record, reserved in stored:
        cost = int(record.get("cost_pico") or 0)
        key_id = record.get("key_id")
        if key_id:
            acc = out.per_key.setdefault(key_id, [0, 0])
            acc[0] += cost
            acc[1] += int(reserved or 0)
        out.cost += cost
    return out


class Core:
    """The statements of one dialect, rendered once, and the scripts that use them."""

    def __init__(self, d: Dialect):
        self.dialect = d
        s = d.sql
        self.get_key = s(f"SELECT {KEY_COLS} FROM keys WHERE public_id = ?")
        self.list_keys = s(f"SELECT {KEY_COLS} FROM keys ORDER BY created_at")
        self.insert_key = s(f"INSERT INTO keys ({KEY_COLS}) VALUES ({', '.join('?' * len(KEY_COLUMNS))})")
        self.get_credits = s("SELECT credits_pico, usage_pico FROM account WHERE id = 1")
        self.add_credits = s("UPDATE account SET credits_pico = COALESCE(credits_pico, 0) + ? WHERE id = 1")
        self.get_generation = s(f"SELECT {GEN_COLS} FROM generations WHERE id = ?")
        self.spend_windows = s(
            "SELECT CAST(COALESCE(SUM(CASE WHEN created_at >= ? THEN cost_pico ELSE 0 END), 0) AS BIGINT), "
            "CAST(COALESCE(SUM(CASE WHEN created_at >= ? THEN cost_pico ELSE 0 END), 0) AS BIGINT), "
            "CAST(COALESCE(SUM(CASE WHEN created_at >= ? THEN cost_pico ELSE 0 END), 0) AS BIGINT) "
            "FROM generations WHERE key_id = ? AND created_at >= ?")
        # money
        self.hold_add = s("INSERT INTO reservations (holder, key_id, amount_pico) VALUES (?, ?, ?) ON CONFLICT "
                          "(holder, key_id) DO UPDATE SET amount_pico = reservations.amount_pico + excluded.amount_pico")
        self.hold_get = s("SELECT amount_pico FROM reservations WHERE holder = ? AND key_id = ?{for_update}")
        self.hold_set = s("UPDATE reservations SET amount_pico = ? WHERE holder = ? AND key_id = ?")
        self.hold_drop = s("DELETE FROM reservations WHERE holder = ? AND key_id = ?")
        self.holds_of_the_gone = s(
            "SELECT holder, key_id, amount_pico FROM reservations r WHERE holder <> ? AND NOT EXISTS "
            "(SELECT 1 FROM instances i WHERE i.holder = r.holder) ORDER BY holder, key_id{skip_locked}")
        # The key's current period starts at ``period`` (its arguments: the day's, week's and month's starts). A newer
        # period has begun when that is later than the one the key counts: its spend starts at zero. Only ever
        # forward: a replica whose clock lags sees the period already begun and leaves it be.
        period = "CASE limit_reset WHEN 'daily' THEN CAST(? AS {double}) WHEN 'weekly' THEN CAST(? AS {double}) " \
                 "ELSE CAST(? AS {double}) END"
        ended = f"(limit_reset IS NOT NULL AND (period_start IS NULL OR period_start < {period}))"
        self.roll_period = s(f"UPDATE keys SET period_usage_pico = 0, period_start = {period} WHERE public_id = ? "
                             f"AND {ended}")
        # A hold: with a reset, the limit applies to the current period's spend. The roll-over is part of the same
        # statement (one round trip; every expression reads the row as it was): arguments, see :meth:`reserve`.
        spent = f"(CASE WHEN limit_reset IS NULL THEN usage_pico WHEN {ended} THEN 0 ELSE period_usage_pico END)"
        self.reserve_key = s(
            f"UPDATE keys SET reserved_pico = reserved_pico + ?, "
            f"period_usage_pico = CASE WHEN {ended} THEN 0 ELSE period_usage_pico END, "
            f"period_start = CASE WHEN {ended} THEN {period} ELSE period_start END "
            f"WHERE public_id = ? AND (limit_pico IS NULL OR {spent} + reserved_pico + ? <= limit_pico)")
        # a new reset: its current period counts the key's recorded spend since that period began
        self.recount_period = s(
            "UPDATE keys SET period_start = ?, period_usage_pico = (SELECT CAST(COALESCE(SUM(cost_pico), 0) AS "
            "BIGINT) FROM generations WHERE key_id = ? AND created_at >= ?) WHERE public_id = ? AND "
            "limit_reset {distinct} ?")
        self.reserve_account = s("UPDATE account SET reserved_pico = reserved_pico + ? WHERE id = 1 AND "
                                 "(credits_pico IS NULL OR usage_pico + reserved_pico + ? <= credits_pico)")
        self.charge_key = s("UPDATE keys SET usage_pico = usage_pico + ?, period_usage_pico = period_usage_pico + ?, "
                            "reserved_pico = {greatest}(0, reserved_pico - ?) WHERE public_id = ?")
        self.charge_account = s("UPDATE account SET usage_pico = usage_pico + ?, "
                                "reserved_pico = {greatest}(0, reserved_pico - ?) WHERE id = 1")

    # --- keys and credits ---
    def new_key(self, public_id: str, key_hash: str, label: str, limit_pico: int | None, rpm: int | None,
                tpm: int | None, created_at: float, limit_reset: str | None = None,
                expires_at: float | None = None) -> tuple[KeyRecord, tuple]:
        """A new key's record and its row for :attr:`insert_key` (a reset's first period is the current one)."""
        rec = KeyRecord(public_id, label, key_hash, limit_pico, 0, 0, False, rpm, tpm, created_at,
                        check_limit_reset(limit_reset), expires_at, current_period_start(limit_reset, created_at), 0)
        row = (public_id, key_hash, label, limit_pico, 0, 0, self.dialect.flag(False), rpm, tpm, created_at,
               rec.limit_reset, expires_at, rec.period_start, 0)
        return rec, row

    def update_key(self, public_id: str, fields: dict[str, Any], now: float) -> Script:
        """Change the allowed ``fields`` of a key; returns its record as of ``now`` (None if there is no such key).
        Names outside :data:`KEY_UPDATABLE`, and a ``limit_reset`` that is none of them, raise ValueError here,
        before anything runs. A ``limit_reset`` that changes starts its current period with the key's recorded
        spend since then."""
        checked_key_fields(fields)
        cols = ", ".join(f"{k} = ?" for k in fields)  # names from the allow-list only
        vals = [self.dialect.flag(v) if k == "disabled" else v for k, v in fields.items()]
        update = self.dialect.sql(f"UPDATE keys SET {cols} WHERE public_id = ?") if fields else None
        reset = fields.get("limit_reset")
        start = current_period_start(reset, now)

        def script() -> Script:
            if start is not None:  # before the reset is set: only where it changes
                yield Execute(self.recount_period, (start, public_id, start, public_id, reset))
            if update is not None:
                yield Execute(update, (*vals, public_id))
            rows = yield Fetch(self.get_key, (public_id,))
            return key_from_row(rows[0], now) if rows else None

        return script()

    def add_credit(self, amount_pico: int) -> Script:
        yield Execute(self.add_credits, (int(amount_pico),))
        (row,) = yield Fetch(self.get_credits)
        return row[0], row[1]

    # --- money ---
    @staticmethod
    def _starts(now: float) -> tuple[float, float, float]:
        """The arguments of a ``period``: the starts of the UTC day, week and month at ``now``."""
        w = spend_window_starts(now)
        return w["day"], w["week"], w["month"]

    def _roll(self, key_id: str, now: float) -> Script:
        """Start the key's current period (its spend zero) if it counts an earlier one."""
        starts = self._starts(now)
        yield Execute(self.roll_period, (*starts, key_id, *starts))

    def _charge(self, key_id: str, cost: int, freed: int) -> Execute:
        """Charge ``cost`` to the key (and its period) and free ``freed`` of its holds."""
        return Execute(self.charge_key, (cost, cost, freed, key_id))

    def reserve(self, holder: str, key_id: str, amount: int, spare: int = 0, *, now: float) -> Script:
        """Hold ``amount`` on the key and the account if both can cover it and ``spare`` more (the key's period
        rolled over first, as of ``now``); else raise :class:`Refused` (the backend rolls back)."""
        if amount > 0:  # the instance's row first: the lock order
            yield Execute(self.hold_add, (holder, key_id, amount))
        p = self._starts(now)  # the period rolls over in the same statement
        if (yield Execute(self.reserve_key, (amount, *p, *p, *p, key_id, *p, amount + spare))) != 1:
            raise Refused
        if (yield Execute(self.reserve_account, (amount, amount + spare))) != 1:
            raise Refused
        return True

    def release(self, holder: str, key_id: str, amount: int) -> Script:
        """Give back up to ``amount`` of what ``holder`` holds on the key; returns what was given back."""
        freed = yield from self._take(holder, key_id, amount)
        if freed:
            yield self._charge(key_id, 0, freed)
            yield Execute(self.charge_account, (0, freed))
        return freed

    def _take(self, holder: str, key_id: str, amount: int) -> Script:
        """Subtract up to ``amount`` from the holder's row for the key (dropping it at zero); returns how much."""
        rows = yield Fetch(self.hold_get, (holder, key_id))
        held = int(rows[0][0]) if rows else 0
        taken = min(int(amount), held)
        if taken and taken == held:
            yield Execute(self.hold_drop, (holder, key_id))
        elif taken:
            yield Execute(self.hold_set, (held - taken, holder, key_id))
        return taken

    def write_records(self, holder: str, batch: list[tuple[dict[str, Any], int]], now: float) -> Script:
        """Store ``(record, reserved)`` pairs: insert the records, and for those newly stored charge their costs and
        settle their holds; a cost counts in the key's period current at ``now`` (where it lands, whenever its
        hold was taken). The same id twice in one batch is one record: the first one wins."""
        fresh: dict[Any, tuple[dict[str, Any], int]] = {}
        for record, reserved in batch:
            fresh.setdefault(record.get("id"), (record, reserved))
        inserted = yield InsertGenerations([r for r, _ in fresh.values()])
        plan = settlement(pair for gid, pair in fresh.items() if gid in inserted)
        freed: dict[str, int] = {}
        for key_id in sorted(plan.per_key):
            held = plan.per_key[key_id][1]
            freed[key_id] = (yield from self._take(holder, key_id, held)) if held else 0
        for key_id in sorted(plan.per_key):
            cost = plan.per_key[key_id][0]
            if cost:
                yield from self._roll(key_id, now)
            if cost or freed[key_id]:
                yield self._charge(key_id, cost, freed[key_id])
        total_freed = sum(freed.values())
        if plan.cost or total_freed:
            yield Execute(self.charge_account, (plan.cost, total_freed))
        return len(inserted)

    def reclaim(self, holder: str) -> Script:
        """Give back every hold of instances without a row in ``instances`` (but ``holder``'s own); returns how
        many (instance, key) holds."""
        rows = yield Fetch(self.holds_of_the_gone, (holder,))
        per_key: dict[str, int] = {}
        for gone, key_id, amount in (tuple(r) for r in rows):
            yield Execute(self.hold_drop, (gone, key_id))
            per_key[key_id] = per_key.get(key_id, 0) + int(amount)
        for key_id in sorted(per_key):
            yield self._charge(key_id, 0, per_key[key_id])
        if per_key:
            yield Execute(self.charge_account, (0, sum(per_key.values())))
        return len(rows)

    # --- reports ---
    def spend_windows_args(self, key_id: str, starts: dict[str, float]) -> tuple:
        return (starts["day"], starts["week"], starts["month"], key_id, min(starts.values()))

    def list_generations(self, limit: int, key_id: str | None, since: float | None) -> tuple[str, list[Any]]:
        where, args = ["1=1"], []
        if key_id:
            where.append("key_id = ?")
            args.append(key_id)
        if since is not None:
            where.append("created_at >= ?")
            args.append(float(since))
        args.append(int(limit))
        return self.dialect.sql(f"SELECT {GEN_COLS} FROM generations WHERE {' AND '.join(where)} "
                                "ORDER BY created_at DESC LIMIT ?"), args

    def app_ranking(self, since: float | None, key_id: str | None, limit: int) -> tuple[str, list[Any]]:
        where, args = ["COALESCE(app_title, app_referer) IS NOT NULL"], []
        for cond, val in (("created_at >= ?", since), ("key_id = ?", key_id)):
            if val is not None:
                where.append(cond)
                args.append(val)
        args.append(int(limit))
        return self.dialect.sql(
            "SELECT COALESCE(app_title, app_referer) AS app, COUNT(*) AS requests, "
            "CAST(SUM(prompt_tokens + completion_tokens) AS BIGINT) AS tokens, CAST(SUM(cost_pico) AS BIGINT) "
            f"FROM generations WHERE {' AND '.join(where)} GROUP BY 1 ORDER BY tokens DESC, app LIMIT ?"), args

    def activity(self, since: float | None, until: float | None, key_id: str | None,
                 app: str | None) -> tuple[str, list[Any]]:
        where, args = ["1=1"], []
        for cond, val in (("created_at >= ?", since), ("created_at < ?", until), ("key_id = ?", key_id)):
            if val is not None:
                where.append(cond)
                args.append(val)
        if app is not None:
            where.append("(app_title = ? OR app_referer = ?)")
            args += [app, app]
        return self.dialect.sql(
            "SELECT {day} AS day, model, COUNT(*), CAST(SUM(prompt_tokens) AS BIGINT), "
            "CAST(SUM(completion_tokens) AS BIGINT), CAST(SUM(reasoning_tokens) AS BIGINT), "
            f"CAST(SUM(cost_pico) AS BIGINT) FROM generations WHERE {' AND '.join(where)} "
            "GROUP BY 1, model ORDER BY 1 DESC, model"), args

    def search(self, query: ActivityQuery, limit: int, offset: int,
               before: tuple[float, str] | None) -> tuple[str, list[Any]]:
        where, args = activity_where(query, self.dialect.placeholder)
        if before is not None:
            args += [float(before[0]), str(before[1])]
            where += f" AND (created_at, id) < ({self.dialect.placeholder(len(args) - 1)}, " \
                     f"{self.dialect.placeholder(len(args))})"
        args += [int(limit), int(offset)]
        n = len(args)
        return (f"SELECT {GEN_COLS} FROM generations WHERE {where} ORDER BY created_at DESC, id DESC "
                f"LIMIT {self.dialect.placeholder(n - 1)} OFFSET {self.dialect.placeholder(n)}"), args

    def endpoint_samples(self, since: float, per_endpoint: int, scan: int = 50_000) -> tuple[str, list[Any]]:
        """The most recent ``per_endpoint`` answered records since ``since`` of each (model, provider), cache hits
        left out (:func:`~metarouter.gateway.cache.is_cache_hit`: the endpoint was not called): the samples of
        :func:`~.base.endpoint_stats`. Only the newest ``scan`` records are read (a backwards walk of the
        created_at index), so that busy traffic — thousands of records a second — costs the query no more than a
        quiet ledger's half hour (the most recent answers are the samples that matter)."""
        cols = ", ".join(ENDPOINT_SAMPLE_COLUMNS)
        return self.dialect.sql(
            f"SELECT {cols} FROM (SELECT {cols}, "
            "ROW_NUMBER() OVER (PARTITION BY model, provider ORDER BY created_at DESC) AS recent "
            f"FROM (SELECT created_at, {cols} FROM generations "
            "WHERE created_at >= ? AND status = 'ok' AND latency_ms IS NOT NULL AND NOT ({cache_hit}) "
            "ORDER BY created_at DESC LIMIT ?) newest) samples WHERE recent <= ?"), \
            [float(since), int(scan), int(per_endpoint)]

    def breakdown(self, query: ActivityQuery, by: str | None, bucket: int | None,
                  limit: int | None) -> tuple[str, list[str], list[Any]]:
        if self.dialect.name == "postgres":
            def floor(b: int) -> str:
                return f"(floor(created_at / {b}) * {b})::bigint"
        else:  # created_at is positive, so the integer cast floors
            def floor(b: int) -> str:
                return f"CAST(created_at / {b} AS INTEGER) * {b}"
        return breakdown_sql(query, by, bucket, limit, self.dialect.placeholder, floor)


ENDPOINT_SAMPLE_COLUMNS = ("model", "provider", "streamed", "completion_tokens", "latency_ms", "ttft_ms")
ACTIVITY_COLUMNS = ("date", "model", "requests", "prompt_tokens", "completion_tokens", "reasoning_tokens",
                    "cost_pico")
APP_RANKING_COLUMNS = ("app", "requests", "tokens", "cost_pico")
