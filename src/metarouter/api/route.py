"""``POST /route``: the auto router's decision for a chat request, without calling any model and without charge.

For clients that call providers themselves (Not Diamond's ``modelSelect`` idea): the body is a chat-completions
request (``model`` ``auto`` or absent; the ``auto-router`` plugin, ``provider.max_price`` and ``session_id`` work as
they do for chat), the answer is the decision the gateway would take: the chosen model, the ranked candidates with
predicted quality and cost, the reason, and what was excluded. The key is authenticated; nothing is recorded or
charged, and no sticky pin is set (nothing was served).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..errors import GatewayError
from ..gateway.auto import AUTO_IDS
from ..gateway.endpoints import parse_prefs
from ..gateway.pipeline import RequestContext
from .app import authorize, json_response, read_json
from .validation import validate_chat_body


async def route_request(request: Request) -> Response:
    state = request.app.state
    key = await authorize(request)
    body = await read_json(request)
    if isinstance(body, dict):
        body.setdefault("model", "auto")
        if not isinstance(body["model"], str) or body["model"].lower() not in AUTO_IDS:
            raise GatewayError(400, "`/route` decides among models: send `model: \"auto\"` (or leave it out) and "
                                    "narrow the candidates with the auto-router plugin's `allowed_models`")
    body = validate_chat_body(body, max_messages=state.gateway.settings.limits.max_messages)
    resolver = getattr(state, "auto_resolver", None)
    if resolver is None:
        raise GatewayError(503, "auto routing is not configured")
    parse_prefs(body.get("provider"), state.gateway.provider_names)  # checked as chat checks it (a 400 here too)
    h = request.headers
    ctx = RequestContext(key=key, session_id=body.get("session_id") or h.get("x-session-id") or None)
    plan = await resolver.plan(body, ctx, ["auto"])
    routing: dict[str, Any] = dict(plan.routing or {})
    return json_response({"model": plan.candidates[0].id, "object": "route", **routing,
                          "fallbacks": [m.id for m in plan.candidates[1:]]})


def route_routes() -> list[Route]:
    return [Route(p, route_request, methods=["POST"]) for p in ("/api/v1/route", "/v1/route")]
