"""Google Gemini API (``models/{model}:generateContent``, ``:streamGenerateContent?alt=sse``) ↔ OpenAI.

Gemini speaks in ``contents`` of ``parts`` with roles ``user``/``model``; the system prompt is
``systemInstruction``; sampling lives in ``generationConfig``; tools are ``functionDeclarations`` whose schemas
are an OpenAPI 3.0 subset; function calls carry no id (older models) and function results are matched by
*name*. A stream is a sequence of partial ``GenerateContentResponse`` objects, each function call arriving whole.
"""

from __future__ import annotations

from typing import Any

import orjson

from ..catalog import Model
from ..errors import GatewayError, upstream_status_to_gateway
from .base import ProviderConfig, SSEEvent, UpstreamRequest
from .common import (
    Param,
    Reasoning,
    BaseAdapter,
    apply_params,
    content_parts,
    content_text,
    dumps,
    endpoint,
    error_status_for_type,
    excludes_reasoning,
    finish_chunk,
    image_of,
    json_body,
    parse_arguments,
    reasoning_of,
    role_chunk,
    stable_id,
    stop_list,
    text_chunk,
    tool_name_map,
    usage,
)

FINISH_REASONS = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
    "LANGUAGE": "stop",
    "OTHER": "stop",
    "FINISH_REASON_UNSPECIFIED": "stop",
    "MALFORMED_FUNCTION_CALL": "error",
    "UNEXPECTED_TOOL_CALL": "error",
}

HARM_CATEGORIES = (
    "HARM_CATEGORY_HARASSMENT", "HARM_CATEGORY_HATE_SPEECH", "HARM_CATEGORY_SEXUALLY_EXPLICIT",
    "HARM_CATEGORY_DANGEROUS_CONTENT",
)

PARAMS: tuple[Param, ...] = (
    Param("max_tokens", "generationConfig.maxOutputTokens", note="→ maxOutputTokens"),
    Param("max_completion_tokens", "generationConfig.maxOutputTokens", note="→ maxOutputTokens"),
    Param("temperature", "generationConfig.temperature"),
    Param("top_p", "generationConfig.topP"),
    Param("top_k", "generationConfig.topK"),
    Param("stop", "generationConfig.stopSequences", lambda s: (stop_list(s) or [])[:5] or None,
          note="at most 5"),
    Param("seed", "generationConfig.seed"),
    Param("presence_penalty", "generationConfig.presencePenalty"),
    Param("frequency_penalty", "generationConfig.frequencyPenalty"),
    Param("response_format", None, needs="json_output", note="→ responseMimeType/responseSchema"),
    Param("tools", None, needs="tools", note="→ functionDeclarations"),
    Param("tool_choice", None, needs="tools", note="→ toolConfig"),
    Param("reasoning", None, needs="reasoning_control", note="→ thinkingConfig"),
)

#: the largest thinking budget every Gemini thinking model takes (2.5 Flash; Pro takes up to 32768)
THINKING_BUDGET_MAX = 24576

#: image URIs Gemini's ``fileData`` takes: Cloud Storage and its own Files API (``…/v1beta/files/…``)
GEMINI_FILE_URLS = ("gs://", "https://generativelanguage.googleapis.com/")

#: JSON-schema keywords Gemini's OpenAPI subset understands (others are dropped, not rejected upstream)
_SCHEMA_KEYS = {
    "type", "format", "description", "nullable", "enum", "items", "properties", "required", "minItems",
    "maxItems", "minimum", "maximum", "propertyOrdering", "title", "minLength", "maxLength", "pattern",
    "example", "default", "minProperties", "maxProperties",
}


_NUMBER_KEYS = ("description", "enum", "format", "maximum", "minimum", "title")
#: the keywords that belong to each type, for splitting a union of types (google-genai's table)
_TYPE_KEYS: dict[str, tuple[str, ...]] = {
    "number": _NUMBER_KEYS, "integer": _NUMBER_KEYS,
    "string": ("description", "enum", "format", "maxLength", "minLength", "pattern", "title"),
    "object": ("anyOf", "description", "maxProperties", "minProperties", "properties", "required", "title"),
    "array": ("description", "items", "maxItems", "minItems", "title"),
    "boolean": ("description", "title"),
}


def to_gemini_schema(schema: Any) -> Any:
    """A JSON Schema → Gemini's ``Schema``, the way google-genai's ``Schema.from_json_schema`` converts one.

    Gemini's OpenAPI subset has no references: ``$ref`` into ``$defs``/``definitions`` is inlined (a recursive
    reference is cut to an empty schema, as google-genai does; only where it recurses) and ``allOf`` merged. Types
    are upper-case; ``["x", "null"]`` and ``anyOf``/``oneOf`` ``[X, {"type": "null"}]`` become X with ``nullable``;
    Gemini's ``enum`` holds strings of a STRING schema only, so an integer (or other non-string) enum keeps its type
    and becomes a range and a description of the allowed values. Keywords outside the subset are dropped.
    """
    if not isinstance(schema, dict):
        return schema
    return _convert(schema, schema, ())


def _resolve(ref: str, root: dict[str, Any]) -> dict[str, Any]:
    if not ref.startswith("#/"):
        raise GatewayError(400, f"JSON schema $ref {ref!r}: only references inside the schema (#/$defs/…) can be "
                                "sent to Gemini")
    node: Any = root
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        if not isinstance(node, dict) or part not in node:
            raise GatewayError(400, f"JSON schema $ref {ref!r} points to nothing in the schema")
        node = node[part]
    if not isinstance(node, dict):
        raise GatewayError(400, f"JSON schema $ref {ref!r} is not a schema")
    return node


def _deref(schema: dict[str, Any], root: dict[str, Any], seen: tuple[str, ...]) -> tuple[dict[str, Any] | None,
                                                                                          tuple[str, ...]]:
    """``schema`` with its ``$ref`` replaced by the target (the reference's siblings win), or None on a cycle."""
    while isinstance(schema.get("$ref"), str):
        ref = schema["$ref"]
        if ref in seen:
            return None, seen
        # pydantic's class and field titles go, as google-genai drops them from a resolved reference
        target = {k: v for k, v in _resolve(ref, root).items() if k != "title"}
        if isinstance(target.get("properties"), dict):
            target["properties"] = {k: {a: b for a, b in v.items() if a != "title"} if isinstance(v, dict) else v
                                    for k, v in target["properties"].items()}
        schema = {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
        seen = (*seen, ref)
    return schema, seen


def _is_null(schema: Any) -> bool:
    return isinstance(schema, dict) and schema.get("type") == "null" and len(schema) == 1


def _convert(schema: Any, root: dict[str, Any], seen: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(schema, dict):
        return {}
    resolved, seen = _deref(schema, root, seen)
    if resolved is None:
        return {}
    schema = resolved
    if isinstance(schema.get("allOf"), list):
        merged = {k: v for k, v in schema.items() if k != "allOf"}
        for part in schema["allOf"]:
            part, seen = _deref(part, root, seen) if isinstance(part, dict) else (None, seen)
            for key, value in (part or {}).items():
                if key == "properties" and isinstance(value, dict):
                    merged["properties"] = {**value, **(merged.get("properties") or {})}
                elif key == "required" and isinstance(value, list):
                    merged["required"] = list(dict.fromkeys([*(merged.get("required") or []), *value]))
                else:
                    merged.setdefault(key, value)
        schema = merged
    types = schema.get("type")
    if isinstance(types, list) and len([t for t in types if t != "null"]) > 1:
        # a union of types: one variant per type with the keywords of that type, as google-genai splits it
        out: dict[str, Any] = {"anyOf": [
            _convert({k: v for k, v in schema.items() if k in _TYPE_KEYS.get(t, ())} | {"type": t},
                     root, seen) for t in types if t != "null"]}
        if "null" in types:
            out["nullable"] = True
        if schema.get("description"):
            out["description"] = schema["description"]
        return out
    out = {}
    variants = schema.get("anyOf", schema.get("oneOf"))
    if isinstance(variants, list):
        options = [v for v in variants if not _is_null(v)]
        if len(options) < len(variants):
            out["nullable"] = True
        converted = [_convert(v, root, seen) for v in options]
        if len(converted) == 1:  # anyOf [X, null]: X, nullable
            out.update({k: v for k, v in converted[0].items() if k != "nullable" or v})
        elif converted:
            out["anyOf"] = converted
    for key, value in schema.items():
        if key == "const":
            out["enum"] = [value]
        elif key not in _SCHEMA_KEYS:
            continue
        elif key == "type":
            types = value if isinstance(value, list) else [value]
            non_null = [t for t in types if t != "null"]
            if len(non_null) < len(types):
                out["nullable"] = True
            if non_null:
                out["type"] = str(non_null[0]).upper()
        elif key == "properties" and isinstance(value, dict):
            out["properties"] = {k: _convert(v, root, seen) for k, v in value.items()}
        elif key == "items":
            items = _convert(value, root, seen)
            if items:  # (an empty one — a cut recursion — is left out, as google-genai does)
                out["items"] = items
        elif value is not None:  # (a null `default` says nothing)
            out[key] = value
    if "enum" in out:
        _fit_enum(out)
    return out


def _fit_enum(out: dict[str, Any]) -> None:
    values = out["enum"]
    if not isinstance(values, list):
        del out["enum"]
        return
    if None in values:
        out["nullable"] = True
        values = [v for v in values if v is not None]
    if all(isinstance(v, str) for v in values) and out.get("type", "STRING") == "STRING":
        out["type"], out["enum"] = "STRING", values
        return
    del out["enum"]  # Gemini refuses an enum on a non-string schema: say it in words, and bound numbers
    numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if numbers and len(numbers) == len(values):
        out.setdefault("type", "INTEGER" if all(isinstance(v, int) for v in numbers) else "NUMBER")
        out["minimum"], out["maximum"] = min(numbers), max(numbers)
    elif values and all(isinstance(v, bool) for v in values):
        out.setdefault("type", "BOOLEAN")
    allowed = "one of " + ", ".join(dumps(v) for v in values)
    out["description"] = f"{out['description']} ({allowed})" if out.get("description") else allowed.capitalize()


def _user_parts(content: Any) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = []
    for part in content_parts(content):
        kind = part.get("type")
        if kind in ("text", "input_text") and part.get("text"):
            parts.append({"text": part["text"]})
        elif kind == "image_url":
            img = image_of(part)
            assert img is not None
            if img.data is not None:
                parts.append({"inlineData": {"mimeType": img.mime_type, "data": img.data}})
            elif img.url and img.url.startswith(GEMINI_FILE_URLS):
                parts.append({"fileData": {"mimeType": img.mime_type, "fileUri": img.url}})
            else:  # (the pipeline fetches web images and sends them inline before this point)
                raise GatewayError(400, f"image_url {str(img.url)[:200]!r}: Gemini takes images inline (a base64 data "
                                        "URL) or as a Files API / gs:// URI", metadata={"param": "image_url"},
                                   retryable=False)
    return parts


def _function_response(message: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
    name = names.get(message.get("tool_call_id") or "") or message.get("name") or "function"
    text = content_text(message.get("content"))
    try:
        value = orjson.loads(text) if text else {}
    except orjson.JSONDecodeError:
        value = text
    response = value if isinstance(value, dict) else {"content": value}
    return {"functionResponse": {"name": name, "response": response}}


def translate_messages(messages: list[dict[str, Any]]) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """OpenAI messages → (``systemInstruction`` or None, ``contents`` with consecutive roles merged)."""
    names = tool_name_map(messages)
    system: list[dict[str, Any]] = []
    contents: list[dict[str, Any]] = []
    for m in messages:
        role = m.get("role")
        if role in ("system", "developer"):
            text = content_text(m.get("content"))
            if text:
                system.append({"text": text})
            continue
        if role == "user":
            native, parts = "user", _user_parts(m.get("content"))
        elif role == "assistant":
            native = "model"
            text = content_text(m.get("content"))
            parts = [{"text": text}] if text else []
            for tc in m.get("tool_calls") or []:
                fn = tc.get("function") or {}
                parts.append({"functionCall": {"name": fn.get("name") or "",
                                               "args": parse_arguments(fn.get("arguments"))}})
        elif role in ("tool", "function"):
            native, parts = "user", [_function_response(m, names)]
        else:
            raise GatewayError(400, f"unsupported message role {role!r}")
        if not parts:
            continue
        if contents and contents[-1]["role"] == native:
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": native, "parts": parts})
    if not contents:
        raise GatewayError(400, "the request has no user or assistant message")
    return ({"parts": system} if system else None), contents


def _tool_config(choice: Any) -> dict[str, Any] | None:
    if choice is None:
        return None
    if choice == "auto":
        return {"functionCallingConfig": {"mode": "AUTO"}}
    if choice == "none":
        return {"functionCallingConfig": {"mode": "NONE"}}
    if choice == "required":
        return {"functionCallingConfig": {"mode": "ANY"}}
    if isinstance(choice, dict) and (choice.get("function") or {}).get("name"):
        return {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": [choice["function"]["name"]]}}
    raise GatewayError(400, f"unsupported tool_choice {choice!r}")


def _thinking_config(body: dict[str, Any], reasoning: Reasoning, model: Model) -> dict[str, Any]:
    """``thinkingConfig``: a budget (0 turns thinking off, -1 lets the model decide), thoughts included unless the
    request excludes them."""
    if reasoning.off:
        return {"thinkingBudget": 0}
    if reasoning.effort is None and reasoning.max_tokens is None:
        budget = -1
    else:
        limit = body.get("max_completion_tokens") or body.get("max_tokens") or model.max_output()
        budget = reasoning.budget(limit, cap=THINKING_BUDGET_MAX)
    return {"thinkingBudget": budget, "includeThoughts": not excludes_reasoning(body)}


def _safety_settings(provider: ProviderConfig) -> list[dict[str, Any]] | None:
    """From the provider's config: ``safety_settings`` (a native list) or ``safety_threshold`` for all categories."""
    if provider.extra.get("safety_settings"):
        return list(provider.extra["safety_settings"])
    threshold = provider.extra.get("safety_threshold")
    if threshold:
        return [{"category": c, "threshold": str(threshold)} for c in HARM_CATEGORIES]
    return None


class GeminiAdapter(BaseAdapter):
    wire = "gemini"
    param_table = PARAMS
    #: fileData takes Files API and Cloud Storage URIs only: the pipeline inlines web images (gateway/images.py)
    inline_images_only = True

    def translate_body(self, body: dict[str, Any], model: Model, *, provider: ProviderConfig | None = None
                       ) -> dict[str, Any]:
        system, contents = translate_messages(body.get("messages") or [])
        out: dict[str, Any] = {"contents": contents}
        if system:
            out["systemInstruction"] = system
        apply_params(PARAMS, body, model, out)
        if model.json_output:
            rf = body.get("response_format") or {}
            if rf.get("type") in ("json_object", "json_schema"):
                out.setdefault("generationConfig", {})["responseMimeType"] = "application/json"
                schema = (rf.get("json_schema") or {}).get("schema")
                if rf.get("type") == "json_schema" and schema:
                    out["generationConfig"]["responseSchema"] = to_gemini_schema(schema)
        reasoning = reasoning_of(body) if model.reasoning_control else None
        if reasoning is not None:
            out.setdefault("generationConfig", {})["thinkingConfig"] = _thinking_config(body, reasoning, model)
        if model.tools and body.get("tools"):
            decls = []
            for t in body["tools"]:
                fn = t.get("function") or {}
                if t.get("type", "function") != "function" or not fn.get("name"):
                    continue
                decl: dict[str, Any] = {"name": fn["name"]}
                if fn.get("description"):
                    decl["description"] = fn["description"]
                params = fn.get("parameters")
                if params and (params.get("properties") or params.get("type") != "object"):
                    decl["parameters"] = to_gemini_schema(params)  # an empty object schema is rejected upstream
                decls.append(decl)
            if decls:
                out["tools"] = [{"functionDeclarations": decls}]
                tc = _tool_config(body.get("tool_choice"))
                if tc:
                    out["toolConfig"] = tc
        if provider is not None:
            safety = _safety_settings(provider)
            if safety:
                out["safetySettings"] = safety
        return out

    def build_request(
        self, body: dict[str, Any], model: Model, provider: ProviderConfig, *, stream: bool
    ) -> UpstreamRequest:
        headers = {"Content-Type": "application/json", **provider.headers}
        if provider.api_key:
            headers["x-goog-api-key"] = provider.api_key
        method = "streamGenerateContent?alt=sse" if stream else "generateContent"
        url = endpoint(provider.base_url, "v1beta", f"/models/{model.native_model}:{method}")
        if stream:
            headers["Accept"] = "text/event-stream"
        return UpstreamRequest("POST", url, headers, orjson.dumps(self.translate_body(body, model, provider=provider)))

    def parse_response(self, data: bytes) -> dict[str, Any]:
        resp = json_body(data, "google")
        if isinstance(resp.get("error"), dict):
            raise _error_from(resp["error"], 502)
        _raise_if_blocked(resp)
        candidates = resp.get("candidates") or [{}]
        choices = []
        for i, cand in enumerate(candidates):
            text, reasoning, calls = _parts(cand, 0)
            message: dict[str, Any] = {"role": "assistant", "content": "".join(text) if text or not calls else None}
            if calls:
                message["tool_calls"] = calls
            if reasoning:
                message["reasoning"] = "".join(reasoning)
            native = cand.get("finishReason")
            finish = _finish(native, bool(calls))
            choices.append({"index": cand.get("index", i), "message": message, "finish_reason": finish,
                            "native_finish_reason": native, "logprobs": None})
        return {"id": resp.get("responseId"), "object": "chat.completion", "model": resp.get("modelVersion"),
                "choices": choices, "usage": _usage(resp.get("usageMetadata"))}

    def stream_translator(self, model: Model) -> GeminiStreamTranslator:
        return GeminiStreamTranslator()

    def error_details(self, body: Any) -> tuple[Any, dict[str, Any]]:
        if isinstance(body, list) and body:  # the non-SSE stream endpoint wraps errors in an array
            body = body[0]
        err = body.get("error") if isinstance(body, dict) else None
        if not isinstance(err, dict):
            return None, {}
        return err.get("message"), ({"status": err["status"]} if err.get("status") else {})


def _error_from(err: dict[str, Any], default: int) -> GatewayError:
    status = err.get("code") if isinstance(err.get("code"), int) else None
    gw = upstream_status_to_gateway(status) if status else error_status_for_type(err.get("status"), default)
    return GatewayError(gw, f"google: {err.get('message') or err.get('status') or 'error'}",
                        metadata={"provider_name": "google", "status": err.get("status")})


def _raise_if_blocked(resp: dict[str, Any]) -> None:
    """A blocked prompt comes back as 200 with ``promptFeedback.blockReason`` and no candidates."""
    feedback = resp.get("promptFeedback") or {}
    reason = feedback.get("blockReason")
    if reason and not resp.get("candidates"):
        ratings = [r.get("category") for r in feedback.get("safetyRatings") or [] if r.get("blocked")]
        detail = feedback.get("blockReasonMessage") or ""
        raise GatewayError(
            403, f"google: the prompt was blocked by the provider's safety filter ({reason}){': ' + detail if detail else ''}",
            metadata={"provider_name": "google", "reasons": [reason], "categories": ratings},
        )


def _parts(cand: dict[str, Any], first_tool: int) -> tuple[list[str], list[str], list[dict[str, Any]]]:
    text: list[str] = []
    reasoning: list[str] = []
    calls: list[dict[str, Any]] = []
    for part in (cand.get("content") or {}).get("parts") or []:
        if "functionCall" in part:
            fc = part["functionCall"] or {}
            args = fc.get("args") or {}
            index = first_tool + len(calls)
            calls.append({"id": fc.get("id") or stable_id("call_", fc.get("name"), args, index), "type": "function",
                          "function": {"name": fc.get("name"), "arguments": dumps(args)}})
        elif part.get("thought") and part.get("text"):
            reasoning.append(part["text"])
        elif part.get("text"):
            text.append(part["text"])
    return text, reasoning, calls


def _finish(native: str | None, tool_calls: bool) -> str | None:
    if native is None:
        return None
    if tool_calls and native == "STOP":
        return "tool_calls"
    return FINISH_REASONS.get(native, "stop")


def _usage(meta: dict[str, Any] | None) -> dict[str, Any] | None:
    if not meta:
        return None
    thoughts = int(meta.get("thoughtsTokenCount") or 0)
    completion = int(meta.get("candidatesTokenCount") or 0) + thoughts
    return usage(int(meta.get("promptTokenCount") or 0), completion,
                 cached=meta.get("cachedContentTokenCount"), reasoning=thoughts)


class GeminiStreamTranslator:
    """Partial ``GenerateContentResponse`` objects → OpenAI chunks (first candidate only)."""

    def __init__(self) -> None:
        self.usage: dict[str, Any] | None = None
        self.done = False  # the upstream said its stream is complete
        self._started = False
        self._tools = 0

    def feed(self, event: SSEEvent) -> list[dict[str, Any]]:
        if not event.data or event.data == "[DONE]":
            return []
        try:
            resp = orjson.loads(event.data)
        except orjson.JSONDecodeError:
            raise GatewayError(502, "google sent an invalid stream event") from None
        if not isinstance(resp, dict):
            return []
        if isinstance(resp.get("error"), dict):
            raise _error_from(resp["error"], 502)
        _raise_if_blocked(resp)
        out: list[dict[str, Any]] = []
        if not self._started:
            self._started = True
            out.append(role_chunk())
        if resp.get("usageMetadata"):
            self.usage = _usage(resp["usageMetadata"])
        cand = (resp.get("candidates") or [{}])[0]
        text, reasoning, calls = _parts(cand, self._tools)
        if reasoning:
            out.append({"choices": [{"index": 0, "delta": {"reasoning": "".join(reasoning)}, "finish_reason": None}]})
        if text:
            out.append(text_chunk("".join(text)))
        if calls:
            deltas = [{"index": self._tools + i, **c} for i, c in enumerate(calls)]
            self._tools += len(calls)
            out.append({"choices": [{"index": 0, "delta": {"tool_calls": deltas}, "finish_reason": None}]})
        native = cand.get("finishReason")
        if native:
            self.done = True
            out.append(finish_chunk(_finish(native, self._tools > 0) or "stop", native))
        return out

    def finish(self) -> list[dict[str, Any]]:
        return []
