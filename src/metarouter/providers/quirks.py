"""The OpenAI-compatible families' departures from OpenAI's format, as small subclasses of the reference adapter.

* OpenAI o1/o3 reasoning models: ``max_completion_tokens`` instead of ``max_tokens``; no sampling parameters;
  o1-preview/o1-mini take neither a system nor a developer message (system text becomes a user message), nor
  tools or response_format.
* DeepSeek: the reasoner returns its chain of thought as ``reasoning_content`` (OpenRouter calls it
  ``reasoning``), refuses it back in the history, and takes no sampling, tool or JSON parameters.
* Mistral: tool-call ids must be 9 alphanumeric characters (ids minted elsewhere are rewritten, consistently in
  calls and results), ``random_seed`` instead of ``seed``, ``safe_prompt`` of its own.
* Llama hosts (Together, Fireworks, DeepInfra): each names the same open models differently.
"""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import replace
from typing import Any

import orjson

from ..catalog import Model
from .base import ProviderConfig, UpstreamRequest
from .common import Param, reasoning_of
from .openai_compat import OPENAI_PARAMETERS, OpenAICompatAdapter, forwarded

_SAMPLING = ("temperature", "top_p", "presence_penalty", "frequency_penalty", "logit_bias", "logprobs",
             "top_logprobs", "n")


# --------------------------------------------------------------------------------------------------- OpenAI

_REASONING = re.compile(r"^(o1|o3|o4)(-|$)")


@functools.lru_cache(maxsize=1024)
def is_reasoning_model(native: str) -> bool:
    """OpenAI's o-series (asked on every request to an OpenAI model: cached per native name)."""
    return _REASONING.match(native) is not None


def is_o1_legacy(native: str) -> bool:
    """o1-preview and o1-mini: the first reasoning models, without system/developer messages or tools."""
    return native.startswith(("o1-preview", "o1-mini"))


def takes_reasoning_effort(model: Model) -> bool:
    """Whether an OpenAI model takes ``reasoning_effort``: o1 and later o-series models by name, and any model whose
    catalog entry says ``reasoning_control`` (models added in the config)."""
    native = model.native_model
    return model.reasoning_control or (is_reasoning_model(native) and not is_o1_legacy(native))


class OpenAIAdapter(OpenAICompatAdapter):
    """OpenAI itself: the reference adapter, plus the o-series rules (by native model name)."""

    param_table = tuple(replace(p, note="o-series: → max_completion_tokens") if p.name == "max_tokens" else p
                        for p in OPENAI_PARAMETERS) + (
        Param("reasoning", None, needs="reasoning_control", note="→ reasoning_effort; a budget → its effort level"),)

    def supported_parameters(self, model: Model) -> list[str]:
        if not model.reasoning_control and takes_reasoning_effort(model):
            model = replace(model, reasoning_control=True)  # o1 and later o-series models: by their name
        params = super().supported_parameters(model)
        native = model.native_model
        if not is_reasoning_model(native):
            return params
        params = [p for p in params if p not in _SAMPLING]  # max_tokens is renamed, not dropped
        if is_o1_legacy(native):
            drop = {"tools", "tool_choice", "parallel_tool_calls", "response_format"}
            params = [p for p in params if p not in drop]
        return params

    def translate_body(self, body: dict[str, Any], model: Model, *, stream: bool) -> dict[str, Any]:
        out = super().translate_body(body, model, stream=stream)
        reasoning = reasoning_of(body) if takes_reasoning_effort(model) else None
        if reasoning is not None and "reasoning_effort" not in out:
            limit = body.get("max_completion_tokens") or body.get("max_tokens") or model.max_output()
            effort = reasoning.effort_for(limit)
            if effort is not None:  # (`enabled: false` alone: the model's default, as o-series always reason)
                out["reasoning_effort"] = effort
        native = model.native_model
        if not is_reasoning_model(native):
            return out
        if "max_tokens" in out:
            out.setdefault("max_completion_tokens", out["max_tokens"])
            del out["max_tokens"]
        messages = out["messages"]  # copies already
        if is_o1_legacy(native):
            # no system or developer role at all: the instructions become (the start of) a user turn
            for m in messages:
                if m.get("role") in ("system", "developer"):
                    m["role"] = "user"
        else:
            for m in messages:
                if m.get("role") == "system":
                    m["role"] = "developer"
        return out


# ------------------------------------------------------------------------------------------------- DeepSeek

DEEPSEEK_PARAMETERS: tuple[Param, ...] = (
    *forwarded("temperature", "top_p", "max_tokens", "stop", "presence_penalty", "frequency_penalty", "logprobs",
               "top_logprobs"),
    *forwarded("tools", "tool_choice", needs="tools"),
    Param("response_format", "response_format", lambda rf: {"type": "json_object"}
          if isinstance(rf, dict) and rf.get("type") == "json_schema" else rf,  # JSON mode, not schemas
          needs="json_output", note="json_schema → json_object"),
    Param("max_completion_tokens", "max_tokens", note="→ max_tokens"),
)
_REASONER_UNSUPPORTED = {"temperature", "top_p", "presence_penalty", "frequency_penalty", "logprobs",
                         "top_logprobs", "tools", "tool_choice", "response_format"}


def is_deepseek_reasoner(native: str) -> bool:
    return "reasoner" in native or native.lower().startswith("deepseek-r1")


class DeepSeekAdapter(OpenAICompatAdapter):
    """(The reasoner answers 400 when its own ``reasoning_content`` comes back in the history: the message fields
    kept are OpenAI's, which leave it out.)"""

    param_table = DEEPSEEK_PARAMETERS

    def supported_parameters(self, model: Model) -> list[str]:
        params = super().supported_parameters(model)
        if is_deepseek_reasoner(model.native_model):
            params = [p for p in params if p not in _REASONER_UNSUPPORTED]
        return params

    def _fix_message(self, message: dict[str, Any]) -> None:
        if "reasoning_content" in message:
            reasoning = message.pop("reasoning_content")
            if reasoning is not None:
                message["reasoning"] = reasoning


# -------------------------------------------------------------------------------------------------- Mistral

def _mistral_tools(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mistral's Function requires ``parameters``, OpenAI's does not."""
    return [t if t["function"].get("parameters") is not None else
            {**t, "function": {**t["function"], "parameters": {"type": "object", "properties": {}}}} for t in tools]


MISTRAL_PARAMETERS: tuple[Param, ...] = (
    *forwarded("temperature", "top_p", "max_tokens", "stop"),
    Param("seed", "random_seed", note="→ random_seed"),
    *forwarded("n", "presence_penalty", "frequency_penalty"),
    Param("tools", "tools", lambda t: _mistral_tools(t) if t else t, needs="tools"),
    Param("tool_choice", "tool_choice", lambda c: "any" if c == "required" else c, needs="tools",
          note="required → any"),
    *forwarded("parallel_tool_calls", needs="tools"),
    *forwarded("response_format", needs="json_output"),
    *forwarded("safe_prompt", "prediction"),
    Param("max_completion_tokens", "max_tokens", note="→ max_tokens"),
)
#: what Mistral's message types take (``mistralai`` SDK: SystemMessage, UserMessage, AssistantMessage,
#: ToolMessage); its API refuses anything else (422 ``extra_forbidden``): a user's ``name``, an assistant's
#: ``refusal``, ``annotations`` or ``reasoning``
MISTRAL_MESSAGE_FIELDS: dict[str, frozenset[str]] = {
    "system": frozenset({"role", "content"}),
    "user": frozenset({"role", "content"}),
    "assistant": frozenset({"role", "content", "tool_calls", "prefix"}),
    "tool": frozenset({"role", "content", "tool_call_id", "name"}),
}
_MISTRAL_ROLES = {"developer": "system", "function": "tool"}  # roles Mistral lacks → their equivalent
_MISTRAL_ID = re.compile(r"^[a-zA-Z0-9]{9}$")
_ALNUM = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


def mistral_tool_id(tool_call_id: str) -> str:
    """A 9-character alphanumeric id, the same for the same input (so a call and its result still match)."""
    if _MISTRAL_ID.match(tool_call_id or ""):
        return tool_call_id
    n = int.from_bytes(hashlib.sha256((tool_call_id or "").encode()).digest()[:8], "big")
    out = []
    for _ in range(9):
        n, r = divmod(n, 62)
        out.append(_ALNUM[r])
    return "".join(out)


class MistralAdapter(OpenAICompatAdapter):
    param_table = MISTRAL_PARAMETERS
    message_fields = MISTRAL_MESSAGE_FIELDS
    stream_usage_option = False  # Mistral puts usage on a stream's last chunk unasked, and refuses the field

    def translate_body(self, body: dict[str, Any], model: Model, *, stream: bool) -> dict[str, Any]:
        out = super().translate_body(body, model, stream=stream)
        for m in out["messages"]:
            if m.get("tool_calls"):
                m["tool_calls"] = [{**tc, "id": mistral_tool_id(tc.get("id") or "")} for tc in m["tool_calls"]]
                if m.get("content") is None:
                    m["content"] = ""
            if m.get("role") == "tool" and m.get("tool_call_id") is not None:
                m["tool_call_id"] = mistral_tool_id(m["tool_call_id"])
        return out

    def translate_messages(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        renamed = [{**m, "role": _MISTRAL_ROLES[m["role"]]} if m.get("role") in _MISTRAL_ROLES else m
                   for m in messages]
        return super().translate_messages(renamed)


# ----------------------------------------------------------------------------------------------- Llama hosts

#: OpenRouter model id → each host's own name for it (a model whose catalog entry names another provider is
#: renamed here when routed to one of these hosts)
LLAMA_NAMES: dict[str, dict[str, str]] = {
    "together": {
        "meta-llama/llama-3.1-8b-instruct": "meta-llama/Meta-Llama-3.1-8B-Instruct-Turbo",
        "meta-llama/llama-3.1-70b-instruct": "meta-llama/Meta-Llama-3.1-70B-Instruct-Turbo",
        "meta-llama/llama-3.1-405b-instruct": "meta-llama/Meta-Llama-3.1-405B-Instruct-Turbo",
        "meta-llama/llama-3.3-70b-instruct": "meta-llama/Llama-3.3-70B-Instruct-Turbo",
    },
    "fireworks": {
        "meta-llama/llama-3.1-8b-instruct": "accounts/fireworks/models/llama-v3p1-8b-instruct",
        "meta-llama/llama-3.1-70b-instruct": "accounts/fireworks/models/llama-v3p1-70b-instruct",
        "meta-llama/llama-3.1-405b-instruct": "accounts/fireworks/models/llama-v3p1-405b-instruct",
        "meta-llama/llama-3.3-70b-instruct": "accounts/fireworks/models/llama-v3p3-70b-instruct",
    },
    "deepinfra": {
        "meta-llama/llama-3.1-8b-instruct": "meta-llama/Meta-Llama-3.1-8B-Instruct",
        "meta-llama/llama-3.1-70b-instruct": "meta-llama/Meta-Llama-3.1-70B-Instruct",
        "meta-llama/llama-3.1-405b-instruct": "meta-llama/Meta-Llama-3.1-405B-Instruct",
        "meta-llama/llama-3.3-70b-instruct": "meta-llama/Llama-3.3-70B-Instruct",
    },
}

LLAMA_HOST_PARAMETERS: tuple[Param, ...] = (
    *forwarded("temperature", "top_p", "top_k", "max_tokens", "stop", "seed", "n", "presence_penalty",
               "frequency_penalty", "repetition_penalty", "min_p", "logit_bias", "logprobs", "top_logprobs"),
    *forwarded("tools", "tool_choice", needs="tools"),
    *forwarded("response_format", needs="json_output"),
    *forwarded("user"),
    Param("max_completion_tokens", "max_tokens", note="→ max_tokens"),
)


class LlamaHostAdapter(OpenAICompatAdapter):
    param_table = LLAMA_HOST_PARAMETERS

    def native_name(self, model: Model, provider: ProviderConfig) -> str:
        """The host's name for ``model`` (one adapter serves every host: the provider says which)."""
        if model.provider == provider.name:
            return model.native_model
        return LLAMA_NAMES.get(provider.name, {}).get(model.id.lower(), model.native_model)

    def build_request(
        self, body: dict[str, Any], model: Model, provider: ProviderConfig, *, stream: bool
    ) -> UpstreamRequest:
        req = super().build_request(body, model, provider, stream=stream)
        name = self.native_name(model, provider)
        if name != model.native_model:
            payload = orjson.loads(req.body)
            payload["model"] = name
            req.body = orjson.dumps(payload)
        return req
