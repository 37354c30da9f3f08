"""What the router reads of a request: the conversation, the tools offered, the output format, the length budget.

One :class:`RouteRequest` comes from a chat-completions body (the gateway, ``POST /route``, ``route --batch`` lines) or
from a bare prompt (the shorthand of ``metarouter route "..."`` and of a batch line's ``prompt``), so that the gateway
and the command line see the same request and give the same decision.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import orjson

from .encoder import estimate_prompt_tokens

#: names of :meth:`RouteRequest.features`, in order (the router standardises them with training statistics)
REQUEST_FEATURES = ("has_tools", "log_n_tools", "log_tool_chars", "json_mode", "json_schema")
TOOL_TEXT_CHARS = 4_000  # the tools' names and descriptions that enter the prompt embedding


class RequestError(ValueError):
    """A request the router cannot read (names the field)."""


@dataclass(frozen=True)
class RouteRequest:
    messages: list[dict] | str
    tools: tuple[dict, ...] = ()
    tool_choice_none: bool = False
    json_mode: bool = False
    json_schema: bool = False
    max_tokens: int | None = None
    tools_chars: int = 0

    @classmethod
    def from_prompt(cls, prompt: str, tools: list[dict] | None = None) -> RouteRequest:
        return cls.from_body({"prompt": prompt, **({"tools": tools} if tools else {})})

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> RouteRequest:
        """A chat-completions body (``messages`` or the ``prompt`` shorthand, ``tools``, ``response_format``,
        ``max_tokens``/``max_completion_tokens``). Raises :class:`RequestError` naming what is malformed."""
        if not isinstance(body, dict):
            raise RequestError("a request must be a JSON object")
        if "messages" in body:
            messages = body["messages"]
            if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
                raise RequestError("`messages` must be an array of message objects")
        elif "prompt" in body:
            if not isinstance(body["prompt"], str):
                raise RequestError("`prompt` must be a string")
            messages = [{"role": "user", "content": body["prompt"]}]
        else:
            raise RequestError("a request needs `messages` (or the `prompt` shorthand)")
        tools = body.get("tools") or ()
        if not isinstance(tools, (list, tuple)) or not all(isinstance(t, dict) for t in tools):
            raise RequestError("`tools` must be an array of tool objects")
        rf = body.get("response_format") or {}
        if not isinstance(rf, dict):
            raise RequestError("`response_format` must be an object")
        mt = body.get("max_completion_tokens", body.get("max_tokens"))
        if mt is not None and (isinstance(mt, bool) or not isinstance(mt, int) or mt < 1):
            raise RequestError("`max_tokens` must be a positive integer")
        tools_chars = len(orjson.dumps(list(tools))) if tools else 0
        return cls(messages=messages, tools=tuple(tools), tool_choice_none=body.get("tool_choice") == "none",
                   json_mode=rf.get("type") in ("json_object", "json_schema"),
                   json_schema=rf.get("type") == "json_schema", max_tokens=mt, tools_chars=tools_chars)

    @property
    def uses_tools(self) -> bool:
        return bool(self.tools) and not self.tool_choice_none

    def prompt_tokens(self) -> int:
        """Estimated prompt tokens: the messages plus the tool definitions (sent with every request)."""
        return estimate_prompt_tokens(self.messages) + self.tools_chars // 4

    def tool_text(self) -> str:
        """The tools' names and descriptions, as the prompt embedding reads them."""
        parts: list[str] = []
        size = 0
        for t in self.tools:
            f = t.get("function") if isinstance(t.get("function"), dict) else t
            s = f"{f.get('name', '')}: {f.get('description', '')}".replace("_", " ")
            parts.append(s)
            size += len(s)
            if size > TOOL_TEXT_CHARS:
                break
        return "\n".join(parts)[:TOOL_TEXT_CHARS]

    def features(self) -> list[float]:
        """Raw values of :data:`REQUEST_FEATURES`."""
        n = len(self.tools) if self.uses_tools else 0
        return [float(n > 0), math.log1p(n), math.log1p(self.tools_chars if n else 0), float(self.json_mode),
                float(self.json_schema)]
