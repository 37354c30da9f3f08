"""OpenAI's Responses API in front of the chat pipeline: a pure translator, both ways.

``to_chat`` turns a ``POST /responses`` body (plus the stored history of ``previous_response_id``) into the
chat-completions body the pipeline already runs; ``response_from_chat`` turns the pipeline's JSON answer into a
``Response`` object, and ``ResponsesStream`` turns its ``chat.completion.chunk`` frames into the Responses event
stream (``response.created`` … ``response.completed``). None of that does I/O. ``ConversationStore`` (in memory)
and ``RedisConversations`` (shared by replicas) keep the conversation of each stored response for
``previous_response_id``, bounded in bytes and in time.

Shapes are those of the ``openai`` SDK's ``openai.types.responses`` (checked there by the tests).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any

import orjson

from ..errors import GatewayError
from ..store import new_generation_id
from .validation import MAX_MODEL_ID

#: OpenAI's ``reasoning.effort`` values
REASONING_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh", "max")
INPUT_ROLES = ("user", "assistant", "system", "developer")
#: OpenRouter's request extensions, passed on to the chat body as they are (checked there)
OPENROUTER_FIELDS = ("models", "provider", "plugins", "session_id")
#: the Responses error codes (``ResponseError.code``) a failed response can carry
_FAILED_CODES = {429: "rate_limit_exceeded"}

ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 402: "insufficient_quota",
               403: "permission_error", 404: "not_found_error", 408: "timeout", 413: "invalid_request_error",
               429: "rate_limit_error", 431: "invalid_request_error"}


def _bad(message: str, param: str | None = None, code: str | None = None) -> GatewayError:
    meta: dict[str, Any] = {}
    if param:
        meta["param"] = param
    if code:
        meta["code"] = code
    return GatewayError(400, message, metadata=meta or None, retryable=False)


def error_body(err: GatewayError) -> dict[str, Any]:
    """An error in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``."""
    meta = err.metadata or {}
    param = meta.get("param")
    code = meta.get("code")
    return {"error": {
        "message": err.message,
        "type": ERROR_TYPES.get(err.status, "server_error" if err.status >= 500 else "invalid_request_error"),
        "param": param if isinstance(param, str) else None,
        "code": code if isinstance(code, str) else None,
    }}


# --- request: Responses → chat -----------------------------------------------------------------------------

def _text_of(content: Any, where: str) -> str:
    """The text of an assistant (or tool output) content: a string, or parts of output_text/input_text/refusal."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise _bad(f"{where} must be a string or an array of content parts", where)
    out = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("output_text", "input_text") and isinstance(part.get("text"), str):
            out.append(part["text"])
        elif kind == "refusal" and isinstance(part.get("refusal"), str):
            out.append(part["refusal"])
        else:
            raise _bad(f"{where}[{j}] must be an output_text, input_text or refusal part with its text", f"{where}[{j}]")
    return "".join(out)


def _user_parts(content: Any, where: str) -> str | list[dict[str, Any]]:
    """A user/system message's content as chat content: input_text → text, input_image → image_url."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list) or not content:
        raise _bad(f"{where} must be a string or a non-empty array of content parts", where)
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        at = f"{where}[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text"):
            if not isinstance(part.get("text"), str):
                raise _bad(f"{at}.text must be a string", f"{at}.text")
            parts.append({"type": "text", "text": part["text"]})
        elif kind == "input_image":
            url = part.get("image_url")
            if not isinstance(url, str) or not url:
                raise _bad(f"{at}.image_url must be a URL or a data URL (file_id is not supported)", f"{at}.image_url")
            image: dict[str, Any] = {"url": url}
            if part.get("detail") is not None:
                if part["detail"] not in ("low", "high", "auto"):
                    raise _bad(f"{at}.detail must be low, high or auto", f"{at}.detail")
                image["detail"] = part["detail"]
            parts.append({"type": "image_url", "image_url": image})
        elif kind == "input_file":
            data, name = part.get("file_data"), part.get("filename")
            if not isinstance(data, str) or not data:
                raise _bad(f"{at}.file_data is required (file_id and file_url are not supported)", f"{at}.file_data")
            parts.append({"type": "file", "file": {"filename": name if isinstance(name, str) else "file",
                                                   "file_data": data}})
        else:
            raise _bad(f"{at} must be an input_text, input_image or input_file part", at)
    return parts


def input_messages(items: Any, max_items: int) -> list[dict[str, Any]]:
    """The ``input`` (a string or an array of items) as chat messages."""
    if isinstance(items, str):
        return [{"role": "user", "content": items}]
    if not isinstance(items, list) or not items:
        raise _bad("`input` must be a string or a non-empty array of input items", "input")
    if len(items) > max_items:
        raise _bad(f"Too many input items: {len(items)} (at most {max_items})", "input")
    messages: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise _bad(f"{where} must be an object", where)
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if not isinstance(role, str) or role not in INPUT_ROLES:
                raise _bad(f"{where}.role must be one of {', '.join(INPUT_ROLES)}", f"{where}.role")
            if "content" not in item:
                raise _bad(f"{where}.content is required", f"{where}.content")
            if role == "assistant":
                messages.append({"role": "assistant", "content": _text_of(item["content"], f"{where}.content")})
            else:
                messages.append({"role": role, "content": _user_parts(item["content"], f"{where}.content")})
        elif kind == "function_call":
            for name in ("call_id", "name", "arguments"):
                if not isinstance(item.get(name), str):
                    raise _bad(f"{where}.{name} must be a string", f"{where}.{name}")
            call = {"id": item["call_id"], "type": "function",
                    "function": {"name": item["name"], "arguments": item["arguments"]}}
            prev = messages[-1] if messages else None
            if prev is not None and prev["role"] == "assistant":  # calls of one turn go on one assistant message
                prev.setdefault("tool_calls", []).append(call)
                if prev.get("content") == "":
                    prev["content"] = None
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            if not isinstance(item.get("call_id"), str):
                raise _bad(f"{where}.call_id must be a string", f"{where}.call_id")
            if "output" not in item:
                raise _bad(f"{where}.output is required", f"{where}.output")
            messages.append({"role": "tool", "tool_call_id": item["call_id"],
                             "content": _text_of(item["output"], f"{where}.output")})
        elif kind == "reasoning":
            continue  # a model's own earlier reasoning: not something another turn can be given back
        else:
            raise _bad(f"{where}.type must be message, function_call, function_call_output or reasoning "
                       f"(got {str(kind)[:40]!r})", f"{where}.type")
    if not messages:
        raise _bad("`input` needs an item other than reasoning", "input")
    return messages


def _tools(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise _bad("`tools` must be an array of function tools", "tools")
    out = []
    for i, t in enumerate(tools):
        if not isinstance(t, dict) or t.get("type") != "function":
            raise _bad(f"tools[{i}]: only function tools ({{type: function, name, parameters}}) are supported",
                       f"tools[{i}]")
        if not isinstance(t.get("name"), str) or not t["name"]:
            raise _bad(f"tools[{i}].name must be a string", f"tools[{i}].name")
        fn: dict[str, Any] = {"name": t["name"]}
        if t.get("description") is not None:
            if not isinstance(t["description"], str):
                raise _bad(f"tools[{i}].description must be a string", f"tools[{i}].description")
            fn["description"] = t["description"]
        if t.get("parameters") is not None:
            if not isinstance(t["parameters"], dict):
                raise _bad(f"tools[{i}].parameters must be a JSON Schema object", f"tools[{i}].parameters")
            fn["parameters"] = t["parameters"]
        if t.get("strict") is not None:
            if not isinstance(t["strict"], bool):
                raise _bad(f"tools[{i}].strict must be a boolean", f"tools[{i}].strict")
            fn["strict"] = t["strict"]
        out.append({"type": "function", "function": fn})
    return out


def _tool_choice(tc: Any) -> Any:
    if tc in ("auto", "none", "required"):
        return tc
    if isinstance(tc, dict) and tc.get("type") == "function" and isinstance(tc.get("name"), str):
        return {"type": "function", "function": {"name": tc["name"]}}
    raise _bad("`tool_choice` must be auto, none, required or {type: function, name}", "tool_choice")


def _text_format(text: Any) -> dict[str, Any] | None:
    if not isinstance(text, dict):
        raise _bad("`text` must be an object", "text")
    fmt = text.get("format")
    if fmt is None:
        return None
    if not isinstance(fmt, dict) or fmt.get("type") not in ("text", "json_object", "json_schema"):
        raise _bad("`text.format.type` must be text, json_object or json_schema", "text.format")
    if fmt["type"] != "json_schema":
        return {"type": fmt["type"]}
    if not isinstance(fmt.get("name"), str) or not isinstance(fmt.get("schema"), dict):
        raise _bad("`text.format` of type json_schema needs a `name` (string) and a `schema` (object)", "text.format")
    schema: dict[str, Any] = {"name": fmt["name"], "schema": fmt["schema"]}
    for k in ("strict", "description"):
        if fmt.get(k) is not None:
            schema[k] = fmt[k]
    return {"type": "json_schema", "json_schema": schema}


def _number(body: dict, name: str, lo: float, hi: float) -> None:
    v = body.get(name)
    if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi):
        raise _bad(f"`{name}` must be a number between {lo:g} and {hi:g}", name)


def validate_responses_body(body: Any, *, max_items: int) -> dict[str, Any]:
    """Checks of everything ``to_chat`` reads that do not need the stored history: a clear 400 for each."""
    if not isinstance(body, dict):
        raise _bad("The request body must be a JSON object")
    if "input" not in body or body["input"] is None:
        raise _bad("`input` is required", "input")
    model = body.get("model")
    if not (isinstance(model, str) and 0 < len(model) <= MAX_MODEL_ID):
        raise _bad(f"`model` must be a model id (a string of at most {MAX_MODEL_ID} characters)", "model")
    for name in ("instructions", "previous_response_id", "user"):
        if body.get(name) is not None and not isinstance(body[name], str):
            raise _bad(f"`{name}` must be a string", name)
    for name in ("stream", "store", "parallel_tool_calls"):
        if body.get(name) is not None and not isinstance(body[name], bool):
            raise _bad(f"`{name}` must be a boolean", name)
    _number(body, "temperature", 0, 2)
    _number(body, "top_p", 0, 1)
    mot = body.get("max_output_tokens")
    if mot is not None and (isinstance(mot, bool) or not isinstance(mot, int) or mot < 1):
        raise _bad("`max_output_tokens` must be an integer ≥ 1", "max_output_tokens")
    md = body.get("metadata")
    if md is not None and not (isinstance(md, dict) and len(md) <= 16 and all(
        isinstance(k, str) and len(k) <= 64 and isinstance(v, str) and len(v) <= 512 for k, v in md.items()
    )):
        raise _bad("`metadata` must be an object of at most 16 string values (keys ≤ 64, values ≤ 512 characters)",
                   "metadata")
    r = body.get("reasoning")
    if r is not None and not (isinstance(r, dict) and r.get("effort") in (None, *REASONING_EFFORTS)):
        raise _bad(f"`reasoning.effort` must be one of {', '.join(REASONING_EFFORTS)}", "reasoning")
    if body.get("truncation") not in (None, "auto", "disabled"):
        raise _bad("`truncation` must be auto or disabled", "truncation")
    if body.get("tools") is not None:
        _tools(body["tools"])
    if body.get("tool_choice") is not None:
        _tool_choice(body["tool_choice"])
    if body.get("text") is not None:
        _text_format(body["text"])
    input_messages(body["input"], max_items)
    return body


def to_chat(body: dict[str, Any], history: list[dict[str, Any]], *, max_items: int) -> dict[str, Any]:
    """The chat-completions body for a validated Responses ``body``, after ``history`` (the messages of the
    previous response's conversation; its instructions are not carried over, as OpenAI documents)."""
    messages: list[dict[str, Any]] = []
    if body.get("instructions"):
        messages.append({"role": "system", "content": body["instructions"]})
    messages += history
    messages += input_messages(body["input"], max_items)
    chat: dict[str, Any] = {"model": body["model"], "messages": messages}
    if body.get("stream"):
        chat["stream"] = True
    for src, dst in (("temperature", "temperature"), ("top_p", "top_p"), ("max_output_tokens", "max_tokens"),
                     ("user", "user"), ("parallel_tool_calls", "parallel_tool_calls")):
        if body.get(src) is not None:
            chat[dst] = body[src]
    if body.get("tools"):
        chat["tools"] = _tools(body["tools"])
    if body.get("tool_choice") is not None:
        chat["tool_choice"] = _tool_choice(body["tool_choice"])
    if body.get("text") is not None:
        rf = _text_format(body["text"])
        if rf is not None and rf["type"] != "text":
            chat["response_format"] = rf
    for name in OPENROUTER_FIELDS:
        if body.get(name) is not None:
            chat[name] = body[name]
    effort = (body.get("reasoning") or {}).get("effort")
    if effort is not None:
        chat["reasoning_effort"] = effort
    return chat


def history_of(body: dict[str, Any], chat: dict[str, Any], output: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The conversation to keep for a response: the chat messages of request ``body`` without its instructions
    (a follow-up does not inherit them), then the answer's items as chat messages."""
    messages = chat["messages"][1:] if body.get("instructions") else list(chat["messages"])
    answer = [i for i in output if i["type"] != "reasoning"]
    return messages + (input_messages(answer, len(answer)) if answer else [])


# --- answer: chat → Responses ------------------------------------------------------------------------------

def _suffix(response_id: str) -> str:
    return response_id.rsplit("-", 1)[-1]


def message_item(response_id: str, text: str | None, refusal: str | None, status: str) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    if text is not None:
        content.append({"type": "output_text", "text": text, "annotations": [], "logprobs": []})
    if refusal:
        content.append({"type": "refusal", "refusal": refusal})
    return {"id": f"msg_{_suffix(response_id)}", "type": "message", "role": "assistant", "status": status,
            "content": content}


def reasoning_item(response_id: str, text: str, status: str) -> dict[str, Any]:
    return {"id": f"rs_{_suffix(response_id)}", "type": "reasoning", "summary": [],
            "content": [{"type": "reasoning_text", "text": text}], "status": status}


def call_item(response_id: str, index: int, call_id: str, name: str, arguments: str, status: str) -> dict[str, Any]:
    return {"id": f"fc_{_suffix(response_id)}_{index}", "type": "function_call", "call_id": call_id, "name": name,
            "arguments": arguments, "status": status}


def usage_of(usage: dict[str, Any] | None) -> dict[str, Any] | None:
    """Chat usage (with the gateway's ``cost``) in the Responses shape; ``cost`` is kept, as on chat."""
    if not usage:
        return None
    out = {
        "input_tokens": usage.get("prompt_tokens", 0),
        "input_tokens_details": {"cached_tokens": (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0),
                                 "cache_write_tokens": 0},
        "output_tokens": usage.get("completion_tokens", 0),
        "output_tokens_details": {
            "reasoning_tokens": (usage.get("completion_tokens_details") or {}).get("reasoning_tokens", 0)},
        "total_tokens": usage.get("total_tokens", 0),
    }
    if "cost" in usage:
        out["cost"] = usage["cost"]
    return out


def _status(finish_reason: str | None) -> tuple[str, dict[str, Any] | None]:
    if finish_reason == "length":
        return "incomplete", {"reason": "max_output_tokens"}
    if finish_reason == "content_filter":
        return "incomplete", {"reason": "content_filter"}
    return "completed", None


def response_object(body: dict[str, Any], response_id: str, created_at: float, model: str, status: str,
                    output: list[dict[str, Any]], usage: dict[str, Any] | None = None,
                    incomplete: dict[str, Any] | None = None, error: dict[str, Any] | None = None) -> dict[str, Any]:
    """A ``Response``: the request's settings echoed (as OpenAI does), with what was produced."""
    tools = [{"type": "function", "name": t["function"]["name"],
              "description": t["function"].get("description"),
              "parameters": t["function"].get("parameters"), "strict": t["function"].get("strict")}
             for t in _tools(body.get("tools") or [])]
    tc = body.get("tool_choice")
    text = body.get("text") if isinstance(body.get("text"), dict) and body["text"].get("format") else None
    reasoning = body.get("reasoning")
    return {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "model": model,
        "output": output,
        "error": error,
        "incomplete_details": incomplete,
        "instructions": body.get("instructions"),
        "metadata": body.get("metadata") or {},
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "temperature": body.get("temperature"),
        "top_p": body.get("top_p"),
        "max_output_tokens": body.get("max_output_tokens"),
        "previous_response_id": body.get("previous_response_id"),
        "tool_choice": tc if isinstance(tc, str) else ({"type": "function", "name": tc["name"]} if tc else "auto"),
        "tools": tools,
        "text": {"format": text["format"]} if text else {"format": {"type": "text"}},
        "reasoning": {"effort": reasoning.get("effort"), "summary": None} if isinstance(reasoning, dict) else None,
        "truncation": body.get("truncation") or "disabled",
        "user": body.get("user"),
        "usage": usage,
    }


def response_from_chat(body: dict[str, Any], chat: dict[str, Any]) -> dict[str, Any]:
    """The pipeline's ``chat.completion`` as a ``Response`` (its id is the generation's id)."""
    rid = chat["id"]
    choice = (chat.get("choices") or [{}])[0]
    msg = choice.get("message") or {}
    status, incomplete = _status(choice.get("finish_reason"))
    item_status = "incomplete" if status == "incomplete" else "completed"
    output: list[dict[str, Any]] = []
    if isinstance(msg.get("reasoning"), str) and msg["reasoning"]:
        output.append(reasoning_item(rid, msg["reasoning"], item_status))
    text = msg.get("content")
    if (isinstance(text, str) and text) or msg.get("refusal") or not msg.get("tool_calls"):
        output.append(message_item(rid, text if isinstance(text, str) else "", msg.get("refusal"), item_status))
    for i, tc in enumerate(msg.get("tool_calls") or ()):
        fn = tc.get("function") or {}
        output.append(call_item(rid, i, str(tc.get("id") or f"call_{i}"), str(fn.get("name") or ""),
                                str(fn.get("arguments") or ""), "completed"))
    return response_object(body, rid, float(chat.get("created") or time.time()), chat["model"], status, output,
                           usage_of(chat.get("usage")), incomplete)


class ResponsesStream:
    """``chat.completion.chunk`` dicts in, Responses stream events (dicts, each with its ``sequence_number``) out.

    Items are opened as their first delta arrives (reasoning, then the message, then each function call, in the
    order the model produces them) and closed at the end; the last event is ``response.completed`` (or
    ``.incomplete`` when the answer was cut by ``max_output_tokens``, ``.failed`` after an error)."""

    def __init__(self, body: dict[str, Any]):
        self.body = body
        self.seq = 0
        self.id: str | None = None
        self.model: str = body.get("model") or ""
        self.created_at = time.time()
        self.output: list[dict[str, Any]] = []  # items, in output order
        self._open: dict[str, int] = {}  # "reasoning" / "message" → its output index
        self._calls: dict[int, int] = {}  # chat tool-call index → output index
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None
        self.error: dict[str, Any] | None = None
        self.final: dict[str, Any] | None = None

    def _event(self, kind: str, **fields: Any) -> dict[str, Any]:
        ev = {"type": kind, "sequence_number": self.seq, **fields}
        self.seq += 1
        return ev

    def _snapshot(self, status: str, **extra: Any) -> dict[str, Any]:
        return response_object(self.body, self.id or "", self.created_at, self.model, status,
                               orjson.loads(orjson.dumps(self.output)), **extra)

    def _start(self, chunk: dict[str, Any]) -> list[dict[str, Any]]:
        self.id = str(chunk.get("id") or new_generation_id())  # (an error before any answer has no id)
        self.model = str(chunk.get("model") or self.model)
        if chunk.get("created"):
            self.created_at = float(chunk["created"])
        return [self._event("response.created", response=self._snapshot("in_progress")),
                self._event("response.in_progress", response=self._snapshot("in_progress"))]

    def _add(self, item: dict[str, Any]) -> tuple[int, list[dict[str, Any]]]:
        self.output.append(item)
        index = len(self.output) - 1
        empty = {"arguments": ""} if item["type"] == "function_call" else {"content": []}
        return index, [self._event("response.output_item.added", output_index=index, item=dict(item, **empty))]

    def _open_text(self, slot: str) -> list[dict[str, Any]]:
        """Open the reasoning item or the message: its added events."""
        assert self.id is not None
        item = (reasoning_item(self.id, "", "in_progress") if slot == "reasoning" else
                message_item(self.id, "", None, "in_progress"))
        index, events = self._add(item)
        self._open[slot] = index
        events.append(self._event("response.content_part.added", item_id=item["id"], output_index=index,
                                  content_index=0, part=dict(item["content"][0])))
        return events

    def _text_delta(self, slot: str, delta: str) -> list[dict[str, Any]]:
        events = self._open_text(slot) if slot not in self._open else []
        index = self._open[slot]
        item = self.output[index]
        item["content"][0]["text"] += delta
        kind = "response.reasoning_text.delta" if slot == "reasoning" else "response.output_text.delta"
        extra = {} if slot == "reasoning" else {"logprobs": []}
        events.append(self._event(kind, item_id=item["id"], output_index=index, content_index=0, delta=delta, **extra))
        return events

    def _call_delta(self, tc: dict[str, Any]) -> list[dict[str, Any]]:
        assert self.id is not None
        events: list[dict[str, Any]] = []
        k = tc.get("index", 0)
        fn = tc.get("function") or {}
        if k not in self._calls:
            item = call_item(self.id, len(self._calls), str(tc.get("id") or f"call_{k}"), str(fn.get("name") or ""),
                             "", "in_progress")
            index, events = self._add(item)
            self._calls[k] = index
        item = self.output[self._calls[k]]
        if fn.get("name") and not item["name"]:
            item["name"] = fn["name"]
        args = fn.get("arguments")
        if isinstance(args, str) and args:
            item["arguments"] += args
            events.append(self._event("response.function_call_arguments.delta", item_id=item["id"],
                                      output_index=self._calls[k], delta=args))
        return events

    def feed(self, chunk: dict[str, Any]) -> list[dict[str, Any]]:
        events = self._start(chunk) if self.id is None else []
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        if chunk.get("error"):
            err = chunk["error"]
            self.error = {"code": _FAILED_CODES.get(err.get("code"), "server_error"),
                          "message": str(err.get("message") or "The upstream failed")}
        for c in chunk.get("choices") or ():
            delta = c.get("delta") or {}
            if isinstance(delta.get("reasoning"), str) and delta["reasoning"]:
                events += self._text_delta("reasoning", delta["reasoning"])
            if isinstance(delta.get("content"), str) and delta["content"]:
                events += self._text_delta("message", delta["content"])
            for tc in delta.get("tool_calls") or ():
                if isinstance(tc, dict):
                    events += self._call_delta(tc)
            if c.get("finish_reason"):
                self.finish_reason = c["finish_reason"]
        return events

    def finish(self) -> list[dict[str, Any]]:
        """Close every open item and end the response (call once, when the chunks are over)."""
        if self.id is None:  # nothing came at all
            return []
        events: list[dict[str, Any]] = []
        status, incomplete = _status(self.finish_reason)
        if self.error is None and self.finish_reason is None:
            self.error = {"code": "server_error", "message": "The upstream stream ended before it was complete"}
        if self.error is not None:
            status, incomplete = "failed", None
        item_status = "completed" if status == "completed" else "incomplete"
        if not self.output and status != "failed":  # an empty answer is still a message
            events += self._open_text("message")
        for index, item in enumerate(self.output):
            if item["type"] == "function_call":
                item["status"] = "completed"
                events.append(self._event("response.function_call_arguments.done", item_id=item["id"],
                                          output_index=index, arguments=item["arguments"]))
            else:
                item["status"] = item_status
                part = item["content"][0]
                if item["type"] == "message":
                    events.append(self._event("response.output_text.done", item_id=item["id"], output_index=index,
                                              content_index=0, text=part["text"], logprobs=[]))
                else:
                    events.append(self._event("response.reasoning_text.done", item_id=item["id"],
                                              output_index=index, content_index=0, text=part["text"]))
                events.append(self._event("response.content_part.done", item_id=item["id"], output_index=index,
                                          content_index=0, part=dict(part)))
            events.append(self._event("response.output_item.done", output_index=index,
                                      item=orjson.loads(orjson.dumps(item))))
        kind = {"completed": "response.completed", "incomplete": "response.incomplete"}.get(status, "response.failed")
        self.final = self._snapshot(status, usage=usage_of(self.usage), incomplete=incomplete, error=self.error)
        events.append(self._event(kind, response=self.final))
        return events


# --- the conversations of stored responses -----------------------------------------------------------------

def conversation_limits(raw: dict[str, Any]) -> tuple[float, int]:
    """``responses: {ttl, max_bytes}`` of the config file: seconds a conversation is kept (default an hour) and
    the bytes kept (in memory: all conversations together; in Redis: each one)."""
    cfg = raw.get("responses") or {}
    return float(cfg.get("ttl", 3600)), int(cfg.get("max_bytes", 256 * 1024 * 1024))


class ConversationStore:
    """The chat messages of each stored response, for ``previous_response_id``: per key, for ``ttl`` seconds,
    at most ``max_bytes`` in all (the oldest go first). In memory, per process (``RedisConversations`` shares
    them between replicas)."""

    def __init__(self, ttl: float = 3600.0, max_bytes: int = 256 * 1024 * 1024, clock=time.monotonic):
        self.ttl, self.max_bytes, self.clock = ttl, max_bytes, clock
        self._items: OrderedDict[str, tuple[float, str, bytes]] = OrderedDict()  # id → (expiry, key id, messages)
        self.bytes = 0

    async def put(self, response_id: str, key_id: str, messages: list[dict[str, Any]]) -> None:
        raw = orjson.dumps(messages)
        if len(raw) > self.max_bytes:
            return
        self._drop(response_id)
        self._items[response_id] = (self.clock() + self.ttl, key_id, raw)
        self.bytes += len(raw)
        while self.bytes > self.max_bytes:
            self._drop(next(iter(self._items)))

    async def get(self, response_id: str, key_id: str) -> list[dict[str, Any]] | None:
        now = self.clock()
        while self._items:  # expired ones are the oldest: drop them from the front
            first = next(iter(self._items))
            if self._items[first][0] > now:
                break
            self._drop(first)
        entry = self._items.get(response_id)
        if entry is None or entry[1] != key_id:  # another key's response is not found, not forbidden
            return None
        return orjson.loads(entry[2])

    def _drop(self, response_id: str) -> None:
        entry = self._items.pop(response_id, None)
        if entry is not None:
            self.bytes -= len(entry[2])


class RedisConversations:
    """The same in Redis, shared by every replica: one key per response, expiring after ``ttl`` seconds; a
    conversation over ``max_bytes`` is not kept (Redis's own ``maxmemory`` bounds them all)."""

    def __init__(self, redis: Any, ttl: float = 3600.0, max_bytes: int = 256 * 1024 * 1024,
                 prefix: str = "mr:response:"):
        self.redis, self.ttl, self.max_bytes, self.prefix = redis, max(1, int(ttl)), max_bytes, prefix

    async def put(self, response_id: str, key_id: str, messages: list[dict[str, Any]]) -> None:
        raw = orjson.dumps({"key": key_id, "messages": messages})
        if len(raw) <= self.max_bytes:
            await self.redis.set(self.prefix + response_id, raw, ex=self.ttl)

    async def get(self, response_id: str, key_id: str) -> list[dict[str, Any]] | None:
        raw = await self.redis.get(self.prefix + response_id)
        if raw is None:
            return None
        entry = orjson.loads(raw)
        return entry["messages"] if entry.get("key") == key_id else None


__all__ = ["ConversationStore", "RedisConversations", "ResponsesStream", "conversation_limits", "error_body",
           "history_of", "response_from_chat", "to_chat", "validate_responses_body"]
