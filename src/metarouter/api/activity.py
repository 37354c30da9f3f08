"""Activity: usage per day and model, the generations with the router's reasons, the app ranking, the dashboard's
summary (header figures, per-model breakdown, chart series and filter choices, all over one time window) and a
CSV export — as JSON (and CSV) under ``/api/v1/activity…`` and as the ``/activity`` page.

A normal key sees its own requests; the admin key (``METAROUTER_ADMIN_KEY``) sees everything and may filter by key.
Every listing takes the same filters (:func:`_filters`): a window (``since``/``until`` in epoch seconds, and/or
``date_from``/``date_to`` as UTC dates), ``app``, ``model``, ``provider``, ``status`` and, for the admin, ``key``.
"""

from __future__ import annotations

import calendar
import csv
import dataclasses
import io
import math
import time
from importlib import resources
from typing import Any, AsyncIterator

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response, StreamingResponse
from starlette.routing import Route

from ..catalog import pico_to_usd, usd_string
from ..errors import GatewayError
from ..store.base import ActivityQuery, merge_breakdown
from .admin import is_admin
from ..gateway.cache import is_cache_hit
from .app import MAX_APP_HEADER, api_routes, generation_view, json_response

STATUSES = ("ok", "error", "cancelled")
MAX_PAGE = 500  # generations per page
MAX_OFFSET = 10**9
MAX_EPOCH = 253_402_300_799  # 9999-12-31T23:59:59Z
EXPORT_BATCH = 1000  # records per store read while streaming a CSV export
TOP_APPS = 20
FACET_LIMIT = 200  # choices per filter
#: chart buckets, seconds: the smallest that draws the window in at most MAX_BUCKETS bars
BUCKETS = (300, 3600, 3 * 3600, 6 * 3600, 86400, 7 * 86400, 30 * 86400)
MAX_BUCKETS = 100


def _day_start(value: str, name: str) -> float:
    try:
        return float(calendar.timegm(time.strptime(value, "%Y-%m-%d")))
    except ValueError:
        raise GatewayError(400, f"`{name}` must be a date YYYY-MM-DD") from None


async def _scope(request: Request) -> str | None:
    """The key id whose activity the caller may see; None for the admin (everything)."""
    if is_admin(request):
        return _text(request, "key")
    key = await request.app.state.auth.authenticate(request)
    return key.public_id


def _window(request: Request) -> tuple[float | None, float | None]:
    q = request.query_params
    since = _day_start(q["date_from"], "date_from") if q.get("date_from") else None
    until = _day_start(q["date_to"], "date_to") + 86400 if q.get("date_to") else None
    return since, until


def _epoch(request: Request, name: str) -> float | None:
    raw = request.query_params.get(name)
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not 0 <= value <= MAX_EPOCH:  # NaN fails too
        raise GatewayError(400, f"`{name}` must be a time in epoch seconds, 0 to {MAX_EPOCH}")
    return value


def _text(request: Request, name: str) -> str | None:
    value = request.query_params.get(name) or None
    if value is not None and len(value) > MAX_APP_HEADER:
        raise GatewayError(400, f"`{name}` is longer than {MAX_APP_HEADER} characters")
    return value


def _int(request: Request, name: str, default: int, lo: int, hi: int, *, clamp: bool) -> int:
    raw = request.query_params.get(name)
    try:
        value = int(raw) if raw else default
    except ValueError:
        raise GatewayError(400, f"`{name}` must be an integer") from None
    if clamp:
        return min(max(value, lo), hi)
    if not lo <= value <= hi:
        raise GatewayError(400, f"`{name}` must be between {lo} and {hi}")
    return value


def _flag(request: Request, name: str) -> bool:
    raw = request.query_params.get(name, "true")
    if raw not in ("true", "false"):
        raise GatewayError(400, f"`{name}` must be true or false")
    return raw == "true"


def _filters(request: Request, key_id: str | None) -> ActivityQuery:
    """The filters of a request, all of which must hold: the dates and the epoch bounds narrow each other."""
    day_from, day_to = _window(request)
    since = [t for t in (day_from, _epoch(request, "since")) if t is not None]
    until = [t for t in (day_to, _epoch(request, "until")) if t is not None]
    status = request.query_params.get("status") or None
    if status is not None and status not in STATUSES:
        raise GatewayError(400, f"`status` must be one of {', '.join(STATUSES)}")
    return ActivityQuery(since=max(since) if since else None, until=min(until) if until else None, key_id=key_id,
                         app=_text(request, "app"), model=_text(request, "model"),
                         provider=_text(request, "provider"), status=status)


def _iso(t: float | None) -> str | None:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t)) if t is not None else None


def _figures(row: dict[str, Any]) -> dict[str, Any]:
    """A breakdown row as the API shows it: tokens and USD instead of picodollars."""
    return {
        "requests": row["requests"], "auto_requests": row["auto_requests"], "errors": row["errors"],
        "cancelled": row["cancelled"], "prompt_tokens": row["prompt_tokens"],
        "completion_tokens": row["completion_tokens"], "reasoning_tokens": row["reasoning_tokens"],
        "total_tokens": row["prompt_tokens"] + row["completion_tokens"], "usage": pico_to_usd(row["cost_pico"]),
        "avg_latency_ms": row["latency_ms_sum"] / row["latency_count"] if row["latency_count"] else None,
    }


def chart_span(query: ActivityQuery, first_at: float | None, now: float) -> tuple[float, float, int]:
    """(start, end, bucket seconds) of the chart of ``query``'s window: bucket starts aligned to UTC, at most
    MAX_BUCKETS of them (a longer window is drawn up to its end)."""
    end = min(query.until, now) if query.until is not None else now
    start = query.since if query.since is not None else (first_at if first_at is not None else end)
    end = max(end, start)
    bucket = next((b for b in BUCKETS if (end - start) / b <= MAX_BUCKETS), BUCKETS[-1])
    start = max(start, end - MAX_BUCKETS * bucket)
    return math.floor(start / bucket) * bucket, end, bucket


async def activity(request: Request) -> Response:
    key_id = await _scope(request)
    since, until = _window(request)
    rows = await request.app.state.store.activity(since=since, until=until, key_id=key_id,
                                                  app=request.query_params.get("app") or None)
    for r in rows:
        r["usage"] = pico_to_usd(int(r.pop("cost_pico") or 0))
        r["total_tokens"] = int(r["prompt_tokens"] or 0) + int(r["completion_tokens"] or 0)
    return json_response({"data": rows})


async def recent(request: Request) -> Response:
    """One page of the generations the filters cover, newest first, with how many there are in all."""
    query = _filters(request, await _scope(request))
    limit = _int(request, "limit", 50, 1, MAX_PAGE, clamp=True)
    offset = _int(request, "offset", 0, 0, MAX_OFFSET, clamp=False)
    store = request.app.state.store
    rows = await store.search_generations(query, limit=limit, offset=offset)
    (totals,) = await store.activity_breakdown(query)
    return json_response({"data": [generation_view(r) for r in rows], "total_count": totals["requests"],
                          "limit": limit, "offset": offset})


async def apps(request: Request) -> Response:
    key_id = await _scope(request)
    since, _ = _window(request)
    rows = await request.app.state.store.app_ranking(since=since, key_id=key_id)
    return json_response({"data": [
        {"app": r["app"], "requests": int(r["requests"]), "total_tokens": int(r["tokens"] or 0),
         "usage": pico_to_usd(int(r["cost_pico"] or 0))} for r in rows]})


async def summary(request: Request) -> Response:
    """Everything the page's header shows, from one window and one set of filters: totals, the models (with
    their share of ``auto`` traffic), the chart's series per model, the apps, and the choices for each filter
    (over the window alone, so that choosing one does not hide the others; ``facets=false`` leaves them out).

    Few scans of the records: the series (per bucket and model) merge into the models and the totals."""
    admin = is_admin(request)
    query = _filters(request, await _scope(request))
    with_facets = _flag(request, "facets")
    store = request.app.state.store
    first_at = None
    if query.since is None:  # the chart starts at the first record
        first_at = (await store.activity_breakdown(query))[0]["first_at"]
    start, end, bucket = chart_span(query, first_at, time.time())
    series = await store.activity_breakdown(query, by="model", bucket=bucket)
    per_model: dict[str | None, list[dict[str, Any]]] = {}
    for row in series:
        per_model.setdefault(row["model"], []).append(row)
    models = [{"model": m, **merge_breakdown(rows)} for m, rows in per_model.items()]
    totals = merge_breakdown(series)
    app_rows = [a for a in await store.activity_breakdown(query, by="app", limit=FACET_LIMIT + 1) if a["app"] is not None]
    facets: dict[str, Any] = {}
    if with_facets:
        # over the window and what the caller may see (the admin's `key` is a filter like the others)
        window = ActivityQuery(since=query.since, until=query.until, key_id=None if admin else query.key_id)
        narrowed = window != query
        facets["models"] = sorted(r["model"] for r in (
            await store.activity_breakdown(window, by="model", limit=FACET_LIMIT) if narrowed else models)
            if r["model"] is not None)
        facets["apps"] = sorted(r["app"] for r in (
            await store.activity_breakdown(window, by="app", limit=FACET_LIMIT) if narrowed else app_rows[:FACET_LIMIT])
            if r["app"] is not None)
        facets["providers"] = sorted(r["provider"] for r in await store.activity_breakdown(
            window, by="provider", limit=FACET_LIMIT) if r["provider"] is not None)
        if admin:
            facets["keys"] = [{"id": k.public_id, "label": k.label} for k in await store.list_keys()]
    auto_total = totals["auto_requests"]
    return json_response({"data": {
        "window": {"since": _iso(query.since), "until": _iso(query.until), "chart_start": _iso(start),
                   "chart_end": _iso(end), "bucket_seconds": bucket},
        "totals": {**_figures(totals), "first_at": _iso(totals["first_at"]), "last_at": _iso(totals["last_at"])},
        "models": [{"model": m["model"], **_figures(m),
                    "auto_share": m["auto_requests"] / auto_total if auto_total else 0.0}
                   for m in sorted(models, key=lambda m: (-m["cost_pico"], -m["requests"], m["model"] or ""))],
        "series": [{"bucket": _iso(s["bucket"]), "model": s["model"], "requests": s["requests"],
                    "usage": pico_to_usd(s["cost_pico"]), "total_tokens": s["prompt_tokens"] + s["completion_tokens"]}
                   for s in series if s["bucket"] >= start],
        "apps": [{"app": a["app"], "requests": a["requests"], "total_tokens": a["prompt_tokens"] + a["completion_tokens"],
                  "usage": pico_to_usd(a["cost_pico"])} for a in app_rows[:TOP_APPS]],
        **({"facets": facets} if with_facets else {}),
    }})


#: the export's columns: (header, record field or a function of the record)
CSV_COLUMNS: tuple[tuple[str, Any], ...] = (
    ("id", "id"), ("created_at", lambda r: _iso(r["created_at"])), ("key_id", "key_id"),
    ("app_title", "app_title"), ("app_referer", "app_referer"), ("requested_model", "requested_model"),
    ("model", "model"), ("provider", "provider"), ("router", "router"), ("status", "status"),
    ("streamed", lambda r: "true" if r["streamed"] else "false"), ("prompt_tokens", "prompt_tokens"),
    ("completion_tokens", "completion_tokens"), ("reasoning_tokens", "reasoning_tokens"),
    ("cached_tokens", "cached_tokens"), ("cost_usd", lambda r: usd_string(int(r["cost_pico"] or 0))),
    ("insured", lambda r: "true" if r.get("insured") else "false"),
    ("cache_hit", lambda r: "true" if is_cache_hit(r) else "false"),
    ("latency_ms", "latency_ms"), ("ttft_ms", "ttft_ms"), ("finish_reason", "finish_reason"), ("error", "error"),
    ("user", "user_tag"), ("session_id", "session_id"),
)
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: Any) -> str:
    """A value as a CSV field. Text that a spreadsheet would run as a formula (``=``, ``+``, ``-``, ``@``, tab,
    CR first) gets a leading ``'`` (OWASP's advice against CSV injection: app names and errors come from
    callers); quoting is the csv module's."""
    if value is None:
        return ""
    if isinstance(value, str):
        return "'" + value if value.startswith(_FORMULA_START) else value
    return str(value)


def csv_rows(records: list[dict[str, Any]], header: bool = False) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)  # RFC 4180: CRLF line ends, fields with a comma, quote or line break quoted
    if header:
        writer.writerow([name for name, _ in CSV_COLUMNS])
    for r in records:
        writer.writerow([csv_cell(col(r) if callable(col) else r.get(col)) for _, col in CSV_COLUMNS])
    return buf.getvalue()


async def export_csv(request: Request) -> Response:
    """Every generation the filters cover, newest first, as CSV; read from the store a batch at a time."""
    query = _filters(request, await _scope(request))
    if query.until is None:  # a fixed end: what arrives during the export is not half in it
        query = dataclasses.replace(query, until=time.time())
    store = request.app.state.store
    first = await store.search_generations(query, limit=EXPORT_BATCH)  # errors surface before the headers go out

    async def body() -> AsyncIterator[str]:
        batch = first
        yield csv_rows(batch, header=True)
        while len(batch) == EXPORT_BATCH:
            batch = await store.search_generations(query, limit=EXPORT_BATCH,
                                                   before=(batch[-1]["created_at"], batch[-1]["id"]))
            yield csv_rows(batch)

    return StreamingResponse(body(), media_type="text/csv; charset=utf-8", headers={
        "Content-Disposition": 'attachment; filename="metarouter-activity.csv"',
        "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff",
    })


_PAGE: dict[str, Any] = {}


async def page(request: Request) -> Response:
    if "html" not in _PAGE:
        _PAGE["html"] = resources.files("metarouter.api").joinpath("static/activity.html").read_text("utf-8")
    return HTMLResponse(_PAGE["html"], headers={
        "Content-Security-Policy": "default-src 'self'; script-src 'self' 'unsafe-inline'; "
                                   "style-src 'self' 'unsafe-inline'; connect-src 'self'",
        "Referrer-Policy": "no-referrer",
    })


def activity_routes() -> list[Route]:
    return [Route("/activity", page, methods=["GET"])] + api_routes(
        ("/activity", activity, ["GET"]),
        ("/activity/generations", recent, ["GET"]),
        ("/activity/apps", apps, ["GET"]),
        ("/activity/summary", summary, ["GET"]),
        ("/activity/export.csv", export_csv, ["GET"]),
    )
