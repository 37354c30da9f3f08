"""``model: "auto"``: the meta-model on the request path, with the user's controls and sticky sessions.

Controls (per request, with account and per-key defaults from the config's ``router:`` section):
``plugins: [{"id": "auto-router", "allowed_models", "excluded_models", "cost_quality_tradeoff", "cost_tier"}]``
and ``provider.max_price`` (``prompt``/``completion`` in USD per 1M tokens, ``request`` in USD). The router's ranked
list is the fallback order.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import OrderedDict
from typing import Any

import orjson

from ..catalog import Catalog, Model, usd_string
from ..config import Settings
from ..errors import GatewayError
from ..logutil import ThrottledWarning
from ..router import Constraints, RequestError, RouteDecision, RouteRequest, Router, kernel, load_router
from .pipeline import Plan, RequestContext

log = logging.getLogger("metarouter.auto")

AUTO_IDS = frozenset({"auto", "openrouter/auto", "metarouter/auto"})
AUTO_MODEL_ID = "openrouter/auto"

#: cost tiers as ceilings on the output price (USD per 1M tokens); "max" has none
COST_TIERS: dict[str, float | None] = {"low": 1.5, "medium": 6.0, "high": 15.0, "xhigh": 30.0, "max": None}
STICKY_TTL = 300.0


class StickySessions:
    """Which model a conversation is pinned to, forgotten after ``ttl`` seconds of inactivity (per process; a
    cluster shares pins through Redis when one is configured, see ``RedisStickySessions``)."""

    def __init__(self, ttl: float = STICKY_TTL, max_entries: int = 100_000):
        self.ttl = ttl
        self.max_entries = max_entries
        self._pins: OrderedDict[str, tuple[str, float]] = OrderedDict()

    async def get(self, key: str) -> str | None:
        hit = self._pins.get(key)
        if hit is None:
            return None
        model, at = hit
        if time.monotonic() - at > self.ttl:
            self._pins.pop(key, None)
            return None
        return model

    async def pin(self, key: str, model: str) -> None:
        self._pins[key] = (model, time.monotonic())
        self._pins.move_to_end(key)
        while len(self._pins) > self.max_entries:
            self._pins.popitem(last=False)

    async def unpin(self, key: str) -> None:
        self._pins.pop(key, None)


class RedisStickySessions:
    """Pins shared by every replica, in Redis, with the inactivity TTL as the key's expiry. If Redis is away (or
    slow), a conversation is routed afresh and not pinned: stickiness degrades, requests do not fail."""

    def __init__(self, redis: Any, ttl: float = STICKY_TTL, prefix: str = "mr:sticky:"):
        self.redis, self.ttl, self.prefix = redis, int(ttl), prefix
        #: read and refresh the expiry in one command (GETEX, Redis >= 6.2): one round trip instead of two, and
        #: about half the client's CPU per auto request; servers without it get GET then EXPIRE
        self.getex = self.ttl > 0
        self._warn = ThrottledWarning(log, "sticky sessions unavailable (%s): routing without pins")

    async def get(self, key: str) -> str | None:
        try:
            return await self._get(self.prefix + key)
        except Exception as exc:  # noqa: BLE001 - Redis away: no pin, the router decides
            self._warn(exc)
            return None

    async def _get(self, name: str) -> str | None:
        if self.getex:
            try:
                v = await self.redis.getex(name, ex=self.ttl)
            except Exception as e:  # redis.exceptions.ResponseError from a server before 6.2
                if "unknown command" not in str(e).lower():
                    raise
                self.getex = False
            else:
                return None if v is None else v.decode() if isinstance(v, bytes) else v
        v = await self.redis.get(name)
        if v is None:
            return None
        await self.redis.expire(name, self.ttl)
        return v.decode() if isinstance(v, bytes) else v

    async def pin(self, key: str, model: str) -> None:
        try:
            await self.redis.set(self.prefix + key, model, ex=self.ttl)
        except Exception as exc:  # noqa: BLE001 - an answer must never fail for want of its pin
            self._warn(exc)

    async def unpin(self, key: str) -> None:
        try:
            await self.redis.delete(self.prefix + key)
        except Exception as exc:  # noqa: BLE001
            self._warn(exc)



def _auto_plugin(body: dict[str, Any]) -> dict[str, Any]:
    for p in body.get("plugins") or ():
        if isinstance(p, dict) and p.get("id") == "auto-router" and p.get("enabled", True) is not False:
            return p
    return {}


def _str_list(v: Any, name: str) -> list[str] | None:
    if v is None:
        return None
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise GatewayError(400, f"`{name}` must be an array of model ids or patterns")
    return v


def _price(v: Any, name: str) -> float | None:
    if v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise GatewayError(400, f"`provider.max_price.{name}` must be a number") from None
    if f < 0:
        raise GatewayError(400, f"`provider.max_price.{name}` must not be negative")
    return f


def session_key(body: dict[str, Any], ctx: RequestContext) -> tuple[str, str]:
    """(the key a conversation is pinned under, where it came from): ``session_id`` in the body or the
    ``x-session-id`` header, else a fingerprint of the first system and first user messages."""
    owner = ctx.key.public_id if ctx.key else "-"
    if ctx.session_id:
        return f"{owner}:s:{ctx.session_id}", "session_id"
    first: dict[str, Any] = {}
    for m in body.get("messages") or ():
        role = m.get("role")
        if role in ("system", "developer") and "system" not in first:
            first["system"] = m.get("content")
        elif role == "user" and "user" not in first:
            first["user"] = m.get("content")
        if len(first) == 2:
            break
    digest = hashlib.sha256(orjson.dumps(first, option=orjson.OPT_SORT_KEYS)).hexdigest()[:32]
    return f"{owner}:f:{digest}", "fingerprint"


class AutoResolver:
    """Plans ``auto`` requests: filter the pool, rank it with the meta-model, honour a sticky pin."""

    def __init__(self, settings: Settings, catalog: Catalog, router: Router | None = None, sticky: Any = None):
        self.settings = settings
        self.catalog = catalog
        cfg = settings.router or {}
        self.router = router or load_router(cfg.get("artifact"))
        self.sticky = sticky or StickySessions(float(cfg.get("sticky_ttl", STICKY_TTL)))
        self.defaults: dict[str, Any] = {k: cfg[k] for k in (
            "allowed_models", "excluded_models", "cost_quality_tradeoff", "cost_tier", "max_price") if k in cfg}
        #: per-key defaults, by key label or public id
        self.key_defaults: dict[str, dict[str, Any]] = dict(cfg.get("keys") or {})
        self._provider_names: tuple[Catalog, tuple[str, ...]] | None = None
        self._pools: dict[tuple[bool, ...], tuple[Catalog, list[Model], dict[str, Model]]] = {}

    def handles(self, model_id: str) -> bool:
        return model_id.lower() in AUTO_IDS

    def pool(self) -> list[Model]:
        """Models ``auto`` may choose from: those with an endpoint whose provider is configured and available."""
        return list(self._pool()[0])

    def _pool(self) -> tuple[list[Model], dict[str, Model]]:
        """The pool and its models by id, cached per set of available providers (asked once per provider, not
        once per model, on every request)."""
        catalog = self.catalog
        names = self._provider_names
        if names is None or names[0] is not catalog:
            names = self._provider_names = (catalog, tuple(sorted(catalog.providers())))
        available = self.settings.provider_available
        key = tuple([available(p) for p in names[1]])
        hit = self._pools.get(key)
        if hit is None or hit[0] is not catalog:
            up = {p for p, ok in zip(names[1], key) if ok}
            # each model at its cheapest available endpoint's prices (the pipeline tries that one first)
            pool = [v for v in (catalog.routing_view(m, up) for m in catalog) if v is not None]
            hit = (catalog, pool, {m.id: m for m in pool})
            if len(self._pools) >= 64:
                self._pools.clear()
            self._pools[key] = hit
        return hit[1], hit[2]

    def _controls(self, body: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
        merged: dict[str, Any] = dict(self.defaults)
        if ctx.key is not None:
            for ident in (ctx.key.label, ctx.key.public_id):
                merged.update(self.key_defaults.get(ident) or {})
        plugin = _auto_plugin(body)
        merged.update({k: v for k, v in plugin.items() if k != "id" and v is not None})
        prov = body.get("provider") or {}
        if isinstance(prov, dict) and isinstance(prov.get("max_price"), dict):
            merged["max_price"] = {**(merged.get("max_price") or {}), **prov["max_price"]}
        return merged

    def constraints(self, request: RouteRequest, controls: dict[str, Any]) -> tuple[Constraints, float | None]:
        allowed = _str_list(controls.get("allowed_models"), "allowed_models")
        excluded = _str_list(controls.get("excluded_models"), "excluded_models")
        tier = controls.get("cost_tier")
        if tier is not None and (not isinstance(tier, str) or tier not in COST_TIERS):
            raise GatewayError(400, f"`cost_tier` must be one of {', '.join(COST_TIERS)}")
        mp = controls.get("max_price") or {}
        if not isinstance(mp, dict):
            raise GatewayError(400, "`provider.max_price` must be an object")
        completion_cap = _price(mp.get("completion"), "completion")
        if tier is not None and COST_TIERS[tier] is not None:
            cap = COST_TIERS[tier]
            completion_cap = cap if completion_cap is None else min(completion_cap, cap)
        tradeoff = controls.get("cost_quality_tradeoff")
        if tradeoff is not None:
            if isinstance(tradeoff, bool) or not isinstance(tradeoff, (int, float)) or not 0 <= tradeoff <= 10:
                raise GatewayError(400, "`cost_quality_tradeoff` must be a number from 0 (best answer) to 10 (cheapest)")
            tradeoff = float(tradeoff)
        return Constraints.for_request(
            request, allowed=allowed, excluded=excluded,
            max_price_prompt=_price(mp.get("prompt"), "prompt"),
            max_price_completion=completion_cap,
            max_price_request=_price(mp.get("request"), "request"),
        ), tradeoff

    async def plan(self, body: dict[str, Any], ctx: RequestContext, requested: list[str]) -> Plan:
        # the compiled kernel, loaded in the background on the first auto request (a gateway that never routes
        # never pays its memory); the numpy kernel serves until it is ready
        kernel.warm_up()
        controls = self._controls(body, ctx)
        try:
            request = RouteRequest.from_body(body)
        except RequestError as e:
            raise GatewayError(400, str(e)) from None
        constraints, tradeoff = self.constraints(request, controls)
        pool, by_id = self._pool()
        if not pool:
            raise GatewayError(503, "auto: no provider is configured; set a provider's API key first")
        decision: RouteDecision = self.router.route(request, pool, constraints, tradeoff)
        ids = decision.model_ids  # best first (the decision's Candidate objects are never needed here)
        if not ids:
            raise GatewayError(404, _nothing_left_message(constraints, controls, decision),
                               metadata={"excluded": [{"model": m, "reason": r} for m, r in decision.excluded]})
        ranked = [by_id[i] for i in ids]
        skey, source = session_key(body, ctx)
        pinned = await self.sticky.get(skey)
        sticky = None
        if pinned is not None:
            if pinned in ids:
                ranked = [by_id[pinned]] + [m for m in ranked if m.id != pinned]
                sticky = {"pinned": pinned, "source": source, "held": True}
            else:
                sticky = {"pinned": pinned, "source": source, "held": False,
                          "why_released": "the pinned model no longer fits this request's filters"}
                await self.sticky.unpin(skey)
        top = ids[0]
        routing = decision.to_record()  # the candidates as columns: their dicts are built only where shown
        ranking = routing.pop("ranking")
        reason = routing.pop("reason")
        if sticky and sticky["held"] and pinned != top:
            reason = f"sticky session: kept on {pinned} (router's own choice: {top})"
        routing.update(
            strategy="auto",
            reason=reason,
            ranking=ranking,
            router_choice=top,
            sticky=sticky,
            controls={k: v for k, v in controls.items() if v is not None},
        )

        async def on_served(model_id: str) -> None:
            await self.sticky.pin(skey, model_id)

        return Plan(requested_model=requested[0], candidates=ranked, router="auto", record_routing=routing,
                    on_served=on_served)


def _nothing_left_message(c: Constraints, controls: dict[str, Any], decision: RouteDecision) -> str:
    filters = []
    if c.allowed:
        filters.append(f"allowed_models={c.allowed}")
    if c.excluded:
        filters.append(f"excluded_models={c.excluded}")
    if controls.get("cost_tier"):
        filters.append(f"cost_tier={controls['cost_tier']}")
    mp = controls.get("max_price")
    if mp:
        filters.append(f"max_price={mp}")
    for need, on in (("tools", c.needs_tools), ("JSON output", c.needs_json)):
        if on:
            filters.append(f"requires {need}")
    reasons = sorted({r for _, r in decision.excluded})
    head = "No model is left for auto routing after " + (", ".join(filters) if filters else "the request's needs")
    return head + (". Excluded because: " + "; ".join(reasons[:6]) if reasons else "")


def auto_model_schema(resolver: AutoResolver) -> dict[str, Any]:
    """The ``auto`` entry of ``GET /models``: variable price, shown as the pool's highest per-token prices (an
    upper bound, never a negative sentinel), and the largest context of the pool."""
    pool = resolver.pool() or list(resolver.catalog)
    return {
        "id": AUTO_MODEL_ID,
        "canonical_slug": AUTO_MODEL_ID,
        "name": "Auto Router (metarouter)",
        "created": 0,
        "description": "Chooses, per prompt, the model with the best predicted answer for the price among the "
                       "configured models; the response's `model` names the model that answered and the usage is "
                       "priced at its rate. Prices shown are the pool's highest (an upper bound).",
        "context_length": 2_000_000,
        "architecture": {"modality": "text+image->text", "input_modalities": ["text", "image"],
                         "output_modalities": ["text"], "tokenizer": "Router", "instruct_type": None},
        "pricing": {
            "prompt": usd_string(max(m.input_pico for m in pool)),
            "completion": usd_string(max(m.output_pico for m in pool)),
            "request": "0", "image": "0", "web_search": "0", "internal_reasoning": "0",
            "variable": True,
        },
        "top_provider": {"context_length": 2_000_000, "max_completion_tokens": None, "is_moderated": False},
        "per_request_limits": None,
        "supported_parameters": ["temperature", "top_p", "max_tokens", "stop", "seed", "tools", "tool_choice",
                                 "response_format"],
        "default_parameters": None,
        "supported_voices": None,
        "links": {"details": "/api/v1/models/openrouter/auto/endpoints"},
        "available": bool(resolver.pool()),
    }
