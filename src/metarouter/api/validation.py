"""Strict checks of a chat-completions body: every problem is a clear 400 before anything is sent or charged."""

from __future__ import annotations

from typing import Any

from ..errors import GatewayError

ROLES = {"system", "developer", "user", "assistant", "tool", "function"}
PART_TYPES = {"text", "image_url", "input_audio", "file"}
MAX_MODEL_ID = 256  # longer names are refused before they are looked up (or echoed back in an error)
MAX_N = 128  # choices per request, as OpenAI allows


def _bad(message: str, param: str | None = None) -> GatewayError:
    return GatewayError(400, message, metadata={"param": param} if param else None, retryable=False)


def json_depth_ok(value: Any, limit: int) -> bool:
    """Whether nesting stays within ``limit`` (iterative: hostile depth cannot overflow our stack)."""
    stack = [(value, 1)]
    while stack:
        v, d = stack.pop()
        if d > limit:
            return False
        if isinstance(v, dict):
            stack.extend((x, d + 1) for x in v.values() if isinstance(x, (dict, list)))
        elif isinstance(v, list):
            stack.extend((x, d + 1) for x in v if isinstance(x, (dict, list)))
    return True


def _number(body: dict, name: str, lo: float, hi: float) -> None:
    v = body.get(name)
    if v is None:
        return
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise _bad(f"`{name}` must be a number", name)
    if not lo <= v <= hi:
        raise _bad(f"`{name}` must be between {lo:g} and {hi:g}", name)


def _int(body: dict, name: str, lo: int, hi: int | None = None) -> None:
    v = body.get(name)
    if v is None:
        return
    if isinstance(v, bool) or not isinstance(v, int):
        raise _bad(f"`{name}` must be an integer", name)
    if v < lo or (hi is not None and v > hi):
        raise _bad(f"`{name}` must be an integer {'≥ ' + str(lo) if hi is None else f'between {lo} and {hi}'}", name)


def validate_chat_body(body: Any, *, max_messages: int) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise _bad("The request body must be a JSON object")
    messages = body.get("messages")
    if messages is None:
        raise _bad("`messages` is required", "messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("`messages` must be a non-empty array", "messages")
    if len(messages) > max_messages:
        raise _bad(f"Too many messages: {len(messages)} (at most {max_messages})", "messages")
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise _bad(f"{where} must be an object", where)
        role = m.get("role")
        if not isinstance(role, str) or role not in ROLES:  # (a list or object is unhashable)
            raise _bad(f"{where}.role must be one of {', '.join(sorted(ROLES))}", f"{where}.role")
        content = m.get("content")
        if content is None:
            if role not in ("assistant",) or not m.get("tool_calls"):
                if role != "assistant":
                    raise _bad(f"{where}.content is required", f"{where}.content")
        elif isinstance(content, list):
            for j, part in enumerate(content):
                if not isinstance(part, dict) or not isinstance(part.get("type"), str) or part["type"] not in PART_TYPES:
                    raise _bad(f"{where}.content[{j}] must be a content part with a type of "
                               f"{', '.join(sorted(PART_TYPES))}", f"{where}.content[{j}]")
                if part["type"] == "text" and not isinstance(part.get("text"), str):
                    raise _bad(f"{where}.content[{j}].text must be a string", f"{where}.content[{j}].text")
                if part["type"] == "image_url":
                    iu = part.get("image_url")
                    url = iu.get("url") if isinstance(iu, dict) else iu
                    if not isinstance(url, str) or not url:
                        raise _bad(f"{where}.content[{j}].image_url.url must be a string",
                                   f"{where}.content[{j}].image_url")
        elif not isinstance(content, str):
            raise _bad(f"{where}.content must be a string or an array of content parts", f"{where}.content")
        if role == "tool" and not isinstance(m.get("tool_call_id"), str):
            raise _bad(f"{where}.tool_call_id is required for tool messages", f"{where}.tool_call_id")
        tcs = m.get("tool_calls")
        if tcs is not None:
            if not isinstance(tcs, list) or not all(isinstance(t, dict) and isinstance(t.get("function"), dict)
                                                    for t in tcs):
                raise _bad(f"{where}.tool_calls must be an array of tool calls", f"{where}.tool_calls")
    model = body.get("model")
    if model is not None and not (isinstance(model, str) and len(model) <= MAX_MODEL_ID):
        raise _bad(f"`model` must be a model id (a string of at most {MAX_MODEL_ID} characters)", "model")
    models = body.get("models")
    if models is not None and not (isinstance(models, list) and all(
        isinstance(m, str) and len(m) <= MAX_MODEL_ID for m in models
    )):
        raise _bad(f"`models` must be an array of model ids (strings of at most {MAX_MODEL_ID} characters)", "models")
    for name in ("stream", "logprobs"):
        if body.get(name) is not None and not isinstance(body[name], bool):
            raise _bad(f"`{name}` must be a boolean", name)
    _number(body, "temperature", 0, 2)
    _number(body, "top_p", 0, 1)
    _number(body, "presence_penalty", -2, 2)
    _number(body, "frequency_penalty", -2, 2)
    _int(body, "max_tokens", 1)
    _int(body, "max_completion_tokens", 1)
    _int(body, "seed", -(2**63), 2**63 - 1)
    _int(body, "n", 1, MAX_N)
    _int(body, "top_logprobs", 0, 20)
    stop = body.get("stop")
    if stop is not None and not (isinstance(stop, str) or (
        isinstance(stop, list) and all(isinstance(s, str) for s in stop) and len(stop) <= 16
    )):
        raise _bad("`stop` must be a string or an array of at most 16 strings", "stop")
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list) or not all(
            isinstance(t, dict) and isinstance(t.get("function"), dict) and isinstance(t["function"].get("name"), str)
            for t in tools
        ):
            raise _bad("`tools` must be an array of {type: function, function: {name, parameters}}", "tools")
    tc = body.get("tool_choice")
    if tc is not None and not (tc in ("auto", "none", "required") or (
        isinstance(tc, dict) and isinstance(tc.get("function"), dict) and isinstance(tc["function"].get("name"), str)
    )):
        raise _bad("`tool_choice` must be auto, none, required or {type: function, function: {name}}", "tool_choice")
    rf = body.get("response_format")
    if rf is not None and not (isinstance(rf, dict) and rf.get("type") in ("text", "json_object", "json_schema")):
        raise _bad("`response_format.type` must be text, json_object or json_schema", "response_format")
    if rf is not None and rf.get("type") == "json_schema" and not isinstance(rf.get("json_schema"), dict):
        raise _bad("`response_format.json_schema` is required for type json_schema", "response_format")
    for name in ("user", "session_id"):
        if body.get(name) is not None and not isinstance(body[name], str):
            raise _bad(f"`{name}` must be a string", name)
    for name in ("provider", "metadata", "stream_options"):
        if body.get(name) is not None and not isinstance(body[name], dict):
            raise _bad(f"`{name}` must be an object", name)
    if body.get("plugins") is not None and not isinstance(body["plugins"], list):
        raise _bad("`plugins` must be an array", "plugins")
    _reasoning(body)
    return body


REASONING_EFFORTS = ("xhigh", "high", "medium", "low", "minimal", "none")


def _reasoning(body: dict) -> None:
    """OpenRouter's ``reasoning: {effort | max_tokens, exclude, enabled}`` (and OpenAI's ``reasoning_effort``)."""
    effort = body.get("reasoning_effort")
    if effort is not None and effort not in REASONING_EFFORTS:
        raise _bad(f"`reasoning_effort` must be one of {', '.join(REASONING_EFFORTS)}", "reasoning_effort")
    r = body.get("reasoning")
    if r is None:
        return
    if not isinstance(r, dict):
        raise _bad("`reasoning` must be an object: {effort | max_tokens, exclude, enabled}", "reasoning")
    if r.get("effort") is not None and r["effort"] not in REASONING_EFFORTS:
        raise _bad(f"`reasoning.effort` must be one of {', '.join(REASONING_EFFORTS)}", "reasoning.effort")
    budget = r.get("max_tokens")
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int) or budget < 0):
        raise _bad("`reasoning.max_tokens` must be an integer ≥ 0", "reasoning.max_tokens")
    if r.get("effort") is not None and r.get("max_tokens") is not None:
        raise _bad("`reasoning`: set effort or max_tokens, not both", "reasoning")
    for name in ("exclude", "enabled"):
        if r.get(name) is not None and not isinstance(r[name], bool):
            raise _bad(f"`reasoning.{name}` must be a boolean", f"reasoning.{name}")
