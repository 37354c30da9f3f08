"""The management API: keys and credits, behind the admin key from ``METAROUTER_ADMIN_KEY``.

- No admin key configured: every endpoint answers 403 (the API is off).
- No ``Authorization: Bearer …``: 401. Anything but the admin key (an API key included): 403.
- The admin key is compared in constant time (digests of equal length: :func:`is_admin`, which the activity API
  uses too), and neither it nor any API key appears in a log line, an error message or a listing. A new key's
  plaintext is returned once, by ``POST /keys``.

Endpoints (under ``/api/v1`` and ``/v1``): ``POST /keys`` (create), ``GET /keys`` (list), ``GET /keys/{id}``,
``PATCH /keys/{id}`` (disable/enable, limit, limit_reset, expires_at, rpm, tpm, label), ``DELETE /keys/{id}``
(disable; records and usage stay), ``POST /credits`` (top up the account). Changes drop the key from this process's
auth cache; other workers and replicas see them within ``auth_cache_ttl`` seconds. A key's ``limit_reset`` (daily,
weekly, monthly: UTC, weeks from Monday) makes its limit apply to each period's spend; past its ``expires_at`` (an
ISO 8601 UTC timestamp) it is refused with 401.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from decimal import Decimal, InvalidOperation
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..catalog import PICO_PER_USD, pico_to_usd
from ..errors import GatewayError
from ..store import KeyRecord
from ..store.base import check_limit_reset, iso_utc, parse_expires_at
from .app import MAX_CREDITS_PICO, api_routes, credits_view, json_response, read_json

MAX_BODY = 64 * 1024
_PUBLIC_ID = re.compile(r"^[0-9a-f]{12}$")
MAX_USD = Decimal(10) ** 6  # one limit or top-up; in picodollars it must fit the stores' 64-bit integers


def _bearer(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def is_admin(request: Request) -> bool:
    """Whether the request presents the admin key (``Authorization: Bearer …``), compared in constant time."""
    configured = request.app.state.settings.admin_key
    token = _bearer(request)
    if not configured or token is None:
        return False
    presented = hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
    return hmac.compare_digest(presented, hashlib.sha256(configured.encode("utf-8")).digest())


def check_admin(request: Request) -> None:
    if not request.app.state.settings.admin_key:
        raise GatewayError(403, "The admin API is disabled: set METAROUTER_ADMIN_KEY to enable it", retryable=False)
    if _bearer(request) is None:
        raise GatewayError(401, "Missing admin key: send `Authorization: Bearer <admin key>`", retryable=False)
    if not is_admin(request):
        raise GatewayError(403, "This key is not the admin key", retryable=False)


async def _body(request: Request) -> dict[str, Any]:
    body = await read_json(request, limit=MAX_BODY, required=False)
    if body is None:
        return {}
    if not isinstance(body, dict):
        raise GatewayError(400, "The request body must be a JSON object")
    return body


def _usd_pico(name: str, value: Any, *, allow_null: bool, positive: bool = False) -> int | None:
    if value is None:
        if allow_null:
            return None
        raise GatewayError(400, f"`{name}` is required")
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise GatewayError(400, f"`{name}` must be a number of USD")
    try:
        d = Decimal(str(value))
    except InvalidOperation:
        raise GatewayError(400, f"`{name}` must be a number of USD") from None
    if not d.is_finite() or d < 0 or (positive and d == 0) or d > MAX_USD:
        raise GatewayError(400, f"`{name}` must be a {'positive' if positive else 'non-negative'} number of USD "
                                f"up to {MAX_USD}")
    return int((d * PICO_PER_USD).to_integral_value())


def _per_minute(name: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= 10**9:
        raise GatewayError(400, f"`{name}` must be a positive integer or null")
    return value


def _limit_reset(value: Any) -> str | None:
    """``daily``, ``weekly``, ``monthly`` (UTC; weeks from Monday) or null, as OpenRouter's keys take it."""
    try:
        return check_limit_reset(value)
    except ValueError as exc:
        raise GatewayError(400, str(exc)) from None


def _expires_at(value: Any) -> float | None:
    """An ISO 8601 timestamp in UTC (``…Z`` or ``…+00:00``) or null; other time zones are a 400."""
    try:
        return parse_expires_at(value)
    except ValueError as exc:
        raise GatewayError(400, str(exc)) from None


def _label(value: Any) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > 200:
        raise GatewayError(400, "`name` (or `label`) must be a non-empty string of at most 200 characters")
    return value.strip()


def key_view(k: KeyRecord) -> dict[str, Any]:
    """A key as the admin API shows it: never its hash, never a secret."""
    return {
        "id": k.public_id,
        "name": k.label,
        "label": k.label,
        "disabled": k.disabled,
        "limit": pico_to_usd(k.limit_pico) if k.limit_pico is not None else None,
        "limit_remaining": pico_to_usd(k.remaining_pico) if k.remaining_pico is not None else None,
        "limit_reset": k.limit_reset,
        "expires_at": iso_utc(k.expires_at),
        "usage": pico_to_usd(k.usage_pico),
        "rpm": k.rpm,
        "tpm": k.tpm,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(k.created_at)),
    }


def _known(body: dict[str, Any], allowed: set[str]) -> None:
    extra = sorted(set(body) - allowed)
    if extra:
        raise GatewayError(400, f"Unknown field(s): {', '.join(repr(e)[:40] for e in extra[:5])}")


def _public_id(request: Request) -> str:
    public_id = request.path_params["public_id"]
    if not _PUBLIC_ID.match(public_id):
        raise GatewayError(404, "Key not found")
    return public_id


async def create_key(request: Request) -> Response:
    check_admin(request)
    body = await _body(request)
    _known(body, {"name", "label", "limit", "limit_reset", "expires_at", "rpm", "tpm"})
    label = _label(body.get("name", body.get("label")))
    if "name" in body and "label" in body:  # one field by two names: each given must be valid
        _label(body["label"])
    limit = _usd_pico("limit", body.get("limit"), allow_null=True)
    rpm, tpm = _per_minute("rpm", body.get("rpm")), _per_minute("tpm", body.get("tpm"))
    reset, expires = _limit_reset(body.get("limit_reset")), _expires_at(body.get("expires_at"))
    plaintext, rec = await request.app.state.store.create_key(label, limit_pico=limit, rpm=rpm, tpm=tpm,
                                                              limit_reset=reset, expires_at=expires)
    return json_response({"data": key_view(rec), "key": plaintext}, 201)


async def list_keys(request: Request) -> Response:
    check_admin(request)
    keys = await request.app.state.store.list_keys()
    return json_response({"data": [key_view(k) for k in keys]})


async def get_key(request: Request) -> Response:
    check_admin(request)
    rec = await request.app.state.store.get_key(_public_id(request))
    if rec is None:
        raise GatewayError(404, "Key not found")
    return json_response({"data": key_view(rec)})


async def update_key(request: Request) -> Response:
    check_admin(request)
    public_id = _public_id(request)
    body = await _body(request)
    _known(body, {"name", "label", "disabled", "limit", "limit_reset", "expires_at", "rpm", "tpm"})
    fields: dict[str, Any] = {}
    if "name" in body or "label" in body:
        fields["label"] = _label(body.get("name", body.get("label")))
        if "name" in body and "label" in body:
            _label(body["label"])
    if "disabled" in body:
        if not isinstance(body["disabled"], bool):
            raise GatewayError(400, "`disabled` must be true or false")
        fields["disabled"] = body["disabled"]
    if "limit" in body:
        fields["limit_pico"] = _usd_pico("limit", body["limit"], allow_null=True)
    if "limit_reset" in body:
        fields["limit_reset"] = _limit_reset(body["limit_reset"])
    if "expires_at" in body:
        fields["expires_at"] = _expires_at(body["expires_at"])
    for name in ("rpm", "tpm"):
        if name in body:
            fields[name] = _per_minute(name, body[name])
    rec = await request.app.state.store.update_key(public_id, **fields)
    if rec is None:
        raise GatewayError(404, "Key not found")
    request.app.state.auth.invalidate(public_id)
    return json_response({"data": key_view(rec)})


async def delete_key(request: Request) -> Response:
    check_admin(request)
    public_id = _public_id(request)
    rec = await request.app.state.store.update_key(public_id, disabled=True)
    if rec is None:
        raise GatewayError(404, "Key not found")
    request.app.state.auth.invalidate(public_id)
    return json_response({"data": key_view(rec), "deleted": True})


async def add_credits(request: Request) -> Response:
    check_admin(request)
    body = await _body(request)
    _known(body, {"amount"})
    amount = _usd_pico("amount", body.get("amount"), allow_null=False, positive=True)
    assert amount is not None
    current, _ = await request.app.state.store.get_credits()
    if (current or 0) + amount > MAX_CREDITS_PICO:
        raise GatewayError(400, f"The account's credit would exceed {pico_to_usd(MAX_CREDITS_PICO):.0f} USD")
    credits, usage = await request.app.state.store.add_credits(amount)
    return json_response({"data": credits_view(credits, usage)})


def admin_routes() -> list[Route]:
    return api_routes(
        ("/keys", create_key, ["POST"]),
        ("/keys", list_keys, ["GET"]),
        ("/keys/{public_id}", get_key, ["GET"]),
        ("/keys/{public_id}", update_key, ["PATCH"]),
        ("/keys/{public_id}", delete_key, ["DELETE"]),
        ("/credits", add_credits, ["POST"]),
    )


__all__ = ["admin_routes", "check_admin", "is_admin", "key_view"]
