"""Helpers shared by the non-OpenAI translators: message parts, tool arguments, ids, JSON schemas.

Every native format needs the same few facts out of an OpenAI request (the text of a message, its images, its
tool calls as parsed objects); they live here once so each adapter is only its own mapping.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from ..errors import GatewayError, upstream_status_to_gateway

if TYPE_CHECKING:  # pragma: no cover
    from ..catalog import Model
    from ..config import ProviderConfig

_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[^;,]*)*?);base64,(?P<data>.*)$", re.DOTALL)


@dataclass(frozen=True, slots=True)
class Image:
    """An image part: either inline bytes (``data`` base64, from a data URL) or a remote ``url``."""

    mime_type: str
    data: str | None = None
    url: str | None = None


def parse_image_url(url: str) -> Image:
    """``data:image/png;base64,...`` → inline image; anything else → a URL image (mime type guessed from the path)."""
    if url.startswith("data:"):
        m = _DATA_URL.match(url)
        if not m:
            raise GatewayError(400, "image_url: only base64 data URLs are supported")
        return Image(mime_type=m.group("mime") or "image/png", data=m.group("data").strip())
    return Image(mime_type=guess_mime(url), url=url)


def guess_mime(url: str) -> str:
    path = url.split("?", 1)[0].lower()
    for ext, mime in ((".png", "image/png"), (".gif", "image/gif"), (".webp", "image/webp"),
                      (".heic", "image/heic"), (".heif", "image/heif"), (".pdf", "application/pdf")):
        if path.endswith(ext):
            return mime
    return "image/jpeg"


def content_parts(content: Any) -> list[dict[str, Any]]:
    """An OpenAI message ``content`` (string, list of parts or None) as a list of parts."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if isinstance(content, list):
        return [p if isinstance(p, dict) else {"type": "text", "text": str(p)} for p in content]
    return [{"type": "text", "text": str(content)}]


def content_text(content: Any) -> str:
    """The text of an OpenAI message ``content``, parts joined (images and other parts ignored)."""
    if isinstance(content, str):
        return content
    return "".join(p.get("text") or "" for p in content_parts(content) if p.get("type") in ("text", "input_text"))


def image_of(part: dict[str, Any]) -> Image | None:
    if part.get("type") != "image_url":
        return None
    iu = part.get("image_url")
    url = iu.get("url") if isinstance(iu, dict) else iu
    if not isinstance(url, str) or not url:
        raise GatewayError(400, "image_url part without a url")
    return parse_image_url(url)


def parse_arguments(arguments: Any) -> Any:
    """OpenAI tool-call ``arguments`` (a JSON string) → the object native formats want; bad JSON → 400."""
    if arguments is None or arguments == "":
        return {}
    if not isinstance(arguments, str):
        return arguments
    try:
        return orjson.loads(arguments)
    except orjson.JSONDecodeError:
        raise GatewayError(400, f"tool call arguments are not valid JSON: {arguments[:200]!r}") from None


def dumps(obj: Any) -> str:
    return orjson.dumps(obj).decode()


def stop_list(stop: Any) -> list[str] | None:
    if stop is None:
        return None
    if isinstance(stop, str):
        return [stop] if stop else None
    out = [s for s in stop if isinstance(s, str) and s]
    return out or None


def stable_id(prefix: str, *seed: Any) -> str:
    """A short deterministic id (tests and retries see the same id for the same content)."""
    h = hashlib.sha256(orjson.dumps(seed, option=orjson.OPT_SORT_KEYS)).digest()
    return prefix + base64.b32encode(h).decode().lower().rstrip("=")[:24]


def tool_name_map(messages: Iterable[dict[str, Any]]) -> dict[str, str]:
    """tool_call_id → function name, from the assistant turns of a history (tool results name no function)."""
    names: dict[str, str] = {}
    for m in messages:
        for tc in m.get("tool_calls") or []:
            fn = tc.get("function") or {}
            if tc.get("id") and fn.get("name"):
                names[tc["id"]] = fn["name"]
    return names


def usage(prompt: int, completion: int, *, cached: int | None = None, reasoning: int | None = None,
          cache_write: int | None = None) -> dict[str, Any]:
    """An OpenAI usage dict (completion tokens include reasoning tokens)."""
    out: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion,
                           "total_tokens": prompt + completion}
    details: dict[str, int] = {}
    if cached:
        details["cached_tokens"] = int(cached)
    if cache_write:
        details["cache_write_tokens"] = int(cache_write)
    if details:
        out["prompt_tokens_details"] = details
    if reasoning:
        out["completion_tokens_details"] = {"reasoning_tokens": int(reasoning)}
    return out


def json_body(data: bytes, what: str) -> dict[str, Any]:
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise GatewayError(502, f"{what} returned invalid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise GatewayError(502, f"{what} returned a JSON {type(obj).__name__}, not an object")
    return obj


def endpoint(base_url: str, version: str, path: str) -> str:
    """``base_url`` may or may not already end in the API version (``https://api.x.com`` or ``…/v1``)."""
    base = base_url.rstrip("/")
    if not base.endswith("/" + version):
        base += "/" + version
    return base + path


def text_chunk(text: str) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}


def role_chunk() -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}


def finish_chunk(finish: str, native: str | None) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": {}, "finish_reason": finish, "native_finish_reason": native}]}


def error_status_for_type(kind: str | None, default: int) -> int:
    """Native error *types* (from stream error events, where no HTTP status exists) → gateway status."""
    table = {
        "invalid_request_error": 400, "authentication_error": 401, "permission_error": 403,
        "not_found_error": 404, "request_too_large": 400, "rate_limit_error": 429, "api_error": 502,
        "overloaded_error": 503, "billing_error": 402, "timeout_error": 504,
        # Google's canonical codes
        "INVALID_ARGUMENT": 400, "FAILED_PRECONDITION": 400, "UNAUTHENTICATED": 401, "PERMISSION_DENIED": 403,
        "NOT_FOUND": 404, "RESOURCE_EXHAUSTED": 429, "INTERNAL": 502, "UNAVAILABLE": 503,
        "DEADLINE_EXCEEDED": 504, "CANCELLED": 502,
    }
    return table.get(kind or "", default)


# ------------------------------------------------------------------------------------------- reasoning

#: OpenRouter's share of ``max_tokens`` given to reasoning at each effort (its reasoning-tokens docs), and the
#: bounds it puts on a budget derived from one (budget = max(min(max_tokens × ratio, 32000), 1024))
EFFORT_RATIOS = {"xhigh": 0.95, "high": 0.8, "medium": 0.5, "low": 0.2, "minimal": 0.1}
EFFORT_BUDGET_MIN, EFFORT_BUDGET_MAX = 1024, 32000


@dataclass(frozen=True, slots=True)
class Reasoning:
    """What OpenRouter's ``reasoning`` object asks of a model: an ``effort``, a token budget (``max_tokens``), to
    reason with the model's defaults (neither), or not to reason (``off``: ``effort: "none"``/``enabled: false``)."""

    effort: str | None = None
    max_tokens: int | None = None
    off: bool = False

    def budget(self, max_tokens: int, *, cap: int = EFFORT_BUDGET_MAX) -> int:
        """A token budget: the one asked for, or the effort's share of ``max_tokens`` within OpenRouter's bounds."""
        if self.max_tokens is not None:
            return self.max_tokens
        ratio = EFFORT_RATIOS.get(self.effort or "medium", EFFORT_RATIOS["medium"])
        return max(min(int(max_tokens * ratio), cap), EFFORT_BUDGET_MIN)

    def effort_for(self, max_tokens: int) -> str | None:
        """An effort level, for models that take only one: the one asked for, or the level of the largest share
        of ``max_tokens`` the asked budget reaches (high 80 %, medium 50 %, else low)."""
        if self.effort is not None or self.max_tokens is None:
            return self.effort
        share = self.max_tokens / max(1, max_tokens)
        return "high" if share >= EFFORT_RATIOS["high"] else "medium" if share >= EFFORT_RATIOS["medium"] else "low"


def reasoning_of(body: dict[str, Any]) -> Reasoning | None:
    """The reasoning a request asks for, or None when it asks nothing of the model (no ``reasoning``, or only
    ``exclude``, which the gateway applies to the answer itself). OpenAI's ``reasoning_effort`` counts as an effort."""
    r = body.get("reasoning")
    r = r if isinstance(r, dict) else {}
    effort = r.get("effort") or body.get("reasoning_effort")
    if r.get("enabled") is False or effort == "none":
        return Reasoning(effort=effort, off=True)
    if effort is not None or r.get("max_tokens") is not None:
        return Reasoning(effort=effort, max_tokens=r.get("max_tokens"))
    return Reasoning() if r.get("enabled") is True else None


def excludes_reasoning(body: dict[str, Any]) -> bool:
    """OpenRouter's ``reasoning: {exclude: true}`` / ``include_reasoning: false``: keep reasoning out of the answer
    (it is still billed when the provider bills it)."""
    r = body.get("reasoning")
    return body.get("include_reasoning") is False or (isinstance(r, dict) and bool(r.get("exclude")))


# ------------------------------------------------------------------------------------------ parameters

@dataclass(frozen=True, slots=True)
class Param:
    """One OpenAI request parameter as one adapter understands it.

    ``target`` is the dotted native path it is written to (``generationConfig.topP``), or ``None`` when the
    adapter's code handles it (tools, messages-affecting options); ``transform`` maps the value (returning
    ``None`` drops it); ``needs`` names a ``Model`` capability (``tools``, ``json_output``, ``vision``,
    ``reasoning``) without which the parameter is unsupported; ``note`` goes into the docs table.
    """

    name: str
    target: str | None = None
    transform: Callable[[Any], Any] | None = None
    needs: str | None = None
    note: str = ""

    def supported_by(self, model: Model) -> bool:
        return self.needs is None or bool(getattr(model, self.needs, False))


def supported(table: Iterable[Param], model: Model) -> list[str]:
    return [p.name for p in table if p.needs is None or getattr(model, p.needs, False)]  # (supported_by, inlined)


def apply_params(table: Iterable[Param], body: dict[str, Any], model: Model, out: dict[str, Any]) -> None:
    """Write every supported, present parameter of ``body`` that has a ``target`` into ``out``."""
    for p in table:
        if p.target is None or not p.supported_by(model):
            continue
        value = body.get(p.name)
        if value is None:
            continue
        if p.transform is not None:
            value = p.transform(value)
            if value is None:
                continue
        set_path(out, p.target, value)


def set_path(obj: dict[str, Any], path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    for key in parents:
        obj = obj.setdefault(key, {})
    obj[leaf] = value


class BaseAdapter:
    """What every adapter shares. Its parameters are a ``param_table`` of :class:`Param` rows: what a model supports
    follows from the table (the rows' capability conditions). An upstream's error answer becomes a
    ``GatewayError`` in one way (:meth:`parse_error`); each adapter says only how its body names the message and
    what else it tells (:meth:`error_details`)."""

    param_table: tuple[Param, ...] = ()

    def supported_parameters(self, model: Model) -> list[str]:
        return supported(self.param_table, model)

    def error_details(self, body: Any) -> tuple[Any, dict[str, Any]]:
        """(message, metadata) from an error answer's JSON ``body``; a message of None: the body's raw text."""
        raise NotImplementedError

    def error_status(self, status: int) -> int:
        """The gateway's status for an upstream's HTTP error ``status``."""
        return upstream_status_to_gateway(status)

    def parse_error(self, status: int, data: bytes, provider: ProviderConfig) -> GatewayError:
        message, meta = None, {}
        try:
            message, meta = self.error_details(orjson.loads(data))
        except orjson.JSONDecodeError:
            pass
        if not message:
            message = data[:500].decode("utf-8", errors="replace") or f"upstream returned HTTP {status}"
        return GatewayError(self.error_status(status), f"{provider.name}: {message}",
                            metadata={"provider_name": provider.name, "raw_status": status, **meta})
