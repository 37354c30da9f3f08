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

The GenAI attributes become labels as the OpenTelemetry → Prometheus mapping writes them (``gen_ai.request.model``
→ ``gen_ai_request_model``). Labels carry model, provider, status and router names only: never a key, a key id,
a user tag or a secret. Label values are truncated and the number of series per metric is capped.

Each process has its own registry: with ``--workers N`` a scrape reaches one worker, so run one worker per
container (scale with replicas, each scraped on its own) when the numbers must be complete.
"""

from __future__ import annotations

import bisect
import logging
import math
from collections.abc import Iterable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

log = logging.getLogger("metarouter.metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MAX_SERIES = 5000
MAX_LABEL_LEN = 120

# Bucket boundaries as the OpenTelemetry GenAI semantic conventions advise.
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864)
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)

Labels = tuple[tuple[str, str], ...]


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
    return repr(float(v))


class _Metric:
    kind = "untyped"

    def __init__(self, name: str, help_text: str, labelnames: Iterable[str]):
        self.name, self.help = name, help_text
        self.labelnames = tuple(labelnames)
        self._dropped = False
        self._memo: dict[tuple, Labels] = {}

    def _key(self, labels: dict[str, Any], store: dict) -> Labels | None:
        raw = tuple(labels.get(n) for n in self.labelnames)
        key = self._memo.get(raw)
        if key is not None and key in store:
            return key
        key = tuple((n, str(labels.get(n) if labels.get(n) is not None else "")[:MAX_LABEL_LEN])
                    for n in self.labelnames)
        key = tuple((n, v) for n, v in key if v != "")
        if key not in store and len(store) >= MAX_SERIES:
            if not self._dropped:
                self._dropped = True
                log.warning("metric %s reached %d series; new label sets are dropped", self.name, MAX_SERIES)
            return None
        if len(self._memo) < 4 * MAX_SERIES:
            self._memo[raw] = key
        return key

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]


class Counter(_Metric):
    kind = "counter"

    def __init__(self, name: str, help_text: str, labelnames: Iterable[str] = (), scale: int = 1):
        super().__init__(name, help_text, labelnames)
        self.scale = scale  # values are kept as integers of 1/scale (exact sums of money)
        self.values: dict[Labels, int | float] = {}

    def inc(self, amount: float = 1, **labels: Any) -> None:
        key = self._key(labels, self.values)
        if key is not None:
            self.values[key] = self.values.get(key, 0) + amount

    def key_for(self, **labels: Any) -> Labels | None:
        """The series key of a label set (None if it is dropped); ``values[key]`` may be absent until counted."""
        return self._key(labels, self.values)

    def value(self, **labels: Any) -> float:
        key = tuple((n, str(labels[n])) for n in self.labelnames if labels.get(n) not in (None, ""))
        v = self.values.get(key, 0)
        return v / self.scale if self.scale != 1 else v

    def render(self) -> list[str]:
        out = self.header()
        for key, v in sorted(self.values.items()):
            out.append(f"{self.name}{_labels(key)} {_num(v / self.scale if self.scale != 1 else v)}")
        return out


class Gauge(Counter):
    kind = "gauge"

    def set(self, value: float, **labels: Any) -> None:
        key = self._key(labels, self.values)
        if key is not None:
            self.values[key] = value


class Histogram(_Metric):
    kind = "histogram"

    def __init__(self, name: str, help_text: str, labelnames: Iterable[str], buckets: Iterable[float]):
        super().__init__(name, help_text, labelnames)
        self.buckets = tuple(sorted(buckets))
        self.series: dict[Labels, list] = {}  # labels → [bucket counts..., sum, count]

    def observe(self, value: float, **labels: Any) -> None:
        s = self.series_for(**labels)
        if s is not None:
            _observe(self.buckets, s, value)

    def series_for(self, **labels: Any) -> list | None:
        """The mutable [bucket counts..., sum, count] of a label set (created empty), or None if it is dropped."""
        key = self._key(labels, self.series)
        if key is None:
            return None
        s = self.series.get(key)
        if s is None:
            s = self.series[key] = [0] * len(self.buckets) + [0, 0]
        return s

    def count(self, **labels: Any) -> int:
        key = tuple((n, str(labels[n])) for n in self.labelnames if labels.get(n) not in (None, ""))
        s = self.series.get(key)
        return s[-1] if s else 0

    def render(self) -> list[str]:
        out = self.header()
        for key, s in sorted(self.series.items()):
            for b, n in zip(self.buckets, s):
                le = 'le="' + _num(float(b)) + '"'
                out.append(f"{self.name}_bucket{_labels(key, le)} {n}")
            inf = 'le="+Inf"'
            out.append(f"{self.name}_bucket{_labels(key, inf)} {s[-1]}")
            out.append(f"{self.name}_sum{_labels(key)} {_num(s[-2])}")
            out.append(f"{self.name}_count{_labels(key)} {s[-1]}")
        return out


class CallbackMetric(_Metric):
    """Values read at scrape time from ``collect()``: an iterable of (labels, value). Costs nothing per request."""

    def __init__(self, kind: str, name: str, help_text: str, collect):
        super().__init__(name, help_text, ())
        self.kind = kind
        self.collect = collect

    def render(self) -> list[str]:
        out = self.header()
        try:
            samples = list(self.collect())
        except Exception:  # a scrape must not fail because one source did
            log.exception("collecting %s failed", self.name)
            return out
        for labels, v in samples[:MAX_SERIES]:
            key = tuple((k, str(x)[:MAX_LABEL_LEN]) for k, x in labels.items())
            out.append(f"{self.name}{_labels(key)} {_num(v)}")
        return out


def _observe(buckets: tuple, s: list, value: float) -> None:
    for i in range(bisect.bisect_left(buckets, value), len(buckets)):
        s[i] += 1
    s[-2] += value
    s[-1] += 1


class Registry:
    def __init__(self) -> None:
        self.metrics: dict[str, _Metric] = {}

    def add(self, metric: _Metric) -> Any:
        if metric.name in self.metrics:
            raise ValueError(f"metric {metric.name} is already registered")
        self.metrics[metric.name] = metric
        return metric

    def counter(self, name: str, help_text: str, labelnames: Iterable[str] = (), scale: int = 1) -> Counter:
        return self.add(Counter(name, help_text, labelnames, scale))

    def gauge(self, name: str, help_text: str, labelnames: Iterable[str] = ()) -> Gauge:
        return self.add(Gauge(name, help_text, labelnames))

    def histogram(self, name: str, help_text: str, labelnames: Iterable[str], buckets: Iterable[float]) -> Histogram:
        return self.add(Histogram(name, help_text, labelnames, buckets))

    def gauge_callback(self, name: str, help_text: str, collect) -> CallbackMetric:
        return self.add(CallbackMetric("gauge", name, help_text, collect))

    def counter_callback(self, name: str, help_text: str, collect) -> CallbackMetric:
        return self.add(CallbackMetric("counter", name, help_text, collect))

    def render(self) -> str:
        lines: list[str] = []
        for m in self.metrics.values():
            lines += m.render()  # type: ignore[attr-defined]
        return "\n".join(lines) + "\n"


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
        for counter, key, amount in ((self.router_choices, choices, 1),
                                     (self.cost, cost, int(rec.get("cost_pico") or 0)),
                                     (self.generations, generations, 1)):
            if key is not None:
                counter.values[key] = counter.values.get(key, 0) + amount
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
        choices = (self.router_choices.key_for(router=router, gen_ai_request_model=requested,
                                               gen_ai_response_model=model) if router else None)
        cost = self.cost.key_for(gen_ai_response_model=model, gen_ai_provider_name=provider)
        generations = self.generations.key_for(gen_ai_response_model=model, gen_ai_provider_name=provider,
                                               status=status)
        b = (tok_in, tok_out, ttft, duration, choices, cost, generations)
        if None not in (tok_in, tok_out, duration, cost, generations):  # a dropped series is looked up again
            if len(self._bundles) >= 4 * MAX_SERIES:
                self._bundles.clear()
            self._bundles[sig] = b
        return b

    async def endpoint(self, request: Request) -> Response:
        return Response(self.registry.render(), media_type=CONTENT_TYPE)
