"""The request pipeline: resolve candidates, send to each in turn until one answers, account, record.

Failures before the first byte of an answer move on to the next candidate; after it, a stream ends with a
terminal error chunk. Every answered request (a partial stream included) is recorded and charged exactly once, at
most what was held for it; an answer (a stream's last chunk) is sent only once its record is durably written.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Callable

import orjson

from ..catalog import Model
from ..config import Settings
from ..errors import GatewayError
from ..providers import get_adapter
from ..providers.common import excludes_reasoning
from ..providers.params import check_parameters
from ..providers.base import ProviderConfig
from ..providers.sse import SSE_DONE, SSEParser, SSETooLarge, sse_data
from ..store import KeyRecord, Store, new_generation_id
from ..swr import SWRCache
from .images import ImageFetcher, remote_image_urls
from .upstream import UpstreamClient, UpstreamError, UpstreamResponse, UpstreamTimeout
from .resilience import HALF_OPEN, OPEN, CircuitBreaker, ResilienceSettings, backoff_delay, counts_against_provider
from .accounting import (
    charged_parts,
    cost_parts,
    estimate_prompt_tokens,
    estimate_text_tokens,
    max_response_bytes,
    message_text_and_images,
    output_hold_tokens,
    prompt_token_bound,
    requested_max_tokens,
    usage_with_cost,
    worst_case_pico,
)

log = logging.getLogger("metarouter.gateway")

#: seconds an answer waits for its record to be durable before it is delivered anyway (the database is away: the
#: record stays queued and is written when it is back)
LEDGER_WAIT = 30.0
#: seconds between looks at a key's budget while a request waits for holds in flight to settle (holds of other
#: processes settle without telling this one)
BUDGET_POLL = 0.5
#: characters a token at which a stream that ignores its ``max_tokens`` is cut (English averages 4 to 5)
CUT_CHARS_PER_TOKEN = 8

PROVIDER_DISPLAY = {
    "openai": "OpenAI", "anthropic": "Anthropic", "google": "Google", "mistral": "Mistral", "deepseek": "DeepSeek",
    "cohere": "Cohere", "together": "Together", "fireworks": "Fireworks", "deepinfra": "DeepInfra",
}


def provider_display(name: str) -> str:
    return PROVIDER_DISPLAY.get(name, name)


@dataclass
class RequestContext:
    key: KeyRecord | None
    app_referer: str | None = None
    app_title: str | None = None
    want_metadata: bool = False
    session_id: str | None = None


@dataclass
class Plan:
    """What the pipeline will try, in order, and why (the router's decision, for ``auto``)."""

    requested_model: str
    candidates: list[Model]
    router: str | None = None  # "auto" when the meta-model chose
    routing: dict[str, Any] | None = None  # the decision, kept on the record and shown as metadata
    on_served: Callable[[str], Awaitable[None]] | None = None  # told which model answered (sticky sessions)


@dataclass
class Attempt:
    model: str
    provider: str
    status: int | None = None
    error: str | None = None
    latency_ms: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


class _Fallback(Exception):
    """This candidate failed before its first byte; try the next one."""

    def __init__(self, error: GatewayError):
        self.error = error


class Gateway:
    def __init__(self, settings: Settings, store: Store):
        self.settings = settings
        self.store = store
        self.catalog = settings.catalog
        self._client: UpstreamClient | None = None
        self.resilience: ResilienceSettings = settings.resilience
        self.breakers: dict[str, CircuitBreaker] = {}
        self._credit_cache: SWRCache[tuple[int | None, int]] = SWRCache(self._load_credit, ttl=1.0)
        self._background: set[asyncio.Task] = set()
        self.images = ImageFetcher(settings.image_fetch)  # remote images for providers that take inline ones only
        #: per key, requests waiting for holds in flight to settle (oldest first)
        self._budget_waiters: dict[str, collections.deque[asyncio.Future]] = {}
        self.resolver = None  # set by the app: an object with ``plan(body, ctx) -> Plan`` for ``auto``
        #: callables ``(event, data)`` told of each ``"generation"`` (the record, once written to the queue) and
        #: each ``"attempt"`` that failed (``Attempt.as_dict()``), e.g. for metrics and token rate limits
        self.observers: list = []

    def emit(self, event: str, data: dict[str, Any]) -> None:
        for observer in self.observers:
            try:
                observer(event, data)
            except Exception:  # an observer must never break a request
                log.exception("observer failed on %s", event)

    def record(self, record: dict[str, Any], reserved: int) -> asyncio.Future | None:
        """Queue the record and its charge: at most what was held (``reserved``, when a budget applied); the rest of
        what the upstream reported is the record's ``overage_pico``. Returns the store's durability future."""
        cost = int(record["cost_pico"])
        if reserved and cost > reserved:
            record["cost_pico"], record["overage_pico"] = reserved, cost - reserved
            log.warning("generation %s: %s reported usage costing %d picodollars, more than the %d held; the key is "
                        "charged what was held, the %d beyond is recorded as overage", record["id"],
                        record.get("provider"), cost, reserved, cost - reserved)
        fut = self.store.record_generation(record, reserved)
        self.emit("generation", record)
        return fut

    async def durable(self, fut: asyncio.Future | None, record: dict[str, Any]) -> None:
        """Wait until a record is durably written (before its answer reaches the client), then wake requests waiting
        on that key's budget."""
        if fut is None:
            return
        try:
            ok = await asyncio.wait_for(asyncio.shield(fut), LEDGER_WAIT)
        except TimeoutError:
            log.error("generation %s not yet written after %.0f s (is the database away?): answering anyway; the record "
                      "stays queued", record["id"], LEDGER_WAIT)
            return
        if not ok:
            log.error("generation %s could not be stored", record["id"])
        if record.get("key_id"):
            self._budget_changed(record["key_id"])

    async def start(self) -> None:
        t = self.settings.timeouts
        self._client = UpstreamClient(connect_timeout=t.connect, read_timeout=t.first_byte, total_timeout=t.total)

    async def close(self) -> None:
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        if self._client is not None:
            await self._client.close()
            self._client = None
        await self.images.close()

    # --- resolution ------------------------------------------------------------------------------------------
    async def plan(self, body: dict[str, Any], ctx: RequestContext) -> Plan:
        model_field = body.get("model")
        models_field = body.get("models")
        requested: list[str] = []
        if isinstance(model_field, str) and model_field:
            requested.append(model_field)
        if models_field is not None:
            if not isinstance(models_field, list) or not all(isinstance(m, str) for m in models_field):
                raise GatewayError(400, "`models` must be a list of model ids")
            requested += [m for m in models_field if m not in requested]
        if not requested:
            raise GatewayError(400, "`model` is required (a model id, or \"auto\")")
        if self.resolver is not None and self.resolver.handles(requested[0]):
            return await self.resolver.plan(body, ctx, requested)
        candidates = []
        for mid in requested:
            m = self.catalog.get(mid)
            if m is None:
                raise GatewayError(400, f"{mid} is not a valid model ID", metadata={"model": mid})
            candidates.append(m)
        return Plan(requested_model=requested[0], candidates=candidates)

    def breaker(self, provider: str, model_id: str) -> CircuitBreaker:
        """One breaker per model of a provider: one failing model does not refuse its siblings."""
        b = self.breakers.get((provider, model_id))
        if b is None:
            b = self.breakers[(provider, model_id)] = CircuitBreaker(self.resilience.breaker_failures,
                                                                     self.resilience.breaker_cooldown)
        return b

    def provider_for(self, model: Model) -> ProviderConfig | None:
        p = self.settings.providers.get(model.provider)
        if p is None or not self.settings.provider_available(model.provider):
            return None
        return p

    def _release_later(self, key_id: str, amount: int) -> None:
        """Give a hold back without awaiting (safe in ``finally`` blocks of cancelled tasks)."""
        task = asyncio.get_running_loop().create_task(self.store.release(key_id, amount))
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        task.add_done_callback(lambda _: self._budget_changed(key_id))

    def _budget_changed(self, key_id: str, n: int = 2) -> None:
        """A hold on this key was settled or given back: wake the oldest waiters (the others look again soon)."""
        waiters = self._budget_waiters.get(key_id)
        while waiters and n > 0:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                n -= 1
        if waiters is not None and not waiters:
            del self._budget_waiters[key_id]

    async def _budget_settles(self, key_id: str, timeout: float, first: bool) -> None:
        """Until a hold on this key settles here, or ``timeout`` (one elsewhere may have). ``first``: a waiter that
        was woken and still did not fit keeps its place at the head of the queue."""
        fut = asyncio.get_running_loop().create_future()
        waiters = self._budget_waiters.setdefault(key_id, collections.deque())
        waiters.appendleft(fut) if first else waiters.append(fut)
        try:
            await asyncio.wait((fut,), timeout=timeout)
        finally:
            if not fut.done():
                fut.cancel()
                with contextlib.suppress(ValueError):
                    waiters.remove(fut)

    def _failed(self, attempts: list[Attempt], attempt: Attempt) -> None:
        attempts.append(attempt)
        self.emit("attempt", attempt.as_dict())

    # --- budgets -----------------------------------------------------------------------------------------------
    async def _reserve(self, ctx: RequestContext, model: Model, body: dict[str, Any]) -> tuple[int, dict | None, int]:
        """Hold the most this attempt can cost against the key's limit and the account's credit.

        Returns (reserved picodollars, the body to send when ``max_tokens`` had to change or None, the output tokens
        allowed). The most a prompt can be billed is bounded by its bytes (:func:`prompt_token_bound`); output by
        ``max_tokens`` (up to the model's maximum). Without ``max_tokens`` on a limited budget the hold is what
        :func:`output_hold_tokens` allows, and that is sent upstream as ``max_tokens``. 402 when the budget cannot
        pay even with nothing else in flight; while it could, but holds of requests in flight take it, the request
        waits (up to ``budget_wait`` seconds) for them to settle.
        """
        key = ctx.key
        requested = requested_max_tokens(body)
        credits, usage = await self._account_credit()
        if (key is None or key.limit_pico is None) and credits is None:  # no budget: only the model's maximum applies
            if requested is None:
                return 0, None, model.max_output()
            tokens = min(requested, model.max_output())
            return 0, _with_max_tokens(body, tokens) if tokens < requested else None, tokens
        prompt_bound = prompt_token_bound(body)
        choices = body.get("n") or 1  # each choice may use max_tokens
        loop = asyncio.get_running_loop()
        deadline: float | None = None
        woken = False
        while True:
            fresh = await self.store.budget_view(key.public_id) if key is not None else None
            if key is not None and fresh is None:
                raise _no_credit(model)
            spendable = min(s for s in (
                None if fresh is None or fresh.limit_pico is None else fresh.limit_pico - fresh.limit_usage_pico,
                None if credits is None else credits - usage,
            ) if s is not None)
            tokens = output_hold_tokens(model, requested, spendable, prompt_bound, choices)
            worst = worst_case_pico(model, prompt_bound, max(tokens, 0) * choices)
            if tokens < 1 or worst > spendable:
                raise _no_credit(model)
            capped = _with_max_tokens(body, tokens) if tokens != requested else None
            if key is None:
                return 0, capped, tokens
            if await self.store.reserve(key.public_id, worst):
                return worst, capped, tokens
            now = loop.time()
            deadline = now + self.settings.budget_wait if deadline is None else deadline
            if now >= deadline:
                raise _no_credit(model)
            await self._budget_settles(key.public_id, min(BUDGET_POLL, deadline - now), first=woken)
            woken = True
            credits, usage = await self._account_credit()

    async def _account_credit(self) -> tuple[int | None, int]:
        """The account's (credit, usage), at most a second or so old: it decides whether budgets apply and how far
        ``max_tokens`` is capped; the hold itself is checked atomically in the store."""
        return await self._credit_cache.get(None)

    async def _load_credit(self, _: Any) -> tuple[int | None, int]:
        return await self.store.get_credits(flush=False)

    # --- sending -----------------------------------------------------------------------------------------------
    async def _open(self, model: Model, provider: ProviderConfig, body: dict[str, Any], stream: bool,
                    deadline: float, total: float):
        adapter = get_adapter(provider)
        req = adapter.build_request(body, model, provider, stream=stream)
        assert self._client is not None, "gateway not started"
        try:
            resp = await self._client.request(req.url, req.body, req.headers, req.method, deadline=deadline)
        except UpstreamTimeout:
            if asyncio.get_running_loop().time() >= deadline:
                raise _Fallback(_out_of_time(provider, total)) from None
            raise _Fallback(GatewayError(408, f"{provider.name}: upstream timed out")) from None
        except UpstreamError as exc:
            raise _Fallback(GatewayError(502, f"{provider.name}: upstream unreachable ({exc.kind})")) from None
        if resp.status != 200:
            try:
                data = await resp.read()
            except UpstreamError:
                data = b""
            finally:
                resp.release()
            err = adapter.parse_error(resp.status, data, provider)
            retry_after = (resp.headers.get("Retry-After") or "").strip()
            if retry_after.isdigit():  # seconds, passed on; anything else an upstream sends there is not
                err.headers = {**err.headers, "Retry-After": retry_after}
            raise _Fallback(err)
        return adapter, resp

    def _base_record(self, plan: Plan, ctx: RequestContext, gen_id: str, started: float, stream: bool) -> dict:
        return {
            "id": gen_id,
            "created_at": time.time(),
            "key_id": ctx.key.public_id if ctx.key else None,
            "app_referer": ctx.app_referer,
            "app_title": ctx.app_title,
            "requested_model": plan.requested_model,
            "router": plan.router,
            "routing": plan.routing,
            "streamed": stream,
            "session_id": ctx.session_id,
        }

    def _metadata(self, plan: Plan, attempts: list[Attempt], selected: Model | None) -> dict[str, Any]:
        """``openrouter_metadata`` in OpenRouter's shape (requested, strategy, summary, endpoints, attempts), plus
        the router's candidates with predicted quality and cost, the selected model and the reason."""
        strategy = plan.router or ("fallback" if len(plan.candidates) > 1 else "direct")
        sel = selected.id if selected else None
        reason = (plan.routing or {}).get("reason")
        summary = reason or (f"{sel} answered" if sel else "no model answered")
        if plan.router and sel and plan.routing and sel != plan.routing.get("router_choice") and not (
            (plan.routing.get("sticky") or {}).get("held")
        ):
            summary = f"{sel} answered after {len(attempts) - 1} failed attempt(s); router's choice: {reason}"
        meta: dict[str, Any] = {
            "requested": plan.requested_model,
            "strategy": strategy,
            "summary": summary,
            "selected": sel,
            "attempt": len(attempts),
            "is_byok": False,
            "region": None,
            "endpoints": {
                "available": [{"model": m.id, "provider": provider_display(m.provider), "selected": m.id == sel}
                              for m in plan.candidates],
                "total": len(plan.candidates),
            },
            "attempts": [{"model": a.model, "provider": provider_display(a.provider), "status": a.status or 0,
                          **({"error": a.error} if a.error else {}),
                          **({"latency_ms": a.latency_ms} if a.latency_ms is not None else {})}
                         for a in attempts],
        }
        if plan.routing:
            meta.update({k: v for k, v in plan.routing.items() if k not in meta})
        return meta

    # --- non-streaming -----------------------------------------------------------------------------------------
    async def _tries(self, plan: Plan, ctx: RequestContext, body: dict[str, Any], stream: bool,
                     attempts: list[Attempt]) -> AsyncIterator["_Try"]:
        """The upstream responses to try, in order: each candidate (skipping unconfigured, circuit-open and
        unaffordable ones), the last one retried with jittered backoff on retryable errors.

        The consumer reads each yielded ``_Try``; if that fails before the first byte it calls ``t.failed(err)``
        and asks for the next; when it succeeds it stops iterating. Raises the most telling error when none is left.
        """
        res = self.resilience
        loop = asyncio.get_running_loop()
        total = self.settings.timeouts.total
        deadline = loop.time() + total  # one bound for the whole request: every try, backoff and fallback
        last_error: GatewayError | None = None
        n = len(plan.candidates)
        needs_vision = message_text_and_images(body["messages"])[1] > 0
        needs_tools = bool(body.get("tools"))
        several_choices = (body.get("n") or 1) > 1
        require_params = bool((body.get("provider") or {}).get("require_parameters"))
        fetched: dict[str, str] = {}  # remote image URL → data URL, fetched once per request
        for i, model in enumerate(plan.candidates):
            provider = self.provider_for(model)
            if provider is None:
                attempts.append(Attempt(model.id, model.provider, 503, "provider not configured"))
                last_error = last_error or _not_configured(model)
                continue
            gap = ("image input" if needs_vision and not model.vision else
                   "tool use" if needs_tools and not model.tools else None)
            if gap:
                attempts.append(Attempt(model.id, provider.name, 404, f"does not support {gap}"))
                last_error = GatewayError(404, f"No endpoints found that support {gap} (tried {model.id})",
                                          metadata={"model": model.id}, retryable=False)
                continue
            if several_choices and "n" not in get_adapter(provider).supported_parameters(model):
                # never dropped silently: the client would get one choice where it asked for several
                msg = (f"n > 1 (several choices) is not supported by {model.id} (provider {provider.name}); "
                       "send n: 1, or use a model whose provider supports n")
                attempts.append(Attempt(model.id, provider.name, 400, msg))
                last_error = GatewayError(400, msg, metadata={"model": model.id, "provider_name": provider.name,
                                                              "param": "n"}, retryable=False)
                continue
            if require_params:
                unsupported = check_parameters(body, get_adapter(provider), model)
                if unsupported:
                    msg = f"{model.id} does not support {', '.join(unsupported)} (provider.require_parameters)"
                    attempts.append(Attempt(model.id, provider.name, 400, msg))
                    last_error = GatewayError(400, msg, metadata={"model": model.id, "unsupported": unsupported},
                                              retryable=False)
                    continue
            if loop.time() >= deadline:
                last_error = last_error or _out_of_time(provider, total)
                break
            breaker = self.breaker(provider.name, model.id)
            if not breaker.allow():
                err = _circuit_open(model, provider, breaker)
                self._failed(attempts, Attempt(model.id, provider.name, 503, err.message))
                last_error = last_error or err  # an upstream's own error of this request says more than a refusal
                continue
            probe = breaker.state == HALF_OPEN
            send = body
            if getattr(get_adapter(provider), "inline_images_only", False) and remote_image_urls(body):
                try:
                    send = await self.images.inline(body, fetched)
                except GatewayError as exc:  # this candidate cannot have the image; the next may fetch it itself
                    attempts.append(Attempt(model.id, provider.name, exc.status, exc.message))
                    last_error = exc
                    breaker.release(probe)
                    continue
            try:
                reserved, capped, max_tokens = await self._reserve(ctx, model, send)
            except GatewayError as exc:  # this candidate is unaffordable; a cheaper fallback may not be
                attempts.append(Attempt(model.id, provider.name, exc.status, exc.message))
                last_error = exc
                breaker.release(probe)
                continue
            except BaseException:  # the store is unreachable, or the request was cancelled
                breaker.release(probe)
                raise
            tries = 1 + (res.retries if i == n - 1 else 0)  # fall back first; retry only the last candidate
            t: _Try | None = None
            verdict = False  # the breaker hears once per request, after its retries
            try:
                for k in range(tries):
                    t0 = time.perf_counter()
                    try:
                        adapter, resp = await self._open(model, provider, capped or send, stream, deadline, total)
                        resp.limit = max_response_bytes(max_tokens * (send.get("n") or 1), stream=stream,
                                                        logprobs=bool(send.get("logprobs")))
                        t = _Try(model, provider, adapter, resp, reserved, max_tokens, t0, breaker)
                        yield t  # the consumer calls t.ok() and stops, or t.failed(err) and asks for the next
                        if t.error is None:
                            return
                        err = t.error
                    except _Fallback as fb:
                        err = fb.error
                    self._failed(attempts, Attempt(model.id, provider.name, err.status, err.message,
                                                   round((time.perf_counter() - t0) * 1000, 2)))
                    last_error = err
                    left = deadline - loop.time()
                    if k + 1 < tries and err.retryable and left > 0 and breaker.state != OPEN:
                        delay = backoff_delay(k, res.backoff_base, res.backoff_max, _retry_after_s(err))
                        if delay < left:
                            await asyncio.sleep(delay)
                            continue
                    break
                verdict = True
                if counts_against_provider(err):
                    breaker.failure(err)
                else:  # the upstream answered, refusing this request: nothing said about its health
                    breaker.release(probe)
            finally:
                if not verdict and not (t is not None and t.succeeded):  # cancelled before the upstream had its say
                    breaker.release(probe)
                # A hold is settled by the generation record once an answer was handed over; otherwise — failure,
                # or cancellation while waiting on the upstream — it is given back here.
                if reserved and not (t is not None and t.succeeded):
                    self._release_later(ctx.key.public_id, reserved)
            if loop.time() >= deadline:
                break  # the whole request's time is up: no fallback is tried
        raise _final_error(last_error, attempts)

    async def complete(self, body: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
        plan = await self.plan(body, ctx)
        started = time.perf_counter()
        attempts: list[Attempt] = []
        tries = self._tries(plan, ctx, body, False, attempts)
        async for t in tries:
            try:
                try:
                    data = await t.resp.read()
                finally:
                    t.resp.release()
                out = t.adapter.parse_response(data)
            except UpstreamTimeout:
                t.failed(GatewayError(408, f"{t.provider.name}: upstream timed out mid-response"))
                continue
            except UpstreamError as exc:
                t.failed(GatewayError(502, f"{t.provider.name}: upstream failed mid-response ({exc.kind})"))
                continue
            except GatewayError as exc:
                t.failed(exc)
                continue
            t.ok()
            await tries.aclose()
            attempts.append(Attempt(t.model.id, t.provider.name, 200, None,
                                    round((time.perf_counter() - t.t0) * 1000, 2)))
            if plan.on_served is not None:
                await plan.on_served(t.model.id)
            return await self._finish_complete(out, body, plan, ctx, t.model, t.provider, attempts, t.reserved, started)
        raise AssertionError("unreachable: _tries raises when nothing answered")

    async def _finish_complete(self, out, body, plan, ctx, model, provider, attempts, reserved, started) -> dict:
        gen_id = new_generation_id()
        usage = out.get("usage")
        estimated = usage is None
        if usage is None:
            text = "".join(str((c.get("message") or {}).get("content") or "") for c in out.get("choices", []))
            pt, ct = estimate_prompt_tokens(body), estimate_text_tokens(len(text))
            usage = {"prompt_tokens": pt, "completion_tokens": ct, "total_tokens": pt + ct}
        parts = cost_parts(model, usage)
        cost = sum(parts)  # the key pays at most the hold
        latency_ms = (time.perf_counter() - started) * 1000
        choice0 = (out.get("choices") or [{}])[0]
        record = self._base_record(plan, ctx, gen_id, started, False)
        record.update(
            model=model.id, provider=provider.name, status="ok",
            prompt_tokens=usage["prompt_tokens"], completion_tokens=usage["completion_tokens"],
            reasoning_tokens=(usage.get("completion_tokens_details") or {}).get("reasoning_tokens", 0),
            cached_tokens=(usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0),
            usage_estimated=estimated, cost_pico=cost, latency_ms=round(latency_ms, 2), ttft_ms=round(latency_ms, 2),
            finish_reason=choice0.get("finish_reason"), native_finish_reason=choice0.get("native_finish_reason"),
            upstream_id=out.get("id"), user_tag=body.get("user"), attempts=[a.as_dict() for a in attempts],
        )
        durable = self.record(record, reserved)
        if excludes_reasoning(body):
            for c in out.get("choices") or ():
                (c.get("message") or {}).pop("reasoning", None)
        response = {
            "id": gen_id,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model.id,
            "provider": provider_display(provider.name),
            # required (nullable) in OpenRouter's schema: its SDK rejects an answer without it
            "system_fingerprint": out.get("system_fingerprint"),
            "choices": out.get("choices") or [],
            "usage": usage_with_cost(usage, charged_parts(parts, record["cost_pico"])),
        }
        if ctx.want_metadata:
            response["openrouter_metadata"] = self._metadata(plan, attempts, model)
        await self.durable(durable, record)  # no answer leaves before its record is written
        return response

    # --- streaming ---------------------------------------------------------------------------------------------
    async def stream(self, body: dict[str, Any], ctx: RequestContext) -> AsyncIterator[bytes]:
        """SSE frames. Raises ``GatewayError`` here (resolution) or from the first ``__anext__`` if nothing could
        be started, so the caller can still answer with a real HTTP status; after the first frame, errors become
        a terminal chunk."""
        plan = await self.plan(body, ctx)
        return self._stream(body, ctx, plan)

    async def _stream(self, body: dict[str, Any], ctx: RequestContext, plan: Plan) -> AsyncIterator[bytes]:
        started = time.perf_counter()
        attempts: list[Attempt] = []
        tries = self._tries(plan, ctx, body, True, attempts)
        try:
            async for t in tries:
                run = _StreamRun(self, body, ctx, plan, t.model, t.provider, t.adapter, t.resp, attempts,
                                 t.reserved, t.max_tokens, started, t.t0)
                try:
                    async for frame in run.frames():
                        if not t.succeeded:
                            t.ok()  # handed over at the first byte: from here the record settles the hold
                        yield frame
                except _Fallback as fb:
                    t.failed(fb.error)
                    continue
                return
        finally:
            await tries.aclose()


@dataclass
class _Try:
    model: Model
    provider: ProviderConfig
    adapter: Any
    resp: UpstreamResponse
    reserved: int
    max_tokens: int  # output tokens allowed (sent upstream, and where a stream is cut)
    t0: float
    breaker: CircuitBreaker
    error: GatewayError | None = None
    succeeded: bool = False

    def ok(self) -> None:
        self.succeeded = True
        self.breaker.success()

    def failed(self, error: GatewayError) -> None:
        self.error = error


def _retry_after(seconds: float) -> dict[str, str]:
    return {"Retry-After": str(max(1, int(seconds + 0.999)))}


def _retry_after_s(err: GatewayError) -> float | None:
    v = err.headers.get("Retry-After") if err.headers else None
    try:
        return float(v) if v is not None else None
    except ValueError:
        return None


class _StreamRun:
    """One upstream stream being relayed: translation, stamping, usage, and the record at the end.

    The upstream is asked for no more output than allowed (``max_tokens``, or what the budget holds); one that sends
    more is cut once its text passes ``CUT_CHARS_PER_TOKEN`` characters a token (more than honest text has, so an
    upstream that keeps to ``max_tokens`` is never cut), and the stream ends there with ``finish_reason: "length"``."""

    def __init__(self, gw: Gateway, body, ctx, plan, model, provider, adapter, resp, attempts, reserved, max_tokens,
                 started, t0):
        self.gw, self.body, self.ctx, self.plan = gw, body, ctx, plan
        self.model, self.provider, self.adapter, self.resp = model, provider, adapter, resp
        self.attempts, self.reserved, self.started, self.t0 = attempts, reserved, started, t0
        self.max_chars = CUT_CHARS_PER_TOKEN * max_tokens
        self.gen_id = new_generation_id()
        self.created = int(time.time())
        self.first_at: float | None = None
        self.text_chars = 0
        self.cut = False  # the output reached what was allowed: the rest of the upstream's answer is dropped
        self.finish_reason: str | None = None
        self.native_finish_reason: str | None = None
        self.upstream_id: str | None = None
        self.fingerprint: str | None = None  # the upstream's system_fingerprint, once it sent one
        self.error: GatewayError | None = None
        self.provider_name = provider_display(provider.name)
        self.drop_reasoning = excludes_reasoning(body)

    def _stamp(self, chunk: dict[str, Any]) -> dict[str, Any]:
        if chunk.get("system_fingerprint"):
            self.fingerprint = chunk["system_fingerprint"]
        out = {
            "id": self.gen_id, "object": "chat.completion.chunk", "created": self.created, "model": self.model.id,
            "provider": self.provider_name, "system_fingerprint": self.fingerprint,
        }
        out.update(chunk)
        for c in chunk.get("choices") or ():
            if c.get("finish_reason"):
                self.finish_reason = c["finish_reason"]
                self.native_finish_reason = c.get("native_finish_reason", c["finish_reason"])
        return out

    def _frames(self, chunks) -> list[bytes]:
        """The frames of translated chunks, up to the output allowed (past it ``cut`` is set and the rest dropped)."""
        out: list[bytes] = []
        for chunk in chunks:
            n = 0
            for c in chunk.get("choices") or ():
                delta = c.get("delta") or {}
                if self.drop_reasoning:
                    delta.pop("reasoning", None)
                for k in ("content", "reasoning"):
                    if isinstance(delta.get(k), str):
                        n += len(delta[k])
                for tc in delta.get("tool_calls") or ():
                    fn = (tc or {}).get("function") or {}
                    n += len(str(fn.get("arguments") or "")) + len(str(fn.get("name") or ""))
            if self.text_chars + n > self.max_chars:
                self.cut = True
                break
            self.text_chars += n
            out.append(sse_data(self._stamp(chunk)))
        return out

    async def frames(self) -> AsyncIterator[bytes]:
        parser = SSEParser()
        translator = self.adapter.stream_translator(self.model)
        recorded = False
        try:
            try:
                async for raw in self.resp.iter_any():
                    # every frame of one upstream read goes out in one write (one ASGI send, one syscall)
                    out: list[bytes] = []
                    failed: GatewayError | None = None
                    try:
                        for event in parser.feed(raw):
                            chunks = translator.feed(event)
                            if chunks and self.first_at is None:
                                self.first_at = time.perf_counter()
                                self.attempts.append(Attempt(self.model.id, self.provider.name, 200, None,
                                                             round((self.first_at - self.t0) * 1000, 2)))
                                if self.plan.on_served is not None:
                                    await self.plan.on_served(self.model.id)
                            out += self._frames(chunks)
                            if self.cut:
                                break
                    except GatewayError as exc:  # frames before an in-stream error still go out first
                        failed = exc
                    except SSETooLarge as exc:
                        failed = GatewayError(502, f"{self.provider.name}: {exc}")
                    if out:
                        yield out[0] if len(out) == 1 else b"".join(out)
                    if failed is not None:
                        raise failed
                    if translator.done or self.cut:
                        break
                if not self.cut:
                    for event in parser.close():
                        for frame in self._frames(translator.feed(event)):
                            yield frame
                if not self.cut:
                    for frame in self._frames(translator.finish()):
                        yield frame
                if not (translator.done or self.cut) and self.first_at is not None and self.finish_reason is None:
                    raise GatewayError(502, f"{self.provider.name}: upstream stream ended before it was complete")
            except GatewayError as exc:
                if self.first_at is None:
                    raise _Fallback(exc) from None
                self.error = exc
            except UpstreamError as exc:
                err = (GatewayError(408, f"{self.provider.name}: upstream stream timed out")
                       if isinstance(exc, UpstreamTimeout) else
                       GatewayError(502, f"{self.provider.name}: upstream stream broke ({exc.kind})"))
                if self.first_at is None:
                    raise _Fallback(err) from None
                self.error = err
            finally:
                self.resp.release()
            if self.first_at is None:
                raise _Fallback(GatewayError(502, f"{self.provider.name}: upstream stream ended without an answer"))
            if self.cut:
                yield sse_data(self._stamp({"choices": [{"index": 0, "delta": {}, "finish_reason": "length",
                                                         "native_finish_reason": "length"}]}))
            elif self.error is not None:
                self.finish_reason = "error"
                yield sse_data(self._stamp({
                    "choices": [{"index": 0, "delta": {}, "finish_reason": "error", "native_finish_reason": "error"}],
                    "error": self.error.stream_body(),
                }))
            usage = self._usage(None if self.cut else translator.usage)  # a cut answer's upstream usage is partial
            parts = cost_parts(self.model, usage)
            record, durable = self._record(usage, sum(parts), status="ok" if self.error is None else "error")
            recorded = True
            final: dict[str, Any] = {"choices": [], "usage": usage_with_cost(usage, charged_parts(parts,
                                                                                                record["cost_pico"]))}
            if self.ctx.want_metadata:
                final["openrouter_metadata"] = self.gw._metadata(self.plan, self.attempts, self.model)
            await self.gw.durable(durable, record)  # the last byte leaves only once the record is written
            yield sse_data(self._stamp(final)) + SSE_DONE  # the usage chunk and the end: one write
        finally:
            if not recorded and self.first_at is not None:
                # the client went away (or we were cancelled) after the answer began: record what was served
                usage = self._usage(None if self.cut else translator.usage)
                self._record(usage, sum(cost_parts(self.model, usage)), status="cancelled")

    def _usage(self, usage: dict[str, Any] | None) -> dict[str, Any]:
        if usage is not None:
            self.estimated = False
            return usage
        self.estimated = True
        pt = estimate_prompt_tokens(self.body)
        ct = estimate_text_tokens(self.text_chars)
        return {"prompt_tokens": pt, "completion_tokens": ct, "total_tokens": pt + ct}

    def _record(self, usage: dict[str, Any], cost: int, status: str) -> tuple[dict[str, Any], asyncio.Future | None]:
        now = time.perf_counter()
        record = self.gw._base_record(self.plan, self.ctx, self.gen_id, self.started, True)
        record.update(
            model=self.model.id, provider=self.provider.name, status=status,
            prompt_tokens=usage["prompt_tokens"], completion_tokens=usage["completion_tokens"],
            reasoning_tokens=(usage.get("completion_tokens_details") or {}).get("reasoning_tokens", 0),
            cached_tokens=(usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0),
            usage_estimated=self.estimated, cost_pico=cost,
            latency_ms=round((now - self.started) * 1000, 2),
            ttft_ms=round(((self.first_at or now) - self.started) * 1000, 2),
            finish_reason=self.finish_reason, native_finish_reason=self.native_finish_reason,
            user_tag=self.body.get("user"), error=self.error.message if self.error else None,
            attempts=[a.as_dict() for a in self.attempts],
        )
        return record, self.gw.record(record, self.reserved)


def _with_max_tokens(body: dict[str, Any], tokens: int) -> dict[str, Any]:
    """``body`` asking for at most ``tokens`` output tokens (under whichever name it used)."""
    names = [n for n in ("max_tokens", "max_completion_tokens") if n in body] or ["max_tokens"]
    return {**body, **{n: tokens for n in names}}


def _no_credit(model: Model) -> GatewayError:
    return GatewayError(
        402,
        f"Insufficient credit: this request to {model.id} could cost more than the key's remaining limit or the "
        "account's credit. Lower max_tokens, raise the key's limit or add credits.",
        metadata={"model": model.id},
        retryable=False,
    )


def _not_configured(model: Model) -> GatewayError:
    return GatewayError(
        503,
        f"No provider is configured for {model.id}: set the API key of provider '{model.provider}' "
        "(its api_key_env) or point it at another host in the config file.",
        metadata={"model": model.id, "provider_name": model.provider},
    )


def _circuit_open(model: Model, provider: ProviderConfig, breaker: CircuitBreaker) -> GatewayError:
    """The refusal of an open circuit, naming the upstream error that opened it."""
    retry_after = _retry_after(breaker.retry_after())
    if breaker.state == OPEN:
        why = (f"circuit open for another {retry_after['Retry-After']} s after {breaker.consecutive or 1} failed "
               "request(s)")
    else:
        why = "circuit half-open: a probe request is under way"
    last = breaker.last_error
    meta: dict[str, Any] = {"model": model.id, "provider_name": provider.name}
    if last is not None:
        why += f"; last upstream error: {last.status} {last.message}"
        meta["last_error"] = {"code": last.status, "message": last.message}
    return GatewayError(503, f"{model.id}: {why}", metadata=meta, headers=retry_after)


def _out_of_time(provider: ProviderConfig, total: float) -> GatewayError:
    return GatewayError(408, f"{provider.name}: no answer within timeouts.total ({total:g} s) for the whole request "
                             "(every try and fallback)", retryable=False)


def _final_error(last: GatewayError | None, attempts: list[Attempt]) -> GatewayError:
    if last is None:
        return GatewayError(404, "No candidate model is available for this request")
    if len(attempts) > 1:
        last.metadata = {**last.metadata, "attempts": [a.as_dict() for a in attempts]}
    return last


def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj)
