"""The store interface: keys (hashes only), credits, budget reservations and generation records.

Implementations: ``SQLiteStore`` (embedded default) and ``PostgresStore``; callers see only this interface.
All money is integer picodollars.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import random
import secrets
import socket
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

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

    @property
    def remaining_pico(self) -> int | None:
        if self.limit_pico is None:
            return None
        return max(0, self.limit_pico - self.usage_pico - self.reserved_pico)

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
    import datetime as dt

    t = dt.datetime.fromtimestamp(now, dt.timezone.utc)
    day = t.replace(hour=0, minute=0, second=0, microsecond=0)
    week = day - dt.timedelta(days=day.weekday())
    month = day.replace(day=1)
    return {"day": day.timestamp(), "week": week.timestamp(), "month": month.timestamp()}


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
    "upstream_id", "user_tag", "session_id", "error", "attempts", "routing",
)
JSON_FIELDS = ("attempts", "routing")


class Store(Protocol):
    async def open(self) -> None: ...

    async def close(self) -> None:
        """Flush pending writes, then release connections."""
        ...

    # keys
    async def create_key(
        self, label: str, *, limit_pico: int | None = None, rpm: int | None = None, tpm: int | None = None
    ) -> tuple[str, KeyRecord]: ...

    async def get_key(self, public_id: str) -> KeyRecord | None: ...

    async def list_keys(self) -> list[KeyRecord]: ...

    async def update_key(self, public_id: str, **fields: Any) -> KeyRecord | None: ...

    # money
    async def reserve(self, key_id: str, amount_pico: int) -> bool:
        """Atomically hold ``amount_pico`` against the key's limit and the account's credit; False if either
        cannot cover it."""
        ...

    async def release(self, key_id: str, amount_pico: int) -> None: ...

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
        """Wait until every queued record is durably written."""
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
