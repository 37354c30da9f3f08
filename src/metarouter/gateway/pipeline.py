"""The request pipeline: resolve candidates, send to each in turn until one answers, account, record.

Failures before the first byte of an answer move on to the next candidate; after it, a stream ends with a
terminal error chunk. Every answered request (a partial stream included) is recorded and charged exactly once, at
most what was held for it; an answer (a stream's last chunk) is sent only once its record is durably written.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import functools
import logging
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Callable

from ..catalog import Model
from ..catalog.providers import PROVIDERS, provider_display
from ..config import ResilienceSettings, Settings
from ..errors import GatewayError
from ..providers import get_adapter
from ..providers.common import excludes_reasoning
from ..providers.params import check_parameters
from ..providers.base import ProviderConfig
from ..providers.sse import SSE_DONE, SSEParser, SSETooLarge, sse_data
from ..store import KeyRecord, Store, new_generation_id
from ..swr import SWRCache
from .endpoints import NO_PREFS, EndpointStats, ProviderPrefs, order_endpoints, parse_prefs, request_cost_key, \
    request_fits, split_variant
from .images import ImageFetcher, remote_image_urls
from .upstream import Upstream, UpstreamClient, UpstreamError, UpstreamResponse, UpstreamTimeout
from .resilience import HALF_OPEN, OPEN, CircuitBreaker, backoff_delay, counts_against_provider
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

@dataclass
class RequestContext:
    key: KeyRecord | None
    app_referer: str | None = None
    app_title: str | None = None
    want_metadata: bool = False
    session_id: str | None = None
    cache: Any = None  # the response cache's part in this request, when it asked for it (gateway/cache.py)


@dataclass
class Plan:
    """What the pipeline will try, in order, and why (the router's decision, for ``auto``)."""

    requested_model: str
    candidates: list[Model]
    router: str | None = None  # "auto" when the meta-model chose
    #: the decision as the generation record keeps it (for ``auto``, the ranked candidates as columns: see
    #: :attr:`routing` for what is shown)
    record_routing: dict[str, Any] | None = None
    on_served: Callable[[str], Awaitable[None]] | None = None  # told which model answered (sticky sessions)
    #: the request's ``provider`` object (gateway/endpoints.py): which endpoints of each candidate, in which order
    prefs: ProviderPrefs = NO_PREFS
    #: the sort a candidate's ``:nitro``/``:floor`` id asked for, by model id
    variants: dict[str, str] = field(default_factory=dict)

    @functools.cached_property
    def routing(self) -> dict[str, Any] | None:
        """The decision as it is shown (response metadata, ``POST /route``): :func:`routing_view` of the record's."""
        return routing_view(self.record_routing)


def routing_view(routing: dict[str, Any] | None) -> dict[str, Any] | None:
    """A record's routing as the API shows it: the router's ranking, kept as columns, expanded into its candidates
    with their reasons (``router.core.expand_routing``); any other routing as it is."""
    if not routing or "ranking" not in routing:
        return routing
    from ..router.core import expand_routing  # only auto's records have a ranking: the router is loaded there

    return expand_routing(routing)


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
    """The pipeline of one process. ``client`` sends to the upstreams: by default the keep-alive
    :class:`~.upstream.UpstreamClient` made by :meth:`start`; tests may pass an in-process one
    (:class:`~.upstream.MockTransport`) and drive fallback, retries, breakers and budgets without a socket."""

    def __init__(self, settings: Settings, store: Store, client: Upstream | None = None):
        self.settings = settings
        self.store = store
        self.catalog = settings.catalog
        self._client: Upstream | None = client
        self.resilience: ResilienceSettings = settings.resilience
        self.breakers: dict[str, CircuitBreaker] = {}
        self._credit_cache: SWRCache[tuple[int | None, int]] = SWRCache(self._load_credit, ttl=1.0)
        self._background: set[asyncio.Task] = set()
        self.images = ImageFetcher(settings.image_fetch)  # remote images for providers that take inline ones only
        #: per key, requests waiting for holds in flight to settle (oldest first)
        self._budget_waiters: dict[str, collections.deque[asyncio.Future]] = {}
        self.resolver = None  # set by the app: an object with ``plan(body, ctx) -> Plan`` for ``auto``
        #: latency and throughput per endpoint, measured from the records (``sort``, ``:nitro``, the listing)
        self.endpoint_stats = EndpointStats(store)
        #: the names ``provider.order``/``only``/``ignore`` may use (config names and display names, any case)
        self.provider_names: dict[str, str] = {}
        for name in [*PROVIDERS, *settings.providers]:
            self.provider_names[name.lower()] = name
            self.provider_names.setdefault(provider_display(name).lower(), name)
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
        if self._client is None:
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
        prefs = parse_prefs(body.get("provider"), self.provider_names)
        if self.resolver is not None and self.resolver.handles(requested[0]):
            plan = await self.resolver.plan(body, ctx, requested)
            plan.prefs = prefs
            return plan
        candidates = []
        variants: dict[str, str] = {}
        for mid in requested:
            m = self.catalog.get(mid)
            if m is None:
                base, sort = split_variant(mid)
                m = self.catalog.get(base) if sort else None
                if m is None:
                    raise GatewayError(400, f"{mid} is not a valid model ID", metadata={"model": mid})
                variants.setdefault(m.id, sort)
            candidates.append(m)
        return Plan(requested_model=requested[0], candidates=candidates, prefs=prefs, variants=variants)

    async def endpoints(self, plan: Plan, body: dict[str, Any]) -> list[Model]:
        """The endpoints to try, in order: each candidate model's (gateway/endpoints.py), the candidates in their
        order. A model with one endpoint and no preferences is its own endpoint, asking nothing of the store. A
        candidate the preferences leave no endpoint of is passed over; when none has any, the first's 404."""
        if plan.prefs is NO_PREFS and not plan.variants and not self.catalog.has_endpoints():
            return plan.candidates
        out: list[Model] = []
        refusal: GatewayError | None = None
        stats = None
        cost = fits = None
        for model in plan.candidates:
            eps = self.catalog.endpoints(model)
            prefs = plan.prefs
            if model.id in plan.variants and prefs.sort is None:
                prefs = dataclasses.replace(prefs, sort=plan.variants[model.id])
            if len(eps) == 1 and prefs is NO_PREFS:
                out.append(model)
                continue
            if prefs.needs_stats and len(eps) > 1 and stats is None:
                stats = await self.endpoint_stats.get()
            if cost is None:
                cost, fits = request_cost_key(body), request_fits(body)
            try:
                out += order_endpoints(model, eps, prefs, cost=cost, available=self.settings.provider_available,
                                       retains_data=self._retains_data, stats=stats, fits=fits)
            except GatewayError as exc:
                refusal = refusal or exc
        if not out:
            assert refusal is not None
            raise refusal
        return out

    def _retains_data(self, provider: str) -> bool:
        p = self.settings.providers.get(provider)
        return p is None or p.retains_data

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

    def servable(self, model_id: str, served_by: str | None = None) -> str | None:
        """For the response cache: the provider to name on a replay of ``model_id``'s answer that ``served_by`` (a
        display name, as responses carry it) gave, or None when the model is gone or none of its endpoints has an
        available provider."""
        model = self.catalog.get(model_id)
        if model is None:
            return None
        up = [e.provider for e in self.catalog.endpoints(model) if self.provider_for(e) is not None]
        if not up:
            return None
        named = self.provider_names.get(str(served_by or "").lower())
        return named if named is not None else up[0]

    def supported_parameters(self, model: Model) -> list[str]:
        """The request parameters forwarded to ``model`` (none when its provider is not configured)."""
        p = self.settings.providers.get(model.provider)
        try:
            return list(get_adapter(p).supported_parameters(model)) if p is not None else []
        except KeyError:  # a wire format without an adapter
            return []

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
                    deadline: float, total: float, reserved: int, max_tokens: int) -> "_Hop":
        """Send one attempt; returns once the upstream answered 200 (its body still to read). Any other outcome
        raises ``_Fallback`` with the error it makes."""
        adapter = get_adapter(provider)
        req = adapter.build_request(body, model, provider, stream=stream)
        assert self._client is not None, "gateway not started"
        t0 = time.perf_counter()
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
        resp.limit = max_response_bytes(max_tokens * (body.get("n") or 1), stream=stream,
                                        logprobs=bool(body.get("logprobs")))
        return _Hop(model, provider, adapter, resp, reserved, max_tokens, t0)

    def _record_answer(self, req: "_Request", hop: "_Hop", gen_id: str, usage: dict[str, Any] | None,
                       output_chars: int, *, status: str, finish_reason: str | None,
                       native_finish_reason: str | None, first_at: float | None, upstream_id: str | None = None,
                       error: GatewayError | None = None) -> tuple[dict[str, Any], dict[str, Any], asyncio.Future | None]:
        """The generation record of an answer (JSON or stream), queued with its charge. ``usage`` is what the
        upstream reported (None: estimated from the prompt and the ``output_chars`` delivered). Returns the record,
        the usage the client is shown (with the cost charged) and the store's durability future."""
        estimated = usage is None
        if usage is None:
            pt, ct = estimate_prompt_tokens(req.body), estimate_text_tokens(output_chars)
            usage = {"prompt_tokens": pt, "completion_tokens": ct, "total_tokens": pt + ct}
        parts = cost_parts(hop.model, usage)
        insured = zero_completion(usage, output_chars, status, finish_reason)
        now = time.perf_counter()
        plan, ctx = req.plan, req.ctx
        record = dict(
            id=gen_id, created_at=time.time(), key_id=ctx.key.public_id if ctx.key else None,
            app_referer=ctx.app_referer, app_title=ctx.app_title, requested_model=plan.requested_model,
            router=plan.router, routing=plan.record_routing, streamed=req.stream, session_id=ctx.session_id,
            model=hop.model.id, provider=hop.provider.name, status=status,
            prompt_tokens=usage["prompt_tokens"], completion_tokens=usage["completion_tokens"],
            reasoning_tokens=(usage.get("completion_tokens_details") or {}).get("reasoning_tokens", 0),
            cached_tokens=(usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0),
            usage_estimated=estimated, cost_pico=0 if insured else sum(parts), insured=insured,
            latency_ms=round((now - req.started) * 1000, 2),
            ttft_ms=round(((first_at or now) - req.started) * 1000, 2),
            finish_reason=finish_reason, native_finish_reason=native_finish_reason, upstream_id=upstream_id,
            user_tag=req.body.get("user"), error=error.message if error else None,
            attempts=[a.as_dict() for a in req.attempts],
        )
        durable = self.record(record, hop.reserved)  # the key pays at most the hold
        return record, usage_with_cost(usage, charged_parts(parts, record["cost_pico"])), durable

    def _metadata(self, req: "_Request", selected: Model | None) -> dict[str, Any]:
        """``openrouter_metadata`` in OpenRouter's shape (requested, strategy, summary, endpoints, attempts), plus
        the router's candidates with predicted quality and cost, the selected model and the reason. ``selected``:
        the endpoint that answered."""
        plan, attempts = req.plan, req.attempts
        endpoints = req.endpoints or plan.candidates
        strategy = plan.router or ("fallback" if len(endpoints) > 1 else "direct")
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
                "available": [{"model": m.id, "provider": provider_display(m.provider),
                               "selected": selected is not None and (m.id, m.provider) == (sel, selected.provider)}
                              for m in endpoints],
                "total": len(endpoints),
            },
            "attempts": [{"model": a.model, "provider": provider_display(a.provider), "status": a.status or 0,
                          **({"error": a.error} if a.error else {}),
                          **({"latency_ms": a.latency_ms} if a.latency_ms is not None else {})}
                         for a in attempts],
        }
        if plan.routing:
            meta.update({k: v for k, v in plan.routing.items() if k not in meta})
        return meta

    # --- fallback ----------------------------------------------------------------------------------------------
    def _unfit(self, model: Model, provider: ProviderConfig, body: dict[str, Any],
               needs_vision: bool) -> tuple[str, GatewayError] | None:
        """Why ``model`` cannot serve this request at all (the attempt's note, the error), or None."""
        gap = ("image input" if needs_vision and not model.vision else
               "tool use" if body.get("tools") and not model.tools else None)
        if gap:
            return f"does not support {gap}", GatewayError(
                404, f"No endpoints found that support {gap} (tried {model.id})", metadata={"model": model.id},
                retryable=False)
        adapter = get_adapter(provider)
        if (body.get("n") or 1) > 1 and "n" not in adapter.supported_parameters(model):
            # never dropped silently: the client would get one choice where it asked for several
            msg = (f"n > 1 (several choices) is not supported by {model.id} (provider {provider.name}); "
                   "send n: 1, or use a model whose provider supports n")
            return msg, GatewayError(400, msg, metadata={"model": model.id, "provider_name": provider.name,
                                                         "param": "n"}, retryable=False)
        if (body.get("provider") or {}).get("require_parameters"):
            unsupported = check_parameters(body, adapter, model)
            if unsupported:
                msg = (f"{model.id} on {provider.name} does not support {', '.join(unsupported)} "
                       "(provider.require_parameters)")
                return msg, GatewayError(400, msg, metadata={"model": model.id, "provider_name": provider.name,
                                                             "unsupported": unsupported}, retryable=False)
        return None

    async def _answer(self, req: "_Request", read: Callable[["_Hop"], Awaitable[Any]]) -> tuple["_Hop", Any]:
        """Try the candidates in order until one answers; returns the hop that did and ``read(hop)``, its answer.

        Candidates that are unconfigured, unfit for the request, circuit-open or unaffordable are skipped; the
        others are sent one at a time, the last one retried with jittered backoff on retryable errors. ``read``
        raises ``_Fallback`` when the answer fails before its first byte (the next candidate is tried) and sets
        ``hop.answered`` once the answer is the client's: from then on its generation record settles the hold;
        before, a failure or cancellation gives the hold back here. The breaker hears once per candidate (a
        request and its retries), when the upstream had its say. Raises the most telling error when none answered.
        """
        res, plan, attempts = self.resilience, req.plan, req.attempts
        loop = asyncio.get_running_loop()
        total = self.settings.timeouts.total
        deadline = loop.time() + total  # one bound for the whole request: every try, backoff and fallback
        last_error: GatewayError | None = None
        fetched: dict[str, str] = {}  # remote image URL → data URL, fetched once per request
        needs_vision = message_text_and_images(req.body["messages"])[1] > 0
        req.endpoints = endpoints = await self.endpoints(plan, req.body)
        for i, model in enumerate(endpoints):
            provider = self.provider_for(model)
            if provider is None:
                attempts.append(Attempt(model.id, model.provider, 503, "provider not configured"))
                last_error = last_error or _not_configured(model)
                continue
            unfit = self._unfit(model, provider, req.body, needs_vision)
            if unfit is not None:
                attempts.append(Attempt(model.id, provider.name, unfit[1].status, unfit[0]))
                last_error = unfit[1]
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
            try:
                send = req.body
                if getattr(get_adapter(provider), "inline_images_only", False) and remote_image_urls(send):
                    send = await self.images.inline(send, fetched)
                reserved, capped, max_tokens = await self._reserve(req.ctx, model, send)
            except GatewayError as exc:  # this candidate cannot have the image or is unaffordable; the next may not
                attempts.append(Attempt(model.id, provider.name, exc.status, exc.message))
                last_error = exc
                breaker.release(probe)
                continue
            except BaseException:  # the store is unreachable, or the request was cancelled
                breaker.release(probe)
                raise
            tries = 1 + (res.retries if i == len(endpoints) - 1 else 0)  # fall back first; retry the last
            hop: _Hop | None = None
            verdict = False
            try:
                for k in range(tries):
                    t0 = time.perf_counter()
                    try:
                        hop = await self._open(model, provider, capped or send, req.stream, deadline, total,
                                               reserved, max_tokens)
                        answer = await read(hop)
                    except _Fallback as fb:
                        err = fb.error
                    else:
                        breaker.success()
                        verdict = True
                        return hop, answer
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
                if not verdict:  # cancelled before the upstream had its say
                    breaker.release(probe)
                if reserved and not (hop is not None and hop.answered):
                    self._release_later(req.ctx.key.public_id, reserved)
            if loop.time() >= deadline:
                break  # the whole request's time is up: no fallback is tried
        raise _final_error(last_error, attempts)

    # --- non-streaming -----------------------------------------------------------------------------------------
    async def _read_json(self, hop: "_Hop") -> dict[str, Any]:
        try:
            try:
                data = await hop.resp.read()
            finally:
                hop.resp.release()
            out = hop.adapter.parse_response(data)
        except UpstreamTimeout:
            raise _Fallback(GatewayError(408, f"{hop.provider.name}: upstream timed out mid-response")) from None
        except UpstreamError as exc:
            raise _Fallback(GatewayError(502, f"{hop.provider.name}: upstream failed mid-response ({exc.kind})")) \
                from None
        except GatewayError as exc:
            raise _Fallback(exc) from None
        hop.answered = True
        return out

    async def complete(self, body: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
        if ctx.cache is not None:  # a hit answers there; a miss comes back here without it
            return await ctx.cache.complete(self, body, ctx)
        plan = await self.plan(body, ctx)
        req = _Request(plan, ctx, body, stream=False)
        hop, out = await self._answer(req, self._read_json)
        model, provider = hop.model, hop.provider
        req.attempts.append(Attempt(model.id, provider.name, 200, None, round((time.perf_counter() - hop.t0) * 1000, 2)))
        gen_id = new_generation_id()
        choices = out.get("choices") or []
        choice0 = choices[0] if choices else {}
        record, usage, durable = self._record_answer(
            req, hop, gen_id, out.get("usage"), sum(_output_chars(c.get("message") or {}) for c in choices), status="ok",
            finish_reason=choice0.get("finish_reason"), native_finish_reason=choice0.get("native_finish_reason"),
            first_at=None, upstream_id=out.get("id"))
        if plan.on_served is not None:
            await plan.on_served(model.id)
        if excludes_reasoning(body):
            for c in choices:
                (c.get("message") or {}).pop("reasoning", None)
        response = {
            "id": gen_id,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model.id,
            "provider": provider_display(provider.name),
            # required (nullable) in OpenRouter's schema: its SDK rejects an answer without it
            "system_fingerprint": out.get("system_fingerprint"),
            "choices": choices,
            "usage": usage,
        }
        if ctx.want_metadata:
            response["openrouter_metadata"] = self._metadata(req, model)
        await self.durable(durable, record)  # no answer leaves before its record is written
        return response

    # --- streaming ---------------------------------------------------------------------------------------------
    async def stream(self, body: dict[str, Any], ctx: RequestContext) -> AsyncIterator[bytes]:
        """SSE frames. Raises ``GatewayError`` here (resolution) or from the first ``__anext__`` if nothing could
        be started, so the caller can still answer with a real HTTP status; after the first frame, errors become
        a terminal chunk."""
        if ctx.cache is not None:  # a hit replays there; a miss comes back here without it
            return await ctx.cache.stream(self, body, ctx)
        plan = await self.plan(body, ctx)
        return self._stream(_Request(plan, ctx, body, stream=True))

    async def _stream(self, req: _Request) -> AsyncIterator[bytes]:
        _, (first, rest) = await self._answer(req, lambda hop: _StreamRun(self, req, hop).peek())
        try:
            yield first
            async for frame in rest:
                yield frame
        finally:
            await rest.aclose()  # a client gone mid-stream: the run records what was served


@dataclass
class _Request:
    """One request on its way through the pipeline: what every attempt and the generation record share."""

    plan: Plan
    ctx: RequestContext
    body: dict[str, Any]
    stream: bool
    attempts: list[Attempt] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)
    endpoints: list[Model] = field(default_factory=list)  # what is tried, in order (the candidates' endpoints)


@dataclass
class _Hop:
    """An attempt the upstream answered with 200, its body still to read."""

    model: Model
    provider: ProviderConfig
    adapter: Any
    resp: UpstreamResponse
    reserved: int  # picodollars held for it
    max_tokens: int  # output tokens allowed (sent upstream, and where a stream is cut)
    t0: float
    answered: bool = False  # the answer is the client's: its generation record settles the hold


def zero_completion(usage: dict[str, Any], output_chars: int, status: str, finish_reason: str | None) -> bool:
    """Zero completion insurance (as OpenRouter's): an answer that delivered no content (no text, reasoning or tool
    call) and either ended in an error or came with no output tokens is not charged."""
    if output_chars > 0:
        return False
    return status == "error" or finish_reason == "error" or not usage.get("completion_tokens")


def _output_chars(part: dict[str, Any]) -> int:
    """Characters of output in a message or a stream's delta: its text, reasoning and tool calls."""
    n = 0
    for k in ("content", "reasoning"):
        if isinstance(part.get(k), str):
            n += len(part[k])
    for tc in part.get("tool_calls") or ():
        fn = (tc or {}).get("function") or {}
        n += len(str(fn.get("arguments") or "")) + len(str(fn.get("name") or ""))
    return n


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

    def __init__(self, gw: Gateway, req: _Request, hop: _Hop):
        self.gw, self.req, self.hop = gw, req, hop
        self.model, self.provider = hop.model, hop.provider
        self.max_chars = CUT_CHARS_PER_TOKEN * hop.max_tokens
        self.gen_id = new_generation_id()
        self.created = int(time.time())
        self.first_at: float | None = None
        self.text_chars = 0
        self.cut = False  # the output reached what was allowed: the rest of the upstream's answer is dropped
        self.finish_reason: str | None = None
        self.native_finish_reason: str | None = None
        self.fingerprint: str | None = None  # the upstream's system_fingerprint, once it sent one
        self.error: GatewayError | None = None
        self.provider_name = provider_display(hop.provider.name)
        self.drop_reasoning = excludes_reasoning(req.body)

    async def peek(self) -> tuple[bytes, AsyncIterator[bytes]]:
        """(The first frames, the rest): raises ``_Fallback`` if the stream fails before its first chunk."""
        frames = self.frames()
        first = await frames.__anext__()  # frames() ends with its usage chunk, or raises before its first
        return first, frames

    async def _began(self) -> None:
        """The first chunk came: the answer is the client's from here (its record settles the hold)."""
        self.first_at = time.perf_counter()
        self.hop.answered = True
        self.req.attempts.append(Attempt(self.model.id, self.provider.name, 200, None,
                                         round((self.first_at - self.hop.t0) * 1000, 2)))
        if self.req.plan.on_served is not None:
            await self.req.plan.on_served(self.model.id)

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

    async def _frames(self, chunks) -> list[bytes]:
        """The frames of translated chunks, up to the output allowed (past it ``cut`` is set and the rest dropped)."""
        if chunks and self.first_at is None:
            await self._began()
        out: list[bytes] = []
        for chunk in chunks:
            n = 0
            for c in chunk.get("choices") or ():
                delta = c.get("delta") or {}
                if self.drop_reasoning:
                    delta.pop("reasoning", None)
                n += _output_chars(delta)
            if self.text_chars + n > self.max_chars:
                self.cut = True
                break
            self.text_chars += n
            out.append(sse_data(self._stamp(chunk)))
        return out

    async def frames(self) -> AsyncIterator[bytes]:
        parser = SSEParser()
        translator = self.hop.adapter.stream_translator(self.model)
        resp = self.hop.resp
        recorded = False
        try:
            try:
                async for raw in resp.iter_any():
                    # every frame of one upstream read goes out in one write (one ASGI send, one syscall)
                    out: list[bytes] = []
                    failed: GatewayError | None = None
                    try:
                        for event in parser.feed(raw):
                            out += await self._frames(translator.feed(event))
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
                        for frame in await self._frames(translator.feed(event)):
                            yield frame
                if not self.cut:
                    for frame in await self._frames(translator.finish()):
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
                resp.release()
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
            # a cut answer's upstream usage is partial: estimated from what was sent
            record, usage, durable = self._record(None if self.cut else translator.usage,
                                                  "ok" if self.error is None else "error")
            recorded = True
            final: dict[str, Any] = {"choices": [], "usage": usage}
            if self.req.ctx.want_metadata:
                final["openrouter_metadata"] = self.gw._metadata(self.req, self.model)
            await self.gw.durable(durable, record)  # the last byte leaves only once the record is written
            yield sse_data(self._stamp(final)) + SSE_DONE  # the usage chunk and the end: one write
        finally:
            if not recorded and self.first_at is not None:
                # the client went away (or we were cancelled) after the answer began: record what was served
                self._record(None if self.cut else translator.usage, "cancelled")

    def _record(self, usage: dict[str, Any] | None, status: str):
        return self.gw._record_answer(
            self.req, self.hop, self.gen_id, usage, self.text_chars, status=status, finish_reason=self.finish_reason,
            native_finish_reason=self.native_finish_reason, first_at=self.first_at, error=self.error)


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

