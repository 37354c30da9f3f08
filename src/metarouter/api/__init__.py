"""HTTP surface of metarouter."""

from __future__ import annotations

from ..config import Settings
from .app import create_app


def build_full_app(settings: Settings, store=None):
    """The app with every feature wired in (auto routing, activity, …): what ``metarouter serve`` runs."""
    from .activity import activity_routes

    app = create_app(settings, store)
    _wire_auto_router(app, settings)
    _wire_rate_limits(app, settings)
    _wire_admin_and_metrics(app)
    app.router.routes.extend(activity_routes())
    _wire_openapi(app, settings)
    _wire_breaker_metrics(app)
    _wire_store_metrics(app)
    _wire_conversations(app, settings)
    _wire_response_cache(app, settings)
    return app


def _wire_response_cache(app, settings: Settings) -> None:
    """Response caching, asked for per request (``X-OpenRouter-Cache``) or by the config: gateway/cache.py."""
    from ..gateway.cache import CacheSettings, make_cache

    CacheSettings.from_config(settings.raw)  # a bad setting fails here, not at the first request

    async def start(app) -> None:
        app.state.response_cache = make_cache(settings)
        app.state.request_hooks.append(app.state.response_cache.request_hook)

    async def stop(app) -> None:
        cache = getattr(app.state, "response_cache", None)
        if cache is not None:
            await cache.close()

    def results() -> list:
        cache = getattr(app.state, "response_cache", None)
        return [] if cache is None else [({"result": "hit"}, cache.hits), ({"result": "miss"}, cache.misses)]

    app.state.metrics.registry.counter_callback(
        "metarouter_response_cache_requests_total",
        "Requests that asked for the response cache, by result (hit: answered from it at no cost).", results)
    app.state.startup_hooks.append(start)
    app.state.shutdown_hooks.append(stop)


def _wire_conversations(app, settings: Settings) -> None:
    """With ``redis_url``, the conversations of stored responses (``previous_response_id``) live in Redis, so
    that any replica can continue a response another one served."""
    if not settings.redis_url:
        return
    from .responses import RedisConversations, conversation_limits

    async def start(app) -> None:
        import redis.asyncio as aioredis

        app.state.conversations_redis = aioredis.from_url(settings.redis_url)
        app.state.conversations = RedisConversations(app.state.conversations_redis,
                                                     *conversation_limits(settings.raw))

    async def stop(app) -> None:
        await app.state.conversations_redis.aclose()

    app.state.startup_hooks.append(start)
    app.state.shutdown_hooks.append(stop)


def _wire_openapi(app, settings: Settings) -> None:
    """``GET /api/v1/openapi.json`` (and ``/v1/…``, ``/openapi.json``): the OpenAPI 3.1 description."""
    import orjson
    from starlette.responses import Response
    from starlette.routing import Route

    from .openapi import openapi_document

    raw = orjson.dumps(openapi_document(settings.limits.max_messages))

    async def openapi(request) -> Response:
        return Response(raw, media_type="application/json")

    app.router.routes.extend(Route(p, openapi, methods=["GET"])
                             for p in ("/api/v1/openapi.json", "/v1/openapi.json", "/openapi.json"))


def _wire_breaker_metrics(app) -> None:
    """Circuit-breaker state per model of each provider in ``/metrics``, read from the gateway's breakers at scrape
    time."""
    from ..gateway.resilience import HALF_OPEN, OPEN
    from ..metrics import MAX

    registry = app.state.metrics.registry
    state_code = {OPEN: 2, HALF_OPEN: 1}

    def breakers() -> list:
        gw = getattr(app.state, "gateway", None)
        return sorted(dict(getattr(gw, "breakers", None) or {}).items())

    registry.gauge_callback(  # with several workers: the worst state any worker's breaker is in
        "metarouter_circuit_breaker_state",
        "Circuit breaker state per model and provider: 0 closed, 1 half-open, 2 open.",
        lambda: [({"provider": p, "model": m}, state_code.get(b.state, 0)) for (p, m), b in breakers()], mode=MAX)
    registry.counter_callback(
        "metarouter_circuit_breaker_opened_total", "Times each model's circuit breaker opened.",
        lambda: [({"provider": p, "model": m}, b.opened_count) for (p, m), b in breakers()])


def _wire_store_metrics(app) -> None:
    """The ledger's backlog in ``/metrics``, read at scrape time."""

    def pending() -> list:
        st = getattr(app.state, "store", None)
        return [] if st is None else [({}, int(st.pending_records))]

    app.state.metrics.registry.gauge_callback(
        "metarouter_ledger_pending_records",
        "Generation records accepted but not yet written to the store (a backlog that keeps growing means the "
        "store cannot keep up).", pending)


def _wire_auto_router(app, settings: Settings) -> None:
    from ..gateway.auto import AutoResolver, RedisStickySessions, auto_model_schema

    async def start(app) -> None:
        sticky = None
        if settings.redis_url:
            from ..ratelimit import redis_client

            app.state.sticky_redis = redis_client(settings.redis_url)
            sticky = RedisStickySessions(app.state.sticky_redis, float(settings.router.get("sticky_ttl", 300)))
        resolver = AutoResolver(settings, app.state.gateway.catalog, sticky=sticky)
        app.state.gateway.resolver = resolver
        app.state.auto_resolver = resolver

    async def stop(app) -> None:
        client = getattr(app.state, "sticky_redis", None)
        if client is not None:
            await client.aclose()

    def add_auto(models: list[dict]) -> list[dict]:
        resolver = getattr(app.state, "auto_resolver", None)
        return ([auto_model_schema(resolver)] + models) if resolver is not None else models

    app.state.startup_hooks.append(start)
    app.state.shutdown_hooks.append(stop)
    app.state.models_hooks.append(add_auto)
    from .route import route_routes

    app.router.routes.extend(route_routes())


def _wire_rate_limits(app, settings: Settings) -> None:
    """Per-key rpm/tpm: in memory for one process, in Redis (shared by workers and replicas) with ``redis_url``."""
    from ..ratelimit import RateLimitGuard, make_limiter

    async def start(app) -> None:
        guard = RateLimitGuard(make_limiter(settings.redis_url))
        app.state.ratelimit = guard
        app.state.request_hooks.append(guard.request_hook)
        app.state.gateway.observers.append(guard.observer)

    async def stop(app) -> None:
        guard = getattr(app.state, "ratelimit", None)
        if guard is not None:
            await guard.close()

    app.state.startup_hooks.append(start)
    app.state.shutdown_hooks.append(stop)


def _wire_admin_and_metrics(app) -> None:
    """The admin API (``/api/v1/keys``, ``POST /api/v1/credits``) and Prometheus ``/metrics``."""
    import asyncio

    from starlette.routing import Route

    from ..metrics import GatewayMetrics, Registry
    from .admin import admin_routes

    metrics = GatewayMetrics(Registry.from_environment())  # shared by the workers under serve --workers N
    app.state.metrics = metrics
    app.router.routes.extend(admin_routes())
    app.router.routes.append(Route("/metrics", metrics.endpoint, methods=["GET"]))

    async def start(app) -> None:
        app.state.gateway.observers.append(metrics.observer)
        if metrics.registry.shared is not None:
            app.state.metrics_task = asyncio.get_running_loop().create_task(metrics.share_callbacks())

    async def stop(app) -> None:
        task = getattr(app.state, "metrics_task", None)
        if task is not None:
            task.cancel()
            metrics.registry.shared.close()

    app.state.startup_hooks.append(start)
    app.state.shutdown_hooks.append(stop)


__all__ = ["build_full_app", "create_app"]
