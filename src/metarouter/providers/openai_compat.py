"""OpenAI-compatible upstreams: OpenAI itself and the OpenAI-shaped APIs of DeepSeek, Mistral and Llama hosts.

The request is forwarded nearly as is: the model name becomes the provider's native name, OpenRouter-only fields
are removed, parameters and message fields the upstream does not take are dropped (the ``reasoning`` this gateway
returns comes back in clients' histories), and streams ask for usage in their last chunk where the upstream needs
to be asked.
"""

from __future__ import annotations

from typing import Any

import orjson

from ..catalog import Model
from ..errors import GatewayError
from .base import ProviderConfig, SSEEvent, UpstreamRequest
from .common import BaseAdapter, Param

def forwarded(*names: str, needs: str | None = None) -> tuple[Param, ...]:
    """Rows of parameters an OpenAI-compatible upstream takes under their own names."""
    return tuple(Param(n, n, needs=needs) for n in names)


#: OpenAI chat-completions parameters forwarded to OpenAI-compatible upstreams (a row's ``target`` is the field it
#: is sent as). ``messages``, ``model`` and ``stream`` are handled separately; everything not listed (OpenRouter's
#: ``models``, ``provider``, ``plugins``, ``transforms``, ``route``, ``session_id``…) stays in the gateway.
OPENAI_PARAMETERS: tuple[Param, ...] = (
    *forwarded("temperature", "top_p", "max_tokens", "max_completion_tokens", "stop", "seed", "n", "presence_penalty",
               "frequency_penalty", "logit_bias", "logprobs", "top_logprobs"),
    *forwarded("tools", "tool_choice", "parallel_tool_calls", needs="tools"),
    *forwarded("response_format", needs="json_output"),
    *forwarded("user"),
    *forwarded("reasoning_effort", needs="reasoning_control"),
    *forwarded("metadata", "store", "service_tier", "prediction", "modalities", "audio"),
)

#: The fields each message role may carry (OpenAI's ``ChatCompletion*MessageParam`` types). Anything else on a
#: message — OpenRouter's ``reasoning``/``reasoning_details`` echoed back by clients, a response's ``annotations`` —
#: is an unknown field to the upstream, and strict upstreams refuse the whole request over it.
OPENAI_MESSAGE_FIELDS: dict[str, frozenset[str]] = {
    "system": frozenset({"role", "content", "name"}),
    "developer": frozenset({"role", "content", "name"}),
    "user": frozenset({"role", "content", "name"}),
    "assistant": frozenset({"role", "content", "name", "refusal", "tool_calls", "function_call", "audio"}),
    "tool": frozenset({"role", "content", "tool_call_id"}),
    "function": frozenset({"role", "content", "name"}),
}

FINISH_REASONS = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "content_filter": "content_filter",
    "insufficient_system_resource": "error",  # DeepSeek
    "model_length": "length",  # Mistral
    "error": "error",
    "eos": "stop",
    "end_turn": "stop",
}


def normalize_finish_reason(native: str | None) -> str | None:
    if native is None:
        return None
    return FINISH_REASONS.get(native, "stop")


def normalize_usage(usage: dict[str, Any] | None) -> dict[str, Any] | None:
    """Keep OpenAI's usage fields, with total_tokens always present."""
    if not usage:
        return None
    pt = int(usage.get("prompt_tokens") or 0)
    ct = int(usage.get("completion_tokens") or 0)
    out: dict[str, Any] = {"prompt_tokens": pt, "completion_tokens": ct, "total_tokens": pt + ct}
    ptd = usage.get("prompt_tokens_details") or {}
    cached = ptd.get("cached_tokens") or usage.get("prompt_cache_hit_tokens")  # (DeepSeek's name for it)
    if cached:
        out["prompt_tokens_details"] = {"cached_tokens": int(cached)}
    ctd = usage.get("completion_tokens_details") or {}
    if ctd.get("reasoning_tokens"):
        out["completion_tokens_details"] = {"reasoning_tokens": int(ctd["reasoning_tokens"])}
    return out


class OpenAICompatAdapter(BaseAdapter):
    """Adapter for upstreams that speak OpenAI's chat-completions wire format."""

    wire = "openai"

    #: parameters this upstream family takes; subclasses narrow it (and rename or map values) for their quirks
    param_table = OPENAI_PARAMETERS
    #: the fields a message of each role may carry upstream
    message_fields: dict[str, frozenset[str]] = OPENAI_MESSAGE_FIELDS
    #: whether a stream must ask for its usage chunk (``stream_options.include_usage``); upstreams that always
    #: send usage and refuse the field set this to False
    stream_usage_option: bool = True

    def __init__(self) -> None:
        self._rows = {p.name: p for p in self.param_table}

    def translate_body(self, body: dict[str, Any], model: Model, *, stream: bool) -> dict[str, Any]:
        """The body for upstream: each supported parameter's value (mapped by its row) under its row's target; a
        renamed parameter never overwrites the one of that name (``max_tokens`` wins over ``max_completion_tokens``
        where the upstream has only the first)."""
        allowed = set(self.supported_parameters(model))
        out: dict[str, Any] = {"model": model.native_model, "messages": self.translate_messages(body["messages"])}
        for key, value in body.items():
            if key not in allowed or value is None:
                continue
            row = self._rows[key]
            if row.target is None or (row.target != key and row.target in out):
                continue
            if row.transform is not None and (value := row.transform(value)) is None:
                continue
            out[row.target] = value
        if stream:
            out["stream"] = True
            if self.stream_usage_option:
                out["stream_options"] = {"include_usage": True}
        return out

    def translate_messages(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Copies of ``messages`` with only the fields their role takes upstream (the caller's body is untouched)."""
        out = []
        for m in messages:
            fields = self.message_fields.get(m.get("role"))  # type: ignore[arg-type]
            msg = {k: v for k, v in m.items() if k in fields} if fields is not None else dict(m)
            if isinstance(msg.get("content"), list):  # Anthropic-style cache hints mean nothing here
                msg["content"] = [{k: v for k, v in p.items() if k != "cache_control"} if isinstance(p, dict) else p
                                  for p in msg["content"]]
            out.append(msg)
        return out

    def build_request(
        self, body: dict[str, Any], model: Model, provider: ProviderConfig, *, stream: bool
    ) -> UpstreamRequest:
        headers = {"Content-Type": "application/json", **provider.headers}
        if provider.api_key:
            headers["Authorization"] = f"Bearer {provider.api_key}"
        if stream:
            headers["Accept"] = "text/event-stream"
        url = provider.base_url.rstrip("/") + "/chat/completions"
        return UpstreamRequest("POST", url, headers, orjson.dumps(self.translate_body(body, model, stream=stream)))

    def parse_response(self, data: bytes) -> dict[str, Any]:
        try:
            resp = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise GatewayError(502, f"upstream returned invalid JSON: {exc}") from None
        if not isinstance(resp, dict) or not isinstance(resp.get("choices"), list):
            raise GatewayError(502, "upstream response has no choices")
        for choice in resp["choices"]:
            native = choice.get("finish_reason")
            choice["native_finish_reason"] = native
            choice["finish_reason"] = normalize_finish_reason(native)
            self._fix_message(choice.get("message") or {})
        resp["usage"] = normalize_usage(resp.get("usage"))
        return resp

    def _fix_message(self, message: dict[str, Any]) -> None:
        """Hook for families that put extra fields on the message (DeepSeek's ``reasoning_content``)."""

    def stream_translator(self, model: Model) -> "OpenAIStreamTranslator":
        return OpenAIStreamTranslator(self)

    def error_details(self, body: Any) -> tuple[Any, dict[str, Any]]:
        if not isinstance(body, dict):
            return None, {}
        err = body.get("error")
        if isinstance(err, dict):
            return err.get("message"), {k: err[k] for k in ("type", "code", "param") if err.get(k) is not None}
        if isinstance(err, str):
            return err, {}
        for key in ("message", "detail"):  # Mistral, Together; FastAPI-style hosts
            if isinstance(body.get(key), str):
                return body[key], {}
        return None, {}


class OpenAIStreamTranslator:
    """OpenAI chunks in, OpenAI chunks out: only finish reasons and usage are normalized."""

    def __init__(self, adapter: OpenAICompatAdapter):
        self._adapter = adapter
        self.usage: dict[str, Any] | None = None
        self.done = False  # the upstream said its stream is complete

    def feed(self, event: SSEEvent) -> list[dict[str, Any]]:
        data = event.data
        if data == "[DONE]":
            self.done = True
            return []
        if not data:
            return []
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise GatewayError(502, "upstream sent an invalid stream chunk") from None
        if not isinstance(chunk, dict):
            return []
        if "error" in chunk and not chunk.get("choices"):
            err = chunk["error"] if isinstance(chunk["error"], dict) else {"message": str(chunk["error"])}
            raise GatewayError(502, str(err.get("message") or "upstream stream error"), metadata={"upstream": err})
        usage = chunk.get("usage")
        if usage:
            self.usage = normalize_usage(usage)
        choices = chunk.get("choices") or []
        out_choices = []
        for choice in choices:
            native = choice.get("finish_reason")
            c = {"index": choice.get("index", 0), "delta": choice.get("delta") or {}, "finish_reason": None}
            if native is not None:
                c["finish_reason"] = normalize_finish_reason(native)
                c["native_finish_reason"] = native
            if choice.get("logprobs") is not None:
                c["logprobs"] = choice["logprobs"]
            self._adapter._fix_message(c["delta"])
            out_choices.append(c)
        if not out_choices:
            return []
        out: dict[str, Any] = {"choices": out_choices}
        if chunk.get("system_fingerprint"):
            out["system_fingerprint"] = chunk["system_fingerprint"]
        return [out]

    def finish(self) -> list[dict[str, Any]]:
        return []
