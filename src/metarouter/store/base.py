"""The store interface: keys (hashes only), credits, budget reservations and generation records.

Implementations: ``SQLiteStore`` (embedded default) and ``PostgresStore``; callers see only this interface.
All money is integer picodollars.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import hashlib
import hmac
import os
import random
import re
import secrets
import socket
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Protocol

KEY_PREFIX = "sk-mr-"


@dataclass(slots=True)
class KeyRecord:
    public_id: str
    label: str
    key_hash: str = field(repr=False)
    limit_pico: int | None = None
    usage_pico: int = 0
    reserved_pico: int = 0
    disabled: bool = False
    rpm: int | None = None
    tpm: int | None = None
    created_at: float = 0.0
    #: the limit applies to the spend of the current UTC ``daily``/``weekly``/``monthly`` period (None: to all of it)
    limit_reset: str | None = None
    expires_at: float | None = None  # epoch seconds from which the key is refused
    #: the period ``period_usage_pico`` belongs to (its start, epoch seconds), with a reset
    period_start: float | None = None
    period_usage_pico: int = 0

    @property
    def limit_usage_pico(self) -> int:
        """What the limit applies to: the spend of the current period with a reset, else all of it."""
        return self.period_usage_pico if self.limit_reset else self.usage_pico

    @property
    def remaining_pico(self) -> int | None:
        if self.limit_pico is None:
            return None
        return max(0, self.limit_pico - self.limit_usage_pico - self.reserved_pico)

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and now >= self.expires_at

    def as_of(self, now: float) -> "KeyRecord":
        """The record as the store will see it at ``now``: where a newer period has begun, its spend is zero
        (the store zeroes it in the next transaction that holds or charges on the key)."""
        start = current_period_start(self.limit_reset, now)
        if start is None or (self.period_start is not None and self.period_start >= start):
            return self
        return dataclasses.replace(self, period_start=start, period_usage_pico=0)

    def public_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("key_hash")
        return d


def new_key() -> tuple[str, str, str]:
    """A fresh key: (plaintext ``sk-mr-<public id>-<secret>``, public id, SHA-256 hash of the plaintext)."""
    public_id = secrets.token_hex(6)
    secret = secrets.token_hex(24)
    plaintext = f"{KEY_PREFIX}{public_id}-{secret}"
    return plaintext, public_id, hash_key(plaintext)


def hash_key(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode("utf-8")).hexdigest()


def parse_key(plaintext: str) -> str | None:
    """The public id of a well-formed key, else None (nothing else is looked at before the hash check)."""
    if not plaintext.startswith(KEY_PREFIX):
        return None
    rest = plaintext[len(KEY_PREFIX):]
    public_id, sep, secret = rest.partition("-")
    if not sep or len(public_id) != 12 or len(secret) != 48:
        return None
    if not all(c in "0123456789abcdef" for c in public_id + secret):
        return None
    return public_id


def verify_key(plaintext: str, record: KeyRecord) -> bool:
    """Constant-time comparison of the hash of what was presented with the stored hash."""
    return hmac.compare_digest(hash_key(plaintext), record.key_hash)


#: generation ids need uniqueness, not secrecy (records are only served to their own key): a PRNG seeded once from
#: the OS is enough and avoids a system call per request
_ID_RNG = random.Random(secrets.randbits(128))
_ID_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


def new_generation_id() -> str:
    n = _ID_RNG.getrandbits(120)
    chars = []
    for _ in range(20):
        n, r = divmod(n, 62)
        chars.append(_ID_ALPHABET[r])
    return f"gen-{int(time.time())}-{''.join(chars)}"


def spend_window_starts(now: float) -> dict[str, float]:
    """Epoch seconds at which the current UTC day, ISO week (Monday) and month began."""
    t = dt.datetime.fromtimestamp(now, dt.timezone.utc)
    day = t.replace(hour=0, minute=0, second=0, microsecond=0)
    week = day - dt.timedelta(days=day.weekday())
    month = day.replace(day=1)
    return {"day": day.timestamp(), "week": week.timestamp(), "month": month.timestamp()}


#: a key's ``limit_reset``: its limit applies to the spend of the current UTC day, week (Monday to Sunday) or
#: month, as OpenRouter defines them; the name of each period's window in :func:`spend_window_starts`
LIMIT_RESETS: dict[str, str] = {"daily": "day", "weekly": "week", "monthly": "month"}


def check_limit_reset(value: object) -> str | None:
    if value is not None and (not isinstance(value, str) or value not in LIMIT_RESETS):
        raise ValueError(f"`limit_reset` must be one of {', '.join(LIMIT_RESETS)} or null, not {str(value)[:40]!r}")
    return value  # type: ignore[return-value]


def current_period_start(limit_reset: str | None, now: float) -> float | None:
    """Epoch seconds at which the current period of ``limit_reset`` began (None without a reset)."""
    if limit_reset is None:
        return None
    return spend_window_starts(now)[LIMIT_RESETS[limit_reset]]


def next_period_start(limit_reset: str, now: float) -> float:
    """Epoch seconds at which the next period of ``limit_reset`` begins (when the limit resets)."""
    start = dt.datetime.fromtimestamp(current_period_start(limit_reset, now) or 0.0, dt.timezone.utc)
    if limit_reset == "daily":
        return (start + dt.timedelta(days=1)).timestamp()
    if limit_reset == "weekly":
        return (start + dt.timedelta(days=7)).timestamp()
    return (start.replace(year=start.year + 1, month=1) if start.month == 12
            else start.replace(month=start.month + 1)).timestamp()


_ISO_UTC = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?(Z|\+00:00)")  # ASCII digits
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


def parse_expires_at(value: object) -> float | None:
    """An ``expires_at`` as epoch seconds (to the millisecond): an ISO 8601 timestamp in UTC
    (``2027-01-31T23:59:59Z`` or ``+00:00``), or None. Other time zones, and times without one, are refused
    (ValueError), as OpenRouter does."""
    if value is None:
        return None
    if not isinstance(value, str) or not _ISO_UTC.fullmatch(value):
        raise ValueError("`expires_at` must be an ISO 8601 timestamp in UTC, such as 2027-01-31T23:59:59Z (other "
                         f"time zones are refused), or null; got {str(value)[:40]!r}")
    try:
        t = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"`expires_at` is not a valid date and time: {value[:40]!r}") from None
    whole = (t.replace(microsecond=0) - _EPOCH) // dt.timedelta(seconds=1)
    return whole + t.microsecond // 1000 / 1000


def iso_utc(ts: float | None) -> str | None:
    """Epoch seconds as an ISO 8601 UTC timestamp (``…Z``, milliseconds where there are any), None as None."""
    if ts is None:
        return None
    secs, ms = divmod(round(ts * 1000), 1000)
    t = _EPOCH + dt.timedelta(seconds=secs)
    frac = f".{ms:03d}".rstrip("0") if ms else ""
    return f"{t.year:04d}-{t.month:02d}-{t.day:02d}T{t.hour:02d}:{t.minute:02d}:{t.second:02d}{frac}Z"


#: seconds an instance's lease lasts unless renewed (it is renewed every third of that): the holds of an instance
#: that has not renewed its lease for this long are given back by whichever instance sweeps first
INSTANCE_LEASE = 30.0
#: holders opened by this process and not yet closed (several stores may share one process: tests, the CLI)
_LIVE_HOLDERS: set[str] = set()


def instance_lease() -> float:
    return float(os.environ.get("METAROUTER_INSTANCE_LEASE", INSTANCE_LEASE))


def this_host() -> str:
    """This machine and process namespace: pids are comparable only between instances that share it."""
    try:
        ns = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        ns = 0
    return f"{socket.gethostname()}/{ns}"


def new_holder() -> str:
    """A fresh instance id (``reservations.holder``, ``instances.holder``), registered as live in this process."""
    holder = f"{os.getpid()}-{secrets.token_hex(6)}"
    _LIVE_HOLDERS.add(holder)
    return holder


def closed_holder(holder: str) -> None:
    _LIVE_HOLDERS.discard(holder)


def dead_here(host: str, pid: int, holder: str) -> bool:
    """Whether the instance ``holder`` (process ``pid`` on ``host``) is known to be gone: it ran on this host, and
    its process has exited, or its pid is now ours (a restarted container) and it is not one of our stores."""
    if host != this_host():
        return False
    if pid == os.getpid():
        return holder not in _LIVE_HOLDERS
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # it exists but is not ours to signal
        return False
    return False


#: columns of a generation record, in storage order
GENERATION_FIELDS: tuple[str, ...] = (
    "id", "created_at", "key_id", "app_referer", "app_title", "requested_model", "model", "provider", "router",
    "streamed", "status", "prompt_tokens", "completion_tokens", "reasoning_tokens", "cached_tokens",
    "usage_estimated", "cost_pico", "overage_pico", "latency_ms", "ttft_ms", "finish_reason", "native_finish_reason",
    "upstream_id", "user_tag", "session_id", "error", "attempts", "routing", "insured",
)
JSON_FIELDS = ("attempts", "routing")


@dataclass(frozen=True, slots=True)
class ActivityQuery:
    """Which generation records an Activity view covers; every field that is set narrows it (all must hold)."""

    since: float | None = None  # created_at >= since (epoch seconds)
    until: float | None = None  # created_at < until
    key_id: str | None = None
    app: str | None = None  # the app as Activity names it: X-Title, else HTTP-Referer
    model: str | None = None  # the model that served the request
    provider: str | None = None
    status: str | None = None  # "ok", "error" or "cancelled"

    def conditions(self) -> list[tuple[str, Any]]:
        """SQL conditions, each with one ``{}`` where its value's placeholder goes, and that value."""
        since, until = (float(t) if t is not None else None for t in (self.since, self.until))
        return [(cond, val) for cond, val in (
            ("created_at >= {}", since), ("created_at < {}", until), ("key_id = {}", self.key_id),
            (f"{ACTIVITY_GROUPS['app']} = {{}}", self.app), ("model = {}", self.model),
            ("provider = {}", self.provider), ("status = {}", self.status),
        ) if val is not None]


#: what :meth:`Store.activity_breakdown` may group by: name -> SQL expression (an allow-list: never user input)
ACTIVITY_GROUPS: dict[str, str] = {
    "model": "model", "provider": "provider", "app": "COALESCE(app_title, app_referer)", "key": "key_id",
    "status": "status",
}
#: the aggregates of every breakdown row, as (name, SQL): sums, counts, a minimum and a maximum, so that rows merge
#: (:func:`merge_breakdown`); both backends return the same values for them
ACTIVITY_AGGREGATES: tuple[tuple[str, str], ...] = (
    ("requests", "COUNT(*)"),
    ("auto_requests", "SUM(CASE WHEN router = 'auto' THEN 1 ELSE 0 END)"),
    ("errors", "SUM(CASE WHEN status = 'error' THEN 1 ELSE 0 END)"),
    ("cancelled", "SUM(CASE WHEN status = 'cancelled' THEN 1 ELSE 0 END)"),
    ("prompt_tokens", "SUM(prompt_tokens)"),
    ("completion_tokens", "SUM(completion_tokens)"),
    ("reasoning_tokens", "SUM(reasoning_tokens)"),
    ("cost_pico", "SUM(cost_pico)"),
    ("latency_ms_sum", "SUM(latency_ms)"),
    ("latency_count", "COUNT(latency_ms)"),  # records with a latency
    ("first_at", "MIN(created_at)"),
    ("last_at", "MAX(created_at)"),
)
_FLOAT_AGGREGATES = ("latency_ms_sum", "first_at", "last_at")


def merge_breakdown(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The aggregates of several breakdown rows together (what one row over all their records would say)."""
    out: dict[str, Any] = {}
    for name, _ in ACTIVITY_AGGREGATES:
        values = [r[name] for r in rows if r[name] is not None]
        if name == "first_at":
            out[name] = min(values, default=None)
        elif name == "last_at":
            out[name] = max(values, default=None)
        else:
            out[name] = sum(values, 0.0 if name in _FLOAT_AGGREGATES else 0)
    return out


def activity_where(query: ActivityQuery, placeholder: Callable[[int], str]) -> tuple[str, list[Any]]:
    """The ``WHERE`` clause of ``query`` and its arguments; ``placeholder(n)`` writes the n-th (from 1)."""
    conds = query.conditions()
    clause = " AND ".join(["1=1"] + [c.format(placeholder(i)) for i, (c, _) in enumerate(conds, start=1)])
    return clause, [v for _, v in conds]


def breakdown_sql(query: ActivityQuery, by: str | None, bucket: int | None, limit: int | None,
                  placeholder: Callable[[int], str], floor: Callable[[int], str]) -> tuple[str, list[str], list[Any]]:
    """The SQL of :meth:`Store.activity_breakdown`, the names of its columns and its arguments; ``floor(b)``
    writes the start of ``created_at``'s ``b``-second bucket as an integer."""
    if by is not None and by not in ACTIVITY_GROUPS:
        raise ValueError(f"cannot group activity by {by!r}")
    where, args = activity_where(query, placeholder)
    names, cols = [], []
    if bucket is not None:
        names.append("bucket")
        cols.append(floor(int(bucket)))
    if by is not None:
        names.append(by)
        cols.append(ACTIVITY_GROUPS[by])
    group = f" GROUP BY {', '.join(cols)}" if cols else ""
    order = cols[:1] if bucket is not None else []
    order.append("COUNT(*) DESC")
    if by is not None:
        order += [f"{ACTIVITY_GROUPS[by]} IS NULL", ACTIVITY_GROUPS[by]]
    names += [n for n, _ in ACTIVITY_AGGREGATES]
    cols += [sql for _, sql in ACTIVITY_AGGREGATES]
    sql = (f"SELECT {', '.join(cols)} FROM generations WHERE {where}{group} ORDER BY {', '.join(order)}"
           + (f" LIMIT {int(limit)}" if limit is not None else ""))
    return sql, names, args


def breakdown_row(names: list[str], row: Any) -> dict[str, Any]:
    """One breakdown row as a dict: counts and token and cost sums as ints, the latency sum as a float (0 over no
    rows), the first and last times as floats (None over no rows)."""
    d = dict(zip(names, row))
    for name, _ in ACTIVITY_AGGREGATES:
        v = d[name]
        if name in ("first_at", "last_at"):
            d[name] = float(v) if v is not None else None
        else:
            d[name] = float(v or 0) if name in _FLOAT_AGGREGATES else int(v or 0)
    if "bucket" in d:
        d["bucket"] = int(d["bucket"])
    return d


#: the percentiles of an endpoint's latency and throughput, as OpenRouter's ``PercentileStats`` names them
PERCENTILES = (50, 75, 90, 99)


def _percentiles(values: list[float], *, higher_is_better: bool) -> dict[str, float]:
    """Nearest-rank percentiles; for a figure where more is better (throughput) the p90 is the value 90 % of
    samples reach (as OpenRouter reports it: p99 is the slow tail)."""
    ordered = sorted(values, reverse=higher_is_better)
    n = len(ordered)
    return {f"p{p}": round(ordered[min(n - 1, max(0, -(-p * n // 100) - 1))], 2) for p in PERCENTILES}


def endpoint_stats(rows: Iterable[Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """Latency and throughput per (model, provider) from :meth:`Store.endpoint_samples`' rows (model, provider,
    streamed, completion_tokens, latency_ms, ttft_ms): ``{"requests", "latency", "throughput"}``.

    Latency is the time to the first token in milliseconds (of a JSON answer, the whole answer: its first token
    arrives with its last). Throughput is completion tokens a second while the answer was generated: a stream's
    time after its first token, a JSON answer's whole time; records without output tokens have none. Each is a dict
    of :data:`PERCENTILES` (``p50``...), or None without samples."""
    latency: dict[tuple[str, str], list[float]] = {}
    speed: dict[tuple[str, str], list[float]] = {}
    for model, provider, streamed, tokens, latency_ms, ttft_ms in rows:
        key = (model, provider)
        first = ttft_ms if streamed and ttft_ms is not None else latency_ms
        latency.setdefault(key, []).append(float(first))
        generating = (latency_ms - (ttft_ms or 0)) if streamed else latency_ms
        if tokens and generating and generating > 0:
            speed.setdefault(key, []).append(tokens * 1000.0 / generating)
    return {key: {"requests": len(values), "latency": _percentiles(values, higher_is_better=False),
                  "throughput": _percentiles(speed[key], higher_is_better=True) if key in speed else None}
            for key, values in latency.items()}


class Store(Protocol):
    async def open(self) -> None: ...

    async def close(self) -> None:
        """Flush pending writes, then release connections."""
        ...

    # keys
    #: what the store takes for the time now (epoch seconds): periods roll over and keys expire by it (tests set it)
    clock: Callable[[], float]

    async def create_key(
        self, label: str, *, limit_pico: int | None = None, rpm: int | None = None, tpm: int | None = None,
        limit_reset: str | None = None, expires_at: float | None = None,
    ) -> tuple[str, KeyRecord]: ...

    async def get_key(self, public_id: str) -> KeyRecord | None: ...

    async def list_keys(self) -> list[KeyRecord]: ...

    async def update_key(self, public_id: str, **fields: Any) -> KeyRecord | None:
        """Change ``label``, ``limit_pico``, ``disabled``, ``rpm``, ``tpm``, ``limit_reset`` or ``expires_at``. A
        new ``limit_reset`` starts its current period with the key's recorded spend since that period began."""
        ...

    async def budget_view(self, key_id: str) -> KeyRecord | None:
        """The key as a budget decision needs it (its limit and usage): :meth:`get_key`, or with budget leases
        (:mod:`.lease`) a record up to a second old while a lease covers the key."""
        ...

    # money
    async def reserve(self, key_id: str, amount_pico: int, *, spare_pico: int = 0) -> bool:
        """Atomically hold ``amount_pico`` against the key's limit and the account's credit; False if either
        cannot cover it and ``spare_pico`` more (what a budget lease leaves free for others). With a
        ``limit_reset``, the limit applies to the current period's spend, zeroed in this same transaction when a
        newer period has begun (records settle into the period in which they are written)."""
        ...

    async def release(self, key_id: str, amount_pico: int) -> None:
        """Give back up to ``amount_pico`` of this instance's holds on the key (no more than it still holds)."""
        ...

    async def reclaim_reservations(self) -> int:
        """Give back the holds of instances that are gone: those whose lease has run out, and, on this host, those
        whose process has died. Run at start-up and every few seconds; returns how many holds were given back."""
        ...

    async def get_credits(self, *, flush: bool = True) -> tuple[int | None, int]:
        """(total credits or None when unlimited, total usage), picodollars; ``flush=False`` may miss records
        still queued (the gateway's cached budget check, which must not wait on the ledger)."""
        ...

    async def add_credits(self, amount_pico: int) -> tuple[int | None, int]: ...

    async def key_spend_windows(self, key_id: str) -> dict[str, int]:
        """A key's spend in the current UTC day, week and month: ``{"day", "week", "month"}``."""
        ...

    # ledger
    @property
    def pending_records(self) -> int:
        """Records accepted by :meth:`record_generation` and not yet written (exported in ``/metrics``)."""
        ...

    def record_generation(self, record: dict[str, Any], reserved_pico: int = 0) -> "asyncio.Future[bool] | None":
        """Queue one generation record and its charge (key usage, account usage, release of the reservation)
        to be written in one transaction. Synchronous and non-blocking so that it can run in ``finally``
        blocks of cancelled tasks; idempotent by record id.

        Returns a future of the calling event loop (None off it) that is done once the record is durably written
        (True; False if it was dropped as unstorable): the answer must not reach the client before then."""
        ...

    async def flush(self) -> None:
        """Wait until every queued record is durably written (with budget leases, also give back their unused
        budget: what the store then says of a key's holds is what requests in flight hold)."""
        ...

    async def get_generation(self, gen_id: str) -> dict[str, Any] | None: ...

    async def list_generations(
        self, *, limit: int = 50, key_id: str | None = None, since: float | None = None
    ) -> list[dict[str, Any]]: ...

    async def activity(
        self, *, since: float | None = None, until: float | None = None, key_id: str | None = None,
        app: str | None = None,
    ) -> list[dict[str, Any]]:
        """Per UTC day and model: requests, prompt/completion/reasoning tokens, cost."""
        ...

    async def app_ranking(
        self, *, since: float | None = None, key_id: str | None = None, limit: int = 20
    ) -> list[dict[str, Any]]:
        """Calling apps (``X-Title``, else ``HTTP-Referer``) by total tokens: app, requests, tokens, cost_pico."""
        ...

    async def search_generations(
        self, query: ActivityQuery, *, limit: int = 50, offset: int = 0, before: tuple[float, str] | None = None
    ) -> list[dict[str, Any]]:
        """The records ``query`` covers, newest first (``created_at``, then ``id``, descending): ``limit`` of them
        after skipping ``offset``, or, with ``before=(created_at, id)``, those after that record (keyset paging)."""
        ...

    async def endpoint_samples(self, since: float, per_endpoint: int = 200, scan: int = 50_000) -> list[tuple]:
        """For :func:`endpoint_stats`: of each (model, provider), its ``per_endpoint`` most recent answered records
        since ``since`` that were not response-cache hits, as (model, provider, streamed, completion_tokens,
        latency_ms, ttft_ms), from the newest ``scan`` such records only (busy traffic: the last seconds). One
        query; records still queued may be missing (it never waits on the ledger)."""
        ...

    async def activity_breakdown(
        self, query: ActivityQuery, *, by: str | None = None, bucket: int | None = None, limit: int | None = None
    ) -> list[dict[str, Any]]:
        """The :data:`ACTIVITY_AGGREGATES` of the records ``query`` covers, per value of ``by`` (a key of
        :data:`ACTIVITY_GROUPS`, under that name) and per ``bucket``-second UTC interval (``bucket``: its start,
        epoch seconds). Ordered by bucket, then requests (descending), then the value (nulls last); ``limit``
        caps the rows. Without ``by`` and ``bucket``: exactly one row, the totals."""
        ...
