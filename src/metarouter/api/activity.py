"""Activity: usage per day and model, recent generations with the router's reasons, and the app ranking —
as JSON under ``/api/v1/activity…`` and as the ``/activity`` page.

A normal key sees its own requests; the admin key (``METAROUTER_ADMIN_KEY``) sees everything and may filter by key.
"""

from __future__ import annotations

import calendar
import hmac
import time
from importlib import resources
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from ..catalog import pico_to_usd
from ..errors import GatewayError
from .app import api_routes, generation_view, json_response


def _day_start(value: str, name: str) -> float:
    try:
        return float(calendar.timegm(time.strptime(value, "%Y-%m-%d")))
    except ValueError:
        raise GatewayError(400, f"`{name}` must be a date YYYY-MM-DD") from None


async def _scope(request: Request) -> str | None:
    """The key id whose activity the caller may see; None for the admin (everything)."""
    admin = request.app.state.settings.admin_key
    header = request.headers.get("authorization", "")
    token = header.partition(" ")[2].strip()
    if admin and token and hmac.compare_digest(token.encode(), admin.encode()):
        return request.query_params.get("key") or None
    key = await request.app.state.auth.authenticate(request)
    return key.public_id


def _window(request: Request) -> tuple[float | None, float | None]:
    q = request.query_params
    since = _day_start(q["date_from"], "date_from") if q.get("date_from") else None
    until = _day_start(q["date_to"], "date_to") + 86400 if q.get("date_to") else None
    return since, until


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
    key_id = await _scope(request)
    try:
        limit = min(max(int(request.query_params.get("limit", 50)), 1), 500)
    except ValueError:
        raise GatewayError(400, "`limit` must be an integer") from None
    since, _ = _window(request)
    rows = await request.app.state.store.list_generations(limit=limit, key_id=key_id, since=since)
    return json_response({"data": [generation_view(r) for r in rows]})


async def apps(request: Request) -> Response:
    key_id = await _scope(request)
    since, _ = _window(request)
    rows = await request.app.state.store.app_ranking(since=since, key_id=key_id)
    return json_response({"data": [
        {"app": r["app"], "requests": int(r["requests"]), "total_tokens": int(r["tokens"] or 0),
         "usage": pico_to_usd(int(r["cost_pico"] or 0))} for r in rows]})


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
    )
