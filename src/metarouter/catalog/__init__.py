"""The model catalog: ids, prices, limits and capabilities of every routable model, and the endpoints that serve it.

The 20 seed models ship as ``models.csv`` (figures from OpenRouter's listing of mid-January 2025, see
NOTICE in that folder); a config file may add, override or remove models.

**Endpoints.** A model is served by one or more *endpoints*: a provider with its own prices, limits and native
model id. Each endpoint is a :class:`Model` — the model as that provider serves it (same ``id``, its own
``provider``, ``native_model``, prices, ``context_length``, ``max_output_tokens``) — so pricing, holds, request
building and records work on an endpoint exactly as on a model. The catalog row (``models.csv``, or a model the
config adds) is the model's *default endpoint*; the config adds others under the model's ``endpoints:`` (provider
name → the fields that differ, the rest taken from the default endpoint).
"""

from __future__ import annotations

import csv
import dataclasses
import fnmatch
from dataclasses import dataclass, field
from decimal import Decimal
from importlib import resources
from typing import Any, Container, Iterable

#: Money is kept as integer picodollars (1e-12 USD): every catalog price per token is an integer there,
#: so costs are exact and sums never drift.
PICO_PER_USD = 10**12
PICO_PER_USD_PER_MTOK = 10**6  # a price of 1 USD per 1M tokens is 1e6 picodollars per token

def usd_per_mtok_to_pico(value: str | float | Decimal) -> int:
    """Convert a price in USD per 1M tokens to integer picodollars per token, exactly."""
    d = Decimal(str(value)) * PICO_PER_USD_PER_MTOK
    if d != d.to_integral_value():
        raise ValueError(f"price {value} USD/1M tokens is finer than a picodollar per token")
    return int(d)


def pico_to_usd(pico: int) -> float:
    return float(Decimal(pico) / PICO_PER_USD)


def usd_string(pico: int) -> str:
    """A per-token price as OpenRouter writes it: a plain decimal string, no exponent."""
    return format((Decimal(pico) / PICO_PER_USD).normalize(), "f")


def usd_to_pico(usd: float | str | Decimal) -> int:
    return int((Decimal(str(usd)) * PICO_PER_USD).to_integral_value())


@dataclass(frozen=True, slots=True)
class Model:
    id: str
    name: str
    provider: str
    native_model: str
    context_length: int
    max_output_tokens: int | None
    input_pico: int  # price per input token, picodollars
    output_pico: int  # price per output token, picodollars
    cache_read_pico: int | None = None  # per prompt token read from the provider's cache (None: the input price)
    cache_write_pico: int | None = None  # per prompt token written to it (Anthropic; None: the input price)
    tools: bool = False
    vision: bool = False
    json_output: bool = False
    reasoning: bool = False
    #: takes OpenRouter's ``reasoning: {effort | max_tokens}`` (mapped to the provider's own control); a
    #: reasoning model without it (o1-mini, DeepSeek R1) reasons at its fixed default
    reasoning_control: bool = False
    hidden_reasoning_tokens: int = 0
    tokenizer: str = ""
    created: str = ""
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def input_usd_per_mtok(self) -> Decimal:
        return Decimal(self.input_pico) / PICO_PER_USD_PER_MTOK

    @property
    def output_usd_per_mtok(self) -> Decimal:
        return Decimal(self.output_pico) / PICO_PER_USD_PER_MTOK

    def cost_pico(self, prompt_tokens: int, completion_tokens: int, *, cached_tokens: int = 0,
                  cache_write_tokens: int = 0) -> int:
        """Exact cost of one request in picodollars (completion tokens include reasoning tokens)."""
        return sum(self.cost_parts_pico(prompt_tokens, completion_tokens, cached_tokens=cached_tokens,
                                        cache_write_tokens=cache_write_tokens))

    def cost_parts_pico(self, prompt_tokens: int, completion_tokens: int, *, cached_tokens: int = 0,
                        cache_write_tokens: int = 0) -> tuple[int, int]:
        """(prompt cost, completion cost) in picodollars. ``prompt_tokens`` includes the cached tokens (read from
        the provider's prompt cache) and the cache-write tokens, which are priced at their own rates."""
        cached = max(0, min(cached_tokens, prompt_tokens))
        written = max(0, min(cache_write_tokens, prompt_tokens - cached))
        read_price = self.input_pico if self.cache_read_pico is None else self.cache_read_pico
        write_price = self.input_pico if self.cache_write_pico is None else self.cache_write_pico
        prompt = (prompt_tokens - cached - written) * self.input_pico + cached * read_price + written * write_price
        return prompt, completion_tokens * self.output_pico

    @property
    def worst_prompt_pico(self) -> int:
        """The highest price a prompt token can have (a cache write costs more than plain input on Anthropic)."""
        return max(self.input_pico, self.cache_read_pico or 0, self.cache_write_pico or 0)

    def max_output(self) -> int:
        """The most output tokens one request may ask for."""
        return self.max_output_tokens or self.context_length

    @property
    def list_price(self) -> tuple[int, int]:
        """What "cheapest" means among endpoints without a request to price: input + output price per token, then
        input alone."""
        return self.input_pico + self.output_pico, self.input_pico

    def limit_violation(self, prompt_tokens: int, max_tokens: int | None) -> str | None:
        """Why a request of this size does not fit here (the context, or the largest answer), or None."""
        if prompt_tokens + (max_tokens or 0) > self.context_length:
            return f"context {self.context_length} tokens < {prompt_tokens} prompt + {max_tokens or 0} max_tokens"
        if max_tokens and self.max_output_tokens and max_tokens > self.max_output_tokens:
            return f"max_tokens {max_tokens} > model's max output {self.max_output_tokens}"
        return None


def _bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    return str(v).strip().lower() in ("1", "true", "yes", "y")


def _int_or_none(v: Any) -> int | None:
    if v is None or str(v).strip() == "":
        return None
    return int(v)


def model_from_mapping(row: dict[str, Any], base: Model | None = None) -> Model:
    """Build a model from a CSV row or config mapping; fields missing from ``row`` come from ``base``."""
    kw: dict[str, Any] = {}
    if base is not None:
        kw = {f: getattr(base, f) for f in Model.__dataclass_fields__}
    simple = {
        "id": str, "name": str, "provider": str, "native_model": str, "tokenizer": str, "created": str,
        "context_length": int, "hidden_reasoning_tokens": int,
    }
    for key, conv in simple.items():
        if key in row and row[key] not in (None, ""):
            kw[key] = conv(row[key])
    if "max_output_tokens" in row:
        kw["max_output_tokens"] = _int_or_none(row["max_output_tokens"])
    for key in ("tools", "vision", "json_output", "reasoning", "reasoning_control"):
        if key in row and row[key] not in (None, ""):
            kw[key] = _bool(row[key])
    if row.get("input_usd_per_1m") not in (None, ""):
        kw["input_pico"] = usd_per_mtok_to_pico(row["input_usd_per_1m"])
    if row.get("output_usd_per_1m") not in (None, ""):
        kw["output_pico"] = usd_per_mtok_to_pico(row["output_usd_per_1m"])
    for key, field_name in (("cache_read_usd_per_1m", "cache_read_pico"), ("cache_write_usd_per_1m", "cache_write_pico")):
        if key in row:  # an empty value (CSV) or null (config) means "no cache price: billed as input"
            kw[field_name] = None if row[key] in (None, "") else usd_per_mtok_to_pico(row[key])
    kw.setdefault("name", kw.get("id", ""))
    kw.setdefault("native_model", str(kw.get("id", "")).split("/", 1)[-1])
    kw.setdefault("max_output_tokens", None)
    missing = [f for f in ("id", "provider", "context_length", "input_pico", "output_pico") if f not in kw]
    if missing:
        raise ValueError(f"model {row.get('id', '?')!r} lacks {', '.join(missing)}")
    return Model(**kw)


def load_seed_models() -> list[Model]:
    text = resources.files(__package__).joinpath("models.csv").read_text(encoding="utf-8")
    return [model_from_mapping(r) for r in csv.DictReader(text.splitlines())]


def matches(model_id: str, patterns: Iterable[str]) -> bool:
    """Whether ``model_id`` matches any pattern; ``*`` is a wildcard (``anthropic/*``, ``*/claude-*``)."""
    mid = model_id.lower()
    return any(fnmatch.fnmatchcase(mid, p.lower()) for p in patterns)


#: what an endpoint of the config's ``endpoints:`` may set (the rest comes from the model's default endpoint)
ENDPOINT_FIELDS = frozenset({
    "native_model", "context_length", "max_output_tokens", "input_usd_per_1m", "output_usd_per_1m",
    "cache_read_usd_per_1m", "cache_write_usd_per_1m", "tools", "vision", "json_output", "reasoning_control",
})


def endpoints_from_mapping(default: Model, spec: Any) -> list[Model]:
    """The extra endpoints of ``default``'s model from a config ``endpoints:`` mapping (provider → fields)."""
    if not isinstance(spec, dict):
        raise ValueError(f"model {default.id!r}: endpoints must be a mapping of provider name to its fields")
    out = []
    for provider, fields in spec.items():
        fields = {} if fields is None else fields
        if not isinstance(fields, dict):
            raise ValueError(f"model {default.id!r}: endpoint {provider!r} must be a mapping of fields")
        unknown = sorted(set(fields) - ENDPOINT_FIELDS)
        if unknown:
            raise ValueError(f"model {default.id!r}: endpoint {provider!r} cannot set {', '.join(unknown)} "
                             f"(one of {', '.join(sorted(ENDPOINT_FIELDS))})")
        if str(provider) == default.provider:
            raise ValueError(f"model {default.id!r}: {provider!r} is already its default provider; override the "
                             "model's own fields instead")
        out.append(model_from_mapping({**fields, "provider": str(provider)}, default))
    return out


class Catalog:
    """An immutable lookup of models by id (case-insensitive), each with its endpoints (the default one first)."""

    def __init__(self, models: Iterable[Model], endpoints: dict[str, Iterable[Model]] | None = None):
        self._models: dict[str, Model] = {}
        for m in models:
            self._models[m.id.lower()] = m
        #: the extra endpoints by model id (lowercase); a model without any has none here
        self._extra: dict[str, tuple[Model, ...]] = {
            mid.lower(): tuple(eps) for mid, eps in (endpoints or {}).items()
            if mid.lower() in self._models and eps}

    def __iter__(self):
        return iter(self._models.values())

    def __len__(self) -> int:
        return len(self._models)

    def __contains__(self, model_id: str) -> bool:
        return model_id.lower() in self._models

    def get(self, model_id: str) -> Model | None:
        return self._models.get(model_id.lower())

    def ids(self) -> list[str]:
        return [m.id for m in self._models.values()]

    def endpoints(self, model: Model) -> tuple[Model, ...]:
        """Every endpoint of ``model``'s model (any of its endpoints, or its routing view, may be given): the
        default one, then those the config added."""
        key = model.id.lower()
        extra = self._extra.get(key)
        return (self._models.get(key, model), *extra) if extra else (model,)

    def routing_view(self, model: Model, available: Container[str]) -> Model | None:
        """The model as ``auto`` ranks it: priced at its cheapest endpoint whose provider is ``available``, with
        the widest limits and every capability of those endpoints (each request then tries the endpoints that take
        it, cheapest first: gateway/endpoints.py). None when no endpoint's provider is available."""
        eps = [e for e in self.endpoints(model) if e.provider in available]
        if len(eps) <= 1:
            return eps[0] if eps else None
        cheapest = min(eps, key=lambda e: e.list_price)
        outs = [e.max_output_tokens for e in eps]
        return dataclasses.replace(
            cheapest, context_length=max(e.context_length for e in eps),
            max_output_tokens=None if None in outs else max(outs), tools=any(e.tools for e in eps),
            vision=any(e.vision for e in eps), json_output=any(e.json_output for e in eps))

    def has_endpoints(self) -> bool:
        """Whether any model has an endpoint beyond its default one."""
        return bool(self._extra)

    def providers(self) -> set[str]:
        """The providers of every endpoint."""
        return {e.provider for m in self._models.values() for e in self.endpoints(m)}

    def without_providers(self, names: Iterable[str]) -> "Catalog":
        """A new catalog without the endpoints of providers ``names``; a model whose default endpoint goes keeps
        its first remaining one as its default, and a model with none left leaves the catalog."""
        gone = set(names)
        models, extra = [], {}
        for m in self._models.values():
            left = [e for e in self.endpoints(m) if e.provider not in gone]
            if left:
                models.append(left[0])
                extra[m.id] = left[1:]
        return Catalog(models, extra)

    def select(self, allowed: Iterable[str] | None = None, excluded: Iterable[str] | None = None) -> list[Model]:
        allowed = list(allowed or [])
        excluded = list(excluded or [])
        return [
            m for m in self._models.values()
            if (not allowed or matches(m.id, allowed)) and not (excluded and matches(m.id, excluded))
        ]

    def with_overrides(self, overrides: dict[str, Any] | None, remove: Iterable[str] = ()) -> "Catalog":
        """A new catalog with config overrides applied: ``{id: {field: value}}`` adds or changes models."""
        models = {k: v for k, v in self._models.items() if not matches(v.id, remove)}
        extra = {k: v for k, v in self._extra.items() if k in models}
        for mid, fields in (overrides or {}).items():
            fields = dict(fields or {})
            endpoints = fields.pop("endpoints", None)
            fields.setdefault("id", mid)
            base = models.get(mid.lower())
            models[mid.lower()] = default = model_from_mapping(fields, base)
            if endpoints is not None:
                extra[mid.lower()] = tuple(endpoints_from_mapping(default, endpoints))
        return Catalog(models.values(), extra)


def default_catalog() -> Catalog:
    return Catalog(load_seed_models())


__all__ = [
    "ENDPOINT_FIELDS", "Catalog", "Model", "PICO_PER_USD", "default_catalog", "endpoints_from_mapping",
    "load_seed_models", "matches", "model_from_mapping", "pico_to_usd", "usd_per_mtok_to_pico", "usd_string", "usd_to_pico",
]
