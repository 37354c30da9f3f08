"""Prometheus metrics with OpenTelemetry GenAI names, fed by the gateway's observers.

``GET /metrics`` renders the Prometheus text format (0.0.4), written here to need no dependency:

- ``gen_ai_client_token_usage`` (histogram, tokens; ``gen_ai_token_type`` = ``input`` | ``output``)
- ``gen_ai_server_time_to_first_token_seconds`` (histogram; streamed answers)
- ``gen_ai_server_request_duration_seconds`` (histogram; ``error_type`` on answers that ended in an error)
- ``metarouter_upstream_errors_total`` (counter; by provider and upstream status, each failed attempt)
- ``metarouter_router_choices_total`` (counter; the model the ``auto`` router sent each request to)
- ``metarouter_cost_usd_total`` (counter; exact: summed in integer picodollars)
- ``metarouter_generations_total`` (counter; by status)
- ``metarouter_overage_usd_total`` (counter; what answers cost beyond their budget hold, which no key was charged:
  an upstream that reported more usage than the request could have used)
- ``metarouter_circuit_breaker_state`` (gauge; by provider and model: 0 closed, 1 half-open, 2 open) and
  ``metarouter_circuit_breaker_opened_total`` (counter): read from the breakers at scrape time
- ``metarouter_ledger_pending_records`` (gauge) and ``metarouter_response_cache_requests_total`` (counter; hit or
  miss), read at scrape time too (wired in ``api/__init__.py``)

The GenAI attributes become labels as the OpenTelemetry → Prometheus mapping writes them (``gen_ai.request.model``
→ ``gen_ai_request_model``). Labels carry model, provider, status and router names only: never a key, a key id,
a user tag or a secret. Label values are truncated and the number of series per metric is capped.

**Several workers.** With ``serve --workers N`` a scrape reaches one worker, so the values cannot live in that
worker's memory alone. Then (``METAROUTER_METRICS_DIR`` names a directory, made fresh by ``serve`` at each start)
every worker keeps its values in a file of its own there, memory-mapped (:class:`SharedSlots`): an increment is a
store into shared memory, as cheap as into a list, and the worker that answers a scrape reads every worker's file
and adds them up — counters and histograms summed over all workers, those of workers that died included (a
restarted worker does not reset the totals). A file's owner holds an ``flock`` on it for its life, so a reader
knows a dead worker's file without trusting pids; dead files are folded into one archive of their counters and
histograms and removed. Values read at scrape time from objects (the breakers, the ledger's backlog) are written
into the file by each worker every second (:data:`REFRESH_SECONDS`) and when it answers a scrape, and combine by
a rule of their own: a gauge is summed over the live workers (``livesum``: the ledger's backlog) or their maximum
(``max``: a breaker open in any worker shows open), a callback counter is summed over all workers, dead ones
included (``sum``). So counters and histograms are exact on every scrape; callback values of other workers may be
up to a second old.
"""

from __future__ import annotations

import asyncio
import bisect
import fcntl
import logging
import math
import mmap
import os
import struct
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

log = logging.getLogger("metarouter.metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MAX_SERIES = 5000
MAX_LABEL_LEN = 120
METRICS_DIR_ENV = "METAROUTER_METRICS_DIR"
REFRESH_SECONDS = 1.0

# Bucket boundaries as the OpenTelemetry GenAI semantic conventions advise.
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864)
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)

Labels = tuple[tuple[str, str], ...]

#: how the workers' values of one series combine (see the module docstring)
SUM, LIVESUM, MAX = "sum", "livesum", "max"


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(labels: Labels, extra: str = "") -> str:
    parts = [f'{k}="{_escape(v)}"' for k, v in labels]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _num(v: float) -> str:
    if isinstance(v, int):
        return str(v)
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if v.is_integer() and abs(v) < 2**53:  # a count kept as a float in a shared file
        return str(int(v))
    return repr(float(v))


def _local_slots(name: str, key: Labels, n: int, integer: bool, mode: str = SUM) -> list:
    return [0] * n


class _Metric:
    kind = "untyped"

    def __init__(self, name: str, help_text: str, labelnames: Iterable[str]):
        self.name, self.help = name, help_text
        self.labelnames = tuple(labelnames)
        self._dropped = False
        self._memo: dict[tuple, Labels] = {}
        self._alloc = _local_slots  # the registry's, once added to one

    def _key(self, labels: dict[str, Any], store: dict) -> Labels | None:
        raw = tuple(labels.get(n) for n in self.labelnames)
        key = self._memo.get(raw)
        if key is not None and key in store:
            return key
        key = tuple((n, str(labels.get(n) if labels.get(n) is not None else "")[:MAX_LABEL_LEN])
                    for n in self.labelnames)
        key = tuple((n, v) for n, v in key if v != "")
        if key not in store and len(store) >= MAX_SERIES:
            self._drop()
            return None
        if len(self._memo) < 4 * MAX_SERIES:
            self._memo[raw] = key
        return key

    def _slots(self, table: dict, labels: dict[str, Any], width: int, integer: bool):
        """The mutable slots of a label set in ``table`` (``width`` of them, created at 0), or None if the set
        is dropped (too many series, or the shared file is full)."""
        key = self._key(labels, table)
        if key is None:
            return None
        slots = table.get(key)
        if slots is None:
            slots = self._alloc(self.name, key, width, integer)
            if slots is None:
                self._drop()
                return None
            table[key] = slots
        return slots

    def _drop(self) -> None:
        if not self._dropped:
            self._dropped = True
            log.warning("metric %s reached %d series (or its shared file is full); new label sets are dropped",
                        self.name, MAX_SERIES)

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]

    def local(self) -> dict[Labels, list]:
        """This process's values: series → its slots."""
        return {}


class Counter(_Metric):
    kind = "counter"

    def __init__(self, name: str, help_text: str, labelnames: Iterable[str] = (), scale: int = 1):
        super().__init__(name, help_text, labelnames)
        self.scale = scale  # values are kept as integers of 1/scale (exact sums of money)
        self.values: dict[Labels, Any] = {}  # series → its one slot (a list, or a view of the shared file)

    def inc(self, amount: float = 1, **labels: Any) -> None:
        slot = self.slot_for(**labels)
        if slot is not None:
            slot[0] += amount

    def slot_for(self, **labels: Any):
        """The mutable one-element slot of a label set (created at 0), or None if it is dropped."""
        return self._slots(self.values, labels, 1, self.scale != 1)

    def value(self, **labels: Any) -> float:
        key = tuple((n, str(labels[n])) for n in self.labelnames if labels.get(n) not in (None, ""))
        slot = self.values.get(key)
        v = slot[0] if slot is not None else 0
        return v / self.scale if self.scale != 1 else v

    def local(self) -> dict[Labels, list]:
        return self.values

    def render(self, series: dict[Labels, list]) -> list[str]:
        out = self.header()
        for key, s in sorted(series.items()):
            v = s[0]
            out.append(f"{self.name}{_labels(key)} {_num(v / self.scale if self.scale != 1 else v)}")
        return out


class Histogram(_Metric):
    kind = "histogram"

    def __init__(self, name: str, help_text: str, labelnames: Iterable[str], buckets: Iterable[float]):
        super().__init__(name, help_text, labelnames)
        self.buckets = tuple(sorted(buckets))
        # labels → [count in each bucket (not cumulative: one store per observation)..., sum, count]
        self.series: dict[Labels, Any] = {}

    def observe(self, value: float, **labels: Any) -> None:
        s = self.series_for(**labels)
        if s is not None:
            _observe(self.buckets, s, value)

    def series_for(self, **labels: Any):
        """The mutable [bucket counts..., sum, count] of a label set (created empty), or None if it is dropped."""
        return self._slots(self.series, labels, len(self.buckets) + 2, False)

    def count(self, **labels: Any) -> int:
        key = tuple((n, str(labels[n])) for n in self.labelnames if labels.get(n) not in (None, ""))
        s = self.series.get(key)
        return s[-1] if s else 0

    def local(self) -> dict[Labels, list]:
        return self.series

    def render(self, series: dict[Labels, list]) -> list[str]:
        out = self.header()
        for key, s in sorted(series.items()):
            cumulative = 0
            for b, n in zip(self.buckets, s):
                cumulative += n
                le = 'le="' + _num(float(b)) + '"'
                out.append(f"{self.name}_bucket{_labels(key, le)} {_num(cumulative)}")
            inf = 'le="+Inf"'
            out.append(f"{self.name}_bucket{_labels(key, inf)} {_num(s[-1])}")
            out.append(f"{self.name}_sum{_labels(key)} {_num(s[-2])}")
            out.append(f"{self.name}_count{_labels(key)} {_num(s[-1])}")
        return out


class CallbackMetric(_Metric):
    """Values read at scrape time from ``collect()``: an iterable of (labels, value). Costs nothing per request.
    ``mode`` says how the workers' values combine when they share a directory (SUM, LIVESUM or MAX)."""

    def __init__(self, kind: str, name: str, help_text: str, collect, mode: str):
        super().__init__(name, help_text, ())
        self.kind, self.collect, self.mode = kind, collect, mode
        self._written: dict[Labels, Any] = {}  # shared mode: the slots this process wrote

    def samples(self) -> dict[Labels, list]:
        try:
            samples = list(self.collect())
        except Exception:  # a scrape must not fail because one source did
            log.exception("collecting %s failed", self.name)
            return {}
        return {tuple((k, str(x)[:MAX_LABEL_LEN]) for k, x in labels.items()): [v]
                for labels, v in samples[:MAX_SERIES]}

    def write(self) -> None:
        """Shared mode: this process's current values into its file (a series it no longer has becomes NaN)."""
        current = self.samples()
        for key, slot in self._written.items():
            if key not in current:
                slot[0] = math.nan
        for key, (v,) in current.items():
            slot = self._written.get(key)
            if slot is None:
                slot = self._alloc(self.name, key, 1, False, self.mode)
                if slot is None:
                    continue
                self._written[key] = slot
            slot[0] = float(v)

    def render(self, series: dict[Labels, list]) -> list[str]:
        out = self.header()
        for key, (v,) in sorted(series.items()):
            out.append(f"{self.name}{_labels(key)} {_num(v)}")
        return out


def _observe(buckets: tuple, s, value: float) -> None:
    i = bisect.bisect_left(buckets, value)
    if i < len(buckets):
        s[i] += 1
    s[-2] += value
    s[-1] += 1


class Registry:
    """The metrics of a process; with ``shared`` (a :class:`SharedSlots`), their values live in its file and
    ``render`` adds up every worker's file of the directory."""

    def __init__(self, shared: SharedSlots | None = None) -> None:
        self.metrics: dict[str, _Metric] = {}
        self.shared = shared

    @classmethod
    def from_environment(cls) -> Registry:
        """Shared by the workers when ``METAROUTER_METRICS_DIR`` is set (``serve --workers N`` sets it)."""
        directory = os.environ.get(METRICS_DIR_ENV)
        return cls(SharedSlots(Path(directory)) if directory else None)

    def add(self, metric: _Metric) -> Any:
        if metric.name in self.metrics:
            raise ValueError(f"metric {metric.name} is already registered")
        if self.shared is not None:
            metric._alloc = self.shared.alloc
        self.metrics[metric.name] = metric
        return metric

    def counter(self, name: str, help_text: str, labelnames: Iterable[str] = (), scale: int = 1) -> Counter:
        return self.add(Counter(name, help_text, labelnames, scale))

    def histogram(self, name: str, help_text: str, labelnames: Iterable[str], buckets: Iterable[float]) -> Histogram:
        return self.add(Histogram(name, help_text, labelnames, buckets))

    def gauge_callback(self, name: str, help_text: str, collect, mode: str = LIVESUM) -> CallbackMetric:
        return self.add(CallbackMetric("gauge", name, help_text, collect, mode))

    def counter_callback(self, name: str, help_text: str, collect) -> CallbackMetric:
        return self.add(CallbackMetric("counter", name, help_text, collect, SUM))

    def write_callbacks(self) -> None:
        """Shared mode: the callback metrics' current values into this process's file."""
        for m in self.metrics.values():
            if isinstance(m, CallbackMetric):
                m.write()

    def render(self) -> str:
        if self.shared is not None:
            self.write_callbacks()
            merged = self.shared.collect()
        lines: list[str] = []
        for m in self.metrics.values():
            if self.shared is not None:
                series = merged.get(m.name, {})
            elif isinstance(m, CallbackMetric):
                series = m.samples()
            else:
                series = m.local()
            lines += m.render(series)  # type: ignore[attr-defined]
        return "\n".join(lines) + "\n"


# --- the workers' shared directory --------------------------------------------------------------------------------
#
# One file per worker: a 16-byte header (magic, then the number of bytes used, written after each new entry is
# complete, so that a reader never parses half an entry), then entries, each 8-byte aligned:
#     u32 entry length · u32 key length · key (JSON: [metric, [[label, value]...], "q"|"d", mode]) · padding ·
#     its slots (8 bytes each: int64 for "q", float64 for "d")
# The file is sparse: FILE_BYTES are reserved, only what is written takes memory.

MAGIC = b"MRM1"
HEADER = 16
FILE_BYTES = 64 << 20
ARCHIVE = "dead-workers.json"


class SharedSlots:
    """This process's file in a directory shared by the workers; ``alloc`` hands out views into it."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / f"worker-{os.getpid()}-{os.urandom(4).hex()}.bin"
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_EX)  # held for this process's life: how readers tell it is alive
        os.ftruncate(self._fd, FILE_BYTES)
        self._mm = mmap.mmap(self._fd, FILE_BYTES)
        self._mm[0:4] = MAGIC
        self._q = memoryview(self._mm).cast("q")
        self._d = memoryview(self._mm).cast("d")
        self._used = HEADER

    def alloc(self, name: str, key: Labels, n: int, integer: bool, mode: str = SUM):
        """A view of ``n`` new zeroed slots for the series ``key`` of metric ``name`` (None if the file is full)."""
        kind = "q" if integer else "d"
        raw = orjson.dumps([name, [list(kv) for kv in key], kind, mode])
        start = self._used + 8 + len(raw)
        start += -start % 8
        end = start + 8 * n
        if end > FILE_BYTES:
            return None
        self._mm[self._used + 8:self._used + 8 + len(raw)] = raw
        struct.pack_into("<II", self._mm, self._used, end - self._used, len(raw))
        self._used = end
        struct.pack_into("<Q", self._mm, 8, end)  # last: the entry is complete
        view = self._q if integer else self._d
        return view[start // 8:end // 8]

    def collect(self) -> dict[str, dict[Labels, list]]:
        """Every worker's values, combined: metric → series → slots."""
        lock = os.open(self.directory, os.O_RDONLY)
        try:
            fcntl.flock(lock, fcntl.LOCK_SH)  # no archiving while reading (see _archive)
            merged: dict[str, dict[Labels, list]] = {}
            dead = []
            for path in sorted(self.directory.glob("worker-*.bin")):
                entries, live = _read_file(path)
                if entries is None:
                    continue
                if not live:
                    dead.append(path)
                _combine(merged, entries, live)
            _combine(merged, _read_archive(self.directory / ARCHIVE), False)
        finally:
            os.close(lock)  # releases the shared lock
        if dead:
            _archive(self.directory, dead)
        return merged

    def close(self) -> None:
        """At shutdown: release the lock, so that the file counts as a dead worker's (its counters still count).
        The mapping stays (the metrics' views point into it) and goes with the process."""
        fcntl.flock(self._fd, fcntl.LOCK_UN)  # the mapping's duplicate of the descriptor shares this lock


def clear_shared_dir(directory: str | Path) -> None:
    """Before the workers start: no file of an earlier run may count (created if missing)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    for path in [*d.glob("worker-*.bin"), d / ARCHIVE, d / (ARCHIVE + ".tmp")]:
        path.unlink(missing_ok=True)


def _read_file(path: Path) -> tuple[list | None, bool]:
    """(entries as (name, key, kind, mode, values), whether its owner is alive); (None, False) if it is gone."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None, False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            live = False  # nobody holds it: its worker has exited
        except BlockingIOError:
            live = True
        try:
            mm = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
        except ValueError:  # still empty: a worker that is just creating it
            return None, False
        with mm:
            if len(mm) < HEADER or mm[0:4] != MAGIC:
                return None, False
            (used,) = struct.unpack_from("<Q", mm, 8)
            data = mm[:used]
    finally:
        os.close(fd)
    entries, off = [], HEADER
    while off < used:
        length, klen = struct.unpack_from("<II", data, off)
        name, key, kind, mode = orjson.loads(data[off + 8:off + 8 + klen])
        start = off + 8 + klen
        start += -start % 8
        n = (off + length - start) // 8
        values = list(struct.unpack_from(f"<{n}{kind}", data, start))
        entries.append((name, tuple(tuple(kv) for kv in key), kind, mode, values))
        off += length
    return entries, live


def _combine(merged: dict, entries: Iterable, live: bool) -> None:
    for name, key, _kind, mode, values in entries:
        if mode != SUM and not live:
            continue  # a dead worker's gauges say nothing now
        if mode != SUM and any(math.isnan(v) for v in values):
            continue  # a series that worker no longer has
        series = merged.setdefault(name, {})
        have = series.get(key)
        if have is None:
            series[key] = list(values)
        elif mode == MAX:
            series[key] = [max(a, b) for a, b in zip(have, values)]
        else:
            series[key] = [a + b for a, b in zip(have, values)]


def _read_archive(path: Path) -> list:
    try:
        raw = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        return []
    return [(name, tuple(tuple(kv) for kv in key), kind, SUM, values) for name, key, kind, values in raw]


def _archive(directory: Path, dead: list[Path]) -> None:
    """Fold dead workers' files into the archive (their SUM series: counters, histograms, callback counters)
    and remove them, so that the directory does not grow with every restarted worker. Under the directory's
    exclusive lock, so that no reader sees a file both archived and still there; if a reader holds it, later."""
    lock = os.open(directory, os.O_RDONLY)
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return
        merged: dict[tuple, list] = {}
        for name, key, kind, _mode, values in _read_archive(directory / ARCHIVE):
            merged[(name, key, kind)] = values
        gone = []
        for path in dead:
            entries, live = _read_file(path)
            if entries is None or live:
                continue
            gone.append(path)
            for name, key, kind, mode, values in entries:
                if mode == SUM:
                    have = merged.get((name, key, kind))
                    merged[(name, key, kind)] = values if have is None else [a + b for a, b in zip(have, values)]
        tmp = directory / (ARCHIVE + ".tmp")
        tmp.write_bytes(orjson.dumps([[n, [list(kv) for kv in k], kind, v] for (n, k, kind), v in merged.items()]))
        os.replace(tmp, directory / ARCHIVE)
        for path in gone:
            path.unlink(missing_ok=True)
    finally:
        os.close(lock)


_MODEL_LABELS = ("gen_ai_operation_name", "gen_ai_request_model", "gen_ai_response_model", "gen_ai_provider_name")


class GatewayMetrics:
    """The gateway's metrics; ``observer`` is appended to ``gateway.observers``."""

    def __init__(self, registry: Registry | None = None):
        r = self.registry = registry or Registry()
        self.token_usage = r.histogram(
            "gen_ai_client_token_usage", "Tokens used per request (OpenTelemetry gen_ai.client.token.usage).",
            (*_MODEL_LABELS, "gen_ai_token_type"), TOKEN_BUCKETS)
        self.ttft = r.histogram(
            "gen_ai_server_time_to_first_token_seconds",
            "Time to the first token of streamed answers (gen_ai.server.time_to_first_token).",
            _MODEL_LABELS, TTFT_BUCKETS)
        self.duration = r.histogram(
            "gen_ai_server_request_duration_seconds",
            "Duration of answered requests (gen_ai.server.request.duration).",
            (*_MODEL_LABELS, "error_type"), DURATION_BUCKETS)
        self.upstream_errors = r.counter(
            "metarouter_upstream_errors_total", "Failed upstream attempts, by provider and upstream status.",
            ("gen_ai_provider_name", "gen_ai_response_model", "status"))
        self.router_choices = r.counter(
            "metarouter_router_choices_total", "Requests the router sent to each model.",
            ("router", "gen_ai_request_model", "gen_ai_response_model"))
        self.cost = r.counter(
            "metarouter_cost_usd_total", "Cost of answered requests at catalog prices, USD.",
            ("gen_ai_response_model", "gen_ai_provider_name"), scale=10**12)
        self.generations = r.counter(
            "metarouter_generations_total", "Generation records written, by status.",
            ("gen_ai_response_model", "gen_ai_provider_name", "status"))
        self.overage = r.counter(
            "metarouter_overage_usd_total",
            "Cost beyond the budget hold (an upstream reporting more usage than possible), not charged to keys, USD.",
            ("gen_ai_response_model", "gen_ai_provider_name"), scale=10**12)
        self._bundles: dict[tuple, tuple] = {}  # see on_generation

    def observer(self, event: str, data: dict[str, Any]) -> None:
        if event == "generation":
            self.on_generation(data)
        elif event == "attempt":
            self.upstream_errors.inc(1, gen_ai_provider_name=data.get("provider"),
                                     gen_ai_response_model=data.get("model"),
                                     status=data.get("status") if data.get("status") is not None else "none")

    def on_generation(self, rec: dict[str, Any]) -> None:
        # Every label of every series this record touches follows from these six fields: resolve the series once
        # per combination and then only add numbers (this runs on every answered request).
        sig = (rec.get("requested_model"), rec.get("model"), rec.get("provider"), rec.get("status"),
               rec.get("router"), bool(rec.get("streamed")))
        b = self._bundles.get(sig)
        if b is None:
            b = self._bundle(sig)
        tok_in, tok_out, ttft, duration, choices, cost, generations = b
        if tok_in is not None:
            _observe(self.token_usage.buckets, tok_in, int(rec.get("prompt_tokens") or 0))
        if tok_out is not None:
            _observe(self.token_usage.buckets, tok_out, int(rec.get("completion_tokens") or 0))
        if ttft is not None and rec.get("ttft_ms") is not None:
            _observe(self.ttft.buckets, ttft, float(rec["ttft_ms"]) / 1000.0)
        if duration is not None and rec.get("latency_ms") is not None:
            _observe(self.duration.buckets, duration, float(rec["latency_ms"]) / 1000.0)
        if choices is not None:
            choices[0] += 1
        if cost is not None:
            cost[0] += int(rec.get("cost_pico") or 0)
        if generations is not None:
            generations[0] += 1
        if rec.get("overage_pico"):  # rare: no cached series
            self.overage.inc(int(rec["overage_pico"]), gen_ai_response_model=rec.get("model"),
                             gen_ai_provider_name=rec.get("provider"))

    def _bundle(self, sig: tuple) -> tuple:
        requested, model, provider, status, router, streamed = sig
        labels = {"gen_ai_operation_name": "chat", "gen_ai_request_model": requested,
                  "gen_ai_response_model": model, "gen_ai_provider_name": provider}
        tok_in = self.token_usage.series_for(gen_ai_token_type="input", **labels)
        tok_out = self.token_usage.series_for(gen_ai_token_type="output", **labels)
        ttft = self.ttft.series_for(**labels) if streamed else None
        duration = self.duration.series_for(error_type=None if status == "ok" else status, **labels)
        choices = (self.router_choices.slot_for(router=router, gen_ai_request_model=requested,
                                               gen_ai_response_model=model) if router else None)
        cost = self.cost.slot_for(gen_ai_response_model=model, gen_ai_provider_name=provider)
        generations = self.generations.slot_for(gen_ai_response_model=model, gen_ai_provider_name=provider,
                                               status=status)
        b = (tok_in, tok_out, ttft, duration, choices, cost, generations)
        if None not in (tok_in, tok_out, duration, cost, generations):  # a dropped series is looked up again
            if len(self._bundles) >= 4 * MAX_SERIES:
                self._bundles.clear()
            self._bundles[sig] = b
        return b

    async def endpoint(self, request: Request) -> Response:
        return Response(self.registry.render(), media_type=CONTENT_TYPE)

    async def share_callbacks(self) -> None:
        """With workers sharing a directory: write this worker's callback values every REFRESH_SECONDS, so that
        a scrape answered by another worker sees them (cancelled at shutdown)."""
        while True:
            await asyncio.sleep(REFRESH_SECONDS)
            try:
                self.registry.write_callbacks()
            except Exception:  # never let the loop die: the next round tries again
                log.exception("writing the shared callback metrics failed")
