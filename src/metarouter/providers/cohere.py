"""Cohere Chat API v2 (``POST /v2/chat``) ↔ OpenAI chat completions.

v2 is close to OpenAI's shape (roles system/user/assistant/tool, OpenAI-style ``tools`` and ``tool_calls``) but
names sampling parameters its own way (``p``, ``k``, ``stop_sequences``), has only ``REQUIRED``/``NONE`` tool
choice, returns content as a list of typed parts plus a ``tool_plan``, and streams typed events
(``message-start``, ``content-delta``, ``tool-call-start/delta/end``, ``message-end`` with usage).
"""

from __future__ import annotations

from typing import Any

import orjson

from ..catalog import Model
from ..errors import GatewayError
from .base import ProviderConfig, SSEEvent, UpstreamRequest
from .common import (
    BaseAdapter,
    Param,
    apply_params,
    content_parts,
    content_text,
    endpoint,
    finish_chunk,
    image_of,
    json_body,
    role_chunk,
    stop_list,
    text_chunk,
    usage,
)

FINISH_REASONS = {
    "COMPLETE": "stop",
    "STOP_SEQUENCE": "stop",
    "MAX_TOKENS": "length",
    "TOOL_CALL": "tool_calls",
    "ERROR": "error",
    "ERROR_TOXIC": "content_filter",
    "ERROR_LIMIT": "length",
    "TIMEOUT": "error",
    "USER_CANCEL": "error",
}

PARAMS: tuple[Param, ...] = (
    Param("max_tokens", "max_tokens"),
    Param("max_completion_tokens", "max_tokens", note="→ max_tokens"),
    Param("temperature", "temperature"),
    Param("top_p", "p", note="→ p"),
    Param("top_k", "k", note="→ k"),
    Param("stop", "stop_sequences", stop_list, note="→ stop_sequences"),
    Param("seed", "seed"),
    Param("presence_penalty", "presence_penalty"),
    Param("frequency_penalty", "frequency_penalty"),
    Param("response_format", None, needs="json_output"),
    Param("tools", None, needs="tools"),
    Param("tool_choice", None, needs="tools", note="auto/none/required/named"),
)

#: Cohere's non-standard HTTP statuses
_STATUS = {498: 401, 499: 408}


def _content(content: Any, *, images: bool) -> str | list[dict[str, Any]]:
    parts = content_parts(content)
    if all(p.get("type") in ("text", "input_text") for p in parts):
        return content_text(content)
    out: list[dict[str, Any]] = []
    for p in parts:
        if p.get("type") in ("text", "input_text") and p.get("text"):
            out.append({"type": "text", "text": p["text"]})
        elif p.get("type") == "image_url" and images:
            image_of(p)  # validates data URLs
            iu = p["image_url"] if isinstance(p["image_url"], dict) else {"url": p["image_url"]}
            out.append({"type": "image_url", "image_url": {"url": iu["url"]}})
    return out


def translate_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for m in messages:
        role = m.get("role")
        if role in ("system", "developer"):
            out.append({"role": "system", "content": content_text(m.get("content"))})
        elif role == "user":
            out.append({"role": "user", "content": _content(m.get("content"), images=True)})
        elif role == "assistant":
            msg: dict[str, Any] = {"role": "assistant"}
            text = content_text(m.get("content"))
            if m.get("tool_calls"):
                msg["tool_calls"] = [
                    {"id": tc.get("id"), "type": "function",
                     "function": {"name": (tc.get("function") or {}).get("name"),
                                  "arguments": (tc.get("function") or {}).get("arguments") or "{}"}}
                    for tc in m["tool_calls"]
                ]
                # Cohere wants the plan that led to the calls; the assistant's text is the closest thing
                if text:
                    msg["tool_plan"] = text
            elif text:
                msg["content"] = text
            else:
                continue
            out.append(msg)
        elif role in ("tool", "function"):
            text = content_text(m.get("content"))
            try:
                data = orjson.loads(text) if text else None
            except orjson.JSONDecodeError:
                data = None
            # a JSON object result becomes a document (which Cohere can cite); anything else stays text
            content: Any = [{"type": "document", "document": {"data": data}}] if isinstance(data, dict) else text
            out.append({"role": "tool", "tool_call_id": m.get("tool_call_id") or m.get("name") or "",
                        "content": content})
        else:
            raise GatewayError(400, f"unsupported message role {role!r}")
    if not any(m["role"] != "system" for m in out):
        raise GatewayError(400, "the request has no user or assistant message")
    return out


class CohereAdapter(BaseAdapter):
    wire = "cohere"
    param_table = PARAMS

    def translate_body(self, body: dict[str, Any], model: Model, *, stream: bool) -> dict[str, Any]:
        out: dict[str, Any] = {"model": model.native_model,
                               "messages": translate_messages(body.get("messages") or [])}
        apply_params(PARAMS, body, model, out)
        if model.tools and body.get("tools"):
            tools = [{"type": "function", "function": {k: v for k, v in (t.get("function") or {}).items()
                                                        if k in ("name", "description", "parameters")}}
                     for t in body["tools"] if t.get("type", "function") == "function"]
            choice = body.get("tool_choice")
            if isinstance(choice, dict) and (choice.get("function") or {}).get("name"):
                # no named choice in v2: offer only that tool and require a call
                name = choice["function"]["name"]
                tools = [t for t in tools if t["function"].get("name") == name] or tools
                out["tool_choice"] = "REQUIRED"
            elif choice == "required":
                out["tool_choice"] = "REQUIRED"
            elif choice == "none":
                out["tool_choice"] = "NONE"
            out["tools"] = tools
        if model.json_output:
            rf = body.get("response_format") or {}
            if rf.get("type") == "json_object":
                out["response_format"] = {"type": "json_object"}
            elif rf.get("type") == "json_schema":
                out["response_format"] = {"type": "json_object"}
                schema = (rf.get("json_schema") or {}).get("schema")
                if schema:
                    out["response_format"]["json_schema"] = schema
        if stream:
            out["stream"] = True
        return out

    def build_request(
        self, body: dict[str, Any], model: Model, provider: ProviderConfig, *, stream: bool
    ) -> UpstreamRequest:
        headers = {"Content-Type": "application/json", "Accept": "text/event-stream" if stream else
                   "application/json", **provider.headers}
        if provider.api_key:
            headers["Authorization"] = f"Bearer {provider.api_key}"
        url = endpoint(provider.base_url, "v2", "/chat")
        return UpstreamRequest("POST", url, headers, orjson.dumps(self.translate_body(body, model, stream=stream)))

    def parse_response(self, data: bytes) -> dict[str, Any]:
        resp = json_body(data, "cohere")
        msg = resp.get("message") or {}
        text = "".join(p.get("text") or "" for p in msg.get("content") or [] if p.get("type") == "text")
        calls = [{"id": tc.get("id"), "type": "function",
                  "function": {"name": (tc.get("function") or {}).get("name"),
                               "arguments": (tc.get("function") or {}).get("arguments") or "{}"}}
                 for tc in msg.get("tool_calls") or []]
        message: dict[str, Any] = {"role": "assistant", "content": text if text or not calls else None}
        if calls:
            message["tool_calls"] = calls
        if msg.get("tool_plan"):
            message["reasoning"] = msg["tool_plan"]
        native = resp.get("finish_reason")
        return {"id": resp.get("id"), "object": "chat.completion",
                "choices": [{"index": 0, "message": message, "finish_reason": FINISH_REASONS.get(native, "stop"),
                             "native_finish_reason": native, "logprobs": None}],
                "usage": _usage(resp.get("usage"))}

    def stream_translator(self, model: Model) -> CohereStreamTranslator:
        return CohereStreamTranslator()

    def error_details(self, body: Any) -> tuple[Any, dict[str, Any]]:
        if not isinstance(body, dict):
            return None, {}
        message = body.get("message") or body.get("detail")
        if not message and isinstance(body.get("error"), dict):
            message = body["error"].get("message")
        return (message if isinstance(message, str) else None), {}

    def error_status(self, status: int) -> int:
        return _STATUS.get(status) or super().error_status(status)


def _usage(u: dict[str, Any] | None) -> dict[str, Any] | None:
    """Prefer ``tokens`` (what the model processed) over ``billed_units`` (what is charged, prompt template excluded)."""
    if not u:
        return None
    tokens = u.get("tokens") or u.get("billed_units") or {}
    return usage(int(tokens.get("input_tokens") or 0), int(tokens.get("output_tokens") or 0),
                 cached=int(u.get("cached_tokens") or 0))


class CohereStreamTranslator:
    def __init__(self) -> None:
        self.usage: dict[str, Any] | None = None
        self.done = False  # the upstream said its stream is complete

    def feed(self, event: SSEEvent) -> list[dict[str, Any]]:
        if not event.data:
            return []
        if event.data == "[DONE]":
            self.done = True
            return []
        try:
            payload = orjson.loads(event.data)
        except orjson.JSONDecodeError:
            raise GatewayError(502, "cohere sent an invalid stream event") from None
        kind = payload.get("type") or event.event
        delta = payload.get("delta") or {}
        message = delta.get("message") or {}
        if kind == "message-start":
            return [role_chunk()]
        if kind == "content-delta":
            text = ((message.get("content") or {}).get("text")) or ""
            return [text_chunk(text)] if text else []
        if kind == "tool-plan-delta":
            plan = message.get("tool_plan") or ""
            return [{"choices": [{"index": 0, "delta": {"reasoning": plan}, "finish_reason": None}]}] if plan else []
        if kind == "tool-call-start":
            tc = message.get("tool_calls") or {}
            fn = tc.get("function") or {}
            call = {"index": payload.get("index", 0), "id": tc.get("id"), "type": "function",
                    "function": {"name": fn.get("name"), "arguments": fn.get("arguments") or ""}}
            return [{"choices": [{"index": 0, "delta": {"tool_calls": [call]}, "finish_reason": None}]}]
        if kind == "tool-call-delta":
            args = ((message.get("tool_calls") or {}).get("function") or {}).get("arguments") or ""
            if not args:
                return []
            call = {"index": payload.get("index", 0), "function": {"arguments": args}}
            return [{"choices": [{"index": 0, "delta": {"tool_calls": [call]}, "finish_reason": None}]}]
        if kind == "message-end":
            self.done = True
            if delta.get("usage"):
                self.usage = _usage(delta["usage"])
            native = delta.get("finish_reason")
            if native in ("ERROR", "TIMEOUT") and delta.get("error"):
                raise GatewayError(502, f"cohere: {delta['error']}", metadata={"provider_name": "cohere",
                                                                               "finish_reason": native})
            return [finish_chunk(FINISH_REASONS.get(native, "stop"), native)]
        return []  # content-start/end, tool-call-end, citations, debug

    def finish(self) -> list[dict[str, Any]]:
        return []
