"""The HTTP surface: OpenRouter's paths under ``/api/v1`` and the same under ``/v1`` for OpenAI clients."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from typing import Any, AsyncIterator

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from ..catalog import PICO_PER_USD, Model, pico_to_usd, usd_string
from ..catalog.providers import provider_display
from ..config import Settings
from ..errors import GatewayError
from ..gateway.cache import is_cache_hit
from ..gateway.pipeline import Gateway, RequestContext, routing_view
from ..gateway.resilience import HALF_OPEN, OPEN
from ..providers.sse import SSE_DONE, SSE_PROCESSING, SSEParser, sse_data
from ..store import KeyRecord, Store, new_generation_id, open_store, parse_key, verify_key
from ..store.base import iso_utc, next_period_start
from ..swr import SWRCache
from . import messages as messages_api
from .responses import ConversationStore, ResponsesStream, conversation_limits, error_body, history_of, \
    response_from_chat, to_chat, validate_responses_body
from .validation import json_depth_ok, validate_chat_body

log = logging.getLogger("metarouter.api")

JSON = "application/json"
MAX_APP_HEADER = 1024  # app referer and title are stored at most this long


class LeanStreamingResponse(StreamingResponse):
    """StreamingResponse without anyio's task group: one plain task waits for the client's disconnect, checked
    between chunks (a gone client stops the relay at its next chunk, and the body iterator is closed). A chunk
    that ends with ``data: [DONE]`` is the last: it goes out with the end of the body in one write."""

    async def __call__(self, scope, receive, send) -> None:  # type: ignore[override]
        watcher = asyncio.ensure_future(receive())
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            async for chunk in self.body_iterator:
                if watcher.done():
                    break
                if chunk.endswith(SSE_DONE):  # the end of an SSE stream: close the body in the same write
                    await send({"type": "http.response.body", "body": chunk, "more_body": False})
                    break
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            else:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            watcher.cancel()
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:
                await aclose()


API_PREFIXES = ("/api/v1", "/v1")  # OpenRouter's paths, and the same for OpenAI clients


def api_routes(*specs: tuple[str, Any, list[str]]) -> list[Route]:
    """Each ``(path, endpoint, methods)`` under every API prefix."""
    return [Route(prefix + path, endpoint, methods=methods) for prefix in API_PREFIXES for path, endpoint, methods in specs]


#: the account's credit, all top-ups together (in picodollars it must fit the stores' 64-bit integers, 2**63 ≈ 9.2e18)
MAX_CREDITS_PICO = 9 * 10**6 * PICO_PER_USD


def credits_view(credits: int | None, usage: int) -> dict[str, Any]:
    """``GET /credits`` data. With no credit set the account is unlimited (spending is bounded by key limits):
    ``unlimited`` says so, and ``total_credits`` is the most the account could hold — a number, as OpenRouter's
    clients require (its SDK rejects null), that leaves them a balance rather than an empty account."""
    return {"total_credits": pico_to_usd(credits if credits is not None else MAX_CREDITS_PICO),
            "total_usage": pico_to_usd(usage), "unlimited": credits is None}


def header_text(value: str | None) -> str | None:
    """A header value as the client wrote it. HTTP carries bytes and Starlette reads them as Latin-1, but clients
    send UTF-8 (``X-Title: Résumé ✨``): read them as UTF-8, and as Latin-1 only when they are not valid UTF-8."""
    if value is None or value.isascii():
        return value
    try:
        return value.encode("latin-1").decode("utf-8")
    except UnicodeDecodeError:
        return value


def json_response(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(obj), status_code=status, media_type=JSON, headers=headers)


def error_response(err: GatewayError) -> Response:
    return json_response(err.body(), err.status, err.headers or None)


def store_unreachable(exc: BaseException) -> GatewayError | None:
    """The error to answer when ``exc`` says the database cannot be reached (refused, reset, timed out): a 503 to
    retry, not a 500. None for anything else. (Upstream failures never get here: they are ``GatewayError``s.)"""
    unreachable: tuple[type[BaseException], ...] = (OSError, TimeoutError)
    asyncpg = sys.modules.get("asyncpg")
    if asyncpg is not None:
        unreachable += (asyncpg.PostgresConnectionError, asyncpg.CannotConnectNowError, asyncpg.InterfaceError)
        if isinstance(exc, ValueError):  # asyncpg's DataError and ClientConfigurationError: not an outage
            return None
    if not isinstance(exc, unreachable):
        return None
    return GatewayError(503, "The gateway's database is unreachable; nothing was sent upstream or charged. Try again "
                             "shortly.", headers={"Retry-After": "2"}, metadata={"error_type": type(exc).__name__})


class KeyAuth:
    """Resolves ``Authorization: Bearer sk-mr-…`` to a key record; records are cached briefly by public id."""

    def __init__(self, store: Store, ttl: float = 5.0):
        # served while a refresh runs, so no request waits on the store for a key it saw a moment ago
        self._cache: SWRCache[KeyRecord | None] = SWRCache(store.get_key, ttl)
        self._store = store  # its clock decides when a key has expired (the cached record says when: exact)

    def invalidate(self, public_id: str) -> None:
        self._cache.invalidate(public_id)

    async def authenticate(self, request: Request, *, x_api_key: bool = False) -> KeyRecord:
        """``x_api_key``: the key may come as ``x-api-key`` instead (what Anthropic's clients send)."""
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" and x_api_key and request.headers.get("x-api-key"):
            scheme, token = "bearer", request.headers["x-api-key"].strip()
        if scheme.lower() != "bearer" or not token:
            hint = "`x-api-key: sk-mr-…` or " if x_api_key else ""
            raise GatewayError(401, f"Missing API key: send {hint}`Authorization: Bearer sk-mr-…`", retryable=False)
        public_id = parse_key(token)
        if public_id is None:
            raise GatewayError(401, "Invalid API key", retryable=False)
        rec = await self._cache.get(public_id)
        if rec is None or not verify_key(token, rec):
            raise GatewayError(401, "Invalid API key", retryable=False)
        if rec.disabled:
            raise GatewayError(403, "This API key is disabled", retryable=False)
        if rec.expired(self._store.clock()):
            raise GatewayError(401, f"This API key expired at {iso_utc(rec.expires_at)}", retryable=False)
        return rec


TOKENIZER_NAMES = {
    "o200k_base": "GPT", "cl100k_base": "GPT", "claude": "Claude", "gemini": "Gemini", "mistral": "Mistral",
    "mistral-tekken": "Mistral", "deepseek": "DeepSeek", "llama3": "Llama3", "cohere": "Cohere",
}


def pricing_schema(m: Model) -> dict[str, str]:
    """A model's (or an endpoint's) prices as OpenRouter writes them: USD per token, as strings."""
    pricing = {
        "prompt": usd_string(m.input_pico),
        "completion": usd_string(m.output_pico),
        "request": "0",
        "image": "0",
        "web_search": "0",
        "internal_reasoning": usd_string(m.output_pico) if m.reasoning else "0",
    }
    if m.cache_read_pico is not None:
        pricing["input_cache_read"] = usd_string(m.cache_read_pico)
    if m.cache_write_pico is not None:
        pricing["input_cache_write"] = usd_string(m.cache_write_pico)
    return pricing


def _created(m: Model) -> int:
    with contextlib.suppress(ValueError):
        return int(time.mktime(time.strptime(m.created, "%Y-%m-%d"))) if m.created else 0
    return 0


def _architecture(m: Model) -> dict[str, Any]:
    inputs = ["text", "image"] if m.vision else ["text"]
    return {
        "modality": "+".join(inputs) + "->text",
        "input_modalities": inputs,
        "output_modalities": ["text"],
        "tokenizer": TOKENIZER_NAMES.get(m.tokenizer, "Other"),
        "instruct_type": None,
    }


def _description(m: Model, gateway: Gateway) -> str:
    return f"{m.name}, served by {', '.join(e.provider for e in gateway.catalog.endpoints(m))}."


def model_schema(m: Model, gateway: Gateway) -> dict[str, Any]:
    """A model in ``GET /models``: its default endpoint's prices and limits (the others: ``links.details``)."""
    return {
        "id": m.id,
        "canonical_slug": m.id,
        "name": m.name,
        "created": _created(m),
        "description": _description(m, gateway),
        "context_length": m.context_length,
        "architecture": _architecture(m),
        "pricing": pricing_schema(m),
        "top_provider": {
            "context_length": m.context_length,
            "max_completion_tokens": m.max_output_tokens,
            "is_moderated": False,
        },
        "per_request_limits": None,
        "supported_parameters": gateway.supported_parameters(m),
        "default_parameters": None,
        "supported_voices": None,
        "links": {"details": f"/api/v1/models/{m.id}/endpoints"},
        "available": any(gateway.settings.provider_available(e.provider) for e in gateway.catalog.endpoints(m)),
    }


#: OpenRouter's endpoint ``status``: 0 serving; here -5 while its circuit lets one probe through, -10 while open
ENDPOINT_UP, ENDPOINT_PROBING, ENDPOINT_DOWN = 0, -5, -10


def endpoint_schema(e: Model, gateway: Gateway, stats: dict[tuple[str, str], dict[str, Any]]) -> dict[str, Any]:
    """One endpoint in OpenRouter's ``PublicEndpoint`` shape: its own prices, limits and health, and the latency
    (ms to the first token) and throughput (tokens a second) percentiles measured from this gateway's records of
    the last 30 minutes (null without any). Uptime is not measured (null)."""
    breaker = gateway.breakers.get((e.provider, e.id))
    status = ENDPOINT_UP
    if breaker is not None and breaker.state == HALF_OPEN:
        status = ENDPOINT_PROBING
    elif breaker is not None and breaker.state == OPEN:
        status = ENDPOINT_DOWN if breaker.retry_after() > 0 else ENDPOINT_PROBING
    measured = stats.get((e.id, e.provider)) or {}
    display = provider_display(e.provider)
    return {
        "name": f"{display} | {e.id}",
        "model_id": e.id,
        "model_name": e.name,
        "context_length": e.context_length,
        "pricing": pricing_schema(e),
        "provider_name": display,
        "tag": e.provider,
        "quantization": None,
        "max_completion_tokens": e.max_output_tokens,
        "max_prompt_tokens": None,
        "supported_parameters": gateway.supported_parameters(e),
        "status": status,
        "uptime_last_30m": None,
        "uptime_last_5m": None,
        "uptime_last_1d": None,
        "supports_implicit_caching": e.cache_read_pico is not None,
        "supports_tool_choice": {"auto": e.tools, "none": e.tools, "required": e.tools, "function": e.tools},
        "native_tools": {},
        "service_tier": None,
        "supports_diarization": False,
        "latency_last_30m": measured.get("latency"),
        "throughput_last_30m": measured.get("throughput"),
        "available": gateway.settings.provider_available(e.provider),
    }


def _settings(request: Request) -> Settings:
    return request.app.state.settings


def _gateway(request: Request) -> Gateway:
    return request.app.state.gateway


async def read_json(request: Request, *, limit: int | None = None, required: bool = True) -> Any:
    """The request's JSON body, the one reader of every endpoint: at most ``limit`` bytes (default: the settings'
    ``max_body_bytes``), nested at most ``max_json_depth`` levels. An empty body is a 400 when ``required``, else
    None."""
    settings = _settings(request)
    limit = settings.limits.max_body_bytes if limit is None else limit
    cl = request.headers.get("content-length")
    if cl is not None:
        try:
            if int(cl) > limit:
                raise GatewayError(413, f"Request body too large (limit {limit} bytes)")
        except ValueError:
            raise GatewayError(400, "Invalid Content-Length header") from None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise GatewayError(413, f"Request body too large (limit {limit} bytes)")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw:
        if not required:
            return None
        raise GatewayError(400, "The request body is empty: send a JSON object")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise GatewayError(400, f"Invalid JSON in request body: {exc}") from None
    if not json_depth_ok(body, settings.limits.max_json_depth):
        raise GatewayError(400, f"JSON nested deeper than {settings.limits.max_json_depth} levels")
    return body


def request_context(request: Request, key: KeyRecord, body: dict[str, Any]) -> RequestContext:
    h = request.headers
    referer = header_text(h.get("http-referer") or h.get("referer") or None)
    title = header_text(h.get("x-openrouter-title") or h.get("x-title") or None)
    return RequestContext(
        key=key,
        app_referer=referer[:MAX_APP_HEADER] if referer else None,
        app_title=title[:MAX_APP_HEADER] if title else None,
        want_metadata=h.get("x-openrouter-metadata", "").lower() in ("enabled", "true", "1"),
        session_id=body.get("session_id") or h.get("x-session-id") or None,
    )


async def authorize(request: Request, *, x_api_key: bool = False) -> KeyRecord:
    """The key of a request (a completion request's head is bounded by the server, before routing)."""
    return await request.app.state.auth.authenticate(request, x_api_key=x_api_key)


async def admit(request: Request, key: KeyRecord, body: dict[str, Any]) -> RequestContext:
    """A valid chat body's context, once the request hooks (rate limits) let it through."""
    ctx = request_context(request, key, body)
    for hook in request.app.state.request_hooks:
        await hook(request, key, body, ctx)
    return ctx


async def open_stream(request: Request, body: dict[str, Any], ctx: RequestContext) -> AsyncIterator[bytes]:
    """The pipeline's SSE frames. Raises ``GatewayError`` while an HTTP status can still be answered (nothing
    started within ``stream_commit_after``); after that, errors come as a terminal chunk."""
    settings = _settings(request)
    frames = await _gateway(request).stream(body, ctx)
    first_task = asyncio.ensure_future(frames.__anext__())
    done, _ = await asyncio.wait({first_task}, timeout=settings.stream_commit_after)
    if not done:
        return _relay(frames, settings.keepalive_interval, pending=first_task, model=body.get("model") or "")
    try:
        first = first_task.result()
    except StopAsyncIteration:
        raise GatewayError(502, "The upstream stream ended without an answer") from None
    except GatewayError:
        raise
    except Exception as exc:
        err = store_unreachable(exc)
        if err is None:
            raise
        raise err from None
    return _relay(frames, settings.keepalive_interval, first=first)


async def _relay(
    frames: AsyncIterator[bytes], keepalive: float, *, first: bytes | None = None,
    pending: asyncio.Future | None = None, model: str = "",
) -> AsyncIterator[bytes]:
    """The frames, after ``first`` or after ``pending`` (the first, still awaited: a processing comment every
    ``keepalive`` seconds meanwhile, and its error as a terminal chunk)."""
    try:
        if pending is not None:
            yield SSE_PROCESSING
            while True:
                done, _ = await asyncio.wait({pending}, timeout=keepalive)
                if done:
                    break
                yield SSE_PROCESSING
            try:
                try:
                    first = pending.result()
                except GatewayError:
                    raise
                except Exception as exc:
                    raise store_unreachable(exc) or exc from None
            except GatewayError as err:
                yield sse_data({  # nothing answered: a fresh id, the model as requested
                    "id": new_generation_id(), "object": "chat.completion.chunk", "created": int(time.time()),
                    "model": model, "system_fingerprint": None,
                    "choices": [{"index": 0, "delta": {}, "finish_reason": "error"}],
                    "error": err.stream_body(),
                })
                yield SSE_DONE
                return
            except StopAsyncIteration:
                return
        assert first is not None
        yield first
        async for frame in frames:
            yield frame
    finally:
        if pending is not None and not pending.done():
            pending.cancel()
            with contextlib.suppress(BaseException):
                await pending
        with contextlib.suppress(BaseException):
            await frames.aclose()  # type: ignore[attr-defined]


def sse_response(it: AsyncIterator[bytes]) -> StreamingResponse:
    return LeanStreamingResponse(it, media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def chat_completions(request: Request) -> Response:
    key = await authorize(request)
    body = validate_chat_body(await read_json(request), max_messages=_settings(request).limits.max_messages)
    ctx = await admit(request, key, body)
    if not body.get("stream"):
        return json_response(await _gateway(request).complete(body, ctx))
    return sse_response(await open_stream(request, body, ctx))


async def messages(request: Request) -> Response:
    """Anthropic's Messages API: translated to a chat request, run by the same pipeline, translated back."""
    max_messages = _settings(request).limits.max_messages
    try:
        key = await authorize(request, x_api_key=True)
        req = messages_api.translate_request(await read_json(request), max_messages=max_messages)
        body = validate_chat_body(req.chat, max_messages=max_messages)
        ctx = await admit(request, key, body)
        if not body.get("stream"):
            return json_response(messages_api.translate_response(await _gateway(request).complete(body, ctx), req))
        return sse_response(messages_api.relay(await open_stream(request, body, ctx), req))
    except GatewayError as err:
        return json_response(messages_api.error_body(err), err.status, err.headers or None)


async def create_response(request: Request) -> Response:
    """``POST /responses``: OpenAI's Responses API, run as a chat request (same auth, limits, pipeline, record and
    bill); errors in OpenAI's shape."""
    max_items = _settings(request).limits.max_messages
    try:
        key = await authorize(request)
        rbody = validate_responses_body(await read_json(request), max_items=max_items)
        history: list[dict[str, Any]] = []
        prev = rbody.get("previous_response_id")
        conversations = request.app.state.conversations
        if prev:
            try:
                found = await conversations.get(prev, key.public_id)
            except Exception:
                log.warning("could not read the conversation of %s", prev[:80], exc_info=True)
                raise GatewayError(503, "The conversation store is unreachable; try again") from None
            if found is None:
                raise GatewayError(404, f"Previous response with id '{prev[:80]}' not found (unknown, not "
                                        "stored, or older than the retention time).", retryable=False,
                                   metadata={"param": "previous_response_id",
                                             "code": "previous_response_not_found"})
            history = found
        body = validate_chat_body(to_chat(rbody, history, max_items=max_items), max_messages=max_items)
        ctx = await admit(request, key, body)
        if not body.get("stream"):
            resp = response_from_chat(rbody, await _gateway(request).complete(body, ctx))
            if rbody.get("store") is not False:
                await _keep(conversations, resp["id"], key, history_of(rbody, body, resp["output"]))
            return json_response(resp)
        frames = await open_stream(request, body, ctx)
    except GatewayError as err:
        return json_response(error_body(err), err.status, err.headers or None)
    return sse_response(_response_events(rbody, body, key, frames, conversations))


async def _keep(conversations: Any, response_id: str, key: KeyRecord, messages: list[dict[str, Any]]) -> None:
    """Store a conversation; a store that fails costs the follow-up, never the answer already given."""
    try:
        await conversations.put(response_id, key.public_id, messages)
    except Exception:
        log.warning("could not store the conversation of %s", response_id, exc_info=True)


async def _response_events(rbody: dict[str, Any], body: dict[str, Any], key: KeyRecord,
                           frames: AsyncIterator[bytes], conversations: Any) -> AsyncIterator[bytes]:
    """The chat frames as Responses events; the conversation is kept once the response is complete."""
    translator = ResponsesStream(rbody)
    parser = SSEParser()

    def encode(events: list[dict[str, Any]]) -> bytes:
        return b"".join(b"event: " + e["type"].encode() + b"\ndata: " + orjson.dumps(e) + b"\n\n" for e in events)

    try:
        async for frame in frames:
            if frame == SSE_PROCESSING:
                yield frame
                continue
            events: list[dict[str, Any]] = []
            for ev in parser.feed(frame):
                if ev.data and ev.data != "[DONE]":
                    events += translator.feed(orjson.loads(ev.data))
            if events:
                yield encode(events)
        last = translator.finish()
        final = translator.final
        if final is not None and final["status"] != "failed" and rbody.get("store") is not False:
            # kept before the last event goes out: a client may continue as soon as it sees it
            await _keep(conversations, final["id"], key, history_of(rbody, body, final["output"]))
        yield encode(last)
    finally:
        with contextlib.suppress(BaseException):
            await frames.aclose()  # type: ignore[attr-defined]


async def list_models(request: Request) -> Response:
    gw = _gateway(request)
    data = [model_schema(m, gw) for m in gw.catalog]
    for hook in request.app.state.models_hooks:
        data = hook(data)
    return json_response({"data": data, "total_count": len(data), "links": {"next": None}})


async def list_endpoints(request: Request) -> Response:
    """``GET /models/{author}/{slug}/endpoints``: every endpoint of one model, cheapest first (the default order)."""
    gw = _gateway(request)
    model_id = f"{request.path_params['author']}/{request.path_params['slug']}"
    resolver = gw.resolver
    if resolver is not None and resolver.handles(model_id):  # auto: the models it may choose, each where it is
        stats = await gw.endpoint_stats.get()  # priced (its cheapest available endpoint)
        pool = sorted(resolver.pool(), key=lambda e: (e.list_price, e.id))
        from ..gateway.auto import auto_model_schema

        schema = auto_model_schema(resolver)
        return json_response({"data": {
            "id": schema["id"], "name": schema["name"], "created": schema["created"],
            "description": schema["description"], "architecture": schema["architecture"],
            "endpoints": [endpoint_schema(e, gw, stats) for e in pool],
        }})
    m = gw.catalog.get(model_id)
    if m is None:
        shown = model_id if len(model_id) <= 256 else model_id[:256] + "…"
        raise GatewayError(404, f"Model {shown} not found", metadata={"model": shown}, retryable=False)
    stats = await gw.endpoint_stats.get()
    endpoints = sorted(gw.catalog.endpoints(m), key=lambda e: e.list_price)
    return json_response({"data": {
        "id": m.id,
        "name": m.name,
        "created": _created(m),
        "description": _description(m, gw),
        "architecture": _architecture(m),
        "endpoints": [endpoint_schema(e, gw, stats) for e in endpoints],
    }})


async def get_generation(request: Request) -> Response:
    key = await authorize(request)
    gen_id = request.query_params.get("id")
    if not gen_id:
        raise GatewayError(400, "Query parameter `id` is required")
    st: Store = request.app.state.store
    await st.flush()
    rec = await st.get_generation(gen_id)
    if rec is None or rec.get("key_id") != key.public_id:
        raise GatewayError(404, f"Generation {gen_id} not found")
    return json_response({"data": generation_view(rec)})


async def get_key(request: Request) -> Response:
    key = await authorize(request)
    st: Store = request.app.state.store
    await st.flush()
    fresh = await st.get_key(key.public_id) or key
    spent = await st.key_spend_windows(key.public_id)
    limit = pico_to_usd(fresh.limit_pico) if fresh.limit_pico is not None else None
    remaining = pico_to_usd(fresh.remaining_pico) if fresh.remaining_pico is not None else None
    resets_at = iso_utc(next_period_start(fresh.limit_reset, st.clock())) if fresh.limit_reset else None
    budget = None
    if limit is not None:
        budget = {"budget_id": None, "guardrail_id": None, "include_byok": False, "limit_usd": limit,
                  "remaining_usd": remaining, "reset_interval": fresh.limit_reset, "resets_at": resets_at,
                  "scope": "key_limit", "spend_usd": pico_to_usd(fresh.limit_usage_pico)}
    return json_response({"data": {
        "label": fresh.label,
        "usage": pico_to_usd(fresh.usage_pico),
        "usage_daily": pico_to_usd(spent["day"]),
        "usage_weekly": pico_to_usd(spent["week"]),
        "usage_monthly": pico_to_usd(spent["month"]),
        "byok_usage": 0.0, "byok_usage_daily": 0.0, "byok_usage_weekly": 0.0, "byok_usage_monthly": 0.0,
        "include_byok_in_limit": False,
        "limit": limit,
        "limit_remaining": remaining,
        "limit_reset": fresh.limit_reset,
        "expires_at": iso_utc(fresh.expires_at),
        "budgets": [budget] if budget else [],
        "effective_budget": budget,
        "is_free_tier": False,
        "is_provisioning_key": False,
        "is_management_key": False,
        "allowed_data_regions": ["global"],
        "creator_user_id": None,
        "organization_id": None,
        "workspace_id": None,
        "free_model_daily_requests": {"limit": 0, "remaining": 0, "used": 0},
        "rate_limit": {"requests": fresh.rpm or -1, "interval": "1m",
                       "note": "requests per minute for this key; -1: no limit"},
        "tokens_per_minute": fresh.tpm,
    }})


async def get_credits(request: Request) -> Response:
    await authorize(request)
    st: Store = request.app.state.store
    await st.flush()
    credits, usage = await st.get_credits()
    return json_response({"data": credits_view(credits, usage)})


async def health(request: Request) -> Response:
    return json_response({"status": "ok"})


async def ready(request: Request) -> Response:
    if getattr(request.app.state, "gateway", None) is None:
        return json_response({"status": "starting"}, 503)
    return json_response({"status": "ready"})


async def on_gateway_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GatewayError)
    return error_response(exc)


async def on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return error_response(GatewayError(exc.status_code, str(exc.detail)))


async def on_error(request: Request, exc: Exception) -> Response:
    err = store_unreachable(exc)
    if err is not None:
        log.warning("%s %s: the database is unreachable (%s)", request.method, request.url.path, type(exc).__name__)
        return error_response(err)
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(GatewayError(500, "Internal server error"))


def _lifespan(store: Store | None):
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        settings: Settings = app.state.settings
        st = store or open_store(settings.db_url)
        await st.open()
        gw = Gateway(settings, st)
        await gw.start()
        app.state.store = st
        app.state.gateway = gw
        app.state.auth = KeyAuth(st, settings.auth_cache_ttl)
        for hook in app.state.startup_hooks:
            await hook(app)
        try:
            yield
        finally:
            for hook in app.state.shutdown_hooks:
                with contextlib.suppress(Exception):
                    await hook(app)
            await gw.close()
            await st.close()

    return lifespan


def create_app(settings: Settings, store: Store | None = None) -> Starlette:
    """The ASGI app. ``store`` may be given (tests); otherwise it is opened from ``settings.db_url``. Handlers are
    module functions that find the settings, store, gateway and key auth on ``request.app.state``."""
    routes = [Route("/health", health), Route("/ready", ready)] + api_routes(
        ("/chat/completions", chat_completions, ["POST"]),
        ("/messages", messages, ["POST"]),
        ("/responses", create_response, ["POST"]),
        ("/models", list_models, ["GET"]),
        ("/models/{author}/{slug}/endpoints", list_endpoints, ["GET"]),
        ("/generation", get_generation, ["GET"]),
        ("/key", get_key, ["GET"]),
        ("/auth/key", get_key, ["GET"]),
        ("/credits", get_credits, ["GET"]),
    )
    app = Starlette(
        routes=routes,
        lifespan=_lifespan(store),
        exception_handlers={GatewayError: on_gateway_error, HTTPException: on_http_error, Exception: on_error},
    )
    app.state.settings = settings
    app.state.gateway = None  # set, with ``store`` and ``auth``, once the app has started
    #: the conversations of stored responses (``previous_response_id``); Redis-backed when ``redis_url`` is set
    app.state.conversations = ConversationStore(*conversation_limits(settings.raw))
    # Extension points, filled by ``build_full_app``:
    app.state.startup_hooks = []  # async (app) after the store and gateway are up
    app.state.shutdown_hooks = []  # async (app) before they close
    app.state.request_hooks = []  # async (request, key, body, ctx) before a chat request is sent; may raise
    app.state.models_hooks = []  # (list of model dicts) -> list, for GET /models
    return app


def generation_view(rec: dict[str, Any]) -> dict[str, Any]:
    """A stored record in the shape of OpenRouter's ``GET /generation`` (plus metarouter's routing fields)."""
    cost = pico_to_usd(rec["cost_pico"] or 0)
    attempts = rec.get("attempts") or []
    return {
        "id": rec["id"],
        "api_type": "completions",
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(rec["created_at"])),
        "model": rec["model"],
        "requested_model": rec["requested_model"],
        "origin": rec.get("app_referer") or "",
        "provider_name": rec["provider"],
        "router": rec.get("router"),
        "total_cost": cost,
        "usage": cost,
        "upstream_inference_cost": pico_to_usd((rec["cost_pico"] or 0) + (rec.get("overage_pico") or 0)),
        "overage": pico_to_usd(rec.get("overage_pico") or 0),  # beyond the hold: the upstream's, not the key's
        "insured": bool(rec.get("insured")),  # zero completion insurance: nothing delivered, nothing charged
        "cache_discount": None,
        "cache_hit": is_cache_hit(rec),  # answered from the response cache (gateway/cache.py): cost 0
        "is_byok": False,
        "data_region": "global",
        "tokens_prompt": rec["prompt_tokens"],
        "tokens_completion": rec["completion_tokens"],
        "native_tokens_prompt": rec["prompt_tokens"],
        "native_tokens_completion": rec["completion_tokens"],
        "native_tokens_reasoning": rec["reasoning_tokens"],
        "native_tokens_cached": rec["cached_tokens"],
        "native_tokens_completion_images": 0,
        "num_media_prompt": None,
        "num_media_completion": None,
        "num_input_audio_prompt": None,
        "num_search_results": None,
        "num_fetches": None,
        "usage_estimated": rec["usage_estimated"],
        "latency": rec["latency_ms"],
        "moderation_latency": None,
        "generation_time": round((rec["latency_ms"] or 0) - (rec["ttft_ms"] or 0), 2),
        "time_to_first_token": rec["ttft_ms"],
        "finish_reason": rec["finish_reason"],
        "native_finish_reason": rec["native_finish_reason"],
        "streamed": rec["streamed"],
        "cancelled": rec["status"] == "cancelled",
        "status": rec["status"],
        "error": rec.get("error"),
        "app_id": None,
        "http_referer": rec.get("app_referer"),
        "app": {"title": rec.get("app_title"), "referer": rec.get("app_referer")},
        "user_agent": None,
        "external_user": rec.get("user_tag"),
        "upstream_id": rec.get("upstream_id"),
        "session_id": rec.get("session_id"),
        "preset_id": None,
        "service_tier": None,
        "web_search_engine": None,
        "workspace_id": None,
        "provider_responses": [
            {"status": a.get("status"), "provider_name": a.get("provider"), "model_permaslug": a.get("model"),
             "latency": a.get("latency_ms"), "is_byok": False}
            for a in attempts
        ],
        "attempts": attempts,
        "routing": routing_view(rec.get("routing")),
    }
