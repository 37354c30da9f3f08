"""Which endpoints of a model serve a request, in which order: OpenRouter's provider routing.

A model has one or more endpoints (:meth:`Catalog.endpoints`: the model as each provider serves it, with that
provider's prices and limits). Per request, OpenRouter's ``provider`` object decides which of them may serve it
and in which order they are tried (each model of a ``models`` fallback list, and the model ``auto`` chose, alike):

- ``only`` / ``ignore``: providers allowed / skipped (names as the config spells them, or their display names);
- ``data_collection: "deny"`` (or ``zdr: true``): only endpoints whose provider is configured ``retains_data:
  false``;
- ``max_price``: ``{prompt, completion}`` in USD per 1M tokens (``request``, ``image``, ``audio``: USD each, which
  no endpoint here charges): endpoints priced above are left out;
- ``require_parameters``: endpoints whose provider cannot take every parameter sent are skipped (the pipeline's
  check, per endpoint);
- ``sort``: ``price`` (the request's estimated cost), ``throughput`` (completion tokens a second, fastest first) or
  ``latency`` (time to first token, quickest first), measured from this gateway's own records of the last 30
  minutes (:class:`EndpointStats`); endpoints without samples come after those with them, cheapest first. The
  ``:nitro`` variant of a model id is ``sort: throughput``, ``:floor`` is ``sort: price``;
- ``order``: these providers first, in this order, then the others (sorted as above) unless ``allow_fallbacks``
  is false; ``allow_fallbacks: false`` without ``order``: only the first endpoint.

Without a ``provider`` object the endpoints are tried cheapest first, each falling back to the next (an open
circuit — :mod:`.resilience`, one breaker per endpoint — is skipped). A model with a single endpoint and no
preferences takes none of this: the pipeline's fast path asks nothing of the store.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Callable, Iterable, Sequence

from ..catalog import Model
from ..errors import GatewayError
from ..store.base import endpoint_stats
from ..swr import SWRCache
from .accounting import EXPECTED_OUTPUT_TOKENS, estimate_prompt_tokens, requested_max_tokens

SORTS = ("price", "throughput", "latency")
#: model id suffixes and the sort they stand for
VARIANTS = {"nitro": "throughput", "floor": "price"}
MAX_PRICE_FIELDS = ("prompt", "completion", "request", "image", "audio")
#: OpenRouter fields this gateway has no data for: accepted only when they ask for nothing (null, false, empty)
UNSUPPORTED = ("quantizations", "enforce_distillable_text", "preferred_min_throughput", "preferred_max_latency",
               "options")
FIELDS = ("order", "only", "ignore", "allow_fallbacks", "require_parameters", "data_collection", "zdr", "sort",
          "max_price", *UNSUPPORTED)
#: how far back the endpoints' latency and throughput are measured, and how many records of each at most
STATS_WINDOW_S = 30 * 60
STATS_SAMPLES = 200
STATS_TTL_S = 10.0
#: a price given as a string (OpenRouter's SDK sends them so): plain decimal digits
PRICE_STRING = re.compile(r"^[0-9]+(\.[0-9]+)?$")


@dataclass(frozen=True, slots=True)
class ProviderPrefs:
    """A request's ``provider`` object, checked (provider names resolved to the config's)."""

    order: tuple[str, ...] = ()
    only: frozenset[str] | None = None
    ignore: frozenset[str] = frozenset()
    allow_fallbacks: bool = True
    require_parameters: bool = False
    no_data_retention: bool = False  # data_collection "deny", or zdr
    sort: str | None = None
    max_prompt: Decimal | None = None  # USD per 1M tokens
    max_completion: Decimal | None = None

    @property
    def needs_stats(self) -> bool:
        return self.sort in ("throughput", "latency")


NO_PREFS = ProviderPrefs()


def _bad(message: str, param: str) -> GatewayError:
    return GatewayError(400, message, metadata={"param": param}, retryable=False)


def split_variant(model_id: str) -> tuple[str, str | None]:
    """``("meta-llama/llama-3.1-70b-instruct", "throughput")`` for ``…:nitro``; the id itself and None otherwise."""
    base, sep, suffix = model_id.rpartition(":")
    if sep and suffix.lower() in VARIANTS and base:
        return base, VARIANTS[suffix.lower()]
    return model_id, None


def _names(value: Any, field: str, known: dict[str, str]) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _bad(f"`provider.{field}` must be an array of provider names", f"provider.{field}")
    out = []
    for name in value:
        canonical = known.get(name.lower())
        if canonical is None:
            shown = name if len(name) <= 64 else name[:64] + "…"
            raise _bad(f"Unknown provider {shown!r} in `provider.{field}`; known providers: "
                       f"{', '.join(sorted(set(known.values())))}", f"provider.{field}")
        if canonical not in out:
            out.append(canonical)
    return out


def _bool(value: Any, field: str, default: bool) -> bool:
    if value is None:
        return default
    if not isinstance(value, bool):
        raise _bad(f"`provider.{field}` must be a boolean", f"provider.{field}")
    return value


def _price(value: Any, field: str) -> Decimal | None:
    if value is None:
        return None
    ok = (isinstance(value, (int, float)) and not isinstance(value, bool)) or (
        isinstance(value, str) and PRICE_STRING.match(value) is not None)
    if not ok:
        raise _bad(f"`provider.max_price.{field}` must be a number ≥ 0 (USD per 1M tokens) or such a number as a "
                   "decimal string", f"provider.max_price.{field}")
    try:
        d = Decimal(str(value))
    except InvalidOperation:  # pragma: no cover - the checks above leave nothing Decimal cannot read
        raise _bad(f"`provider.max_price.{field}` must be a number", f"provider.max_price.{field}") from None
    if not d.is_finite() or d < 0:
        raise _bad(f"`provider.max_price.{field}` must be a finite number ≥ 0", f"provider.max_price.{field}")
    return d


def _sort(value: Any) -> str | None:
    by = value
    if isinstance(value, dict):  # OpenRouter's {by, partition}
        unknown = sorted(set(value) - {"by", "partition"})
        if unknown:
            raise _bad(f"`provider.sort` takes by and partition, not {', '.join(unknown)}", "provider.sort")
        if value.get("partition") not in (None, "model"):
            raise _bad("`provider.sort.partition` must be \"model\" (endpoints are sorted within each model)",
                       "provider.sort.partition")
        by = value.get("by")
    if by is None:
        return None
    if not isinstance(by, str) or by not in SORTS:
        raise _bad(f"`provider.sort` must be one of {', '.join(SORTS)}", "provider.sort")
    return by


def parse_prefs(value: Any, known: dict[str, str]) -> ProviderPrefs:
    """The request's ``provider`` object, checked: a 400 naming the field for anything malformed, an unknown
    provider name, a bad ``sort`` or a negative ``max_price``. ``known``: lowercase name or display name → the
    provider's config name."""
    if value is None:
        return NO_PREFS
    if not isinstance(value, dict):
        raise _bad("`provider` must be an object", "provider")
    unknown = sorted(set(value) - set(FIELDS))
    if unknown:
        raise _bad(f"Unknown field(s) in `provider`: {', '.join(unknown)} (supported: {', '.join(FIELDS)})",
                   "provider")
    for name in UNSUPPORTED:
        v = value.get(name)
        if not (v is None or v is False or (isinstance(v, (list, dict)) and not v)):
            raise _bad(f"`provider.{name}` is not supported by this gateway (it has no such data for its endpoints)",
                       f"provider.{name}")
    dc = value.get("data_collection")
    if dc is not None and dc not in ("allow", "deny"):
        raise _bad("`provider.data_collection` must be \"allow\" or \"deny\"", "provider.data_collection")
    mp = value.get("max_price")
    if mp is not None and not isinstance(mp, dict):
        raise _bad("`provider.max_price` must be an object {prompt, completion} in USD per 1M tokens",
                   "provider.max_price")
    mp = mp or {}
    bad_keys = sorted(set(mp) - set(MAX_PRICE_FIELDS))
    if bad_keys:
        raise _bad(f"`provider.max_price` takes {', '.join(MAX_PRICE_FIELDS)}, not {', '.join(bad_keys)}",
                   "provider.max_price")
    prices = {k: _price(mp.get(k), k) for k in MAX_PRICE_FIELDS}  # request, image, audio: checked; nothing costs
    only = value.get("only")
    prefs = ProviderPrefs(
        order=tuple(_names(value.get("order"), "order", known)),
        only=frozenset(_names(only, "only", known)) if only is not None else None,
        ignore=frozenset(_names(value.get("ignore"), "ignore", known)),
        allow_fallbacks=_bool(value.get("allow_fallbacks"), "allow_fallbacks", True),
        require_parameters=_bool(value.get("require_parameters"), "require_parameters", False),
        no_data_retention=dc == "deny" or _bool(value.get("zdr"), "zdr", False),
        sort=_sort(value.get("sort")),
        max_prompt=prices["prompt"],
        max_completion=prices["completion"],
    )
    return NO_PREFS if prefs == NO_PREFS else prefs  # (an empty object asks for nothing: the fast path)


def request_cost_key(body: dict[str, Any]) -> Callable[[Model], int]:
    """What ``sort: price`` compares: the request's estimated cost on an endpoint (its prompt at the input price,
    the output it asks for — at most a typical answer's — at the output price)."""
    prompt = estimate_prompt_tokens(body)
    output = min(requested_max_tokens(body) or EXPECTED_OUTPUT_TOKENS, EXPECTED_OUTPUT_TOKENS)
    return lambda e: prompt * e.input_pico + output * e.output_pico


def request_fits(body: dict[str, Any]) -> Callable[[Model], bool]:
    """Whether an endpoint's limits take the request: its estimated prompt and the ``max_tokens`` asked for within
    the context, and that ``max_tokens`` within the endpoint's largest answer."""
    prompt, asked = estimate_prompt_tokens(body), requested_max_tokens(body)
    return lambda e: e.limit_violation(prompt, asked) is None


def _none_allowed(model: Model, endpoints: Sequence[Model], requested: Iterable[str]) -> GatewayError:
    return GatewayError(404, "No allowed providers are available for the selected model.", retryable=False,
                        metadata={"model": model.id, "available_providers": [e.provider for e in endpoints],
                                  "requested_providers": sorted(requested)})


def order_endpoints(model: Model, endpoints: Sequence[Model], prefs: ProviderPrefs, *,
                    cost: Callable[[Model], int], available: Callable[[str], bool],
                    retains_data: Callable[[str], bool],
                    stats: dict[tuple[str, str], dict[str, Any]] | None = None,
                    fits: Callable[[Model], bool] | None = None) -> list[Model]:
    """The endpoints of ``model`` that may serve this request, in the order to try them; a 404 in OpenRouter's
    words when the preferences leave none. Endpoints whose provider has no key go last (the pipeline's error for
    them names the key to set), and before them those whose limits do not take the request (``fits``: too small a
    context or largest answer; their upstream's error is the answer if nothing else serves); nothing else: health
    is the pipeline's (an open circuit is skipped)."""
    eps = list(endpoints)
    if prefs.only is not None:
        eps = [e for e in eps if e.provider in prefs.only]
        if not eps:
            raise _none_allowed(model, endpoints, prefs.only)
    if prefs.ignore:
        eps = [e for e in eps if e.provider not in prefs.ignore]
        if not eps:
            raise _none_allowed(model, endpoints, set(e.provider for e in endpoints) - prefs.ignore)
    if prefs.no_data_retention:
        eps = [e for e in eps if not retains_data(e.provider)]
        if not eps:
            raise GatewayError(404, f"No endpoints found matching your data policy (provider.data_collection: "
                                    f"deny) for {model.id}: every provider serving it may retain prompts",
                               retryable=False, metadata={"model": model.id})
    if prefs.max_prompt is not None or prefs.max_completion is not None:
        eps = [e for e in eps if (prefs.max_prompt is None or e.input_usd_per_mtok <= prefs.max_prompt)
               and (prefs.max_completion is None or e.output_usd_per_mtok <= prefs.max_completion)]
        if not eps:
            cheapest = min(endpoints, key=cost)
            raise GatewayError(
                404, f"No endpoints found for {model.id} within provider.max_price (its cheapest: "
                     f"${cheapest.input_usd_per_mtok:g} prompt, ${cheapest.output_usd_per_mtok:g} completion per "
                     "1M tokens)", retryable=False, metadata={"model": model.id})
    if len(eps) > 1:
        eps.sort(key=_sort_key(prefs.sort, cost, stats))
        # stable: the order above within each group
        eps.sort(key=lambda e: (not available(e.provider), fits is not None and not fits(e)))
    if prefs.order:
        first = [e for name in prefs.order for e in eps if e.provider == name]
        if not first and not prefs.allow_fallbacks:
            raise _none_allowed(model, endpoints, prefs.order)
        eps = first + ([e for e in eps if e not in first] if prefs.allow_fallbacks else [])
    elif not prefs.allow_fallbacks:
        eps = eps[:1]
    return eps


def _sort_key(sort: str | None, cost: Callable[[Model], int], stats: dict | None) -> Callable[[Model], tuple]:
    if sort not in ("throughput", "latency"):
        return lambda e: (cost(e),)

    def key(e: Model) -> tuple:
        s = (stats or {}).get((e.id, e.provider)) or {}
        measured = s.get(sort)
        if measured is None:  # no samples: after those with some, cheapest first
            return (1, 0.0, cost(e))
        p50 = measured["p50"]
        return (0, -p50 if sort == "throughput" else p50, cost(e))

    return key


class EndpointStats:
    """Latency and throughput per endpoint from the store's recent records (cache hits excluded), one query for
    all endpoints, kept ``STATS_TTL_S`` seconds in this process (served while a refresh runs)."""

    def __init__(self, store: Any, ttl: float = STATS_TTL_S):
        self.store = store
        self._cache: SWRCache[dict[tuple[str, str], dict[str, Any]]] = SWRCache(self._load, ttl)

    async def get(self) -> dict[tuple[str, str], dict[str, Any]]:
        return await self._cache.get(None)

    def invalidate(self) -> None:
        self._cache.invalidate(None)

    async def _load(self, _: Any) -> dict[tuple[str, str], dict[str, Any]]:
        rows = await self.store.endpoint_samples(time.time() - STATS_WINDOW_S, STATS_SAMPLES)
        return endpoint_stats(rows)
