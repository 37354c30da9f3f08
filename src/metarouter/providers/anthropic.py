"""Anthropic Messages API (``POST /v1/messages``) ↔ OpenAI chat completions.

Anthropic differs from OpenAI in shape more than in meaning: system prompts are a top-level field, a turn is a
list of typed blocks (``text``, ``image``, ``tool_use``, ``tool_result``), tool results travel in *user* turns,
consecutive turns of one role are merged, and ``max_tokens`` is required. Streams are typed SSE events whose
content blocks are indexed by position; OpenAI numbers tool calls on their own, so the translator keeps the map.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from ..catalog import Model
from ..errors import GatewayError
from .base import ProviderConfig, SSEEvent, UpstreamRequest
from .common import (
    Param,
    Reasoning,
    BaseAdapter,
    apply_params,
    content_parts,
    dumps,
    endpoint,
    error_status_for_type,
    finish_chunk,
    image_of,
    json_body,
    parse_arguments,
    reasoning_of,
    role_chunk,
    stop_list,
    text_chunk,
    usage,
)

ANTHROPIC_VERSION = "2023-06-01"

#: the tool a ``json_schema`` response format is emulated with (forced ``tool_use``, read back as text)
JSON_TOOL = "metarouter_json_output"

FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "pause_turn": "stop",
    "refusal": "content_filter",
    "model_context_window_exceeded": "length",
}


def _clamp_temperature(t: Any) -> float:
    # OpenAI's range is 0..2, Anthropic's 0..1: clamp rather than fail the request.
    return max(0.0, min(1.0, float(t)))


PARAMS: tuple[Param, ...] = (
    Param("max_tokens", None, note="default: the model's max output"),
    Param("max_completion_tokens", None, note="→ max_tokens"),
    Param("temperature", "temperature", _clamp_temperature, note="clamped to 0..1"),
    Param("top_p", "top_p"),
    Param("top_k", "top_k"),
    Param("stop", "stop_sequences", lambda s: [x for x in stop_list(s) or () if x.strip()] or None,
          note="→ stop_sequences; whitespace-only ones dropped"),
    Param("user", "metadata.user_id", lambda u: str(u)[:256] or None, note="→ metadata.user_id"),
    Param("tools", None, needs="tools"),
    Param("tool_choice", None, needs="tools"),
    Param("parallel_tool_calls", None, needs="tools", note="→ disable_parallel_tool_use"),
    Param("response_format", None, needs="tools", note="emulated with a forced tool"),
    Param("reasoning", None, needs="reasoning_control", note="→ thinking.budget_tokens"),
)

_TOOL_ID_BAD = re.compile(r"[^a-zA-Z0-9_-]")


def _tool_id(tool_call_id: Any) -> str:
    """Anthropic tool ids must match ``^[a-zA-Z0-9_-]+$``; ids minted by other providers are made to fit."""
    return _TOOL_ID_BAD.sub("_", str(tool_call_id or "")) or "toolu_missing"


def _text_block(part: dict[str, Any]) -> dict[str, Any] | None:
    text = part.get("text") or ""
    if not text:
        return None  # Anthropic rejects empty text blocks
    block: dict[str, Any] = {"type": "text", "text": text}
    if part.get("cache_control"):
        block["cache_control"] = part["cache_control"]
    return block


def _blocks(content: Any, *, images: bool = True) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for part in content_parts(content):
        kind = part.get("type")
        if kind in ("text", "input_text"):
            block = _text_block(part)
            if block:
                out.append(block)
        elif kind == "image_url" and images:
            img = image_of(part)
            assert img is not None
            source = (
                {"type": "base64", "media_type": img.mime_type, "data": img.data}
                if img.data is not None else {"type": "url", "url": img.url}
            )
            block = {"type": "image", "source": source}
            if part.get("cache_control"):
                block["cache_control"] = part["cache_control"]
            out.append(block)
    return out


def translate_messages(messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """OpenAI messages → (Anthropic ``system`` blocks, Anthropic ``messages`` with roles merged)."""
    system: list[dict[str, Any]] = []
    out: list[dict[str, Any]] = []
    for m in messages:
        role = m.get("role")
        if role in ("system", "developer"):
            system.extend(_blocks(m.get("content"), images=False))
            continue
        if role == "user":
            blocks, native_role = _blocks(m.get("content")), "user"
        elif role == "assistant":
            blocks, native_role = _blocks(m.get("content"), images=False), "assistant"
            for tc in m.get("tool_calls") or []:
                fn = tc.get("function") or {}
                blocks.append({"type": "tool_use", "id": _tool_id(tc.get("id")), "name": fn.get("name") or "",
                               "input": parse_arguments(fn.get("arguments"))})
        elif role in ("tool", "function"):
            inner = m.get("content")
            result: dict[str, Any] = {"type": "tool_result",
                                      "tool_use_id": _tool_id(m.get("tool_call_id") or m.get("name"))}
            if isinstance(inner, str) or inner is None:
                if inner:
                    result["content"] = inner
            else:
                result["content"] = _blocks(inner)
            blocks, native_role = [result], "user"
        else:
            raise GatewayError(400, f"unsupported message role {role!r}")
        if not blocks:
            continue
        if out and out[-1]["role"] == native_role:
            out[-1]["content"].extend(blocks)
        else:
            out.append({"role": native_role, "content": blocks})
    if out and out[-1]["role"] == "assistant":
        # a trailing assistant turn is a prefill, which may not end in whitespace
        last = out[-1]["content"][-1]
        if last.get("type") == "text":
            last["text"] = last["text"].rstrip()
            if not last["text"]:
                out[-1]["content"].pop()
                if not out[-1]["content"]:
                    out.pop()
    if not out:
        raise GatewayError(400, "the request has no user or assistant message")
    return system, out


def _tools(body: dict[str, Any]) -> list[dict[str, Any]]:
    tools = []
    for t in body.get("tools") or []:
        if t.get("type", "function") != "function":
            continue
        fn = t.get("function") or {}
        tool: dict[str, Any] = {"name": fn.get("name") or "",
                                "input_schema": fn.get("parameters") or {"type": "object", "properties": {}}}
        if fn.get("description"):
            tool["description"] = fn["description"]
        if t.get("cache_control"):
            tool["cache_control"] = t["cache_control"]
        tools.append(tool)
    return tools


def _tool_choice(choice: Any, parallel: Any) -> dict[str, Any] | None:
    tc: dict[str, Any] | None
    if choice is None:
        tc = None
    elif choice == "auto":
        tc = {"type": "auto"}
    elif choice == "none":
        return {"type": "none"}
    elif choice == "required":
        tc = {"type": "any"}
    elif isinstance(choice, dict) and (choice.get("function") or {}).get("name"):
        tc = {"type": "tool", "name": choice["function"]["name"]}
    else:
        raise GatewayError(400, f"unsupported tool_choice {choice!r}")
    if parallel is False:
        tc = tc or {"type": "auto"}
        tc["disable_parallel_tool_use"] = True
    return tc


def _think(out: dict[str, Any], reasoning: Reasoning, system: list[dict[str, Any]], model: Model) -> None:
    """Extended thinking (``thinking: {type: enabled, budget_tokens}``) and what Anthropic requires with it: a budget
    of at least 1024 tokens below ``max_tokens``, no temperature or top_k, top_p ≥ 0.95, no forced tool call."""
    max_tokens = out["max_tokens"]
    budget = min(reasoning.budget(max_tokens), max_tokens - 1)
    if budget < 1024:
        raise GatewayError(400, f"reasoning on {model.id}: Anthropic's thinking needs a budget of at least 1024 "
                                f"tokens below max_tokens ({max_tokens}); raise max_tokens or reasoning.max_tokens",
                           metadata={"param": "reasoning"}, retryable=False)
    out["thinking"] = {"type": "enabled", "budget_tokens": budget}
    out.pop("temperature", None)
    out.pop("top_k", None)
    if out.get("top_p", 1) < 0.95:
        del out["top_p"]
    choice = out.get("tool_choice") or {}
    if choice.get("type") == "tool" and choice.get("name") == JSON_TOOL or (
        choice.get("type") == "any" and any(t["name"] == JSON_TOOL for t in out.get("tools", ()))
    ):  # the JSON answer cannot be forced while thinking: asked for instead
        out["tool_choice"] = {**choice, "type": "auto"}
        out["tool_choice"].pop("name", None)
        system.append({"type": "text", "text": f"Give your final answer by calling the {JSON_TOOL} tool."})
    elif choice.get("type") in ("any", "tool"):
        raise GatewayError(400, f"reasoning on {model.id}: Anthropic cannot force a tool call while thinking; use "
                                "tool_choice auto or none, or leave reasoning out", metadata={"param": "tool_choice"},
                           retryable=False)


class AnthropicAdapter(BaseAdapter):
    wire = "anthropic"
    param_table = PARAMS

    def translate_body(self, body: dict[str, Any], model: Model, *, stream: bool) -> dict[str, Any]:
        system, messages = translate_messages(body.get("messages") or [])
        max_tokens = body.get("max_tokens") or body.get("max_completion_tokens") or model.max_output()
        out: dict[str, Any] = {"model": model.native_model, "max_tokens": int(max_tokens), "messages": messages}
        apply_params(PARAMS, body, model, out)
        if model.tools:
            tools = _tools(body)
            tool_choice = _tool_choice(body.get("tool_choice"), body.get("parallel_tool_calls")) if tools else None
            rf = body.get("response_format") or {}
            if rf.get("type") == "json_schema":
                schema = (rf.get("json_schema") or {}).get("schema") or {"type": "object"}
                if schema.get("type") == "object":
                    if tool_choice and tool_choice["type"] == "none":
                        tools, tool_choice = [], None  # no tool may be called: only the answer's
                    description = "Reply with a JSON object matching the schema."
                    if tools:
                        description += " Call this tool to give your final answer."
                    tools.append({"name": JSON_TOOL, "description": description, "input_schema": schema})
                    if len(tools) == 1:
                        tool_choice = {"type": "tool", "name": JSON_TOOL}
                    elif not tool_choice or tool_choice["type"] == "auto":
                        # with tools of the user's, the answer must still come as JSON: some tool must be called,
                        # and the answer's tool is the way to answer (a forced user tool stays forced)
                        tool_choice = {**(tool_choice or {}), "type": "any"}
                else:
                    system.append({"type": "text", "text": "Reply only with JSON matching this schema: "
                                   + dumps(schema)})
            elif rf.get("type") == "json_object":
                system.append({"type": "text", "text": "Reply only with a valid JSON object, without any prose "
                               "or code fences."})
            if tools:
                out["tools"] = tools
            if tool_choice:
                out["tool_choice"] = tool_choice
        reasoning = reasoning_of(body) if model.reasoning_control else None
        if reasoning is not None and not reasoning.off:
            _think(out, reasoning, system, model)
        if system:
            cached = any("cache_control" in b for b in system)
            out["system"] = system if cached else "\n\n".join(b["text"] for b in system)
        if stream:
            out["stream"] = True
        return out

    def build_request(
        self, body: dict[str, Any], model: Model, provider: ProviderConfig, *, stream: bool
    ) -> UpstreamRequest:
        headers = {"content-type": "application/json", "anthropic-version": ANTHROPIC_VERSION, **provider.headers}
        if provider.api_key:
            headers["x-api-key"] = provider.api_key
        if stream:
            headers["accept"] = "text/event-stream"
        url = endpoint(provider.base_url, "v1", "/messages")
        return UpstreamRequest("POST", url, headers, orjson.dumps(self.translate_body(body, model, stream=stream)))

    def parse_response(self, data: bytes) -> dict[str, Any]:
        resp = json_body(data, "anthropic")
        if resp.get("type") == "error":
            raise _stream_error(resp)
        text: list[str] = []
        reasoning: list[str] = []
        tool_calls: list[dict[str, Any]] = []
        json_tool = False
        for block in resp.get("content") or []:
            kind = block.get("type")
            if kind == "text":
                text.append(block.get("text") or "")
            elif kind == "tool_use" and block.get("name") == JSON_TOOL:
                json_tool = True
                text.append(dumps(block.get("input") or {}))
            elif kind == "tool_use":
                tool_calls.append({"id": block.get("id"), "type": "function",
                                   "function": {"name": block.get("name"), "arguments": dumps(block.get("input"))}})
            elif kind == "thinking":
                reasoning.append(block.get("thinking") or "")
        message: dict[str, Any] = {"role": "assistant", "content": "".join(text) if text or not tool_calls else None}
        if tool_calls:
            message["tool_calls"] = tool_calls
        if reasoning:
            message["reasoning"] = "".join(reasoning)
        native = resp.get("stop_reason")
        finish = "stop" if json_tool and native == "tool_use" and not tool_calls else FINISH_REASONS.get(native, "stop")
        return {
            "id": resp.get("id"),
            "object": "chat.completion",
            "model": resp.get("model"),
            "choices": [{"index": 0, "message": message, "finish_reason": finish, "native_finish_reason": native,
                         "logprobs": None}],
            "usage": _usage(resp.get("usage") or {}),
        }

    def stream_translator(self, model: Model) -> AnthropicStreamTranslator:
        return AnthropicStreamTranslator()

    def error_details(self, body: Any) -> tuple[Any, dict[str, Any]]:
        if not isinstance(body, dict):
            return None, {}
        err = body.get("error") if isinstance(body.get("error"), dict) else {}
        meta = {"type": err["type"]} if err.get("type") else {}
        if body.get("request_id"):
            meta["request_id"] = body["request_id"]
        return err.get("message"), meta


def _usage(u: dict[str, Any], output_tokens: int | None = None) -> dict[str, Any]:
    """Anthropic counts cached input apart from ``input_tokens``; OpenAI's ``prompt_tokens`` includes it."""
    cache_read = int(u.get("cache_read_input_tokens") or 0)
    cache_write = int(u.get("cache_creation_input_tokens") or 0)
    prompt = int(u.get("input_tokens") or 0) + cache_read + cache_write
    completion = int(output_tokens if output_tokens is not None else (u.get("output_tokens") or 0))
    return usage(prompt, completion, cached=cache_read, cache_write=cache_write)


def _stream_error(payload: dict[str, Any]) -> GatewayError:
    err = payload.get("error") if isinstance(payload.get("error"), dict) else {}
    kind = err.get("type")
    status = error_status_for_type(kind, 502)
    return GatewayError(status, f"anthropic: {err.get('message') or kind or 'stream error'}",
                        metadata={"provider_name": "anthropic", "type": kind})


class AnthropicStreamTranslator:
    """Anthropic stream events → OpenAI chunks.

    Content blocks are numbered across text and tool use; OpenAI's ``tool_calls[].index`` counts tool calls
    only, so each ``tool_use`` block gets the next tool index when it starts.
    """

    def __init__(self) -> None:
        self.usage: dict[str, Any] | None = None
        self.done = False  # the upstream said its stream is complete
        self._blocks: dict[int, tuple[str, int]] = {}  # content block index → (kind, tool index)
        self._tools = 0
        self._json_tool = False
        self._start_usage: dict[str, Any] = {}

    def feed(self, event: SSEEvent) -> list[dict[str, Any]]:
        if not event.data:
            return []
        try:
            payload = orjson.loads(event.data)
        except orjson.JSONDecodeError:
            raise GatewayError(502, "anthropic sent an invalid stream event") from None
        kind = payload.get("type") or event.event
        if kind == "message_start":
            msg = payload.get("message") or {}
            self._start_usage = msg.get("usage") or {}
            self.usage = _usage(self._start_usage)
            return [role_chunk()]
        if kind == "content_block_start":
            return self._block_start(payload)
        if kind == "content_block_delta":
            return self._block_delta(payload)
        if kind == "message_delta":
            u = dict(self._start_usage)
            for k, v in (payload.get("usage") or {}).items():
                if v is not None:
                    u[k] = v
            self.usage = _usage(u)
            native = (payload.get("delta") or {}).get("stop_reason")
            if native is None:
                return []
            finish = FINISH_REASONS.get(native, "stop")
            if self._json_tool and native == "tool_use" and self._tools == 0:
                finish = "stop"
            return [finish_chunk(finish, native)]
        if kind == "message_stop":
            self.done = True
            return []
        if kind == "error":
            raise _stream_error(payload)
        return []  # ping, content_block_stop, and event types added later

    def _block_start(self, payload: dict[str, Any]) -> list[dict[str, Any]]:
        index = payload.get("index", 0)
        block = payload.get("content_block") or {}
        kind = block.get("type")
        if kind == "tool_use" and block.get("name") == JSON_TOOL:
            self._json_tool = True
            self._blocks[index] = ("json", -1)
            return []
        if kind == "tool_use":
            tool_index = self._tools
            self._tools += 1
            self._blocks[index] = ("tool", tool_index)
            call = {"index": tool_index, "id": block.get("id"), "type": "function",
                    "function": {"name": block.get("name"), "arguments": ""}}
            return [{"choices": [{"index": 0, "delta": {"tool_calls": [call]}, "finish_reason": None}]}]
        self._blocks[index] = (kind or "text", -1)
        if kind == "text" and block.get("text"):
            return [text_chunk(block["text"])]
        return []

    def _block_delta(self, payload: dict[str, Any]) -> list[dict[str, Any]]:
        kind, tool_index = self._blocks.get(payload.get("index", 0), ("text", -1))
        delta = payload.get("delta") or {}
        dtype = delta.get("type")
        if dtype == "text_delta" and delta.get("text"):
            return [text_chunk(delta["text"])]
        if dtype == "input_json_delta":
            partial = delta.get("partial_json") or ""
            if not partial:
                return []
            if kind == "json":
                return [text_chunk(partial)]
            call = {"index": tool_index, "function": {"arguments": partial}}
            return [{"choices": [{"index": 0, "delta": {"tool_calls": [call]}, "finish_reason": None}]}]
        if dtype == "thinking_delta" and delta.get("thinking"):
            return [{"choices": [{"index": 0, "delta": {"reasoning": delta["thinking"]}, "finish_reason": None}]}]
        return []

    def finish(self) -> list[dict[str, Any]]:
        return []
