"""Fake upstreams for the non-OpenAI wire formats (and the OpenAI-compatible families' quirks), as pure handlers.

Each handler takes ``(path, headers, body, query)`` and returns a :class:`FakeReply` in the provider's real wire
format (checked against the official SDKs' types in ``tests/providers/test_fake_providers.py``). Replies echo the
request so tests can check a translation round trip:

* plain text: ``You said: <last user text>`` (``+ " [N image(s)]"``, ``+ " (system: <system>)"``);
* after a tool result: ``The tool said: <result>``;
* with tools (and tool choice not "none") on a user turn: a call of the first (or the forced) tool with
  ``{"query": <last user text>}`` (two calls when the text contains "twice");
* JSON mode: ``{"echo": <last user text>}``;
* trigger words in the last user text: ``FAIL <status>`` answers that status with the family's error body,
  ``STREAM_ERROR`` puts the family's in-stream error after the first text event, ``BLOCK`` (Gemini) blocks the
  prompt, ``CACHED <n>`` / ``CACHE_WRITE <n>`` report n prompt tokens read from / written to the prompt cache
  in the family's usage fields.

Register with ``FakeUpstream(HANDLERS)``; knobs (latency, queued failures, broken streams) are the server's.
"""

from __future__ import annotations

import base64
import re
from typing import Any

import orjson

from .fake_upstream import FakeReply, cache_tokens, count_tokens, noted, openai_chat

_FAIL = re.compile(r"\bFAIL (\d{3})\b")

# ------------------------------------------------------------------------------------------------ error bodies

_ANTHROPIC_ERRORS = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                     404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 500: "api_error",
                     529: "overloaded_error"}
_GOOGLE_STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
                  429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}


def anthropic_error(status: int, message: str | None = None) -> dict[str, Any]:
    kind = _ANTHROPIC_ERRORS.get(status, "api_error")
    return {"type": "error", "error": {"type": kind, "message": message or kind.replace("_", " ")},
            "request_id": "req_fake0000000000000000000"}


def google_error(status: int, message: str | None = None) -> dict[str, Any]:
    code = _GOOGLE_STATUS.get(status, "INTERNAL")
    return {"error": {"code": status, "message": message or f"fake {code.lower()}", "status": code}}


def cohere_error(status: int, message: str | None = None) -> dict[str, Any]:
    return {"message": message or f"fake cohere error {status}"}


def mistral_error(status: int, message: str | None = None) -> dict[str, Any]:
    return {"object": "error", "message": message or f"fake mistral error {status}", "type": "invalid_request_error",
            "param": None, "code": None}


ERROR_BODIES = {"anthropic": anthropic_error, "google": google_error, "cohere": cohere_error,
                "mistral": mistral_error}


def _sse(obj: Any, event: str | None = None, crlf: bool = False) -> bytes:
    nl = b"\r\n" if crlf else b"\n"
    head = b"event: " + event.encode() + nl if event else b""
    return head + b"data: " + orjson.dumps(obj) + nl + nl


def _words(text: str) -> list[str]:
    words = text.split(" ")
    return [w if i == 0 else " " + w for i, w in enumerate(words)]


def _reply_text(user: str, system: str, images: int, json_mode: bool) -> str:
    if json_mode:
        return orjson.dumps({"echo": user}).decode()
    out = noted(f"You said: {user}")
    if images:
        out += f" [{images} image(s)]"
    if system:
        out += f" (system: {system})"
    return out


def _calls(names: list[str], forced: str | None, user: str) -> list[tuple[str, dict[str, Any]]]:
    name = forced or names[0]
    n = 2 if "twice" in user else 1
    return [(name, {"query": user if i == 0 else f"{user} #{i + 1}"}) for i in range(n)]


# --------------------------------------------------------------------------------------------------- Anthropic

def anthropic_messages(path: str, headers: dict[str, str], body: Any, query: dict[str, str]) -> FakeReply:
    """Anthropic's ``POST /v1/messages``: a ``Message`` or its stream of events."""
    if path != "/v1/messages":
        return FakeReply(404, anthropic_error(404, f"Not found: {path}"))
    if not headers.get("x-api-key"):
        return FakeReply(401, anthropic_error(401, "x-api-key header is required"))
    if not headers.get("anthropic-version"):
        return FakeReply(400, anthropic_error(400, "anthropic-version: header is required"))
    if not isinstance(body.get("max_tokens"), int):
        return FakeReply(400, anthropic_error(400, "max_tokens: Field required"))
    messages = body.get("messages") or []
    if not messages:
        return FakeReply(400, anthropic_error(400, "messages: at least one message is required"))
    last = messages[-1]
    blocks = last["content"] if isinstance(last["content"], list) else [{"type": "text", "text": last["content"]}]
    user = " ".join(b.get("text", "") for b in blocks if b.get("type") == "text")
    images = sum(1 for b in blocks if b.get("type") == "image")
    results = [b for b in blocks if b.get("type") == "tool_result"]
    system = body.get("system") or ""
    if isinstance(system, list):
        system = " ".join(b.get("text", "") for b in system)
    if m := _FAIL.search(user):
        status = int(m.group(1))
        return FakeReply(status, anthropic_error(status))
    if any(not s.strip() for s in body.get("stop_sequences") or []):
        return FakeReply(400, anthropic_error(400, "stop_sequences: each stop sequence must contain non-whitespace"))
    tools = body.get("tools") or []
    choice = body.get("tool_choice") or {"type": "auto"}
    content: list[dict[str, Any]] = []
    if results:
        r = results[0].get("content")
        r = r if isinstance(r, str) else " ".join(b.get("text", "") for b in r or [])
        text = noted(f"The tool said: {r}")
        if choice.get("type") == "any":  # a tool must be called: answer through the last one
            text = ""
            content.append({"type": "tool_use", "id": f"toolu_fakeans{len(r):04d}", "name": tools[-1]["name"],
                            "input": {"echo": r}})
    elif tools and last["role"] == "user" and choice.get("type") != "none":
        forced = choice.get("name") if choice.get("type") == "tool" else None
        text = "Let me use a tool." if not forced else ""
        for i, (name, args) in enumerate(_calls([t["name"] for t in tools], forced, user)):
            content.append({"type": "tool_use", "id": f"toolu_fake{i:02d}{len(user):04d}", "name": name,
                            "input": args if forced != "metarouter_json_output" else {"echo": user}})
    else:
        json_mode = "JSON" in system
        text = _reply_text(user, system if not json_mode else "", images, json_mode)
    stop_reason, stop_seq = ("tool_use" if content else "end_turn"), None
    for s in body.get("stop_sequences") or []:
        if s in text:
            text, stop_reason, stop_seq = text[: text.index(s)], "stop_sequence", s
    if count_tokens(text) > body["max_tokens"]:
        text, stop_reason = text[: body["max_tokens"] * 4], "max_tokens"
    if text:
        content.insert(0, {"type": "text", "text": text})
    if (body.get("thinking") or {}).get("type") == "enabled":  # extended thinking comes first, signed
        content.insert(0, {"type": "thinking", "thinking": f"Thinking about: {user}", "signature": "ZmFrZQ=="})
    prompt = count_tokens(orjson.dumps(messages).decode() + str(system))
    out_tokens = count_tokens(orjson.dumps(content).decode())
    msg_id = f"msg_fake{prompt:06d}{out_tokens:06d}"
    read, written = cache_tokens(user, prompt)  # Anthropic's input_tokens leave the cached ones out
    usage = {"input_tokens": prompt - read - written, "output_tokens": out_tokens,
             "cache_creation_input_tokens": written, "cache_read_input_tokens": read}
    if not body.get("stream"):
        return FakeReply(200, {"id": msg_id, "type": "message", "role": "assistant", "model": body.get("model"),
                               "content": content, "stop_reason": stop_reason, "stop_sequence": stop_seq,
                               "usage": usage})
    frames = [_sse({"type": "message_start", "message": {
        "id": msg_id, "type": "message", "role": "assistant", "model": body.get("model"), "content": [],
        "stop_reason": None, "stop_sequence": None, "usage": {**usage, "output_tokens": 1}}}, "message_start")]
    frames.append(_sse({"type": "ping"}, "ping"))
    for i, block in enumerate(content):
        if block["type"] == "text":
            frames.append(_sse({"type": "content_block_start", "index": i,
                                "content_block": {"type": "text", "text": ""}}, "content_block_start"))
            for j, w in enumerate(_words(block["text"])):
                frames.append(_sse({"type": "content_block_delta", "index": i,
                                    "delta": {"type": "text_delta", "text": w}}, "content_block_delta"))
                if j == 0 and "STREAM_ERROR" in user:
                    frames.append(_sse({"type": "error", "error": {"type": "overloaded_error",
                                                                   "message": "Overloaded"}}, "error"))
                    return FakeReply(200, sse=frames)
        elif block["type"] == "thinking":
            frames.append(_sse({"type": "content_block_start", "index": i, "content_block": {
                "type": "thinking", "thinking": "", "signature": ""}}, "content_block_start"))
            for w in _words(block["thinking"]):
                frames.append(_sse({"type": "content_block_delta", "index": i,
                                    "delta": {"type": "thinking_delta", "thinking": w}}, "content_block_delta"))
            frames.append(_sse({"type": "content_block_delta", "index": i, "delta": {
                "type": "signature_delta", "signature": block["signature"]}}, "content_block_delta"))
        else:
            frames.append(_sse({"type": "content_block_start", "index": i, "content_block": {
                "type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}}, "content_block_start"))
            args = orjson.dumps(block["input"]).decode()
            for k in range(0, len(args), 7):
                frames.append(_sse({"type": "content_block_delta", "index": i, "delta": {
                    "type": "input_json_delta", "partial_json": args[k : k + 7]}}, "content_block_delta"))
        frames.append(_sse({"type": "content_block_stop", "index": i}, "content_block_stop"))
    frames.append(_sse({"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": stop_seq},
                        "usage": {"output_tokens": out_tokens}}, "message_delta"))
    frames.append(_sse({"type": "message_stop"}, "message_stop"))
    return FakeReply(200, sse=frames)


# ------------------------------------------------------------------------------------------------------ Gemini

_GEMINI_PATH = re.compile(r"^/v1beta/models/(?P<model>[^:/]+):(?P<method>generateContent|streamGenerateContent)$")


def gemini_generate(path: str, headers: dict[str, str], body: Any, query: dict[str, str]) -> FakeReply:
    """Google's ``models/{model}:generateContent`` and ``:streamGenerateContent?alt=sse``."""
    m = _GEMINI_PATH.match(path)
    if not m:
        return FakeReply(404, google_error(404, f"Not found: {path}"))
    if not headers.get("x-goog-api-key") and not query.get("key"):
        return FakeReply(403, google_error(403, "Method doesn't allow unregistered callers"))
    contents = body.get("contents") or []
    if not contents:
        return FakeReply(400, google_error(400, "* GenerateContentRequest.contents: contents is not specified\n"))
    last = contents[-1]
    parts = last.get("parts") or []
    user = " ".join(p["text"] for p in parts if "text" in p)
    images = sum(1 for p in parts if "inlineData" in p or "fileData" in p)
    responses = [p["functionResponse"] for p in parts if "functionResponse" in p]
    for p in parts:  # fileData names Files API or Cloud Storage files, not web pages
        uri = (p.get("fileData") or {}).get("fileUri", "gs://")
        if not uri.startswith(("gs://", "https://generativelanguage.googleapis.com/")):
            return FakeReply(400, google_error(400, f"Invalid or unsupported file uri: {uri}"))
    system = " ".join(p.get("text", "") for p in (body.get("systemInstruction") or {}).get("parts") or [])
    if fm := _FAIL.search(user):
        status = int(fm.group(1))
        return FakeReply(status, google_error(status))
    model = m.group("model")
    prompt = count_tokens(orjson.dumps(contents).decode() + system)
    stream = m.group("method") == "streamGenerateContent"
    if stream and query.get("alt") != "sse":
        return FakeReply(400, google_error(400, "this fake only streams with alt=sse"))
    if "BLOCK" in user:
        resp = {"promptFeedback": {"blockReason": "SAFETY", "safetyRatings": [
            {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH", "blocked": True}]},
            "usageMetadata": {"promptTokenCount": prompt, "totalTokenCount": prompt}, "modelVersion": model}
        return FakeReply(200, sse=[_sse(resp, crlf=True)]) if stream else FakeReply(200, resp)
    gen = body.get("generationConfig") or {}
    fcc = (body.get("toolConfig") or {}).get("functionCallingConfig") or {}
    decls = [d for t in body.get("tools") or [] for d in t.get("functionDeclarations") or []]
    out_parts: list[dict[str, Any]] = []
    if responses:
        text = noted(f"The tool said: {orjson.dumps(responses[0].get('response')).decode()}")
    elif decls and last.get("role") == "user" and fcc.get("mode") != "NONE":
        allowed = fcc.get("allowedFunctionNames") or []
        text = ""
        out_parts = [{"functionCall": {"name": n, "args": a}}
                     for n, a in _calls([d["name"] for d in decls], allowed[0] if allowed else None, user)]
    else:
        text = _reply_text(user, system, images, gen.get("responseMimeType") == "application/json")
    finish = "STOP"
    for s in gen.get("stopSequences") or []:
        if s in text:
            text = text[: text.index(s)]
    if gen.get("maxOutputTokens") and count_tokens(text) > gen["maxOutputTokens"]:
        text, finish = text[: gen["maxOutputTokens"] * 4], "MAX_TOKENS"
    out_tokens = count_tokens(text + orjson.dumps(out_parts).decode())
    usage = {"promptTokenCount": prompt, "candidatesTokenCount": out_tokens, "totalTokenCount": prompt + out_tokens}
    if cached := cache_tokens(user, prompt)[0]:
        usage["cachedContentTokenCount"] = cached
    thinking = gen.get("thinkingConfig") or {}
    thought = [{"text": f"Thinking about: {user}", "thought": True}] if thinking.get("includeThoughts") else []
    if thought or thinking.get("thinkingBudget", 0) != 0:
        usage["thoughtsTokenCount"] = count_tokens(f"Thinking about: {user}")
        usage["totalTokenCount"] += usage["thoughtsTokenCount"]
    if not stream:
        all_parts = thought + ([{"text": text}] if text else []) + out_parts
        return FakeReply(200, {"candidates": [{"content": {"parts": all_parts, "role": "model"},
                                               "finishReason": finish, "index": 0}],
                               "usageMetadata": usage, "modelVersion": model})
    frames = [_sse({"candidates": [{"content": {"parts": thought, "role": "model"}, "index": 0}],
                    "modelVersion": model}, crlf=True)] if thought else []
    words = _words(text) if text else []
    for i, w in enumerate(words):
        frames.append(_sse({"candidates": [{"content": {"parts": [{"text": w}], "role": "model"}, "index": 0}],
                            "usageMetadata": {"promptTokenCount": prompt, "totalTokenCount": prompt},
                            "modelVersion": model}, crlf=True))
        if i == 0 and "STREAM_ERROR" in user:
            frames.append(_sse({"error": {"code": 503, "message": "The model is overloaded.",
                                          "status": "UNAVAILABLE"}}, crlf=True))
            return FakeReply(200, sse=frames)
    frames.append(_sse({"candidates": [{"content": {"parts": out_parts or [{"text": ""}], "role": "model"},
                                        "finishReason": finish, "index": 0}],
                        "usageMetadata": usage, "modelVersion": model}, crlf=True))
    return FakeReply(200, sse=frames)


# ------------------------------------------------------------------------------------------------------ Cohere

def cohere_chat(path: str, headers: dict[str, str], body: Any, query: dict[str, str]) -> FakeReply:
    """Cohere's ``POST /v2/chat``: a ``V2ChatResponse`` or its stream of typed events."""
    if path != "/v2/chat":
        return FakeReply(404, cohere_error(404, f"Not found: {path}"))
    if not headers.get("authorization", "").startswith("Bearer "):
        return FakeReply(401, cohere_error(401, "no api key supplied"))
    messages = body.get("messages") or []
    if not messages:
        return FakeReply(400, cohere_error(400, "invalid request: messages must not be empty"))
    last = messages[-1]
    content = last.get("content")
    if isinstance(content, list):
        user = " ".join(p.get("text", "") for p in content if p.get("type") == "text")
        images = sum(1 for p in content if p.get("type") == "image_url")
    else:
        user, images = content or "", 0
    system = " ".join(m["content"] for m in messages if m["role"] == "system" and isinstance(m.get("content"), str))
    if m := _FAIL.search(user if last["role"] == "user" else ""):
        status = int(m.group(1))
        return FakeReply(status, cohere_error(status))
    tools = body.get("tools") or []
    calls: list[dict[str, Any]] = []
    plan = ""
    if last["role"] == "tool":
        first_result = len(messages) - 1
        while first_result > 0 and messages[first_result - 1]["role"] == "tool":
            first_result -= 1
        c = messages[first_result].get("content")
        r = c if isinstance(c, str) else orjson.dumps(
            [p.get("document", {}).get("data") if p.get("type") == "document" else p.get("text") for p in c]).decode()
        text = noted(f"The tool said: {r}")
    elif tools and body.get("tool_choice") != "NONE":
        text, plan = "", f"I will use {tools[0]['function']['name']}."
        for i, (name, args) in enumerate(_calls([t["function"]["name"] for t in tools], None, user)):
            calls.append({"id": f"{name}_fake{i}{len(user):04d}", "type": "function",
                          "function": {"name": name, "arguments": orjson.dumps(args).decode()}})
    else:
        text = _reply_text(user, system, images, (body.get("response_format") or {}).get("type") == "json_object")
    finish = "TOOL_CALL" if calls else "COMPLETE"
    for s in body.get("stop_sequences") or []:
        if s in text:
            text, finish = text[: text.index(s)], "STOP_SEQUENCE"
    if body.get("max_tokens") and count_tokens(text) > body["max_tokens"]:
        text, finish = text[: body["max_tokens"] * 4], "MAX_TOKENS"
    prompt = count_tokens(orjson.dumps(messages).decode())
    out_tokens = count_tokens(text + plan + orjson.dumps(calls).decode())
    usage = {"billed_units": {"input_tokens": prompt, "output_tokens": out_tokens},
             "tokens": {"input_tokens": prompt + 64, "output_tokens": out_tokens}}
    rid = f"fake-{prompt:08d}-{out_tokens:04d}"
    if not body.get("stream"):
        message: dict[str, Any] = {"role": "assistant"}
        if text:
            message["content"] = [{"type": "text", "text": text}]
        if calls:
            message["tool_plan"], message["tool_calls"] = plan, calls
        return FakeReply(200, {"id": rid, "finish_reason": finish, "message": message, "usage": usage})
    frames = [_sse({"id": rid, "type": "message-start", "delta": {"message": {"role": "assistant"}}},
                   "message-start")]
    if calls:
        for w in _words(plan):
            frames.append(_sse({"type": "tool-plan-delta", "delta": {"message": {"tool_plan": w}}}, "tool-plan-delta"))
        for i, c in enumerate(calls):
            frames.append(_sse({"type": "tool-call-start", "index": i, "delta": {"message": {"tool_calls": {
                "id": c["id"], "type": "function", "function": {"name": c["function"]["name"], "arguments": ""}}}}},
                "tool-call-start"))
            args = c["function"]["arguments"]
            for k in range(0, len(args), 6):
                frames.append(_sse({"type": "tool-call-delta", "index": i, "delta": {"message": {"tool_calls": {
                    "function": {"arguments": args[k : k + 6]}}}}}, "tool-call-delta"))
            frames.append(_sse({"type": "tool-call-end", "index": i}, "tool-call-end"))
    else:
        frames.append(_sse({"type": "content-start", "index": 0, "delta": {"message": {"content": {
            "type": "text", "text": ""}}}}, "content-start"))
        for j, w in enumerate(_words(text)):
            frames.append(_sse({"type": "content-delta", "index": 0, "delta": {"message": {"content": {"text": w}}}},
                               "content-delta"))
            if j == 0 and "STREAM_ERROR" in user:
                frames.append(_sse({"type": "message-end", "delta": {"finish_reason": "ERROR",
                                                                     "error": "internal server error"}},
                                   "message-end"))
                return FakeReply(200, sse=frames)
        frames.append(_sse({"type": "content-end", "index": 0}, "content-end"))
    frames.append(_sse({"type": "message-end", "delta": {"finish_reason": finish, "usage": usage}}, "message-end"))
    frames.append(b"data: [DONE]\n\n")
    return FakeReply(200, sse=frames)


# --------------------------------------------------------------------------------- OpenAI-compatible quirks

def _rewrite(reply: FakeReply, fix: Any) -> FakeReply:
    """Apply ``fix`` to the JSON body, or to each chunk of an SSE reply."""
    if reply.sse is None:
        if reply.status == 200 and isinstance(reply.json, dict):
            fix(reply.json, False)
        return reply
    frames = []
    for f in reply.sse:
        if f.startswith(b"data: {"):
            obj = orjson.loads(f[6:])
            fix(obj, True)
            f = b"data: " + orjson.dumps(obj) + b"\n\n"
        frames.append(f)
    reply.sse = frames
    return reply


def deepseek_chat(path: str, headers: dict[str, str], body: Any, query: dict[str, str]) -> FakeReply:
    """DeepSeek: OpenAI's format; the reasoner adds ``reasoning_content`` and refuses it (and tools) as input."""
    reasoner = body.get("model") == "deepseek-reasoner"
    if reasoner:
        for m in body.get("messages") or []:
            if "reasoning_content" in m:
                return FakeReply(400, {"error": {"message": "The reasoning_content is an intermediate result for "
                                                 "display purposes only and will not be included in the context "
                                                 "for inference.", "type": "invalid_request_error",
                                                 "param": None, "code": "invalid_request_error"}})
        if body.get("tools"):
            return FakeReply(400, {"error": {"message": "deepseek-reasoner does not support Function Calling",
                                             "type": "invalid_request_error", "param": None, "code": None}})
    thought = "Let me think about it."

    def fix(obj: dict[str, Any], chunk: bool) -> None:
        for c in (obj.get("choices") or []) if reasoner else []:
            if not chunk:
                c["message"]["reasoning_content"] = thought
            elif c["delta"].get("role"):
                c["delta"]["reasoning_content"] = thought
        if usage := obj.get("usage"):  # DeepSeek's own names for its prompt cache (its documented usage object)
            hit = usage.pop("prompt_tokens_details")["cached_tokens"]
            usage.update(prompt_cache_hit_tokens=hit, prompt_cache_miss_tokens=usage["prompt_tokens"] - hit)
            usage["completion_tokens_details"] = {"reasoning_tokens": count_tokens(thought) if reasoner else 0}

    return _rewrite(openai_chat(path, headers, body, query), fix)


_MISTRAL_ID = re.compile(r"^[a-zA-Z0-9]{9}$")
#: the request fields Mistral's chat completions take (``mistralai`` ChatCompletionRequest); the API answers 422
#: ``extra_forbidden`` to any other, top level or on a message
_MISTRAL_FIELDS = frozenset({
    "model", "messages", "temperature", "top_p", "max_tokens", "stream", "stop", "random_seed", "metadata",
    "response_format", "tools", "tool_choice", "presence_penalty", "frequency_penalty", "min_tokens",
    "repetition_penalty", "top_k", "logprobs", "top_logprobs", "prompt_logprobs", "top_prompt_logprobs", "n",
    "prediction", "parallel_tool_calls", "reasoning_effort", "prompt_mode", "guardrails", "prompt_cache_key",
    "service_tier", "safe_prompt",
})
_MISTRAL_MESSAGE_FIELDS = {
    "system": {"role", "content"}, "user": {"role", "content"},
    "assistant": {"role", "content", "tool_calls", "prefix"}, "tool": {"role", "content", "tool_call_id", "name"},
}


def _mistral_extra_forbidden(loc: list[Any], value: Any) -> FakeReply:
    """Mistral's 422 for an unknown field: FastAPI's validation-error shape."""
    return FakeReply(422, {"object": "error", "message": {"detail": [{
        "type": "extra_forbidden", "loc": ["body", *loc], "msg": "Extra inputs are not permitted", "input": value}]},
        "type": "invalid_request_message_error", "param": None, "code": None})


def mistral_chat(path: str, headers: dict[str, str], body: Any, query: dict[str, str]) -> FakeReply:
    """Mistral: OpenAI's format, but unknown fields are rejected, tool-call ids are 9 alphanumerics, and a stream
    carries its usage on the last chunk without being asked."""
    extra = sorted(set(body) - _MISTRAL_FIELDS)
    if extra:
        return _mistral_extra_forbidden([extra[0]], body[extra[0]])
    for i, m in enumerate(body.get("messages") or []):
        allowed = _MISTRAL_MESSAGE_FIELDS.get(m.get("role"))
        if allowed is None:
            return FakeReply(422, mistral_error(422, f"messages.{i}.role: Input tag {m.get('role')!r} does not match "
                                                     "any of the expected tags"))
        extra = sorted(set(m) - allowed)
        if extra:
            return _mistral_extra_forbidden(["messages", i, m["role"], extra[0]], m[extra[0]])
        ids = [tc.get("id") for tc in m.get("tool_calls") or []] + (
            [m["tool_call_id"]] if m.get("role") == "tool" else [])
        if any(not _MISTRAL_ID.match(str(i or "")) for i in ids):
            return FakeReply(422, mistral_error(
                422, "Tool call id has to be a string of length 9 containing only a-z, A-Z and 0-9"))
    if body.get("tool_choice") == "required":
        return FakeReply(422, mistral_error(422, "tool_choice: Input should be 'auto', 'none' or 'any'"))
    last = body["messages"][-1] if body.get("messages") else {}
    if last.get("role") == "user" and (m := _FAIL.search(str(last.get("content")))):
        return FakeReply(int(m.group(1)), mistral_error(int(m.group(1))))

    def fix(obj: dict[str, Any], chunk: bool) -> None:
        obj.pop("system_fingerprint", None)  # Mistral's ChatCompletionResponse has neither
        obj.pop("service_tier", None)
        for c in obj.get("choices") or []:
            for i, tc in enumerate((c.get("delta") if chunk else c.get("message", {})).get("tool_calls") or []):
                if "id" in tc:
                    tc["id"] = f"FakeId{tc.get('index', i):03d}"
            (c.get("delta") if chunk else c.get("message", {})).pop("refusal", None)  # not in Mistral's format

    reply = _rewrite(openai_chat(path, headers, {**body, "stream_options": {"include_usage": True}}, query), fix)
    if reply.sse is not None:  # Mistral's usage rides on the chunk with the finish reason, not a chunk of its own
        usage_frame, done = reply.sse[-2], reply.sse[-1]
        finish = orjson.loads(reply.sse[-3][6:])
        finish["usage"] = orjson.loads(usage_frame[6:])["usage"]
        reply.sse = [*reply.sse[:-3], b"data: " + orjson.dumps(finish) + b"\n\n", done]
    return reply


# ------------------------------------------------------------------------------------------------- files

#: a 1×1 PNG, served as ``/files/pixel.png`` (and under any other ``.png``/``.jpg`` name)
PIXEL_PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==")


def files(path: str, headers: dict[str, str], body: Any, query: dict[str, str]) -> FakeReply:
    """A web server for image URLs: ``/files/<name>.png|.jpg`` a small image, ``/files/page.html`` not an image,
    ``/files/big.png`` an image of ``?bytes=N`` bytes, ``/files/moved.png`` a redirect to ``pixel.png``."""
    name = path.rsplit("/", 1)[-1]
    if name == "moved.png":
        return FakeReply(302, raw=b"", headers={"Location": "pixel.png"})
    if name == "page.html":
        return FakeReply(200, raw=b"<html>not an image</html>", headers={"Content-Type": "text/html"})
    if name == "big.png":
        return FakeReply(200, raw=PIXEL_PNG + b"\0" * int(query.get("bytes", 1 << 20)),
                         headers={"Content-Type": "image/png"})
    if name.endswith((".png", ".jpg")):
        return FakeReply(200, raw=PIXEL_PNG, headers={"Content-Type": "image/png" if name.endswith(".png")
                                                      else "image/jpeg"})
    return FakeReply(404, raw=b"not found", headers={"Content-Type": "text/plain"})


HANDLERS = {
    "anthropic": anthropic_messages,
    "google": gemini_generate,
    "cohere": cohere_chat,
    "deepseek": deepseek_chat,
    "mistral": mistral_chat,
    "files": files,
}
