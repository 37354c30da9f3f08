"""Strict validation against the official SDKs' types, so fixtures and fakes cannot drift from the real formats.

The SDK models mostly allow unknown fields (Anthropic, Cohere) and TypedDict params silently drop them; these
helpers turn "unknown to the SDK" into a test failure.
"""

from __future__ import annotations

import collections.abc
import inspect
import pathlib
import time
import types
import typing
from collections.abc import Iterable
from typing import Any

import orjson
import pydantic
import typing_extensions
from typing_extensions import is_typeddict

from metarouter.providers.base import SSEEvent
from metarouter.providers.sse import SSEParser

FIXTURES = pathlib.Path(__file__).parent / "fixtures"


def fixture_bytes(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def fixture_json(name: str) -> Any:
    return orjson.loads(fixture_bytes(name))


def assert_no_extra(obj: Any, path: str = "$") -> None:
    """Every field of every nested SDK model is one the SDK declares."""
    if isinstance(obj, pydantic.BaseModel):
        extra = getattr(obj, "__pydantic_extra__", None) or {}
        assert not extra, f"{path}: fields unknown to {type(obj).__name__}: {sorted(extra)}"
        for name in obj.model_fields_set:
            assert_no_extra(getattr(obj, name), f"{path}.{name}")
    elif isinstance(obj, (list, tuple)):
        for i, item in enumerate(obj):
            assert_no_extra(item, f"{path}[{i}]")
    elif isinstance(obj, dict):
        for k, v in obj.items():
            assert_no_extra(v, f"{path}.{k}")


def validate_model(tp: Any, data: Any) -> Any:
    """Validate ``data`` as SDK type ``tp`` (model or union) and fail on any field the SDK does not know."""
    value = pydantic.TypeAdapter(tp).validate_python(data)
    assert_no_extra(value)
    return value


def validate_known_fields(tp: Any, data: Any) -> Any:
    """Validate ``data`` as SDK type ``tp`` and fail on any key, at any depth, that names no field of the model it
    was validated into (by wire alias). For SDKs whose models silently ignore unknown fields (``mistralai``), where
    neither extras nor the TypedDicts (which name some fields differently from the wire) can tell."""
    value = pydantic.TypeAdapter(tp).validate_python(data)
    problems: list[str] = []
    _unknown_fields(value, data, "$", problems)
    assert not problems, "\n".join(problems)
    return value


def _unknown_fields(value: Any, data: Any, path: str, out: list[str]) -> None:
    if isinstance(value, pydantic.BaseModel) and isinstance(data, dict):
        fields = {(f.alias or name): name for name, f in type(value).model_fields.items()}
        out += [f"{path}.{k}: unknown to {type(value).__name__}" for k in data if k not in fields]
        for k, v in data.items():
            if k in fields:
                _unknown_fields(getattr(value, fields[k]), v, f"{path}.{k}", out)
    elif isinstance(value, (list, tuple)) and isinstance(data, list):
        for i, (item, raw) in enumerate(zip(value, data)):
            _unknown_fields(item, raw, f"{path}[{i}]", out)


def validate_typeddict(tp: Any, data: Any) -> None:
    """Validate ``data`` against an SDK TypedDict (params) type: unknown keys at any depth, missing required
    keys, wrong literals or scalar types fail. (Pydantic alone would drop unknown keys and validates the SDK's
    ``Iterable`` fields lazily, so the walk is done here.)"""
    problems = _typed_problems(tp, data, "$")
    assert not problems, "\n".join(problems)


def _typed_problems(tp: Any, data: Any, path: str) -> list[str]:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any or tp is object:
        return []
    if origin is typing.Annotated or origin in (typing_extensions.Required, typing_extensions.NotRequired,
                                                typing_extensions.ReadOnly):
        return _typed_problems(args[0], data, path)
    if origin in (typing.Union, types.UnionType):
        best: list[str] | None = None
        for member in args:
            found = _typed_problems(member, data, path)
            if not found:
                return []
            if best is None or len(found) < len(best):
                best = found
        return best or [f"{path}: matches no member of {tp}"]
    if origin is typing.Literal or origin is typing_extensions.Literal:
        return [] if data in args else [f"{path}: {data!r} is not one of {args}"]
    if tp is type(None):
        return [] if data is None else [f"{path}: expected null"]
    if is_typeddict(tp):
        if not isinstance(data, dict):
            return [f"{path}: expected an object for {tp.__name__}"]
        hints = typing.get_type_hints(tp, include_extras=True)
        out = [f"{path}.{k}: unknown to {tp.__name__}" for k in data if k not in hints]
        out += [f"{path}.{k}: required by {tp.__name__}" for k in getattr(tp, "__required_keys__", ())
                if k not in data]
        for k, v in data.items():
            if k in hints:
                out += _typed_problems(hints[k], v, f"{path}.{k}")
        return out
    if origin in (list, collections.abc.Iterable, collections.abc.Sequence, list):
        if not isinstance(data, list):
            return [f"{path}: expected a list"]
        return [p for i, item in enumerate(data) for p in _typed_problems(args[0] if args else Any, item,
                                                                            f"{path}[{i}]")]
    if origin in (dict, collections.abc.Mapping, dict):
        return [] if isinstance(data, dict) else [f"{path}: expected an object"]
    if tp is str:
        return [] if isinstance(data, str) else [f"{path}: expected a string, got {data!r}"]
    if tp is bool:
        return [] if isinstance(data, bool) else [f"{path}: expected a boolean"]
    if tp is int:
        return [] if isinstance(data, int) and not isinstance(data, bool) else [f"{path}: expected an integer"]
    if tp is float:
        return [] if isinstance(data, (int, float)) and not isinstance(data, bool) else [f"{path}: expected a number"]
    if isinstance(tp, type) and issubclass(tp, pydantic.BaseModel):
        # the SDKs accept their response models back as params: hold them to the same strictness
        try:
            assert_no_extra(tp.model_validate(data))
        except (pydantic.ValidationError, AssertionError) as exc:
            return [f"{path}: not a valid {tp.__name__}: {str(exc)[:200]}"]
        return []
    return []  # other classes (file types): not checked here


def signature_params(func: Any) -> set[str]:
    return {p for p in inspect.signature(func).parameters if p not in ("self", "request_options")}


def sse_events(data: bytes, splits: Iterable[int] | None = None) -> list[SSEEvent]:
    """Parse an SSE transcript, feeding it in pieces cut at ``splits`` (or byte by byte when splits is 1)."""
    parser = SSEParser()
    events: list[SSEEvent] = []
    if splits == 1:
        pieces = [data[i : i + 1] for i in range(len(data))]
    else:
        cuts = sorted(set(splits or []))
        pieces, last = [], 0
        for c in cuts:
            pieces.append(data[last:c])
            last = c
        pieces.append(data[last:])
    for p in pieces:
        events.extend(parser.feed(p))
    events.extend(parser.close())
    return events


def run_stream(translator: Any, data: bytes, splits: Iterable[int] | None = None) -> list[dict[str, Any]]:
    chunks: list[dict[str, Any]] = []
    for ev in sse_events(data, splits):
        chunks.extend(translator.feed(ev))
    chunks.extend(translator.finish())
    return chunks


def stamp_chunk(chunk: dict[str, Any], model: str = "x/model") -> dict[str, Any]:
    """What the pipeline adds to every chunk, so the result can be checked as an OpenAI ChatCompletionChunk."""
    return {"id": "gen-1", "object": "chat.completion.chunk", "created": int(time.time()), "model": model, **chunk}


def stamp_completion(resp: dict[str, Any], model: str = "x/model") -> dict[str, Any]:
    return {**resp, "id": resp.get("id") or "gen-1", "object": "chat.completion", "created": int(time.time()),
            "model": model}


def check_openai_chunks(chunks: list[dict[str, Any]]) -> None:
    from openai.types.chat import ChatCompletionChunk

    for c in chunks:
        assert set(c) <= {"choices", "usage", "system_fingerprint"}, c
        ChatCompletionChunk.model_validate(stamp_chunk(c))


def check_openai_completion(resp: dict[str, Any]) -> None:
    from openai.types.chat import ChatCompletion

    ChatCompletion.model_validate(stamp_completion(resp))


def accumulate(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    """Rebuild the message a client would assemble from the chunks (content, reasoning, tool calls by index)."""
    content, reasoning = [], []
    calls: dict[int, dict[str, Any]] = {}
    finish = native = None
    for c in chunks:
        for ch in c.get("choices") or []:
            d = ch.get("delta") or {}
            if d.get("content"):
                content.append(d["content"])
            if d.get("reasoning"):
                reasoning.append(d["reasoning"])
            for tc in d.get("tool_calls") or []:
                slot = calls.setdefault(tc["index"], {"id": None, "name": None, "arguments": ""})
                if tc.get("id"):
                    assert slot["id"] is None, "a tool call id was sent twice for one index"
                    slot["id"] = tc["id"]
                fn = tc.get("function") or {}
                if fn.get("name"):
                    slot["name"] = fn["name"]
                slot["arguments"] += fn.get("arguments") or ""
            if ch.get("finish_reason"):
                finish, native = ch["finish_reason"], ch.get("native_finish_reason")
    return {"content": "".join(content), "reasoning": "".join(reasoning),
            "tool_calls": [calls[i] for i in sorted(calls)], "finish_reason": finish, "native": native}
