"""Anthropic's Messages API (``POST /messages``) as a front door: a pure translator to and from the pipeline.

The request is checked in Anthropic's terms (every problem a 400 naming the Anthropic field) and turned into the
chat-completions body the pipeline runs; the pipeline's answer — a ``chat.completion``, or its SSE chunks — is
turned back into a ``Message`` or Anthropic's typed stream events. ``providers/anthropic.py`` is the same mapping
in the other direction (chat completions in, Anthropic out).

Mapping: ``system`` → a system message; ``text``/``image`` blocks → content parts; ``tool_use`` blocks →
``tool_calls``; ``tool_result`` blocks → ``tool`` messages (ahead of the turn's other blocks, as OpenAI wants);
``thinking`` blocks in the history are dropped. ``tool_choice`` auto/any/tool/none → auto/required/function/none,
``stop_sequences`` → ``stop``, ``metadata.user_id`` → ``user``; OpenRouter's ``models``, ``provider``, ``plugins``
and ``session_id`` are taken as the chat endpoint takes them. ``thinking`` becomes OpenRouter's ``reasoning``
(``{max_tokens: budget_tokens}``, or ``{exclude: true}`` when not enabled): the pipeline honours the exclusion on
every provider's output and returns a model's reasoning as ``thinking`` blocks (with an empty ``signature``; no
provider's signature survives the translation) only when ``thinking`` is enabled.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any, AsyncIterator

import orjson

from ..errors import GatewayError
from ..providers.sse import SSE_PROCESSING, SSEParser
from .validation import MAX_MODEL_ID

#: our finish reasons → Anthropic's stop reasons
STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "content_filter": "refusal"}

#: HTTP status → Anthropic's error type (the types of the anthropic SDK's ``ErrorObject``)
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 402: "billing_error", 403: "permission_error",
               404: "not_found_error", 408: "timeout_error", 413: "invalid_request_error", 429: "rate_limit_error",
               431: "invalid_request_error", 500: "api_error", 502: "api_error", 503: "overloaded_error",
               504: "timeout_error"}

IMAGE_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")
#: OpenRouter's request extensions, taken as the chat endpoint takes them (fallback models, auto's plugins, …)
OPENROUTER_FIELDS = ("models", "provider", "plugins", "session_id")
MAX_STOP_SEQUENCES = 16  # the chat endpoint's limit, which the pipeline applies


def error_type(status: int) -> str:
    return ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")


def error_body(err: GatewayError) -> dict[str, Any]:
    """An error in Anthropic's shape: ``{"type": "error", "error": {"type", "message"}}``."""
    return {"type": "error", "error": {"type": error_type(err.status), "message": err.message}}


def _bad(message: str, param: str | None = None) -> GatewayError:
    return GatewayError(400, message, metadata={"param": param} if param else None, retryable=False)


# --- the request ------------------------------------------------------------------------------------------------

@dataclass
class MessagesRequest:
    chat: dict[str, Any]  # the chat-completions body the pipeline runs
    thinking: bool  # reasoning comes back as thinking blocks
    stop_sequences: list[str]


def _str(v: Any) -> bool:
    return isinstance(v, str)


def _number(body: dict, name: str, lo: float, hi: float) -> None:
    v = body.get(name)
    if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi):
        raise _bad(f"{name}: must be a number between {lo:g} and {hi:g}", name)


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _whole(body: dict, name: str) -> Any:
    """An integer field as Anthropic reads it (``5.0`` is 5; the JSON Schema of the API agrees)."""
    v = body.get(name)
    if isinstance(v, float) and v.is_integer() and abs(v) < 2**64:
        return int(v)
    return v


def _text_part(block: dict[str, Any], where: str) -> dict[str, Any]:
    if not _str(block.get("text")):
        raise _bad(f"{where}.text: must be a string", f"{where}.text")
    part: dict[str, Any] = {"type": "text", "text": block["text"]}
    if isinstance(block.get("cache_control"), dict):
        part["cache_control"] = block["cache_control"]
    return part


def _image_part(block: dict[str, Any], where: str) -> dict[str, Any]:
    src = block.get("source")
    kind = src.get("type") if isinstance(src, dict) else None
    if kind == "base64":
        media, data = src.get("media_type"), src.get("data")
        if not (_str(media) and media in IMAGE_TYPES):
            raise _bad(f"{where}.source.media_type: must be one of {', '.join(IMAGE_TYPES)}", f"{where}.source.media_type")
        if not _str(data) or not data:
            raise _bad(f"{where}.source.data: must be a base64 string", f"{where}.source.data")
        try:
            base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise _bad(f"{where}.source.data: is not valid base64", f"{where}.source.data") from None
        url = f"data:{media};base64,{data}"
    elif kind == "url":
        url = src.get("url")
        if not _str(url) or not url.startswith(("https://", "http://")):
            raise _bad(f"{where}.source.url: must be an http(s) URL", f"{where}.source.url")
    else:
        raise _bad(f"{where}.source: must be {{type: base64, media_type, data}} or {{type: url, url}}",
                   f"{where}.source")
    part: dict[str, Any] = {"type": "image_url", "image_url": {"url": url}}
    if isinstance(block.get("cache_control"), dict):
        part["cache_control"] = block["cache_control"]
    return part


def _blocks(content: Any, where: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise _bad(f"{where}: must be a string or an array of content blocks", where)
    for j, block in enumerate(content):
        if not isinstance(block, dict) or not _str(block.get("type")):
            raise _bad(f"{where}[{j}]: must be a content block with a type", f"{where}[{j}]")
    return content


def _tool_result(block: dict[str, Any], where: str) -> dict[str, Any]:
    if not _str(block.get("tool_use_id")) or not block["tool_use_id"]:
        raise _bad(f"{where}.tool_use_id: must be a string", f"{where}.tool_use_id")
    inner = block.get("content")
    content: Any
    if inner is None or _str(inner):
        content = inner or ""
    else:
        content = []
        for k, b in enumerate(_blocks(inner, f"{where}.content")):
            if b["type"] == "text":
                content.append(_text_part(b, f"{where}.content[{k}]"))
            elif b["type"] == "image":
                content.append(_image_part(b, f"{where}.content[{k}]"))
            else:
                raise _bad(f"{where}.content[{k}].type: a tool result holds text and image blocks",
                           f"{where}.content[{k}].type")
    if block.get("is_error") is not None and not isinstance(block["is_error"], bool):
        raise _bad(f"{where}.is_error: must be a boolean", f"{where}.is_error")
    return {"role": "tool", "tool_call_id": block["tool_use_id"], "content": content}


def _turn(m: Any, i: int) -> list[dict[str, Any]]:
    """One Anthropic turn → chat messages (a user turn's tool results become ``tool`` messages, first)."""
    where = f"messages.{i}"
    if not isinstance(m, dict):
        raise _bad(f"{where}: must be an object", where)
    role = m.get("role")
    if role not in ("user", "assistant"):
        raise _bad(f"{where}.role: must be user or assistant", f"{where}.role")
    if "content" not in m:
        raise _bad(f"{where}.content: Field required", f"{where}.content")
    if m["content"] == []:
        raise _bad(f"{where}.content: must not be empty", f"{where}.content")
    if _str(m["content"]):
        return [{"role": role, "content": m["content"]}]
    parts: list[dict[str, Any]] = []
    tools: list[dict[str, Any]] = []  # tool messages (user turns) or tool calls (assistant turns)
    for j, block in enumerate(_blocks(m["content"], f"{where}.content")):
        at = f"{where}.content.{j}"
        kind = block["type"]
        if kind == "text":
            parts.append(_text_part(block, at))
        elif kind == "image" and role == "user":
            parts.append(_image_part(block, at))
        elif kind == "tool_result" and role == "user":
            tools.append(_tool_result(block, at))
        elif kind == "tool_use" and role == "assistant":
            if not (_str(block.get("id")) and block["id"] and _str(block.get("name")) and block["name"]):
                raise _bad(f"{at}: a tool_use block needs an id and a name", at)
            if not isinstance(block.get("input"), dict):
                raise _bad(f"{at}.input: must be an object", f"{at}.input")
            tools.append({"id": block["id"], "type": "function",
                          "function": {"name": block["name"], "arguments": orjson.dumps(block["input"]).decode()}})
        elif kind in ("thinking", "redacted_thinking") and role == "assistant":
            fields = ("thinking", "signature") if kind == "thinking" else ("data",)
            if not all(_str(block.get(f)) for f in fields):
                raise _bad(f"{at}: a {kind} block needs {' and '.join(fields)} (strings)", at)
            # the model's own reasoning is not sent back (no provider's signature survives the gateway)
        else:
            raise _bad(f"{at}.type: {kind!r} blocks are not supported in {role} turns", f"{at}.type")
    if role == "user":
        out = list(tools)
        if parts or not tools:
            out.append({"role": "user", "content": parts})
        return out
    msg: dict[str, Any] = {"role": "assistant", "content": "".join(p["text"] for p in parts) if parts else None}
    if tools:
        msg["tool_calls"] = tools
    elif msg["content"] is None:
        msg["content"] = ""
    return [msg]


def _system(system: Any) -> dict[str, Any] | None:
    if system is None:
        return None
    if _str(system):
        return {"role": "system", "content": system} if system else None
    if not isinstance(system, list):
        raise _bad("system: must be a string or an array of text blocks", "system")
    parts = []
    for j, block in enumerate(system):
        if not isinstance(block, dict) or block.get("type") != "text":
            raise _bad(f"system.{j}: must be a text block", f"system.{j}")
        parts.append(_text_part(block, f"system.{j}"))
    return {"role": "system", "content": parts} if parts else None


def _tools(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise _bad("tools: must be an array", "tools")
    out = []
    for j, t in enumerate(tools):
        where = f"tools.{j}"
        if not isinstance(t, dict) or not (_str(t.get("name")) and t["name"]):
            raise _bad(f"{where}.name: must be a string", f"{where}.name")
        if t.get("type") not in (None, "custom"):
            raise _bad(f"{where}.type: server tools ({t['type']!r}) are not supported; define a custom tool",
                       f"{where}.type")
        schema = t.get("input_schema")
        if not isinstance(schema, dict):
            raise _bad(f"{where}.input_schema: must be a JSON Schema object", f"{where}.input_schema")
        fn: dict[str, Any] = {"name": t["name"], "parameters": schema}
        if t.get("description") is not None:
            if not _str(t["description"]):
                raise _bad(f"{where}.description: must be a string", f"{where}.description")
            fn["description"] = t["description"]
        tool: dict[str, Any] = {"type": "function", "function": fn}
        if isinstance(t.get("cache_control"), dict):
            tool["cache_control"] = t["cache_control"]
        out.append(tool)
    return out


def _tool_choice(tc: Any, chat: dict[str, Any]) -> None:
    kind = tc.get("type") if isinstance(tc, dict) else None
    if kind == "auto":
        chat["tool_choice"] = "auto"
    elif kind == "any":
        chat["tool_choice"] = "required"
    elif kind == "none":
        chat["tool_choice"] = "none"
    elif kind == "tool" and _str(tc.get("name")) and tc["name"]:
        chat["tool_choice"] = {"type": "function", "function": {"name": tc["name"]}}
    else:
        raise _bad("tool_choice: must be {type: auto}, {type: any}, {type: none} or {type: tool, name}", "tool_choice")
    parallel = tc.get("disable_parallel_tool_use")
    if parallel is not None:
        if not isinstance(parallel, bool):
            raise _bad("tool_choice.disable_parallel_tool_use: must be a boolean", "tool_choice.disable_parallel_tool_use")
        if parallel and kind != "none":
            chat["parallel_tool_calls"] = False


def _thinking(thinking: Any, max_tokens: int) -> dict[str, Any] | None:
    """Anthropic's ``thinking`` → OpenRouter's ``reasoning`` (None: not enabled)."""
    kind = thinking.get("type") if isinstance(thinking, dict) else None
    if kind == "enabled":
        budget = _whole(thinking, "budget_tokens")
        if not _int(budget) or budget < 1024 or budget >= max_tokens:
            raise _bad("thinking.budget_tokens: must be an integer ≥ 1024 and less than max_tokens",
                       "thinking.budget_tokens")
        return {"max_tokens": budget}
    if kind == "adaptive":
        return {"enabled": True}
    if kind == "disabled":
        return None
    raise _bad("thinking: must be {type: enabled, budget_tokens}, {type: adaptive} or {type: disabled}", "thinking")


def translate_request(body: Any, *, max_messages: int) -> MessagesRequest:
    """A Messages API body → the chat-completions body the pipeline runs. Raises a 400 for any bad field."""
    if not isinstance(body, dict):
        raise _bad("The request body must be a JSON object")
    model = body.get("model")
    if not _str(model) or not model or len(model) > MAX_MODEL_ID:
        raise _bad(f"model: required, a model id or \"auto\" (a string of at most {MAX_MODEL_ID} characters)", "model")
    max_tokens = _whole(body, "max_tokens")
    if not _int(max_tokens) or max_tokens < 1 or max_tokens >= 2**64:
        raise _bad("max_tokens: required, an integer ≥ 1", "max_tokens")
    turns = body.get("messages")
    if not isinstance(turns, list) or not turns:
        raise _bad("messages: required, a non-empty array", "messages")
    if len(turns) > max_messages:
        raise _bad(f"messages: too many messages: {len(turns)} (at most {max_messages})", "messages")
    messages: list[dict[str, Any]] = []
    system = _system(body.get("system"))
    if system:
        messages.append(system)
    for i, m in enumerate(turns):
        messages.extend(_turn(m, i))
    chat: dict[str, Any] = {"model": model, "messages": messages, "max_tokens": max_tokens}
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise _bad("stream: must be a boolean", "stream")
    if stream:
        chat["stream"] = True
    _number(body, "temperature", 0, 1)
    _number(body, "top_p", 0, 1)
    for name in ("temperature", "top_p"):
        if body.get(name) is not None:
            chat[name] = body[name]
    top_k = _whole(body, "top_k")
    if top_k is not None:
        if not _int(top_k) or top_k < 0:
            raise _bad("top_k: must be an integer ≥ 0", "top_k")
        chat["top_k"] = top_k
    stops = body.get("stop_sequences")
    if stops is not None:
        if not (isinstance(stops, list) and all(_str(s) and s for s in stops) and len(stops) <= MAX_STOP_SEQUENCES):
            raise _bad(f"stop_sequences: must be an array of at most {MAX_STOP_SEQUENCES} non-empty strings",
                       "stop_sequences")
        if stops:
            chat["stop"] = list(stops)
    meta = body.get("metadata")
    if meta is not None:
        if not isinstance(meta, dict) or not (meta.get("user_id") is None or _str(meta["user_id"])):
            raise _bad("metadata: must be an object; metadata.user_id a string", "metadata")
        if meta.get("user_id"):
            chat["user"] = meta["user_id"]
    if body.get("tools") is not None:
        tools = _tools(body["tools"])
        if tools:
            chat["tools"] = tools
    if body.get("tool_choice") is not None:
        _tool_choice(body["tool_choice"], chat)
    for name in OPENROUTER_FIELDS:  # checked with the chat body they join
        if body.get(name) is not None:
            chat[name] = body[name]
    reasoning = _thinking(body["thinking"], max_tokens) if body.get("thinking") is not None else None
    chat["reasoning"] = reasoning if reasoning is not None else {"exclude": True}
    return MessagesRequest(chat, reasoning is not None, list(stops or []))


# --- the answer -------------------------------------------------------------------------------------------------

def _stop(finish: str | None, native: str | None, req: MessagesRequest) -> tuple[str | None, str | None]:
    """(stop_reason, stop_sequence). Which stop sequence matched is known only when the upstream says it stopped
    on one and exactly one was given; other upstreams report a stop sequence as a natural end."""
    if finish is None:
        return None, None
    if native == "stop_sequence":
        return "stop_sequence", req.stop_sequences[0] if len(req.stop_sequences) == 1 else None
    return STOP_REASONS.get(finish, "end_turn"), None


def _usage(u: dict[str, Any] | None) -> dict[str, Any]:
    """Our usage (``prompt_tokens`` counts cached input) → Anthropic's (``input_tokens`` does not)."""
    u = u or {}
    details = u.get("prompt_tokens_details") or {}
    cached = int(details.get("cached_tokens") or 0)
    written = int(details.get("cache_write_tokens") or 0)
    return {"input_tokens": max(0, int(u.get("prompt_tokens") or 0) - cached - written),
            "output_tokens": int(u.get("completion_tokens") or 0),
            "cache_creation_input_tokens": written, "cache_read_input_tokens": cached}


def _tool_input(arguments: Any) -> dict[str, Any]:
    if isinstance(arguments, dict):
        return arguments
    try:
        value = orjson.loads(arguments or "{}")
    except orjson.JSONDecodeError:
        value = None
    return value if isinstance(value, dict) else {}


def translate_response(resp: dict[str, Any], req: MessagesRequest) -> dict[str, Any]:
    """The pipeline's ``chat.completion`` → an Anthropic ``Message`` (its ``id`` is the generation's)."""
    choice = (resp.get("choices") or [{}])[0]
    msg = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    if req.thinking and msg.get("reasoning"):
        content.append({"type": "thinking", "thinking": msg["reasoning"], "signature": ""})
    if msg.get("content"):
        content.append({"type": "text", "text": msg["content"]})
    for tc in msg.get("tool_calls") or ():
        fn = tc.get("function") or {}
        content.append({"type": "tool_use", "id": tc.get("id") or "", "name": fn.get("name") or "",
                        "input": _tool_input(fn.get("arguments"))})
    stop_reason, stop_sequence = _stop(choice.get("finish_reason") or "stop", choice.get("native_finish_reason"), req)
    return {"id": resp["id"], "type": "message", "role": "assistant", "model": resp["model"], "content": content,
            "stop_reason": stop_reason, "stop_sequence": stop_sequence, "usage": _usage(resp.get("usage"))}


def sse_event(obj: dict[str, Any]) -> bytes:
    """One Anthropic stream event: ``event: <type>`` and its JSON (the SDK reads the event line)."""
    return b"event: " + obj["type"].encode() + b"\ndata: " + orjson.dumps(obj) + b"\n\n"


class StreamTranslator:
    """The pipeline's ``chat.completion.chunk`` objects → Anthropic stream events (as SSE bytes).

    ``message_start`` (then a ``ping``) at the first chunk; a content block per run of text, reasoning (only with
    thinking on) or tool call, each opened by ``content_block_start`` and closed by ``content_block_stop``;
    ``message_delta`` (stop reason and the final usage) and ``message_stop`` at the pipeline's usage chunk, which
    comes last. An error chunk becomes an ``error`` event, the end of the stream for the client.
    """

    def __init__(self, req: MessagesRequest):
        self.req = req
        self.started = False
        self.ended = False  # message_stop or error sent: nothing more goes out
        self.block: tuple[str, int] | None = None  # the open block: (kind, tool index or -1)
        self.index = -1  # the open (or last) block's index
        self.tool_blocks: dict[int, int] = {}  # tool call index → block index
        self.finish: str | None = None
        self.native: str | None = None

    def feed(self, chunk: dict[str, Any]) -> list[bytes]:
        if self.ended:
            return []
        out: list[bytes] = []
        if chunk.get("error") is not None:
            err = chunk["error"]
            status = err.get("code") if _int(err.get("code")) else 502
            self.ended = True
            return [sse_event(error_body(GatewayError(status, str(err.get("message") or "upstream error"))))]
        if not self.started:
            self.started = True
            out.append(sse_event({"type": "message_start", "message": {
                "id": chunk.get("id") or "", "type": "message", "role": "assistant", "model": chunk.get("model") or "",
                "content": [], "stop_reason": None, "stop_sequence": None,
                "usage": {"input_tokens": 0, "output_tokens": 0}}}))
            out.append(sse_event({"type": "ping"}))
        for c in chunk.get("choices") or ():
            delta = c.get("delta") or {}
            if self.req.thinking and delta.get("reasoning"):
                out += self._open("thinking", {"type": "thinking", "thinking": "", "signature": ""})
                out.append(self._delta({"type": "thinking_delta", "thinking": delta["reasoning"]}))
            if delta.get("content"):
                out += self._open("text", {"type": "text", "text": ""})
                out.append(self._delta({"type": "text_delta", "text": delta["content"]}))
            for tc in delta.get("tool_calls") or ():
                out += self._tool(tc)
            if c.get("finish_reason"):
                self.finish, self.native = c["finish_reason"], c.get("native_finish_reason")
        if not chunk.get("choices") and chunk.get("usage") is not None:  # the last chunk
            out += self._close()
            stop_reason, stop_sequence = _stop(self.finish or "stop", self.native, self.req)
            out.append(sse_event({"type": "message_delta",
                                  "delta": {"stop_reason": stop_reason, "stop_sequence": stop_sequence},
                                  "usage": _usage(chunk["usage"])}))
            out.append(sse_event({"type": "message_stop"}))
            self.ended = True
        return out

    def _tool(self, tc: dict[str, Any]) -> list[bytes]:
        out: list[bytes] = []
        n = tc.get("index", 0) if _int(tc.get("index")) else 0
        fn = tc.get("function") or {}
        if n not in self.tool_blocks:
            out += self._open("tool", {"type": "tool_use", "id": tc.get("id") or "", "name": fn.get("name") or "",
                                       "input": {}}, n)
            self.tool_blocks[n] = self.index
        if fn.get("arguments"):
            out.append(sse_event({"type": "content_block_delta", "index": self.tool_blocks[n],
                                  "delta": {"type": "input_json_delta", "partial_json": fn["arguments"]}}))
        return out

    def _open(self, kind: str, block: dict[str, Any], tool: int = -1) -> list[bytes]:
        if self.block == (kind, tool):
            return []
        out = self._close()
        self.index += 1
        self.block = (kind, tool)
        out.append(sse_event({"type": "content_block_start", "index": self.index, "content_block": block}))
        return out

    def _close(self) -> list[bytes]:
        if self.block is None:
            return []
        self.block = None
        return [sse_event({"type": "content_block_stop", "index": self.index})]

    def _delta(self, delta: dict[str, Any]) -> bytes:
        return sse_event({"type": "content_block_delta", "index": self.index, "delta": delta})


async def relay(frames: AsyncIterator[bytes], req: MessagesRequest) -> AsyncIterator[bytes]:
    """The pipeline's SSE frames → Anthropic's. Keep-alive comments pass as they are; every frame is read to the
    end (the pipeline records the generation with its last frame), whatever was sent to the client before."""
    parser = SSEParser()
    translator = StreamTranslator(req)
    try:
        async for raw in frames:
            if raw == SSE_PROCESSING:
                if not translator.ended:
                    yield raw
                continue
            out: list[bytes] = []
            for event in parser.feed(raw):
                if event.data and event.data != "[DONE]":
                    out += translator.feed(orjson.loads(event.data))
            if out:
                yield b"".join(out)
    finally:
        aclose = getattr(frames, "aclose", None)
        if aclose is not None:
            await aclose()
