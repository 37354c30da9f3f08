"""The OpenAPI 3.1 description of metarouter's public API, served at ``GET /api/v1/openapi.json``.

Written as data, by hand, to match what the code accepts: the request constraints are those of
``validation.py`` (and ``admin.py``, ``activity.py``), so that a body valid here is one the server does not refuse
for its shape, and a body invalid here is one it answers with a 400. (A valid body may still be refused for what it
names: an unknown model is a 400, an unaffordable one a 402.) ``tests/e2e/test_schemathesis.py`` fuzzes the server
from this document.
"""

from __future__ import annotations

from typing import Any

from ..gateway.cache import MAX_TTL


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("metarouter")
    except PackageNotFoundError:
        return "0"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ERROR_TEXT = {
    400: "Invalid request (the message says what is wrong; `metadata.param` names the field)",
    401: "Missing or invalid key, or the key has expired (`expires_at`)",
    402: "Insufficient credit: the key's limit or the account's credit cannot cover the worst case",
    403: "Key disabled, or not the admin key, or the admin API is disabled",
    404: "Not found",
    405: "Method not allowed",
    408: "The upstream timed out, or `timeouts.total` ran out for the whole request (every try and fallback)",
    413: "Request body too large",
    429: "Rate limited (key rpm/tpm, or the upstream); see `Retry-After`",
    431: "Request line and headers too large (32 KiB together, on every route)",
    502: "The upstream failed or answered something unusable",
    503: "No provider can answer now (all failed, or their circuits are open), or the gateway's database is "
         "unreachable; see `Retry-After`",
}


def _responses(ok: dict[str, Any], *codes: int, ok_status: str = "200") -> dict[str, Any]:
    out = {ok_status: ok}
    for c in codes:
        out[str(c)] = {"$ref": f"#/components/responses/E{c}"}
    return out


# --- request pieces -------------------------------------------------------------------------------------------

# Only what validation.py checks is constrained; other documented fields are passed on as they are (described,
# not typed, so that the document never promises a 400 the server does not give).
_TEXT_PART = {
    "type": "object",
    "required": ["type", "text"],
    "properties": {"type": {"const": "text"}, "text": {"type": "string"},
                   "cache_control": {"description": "e.g. {type: ephemeral}, for providers that cache prompts"}},
}
_IMAGE_PART = {
    "type": "object",
    "required": ["type", "image_url"],
    "properties": {
        "type": {"const": "image_url"},
        "image_url": {"oneOf": [
            {"type": "string", "minLength": 1},
            {"type": "object", "required": ["url"],
             "properties": {"url": {"type": "string", "minLength": 1},
                            "detail": {"description": "auto, low or high"}}},
        ]},
    },
}
_AUDIO_PART = {
    "type": "object", "required": ["type"],
    "properties": {"type": {"const": "input_audio"}, "input_audio": {"description": "{data: base64, format}"}},
}
_FILE_PART = {
    "type": "object", "required": ["type"],
    "properties": {"type": {"const": "file"}, "file": {"description": "{filename, file_data}"}},
}

_TOOL_CALL = {
    "type": "object",
    "required": ["function"],
    "properties": {
        "id": {"description": "The call's id (a string)"},
        "type": {"description": "function"},
        "function": {"type": "object", "description": "{name, arguments (a JSON string)}"},
    },
}

_MESSAGE = {
    "type": "object",
    "description": "`content` may be null or absent only for an assistant message (one that carries "
                   "`tool_calls`); a `tool` message needs `tool_call_id`.",
    "required": ["role"],
    "properties": {
        "role": {"type": "string", "enum": ["assistant", "developer", "function", "system", "tool", "user"]},
        "content": {"oneOf": [
            {"type": "string"},
            {"type": "array", "items": {"oneOf": [_TEXT_PART, _IMAGE_PART, _AUDIO_PART, _FILE_PART]}},
            {"type": "null"},
        ]},
        "name": {"description": "A participant name (a string)"},
        "tool_call_id": {"description": "The id of the call a `tool` message answers (a string; required there)"},
        "tool_calls": {"type": ["array", "null"], "items": _TOOL_CALL},
    },
    # The conditions of validation.py that a plain schema cannot say by type alone:
    "allOf": [
        {"if": {"properties": {"role": {"const": "tool"}}, "required": ["role"]},
         "then": {"required": ["tool_call_id"], "properties": {"tool_call_id": {"type": "string"}}}},
        {"if": {"properties": {"role": {"not": {"const": "assistant"}}}, "required": ["role"]},
         "then": {"required": ["content"], "properties": {"content": {"not": {"type": "null"}}}}},
    ],
}

_TOOL = {
    "type": "object",
    "required": ["function"],
    "properties": {
        "type": {"description": "function"},
        "function": {"type": "object", "required": ["name"],
                     "properties": {"name": {"type": "string"},
                                    "description": {"description": "What the function does (a string)"},
                                    "parameters": {"description": "A JSON Schema of the arguments"},
                                    "strict": {"description": "true for strict argument adherence"}}},
    },
}


_NAMES = {"type": ["array", "null"], "items": {"type": "string", "maxLength": 256},
          "description": "Provider names: as the config names them (`together`) or their display names "
                         "(`Together`), any case; an unknown name is a 400."}
_MAX_PRICE = {"anyOf": [{"type": "number", "minimum": 0}, {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?$"},
                        {"type": "null"}]}
_NOTHING = {"anyOf": [{"type": "null"}, {"const": False}, {"type": "array", "maxItems": 0},
                      {"type": "object", "maxProperties": 0}],
            "description": "Not supported (no such data on the endpoints here): accepted only when it asks for "
                           "nothing (null, false, [] or {})."}
_SORT_BY = {"enum": ["price", "throughput", "latency", None]}
#: OpenRouter's provider routing object (gateway/endpoints.py): what it checks, exactly
PROVIDER_PREFS = {
    "type": ["object", "null"],
    "additionalProperties": False,
    "description": "OpenRouter's provider routing: which endpoints of each model may serve the request, in which "
                   "order. Without it a model's endpoints are tried cheapest first, each falling back to the next. "
                   "`model:nitro` is `sort: throughput`, `model:floor` is `sort: price`. When the preferences leave "
                   "a model no endpoint, the next model of `models` is tried; none left is a 404.",
    "properties": {
        "order": {**_NAMES, "description": "These providers first, in this order; then the others unless "
                                           "`allow_fallbacks` is false."},
        "only": {**_NAMES, "description": "Only these providers."},
        "ignore": {**_NAMES, "description": "Never these providers."},
        "allow_fallbacks": {"type": ["boolean", "null"],
                            "description": "false: only the `order` providers (without `order`: the first)."},
        "require_parameters": {"type": ["boolean", "null"],
                               "description": "Only endpoints whose provider takes every parameter sent."},
        "data_collection": {"enum": ["allow", "deny", None],
                            "description": "deny: only providers configured `retains_data: false`."},
        "zdr": {"type": ["boolean", "null"], "description": "true: as `data_collection: deny`."},
        "sort": {"anyOf": [_SORT_BY, {"type": "object", "additionalProperties": False, "properties": {
                     "by": _SORT_BY, "partition": {"enum": ["model", None]}}}],
                 "description": "price (the request's estimated cost), throughput (tokens/s) or latency (time to "
                                "first token), measured from this gateway's records of the last 30 minutes; "
                                "endpoints without records after those with, cheapest first."},
        "max_price": {"type": ["object", "null"], "additionalProperties": False,
                      "description": "Endpoints priced above are left out: prompt and completion in USD per 1M "
                                     "tokens (request, image, audio: USD; nothing here charges them).",
                      "properties": {k: _MAX_PRICE for k in ("prompt", "completion", "request", "image", "audio")}},
        **{k: _NOTHING for k in ("quantizations", "enforce_distillable_text", "preferred_min_throughput",
                                 "preferred_max_latency", "options")},
    },
}


def chat_request_schema(max_messages: int = 2000) -> dict[str, Any]:
    return {
        "type": "object",
        "description": "OpenAI's chat-completions body with OpenRouter's extensions. Fields not listed here are "
                       "passed to the provider where it supports them, else ignored.",
        "required": ["messages"],
        "properties": {
            "model": {"type": ["string", "null"], "maxLength": 256,
                      "description": "A model id from `GET /models`, or `openrouter/auto`. Required unless `models` "
                                     "is given.",
                      "examples": ["openai/gpt-4o-mini-2024-07-18", "openrouter/auto"]},
            "models": {"type": ["array", "null"], "items": {"type": "string", "maxLength": 256},
                       "description": "Fallback models, tried in order after `model`."},
            "messages": {"type": "array", "minItems": 1, "maxItems": max_messages, "items": _MESSAGE},
            "stream": {"type": ["boolean", "null"]},
            "stream_options": {"type": ["object", "null"],
                               "properties": {"include_usage": {"description": "true: a final usage chunk"}}},
            "temperature": {"type": ["number", "null"], "minimum": 0, "maximum": 2},
            "top_p": {"type": ["number", "null"], "minimum": 0, "maximum": 1},
            "presence_penalty": {"type": ["number", "null"], "minimum": -2, "maximum": 2},
            "frequency_penalty": {"type": ["number", "null"], "minimum": -2, "maximum": 2},
            # JSON integers beyond 64 bits are read as floats, and floats are refused
            "max_tokens": {"type": ["integer", "null"], "minimum": 1, "maximum": 2**64 - 1},
            "max_completion_tokens": {"type": ["integer", "null"], "minimum": 1, "maximum": 2**64 - 1},
            "seed": {"type": ["integer", "null"], "minimum": -(2**63), "maximum": 2**63 - 1},
            "n": {"type": ["integer", "null"], "minimum": 1, "maximum": 128,
                  "description": "Choices to generate where the provider supports it (OpenAI, Mistral, "
                                 "Together); elsewhere n > 1 is a 400."},
            "top_logprobs": {"type": ["integer", "null"], "minimum": 0, "maximum": 20},
            "logprobs": {"type": ["boolean", "null"]},
            "stop": {"oneOf": [{"type": "string"},
                               {"type": "array", "items": {"type": "string"}, "maxItems": 16},
                               {"type": "null"}]},
            "tools": {"type": ["array", "null"], "items": _TOOL},
            "tool_choice": {"oneOf": [
                {"type": "string", "enum": ["auto", "none", "required"]},
                {"type": "object", "required": ["function"],
                 "properties": {"type": {"description": "function"},
                                "function": {"type": "object", "required": ["name"],
                                             "properties": {"name": {"type": "string"}}}}},
                {"type": "null"},
            ]},
            "response_format": {"oneOf": [
                {"type": "object", "required": ["type"],
                 "properties": {"type": {"type": "string", "enum": ["text", "json_object"]}}},
                {"type": "object", "required": ["type", "json_schema"],
                 "properties": {"type": {"const": "json_schema"},
                                "json_schema": {"type": "object", "description": "{name, schema, strict}"}}},
                {"type": "null"},
            ]},
            "reasoning": {"type": ["object", "null"],
                          "description": "OpenRouter's reasoning control: `effort` or `max_tokens` (not both), mapped "
                                         "for models with `reasoning_control` and dropped elsewhere; `exclude` keeps "
                                         "reasoning out of the answer on every model.",
                          "properties": {"effort": {"enum": ["xhigh", "high", "medium", "low", "minimal", "none",
                                                             None]},
                                         "max_tokens": {"type": ["integer", "null"], "minimum": 0,
                                                        "maximum": 2**63 - 1},
                                         "exclude": {"type": ["boolean", "null"]},
                                         "enabled": {"type": ["boolean", "null"]}},
                          "not": {"type": "object", "required": ["effort", "max_tokens"], "properties": {
                              "effort": {"type": "string"}, "max_tokens": {"type": "integer"}}}},
            "reasoning_effort": {"enum": ["xhigh", "high", "medium", "low", "minimal", "none", None]},
            "user": {"type": ["string", "null"]},
            "session_id": {"type": ["string", "null"],
                           "description": "Groups requests (sticky routing for `openrouter/auto`); also read from "
                                          "the `X-Session-Id` header."},
            "provider": PROVIDER_PREFS,
            "metadata": {"type": ["object", "null"]},
            "plugins": {"type": ["array", "null"],
                        "description": "OpenRouter plugins; `{id: \"auto-router\", allowed_models: [...], "
                                       "tradeoff: …}` tunes `openrouter/auto`.",
                        "items": {"description": "{id, …}; items that are not objects are ignored"}},
        },
    }


# --- response pieces ------------------------------------------------------------------------------------------

_NUM = {"type": "number"}
_NNUM = {"type": ["number", "null"]}
_NSTR = {"type": ["string", "null"]}
_NINT = {"type": ["integer", "null"]}

_USAGE = {
    "type": "object",
    "properties": {"prompt_tokens": {"type": "integer"}, "completion_tokens": {"type": "integer"},
                   "total_tokens": {"type": "integer"}, "cost": _NUM,
                   "prompt_tokens_details": {"type": "object", "properties": {
                       "cached_tokens": {"type": "integer"}, "cache_write_tokens": {"type": "integer"}}},
                   "cost_details": {"type": "object", "properties": {
                       k: _NUM for k in ("upstream_inference_cost", "upstream_inference_prompt_cost",
                                         "upstream_inference_completions_cost")}}},
}

_CHAT_RESPONSE = {
    "type": "object",
    "required": ["id", "object", "created", "model", "system_fingerprint", "choices"],
    "properties": {
        "id": {"type": "string"},
        "object": {"const": "chat.completion"},
        "created": {"type": "integer"},
        "model": {"type": "string"},
        "provider": {"type": "string"},
        "system_fingerprint": _NSTR,
        "choices": {"type": "array", "items": {
            "type": "object",
            "required": ["index", "message"],
            "properties": {"index": {"type": "integer"}, "finish_reason": _NSTR,
                           "message": {"type": "object", "properties": {"role": {"const": "assistant"},
                                                                        "content": _NSTR}}},
        }},
        "usage": _USAGE,
    },
}

# Each server-sent event (OpenAPI 3.1: the stream's schema describes one event). Comment lines
# (``: OPENROUTER PROCESSING`` keep-alives) are not events.
_SSE_EVENT = {
    "type": "object",
    "required": ["data"],
    "properties": {"data": {"type": "string", "description": "A chat.completion.chunk as JSON (the last one may "
                                                           "carry `usage` or an `error`); then `[DONE]`"},
                   "event": {"type": "string"}, "id": {"type": "string"}},
}

_MODEL = {
    "type": "object",
    "required": ["id", "name", "context_length", "pricing", "architecture"],
    "properties": {
        "id": {"type": "string"}, "canonical_slug": {"type": "string"}, "name": {"type": "string"},
        "created": {"type": "integer"}, "description": {"type": "string"},
        "context_length": {"type": "integer"},
        "architecture": {"type": "object", "properties": {
            "modality": {"type": "string"},
            "input_modalities": {"type": "array", "items": {"type": "string"}},
            "output_modalities": {"type": "array", "items": {"type": "string"}},
            "tokenizer": {"type": "string"}, "instruct_type": _NSTR}},
        "pricing": {"type": "object", "required": ["prompt", "completion"],
                    "properties": {k: {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?$"}
                                   for k in ("prompt", "completion", "request", "image", "web_search",
                                             "internal_reasoning", "input_cache_read", "input_cache_write")}},
        "top_provider": {"type": "object", "properties": {"context_length": _NINT,
                                                          "max_completion_tokens": _NINT,
                                                          "is_moderated": {"type": "boolean"}}},
        "supported_parameters": {"type": "array", "items": {"type": "string"}},
        "available": {"type": "boolean"},
    },
}

_PERCENTILES = {"anyOf": [{"type": "null"}, {"type": "object", "required": ["p50", "p75", "p90", "p99"],
                                               "properties": {p: _NUM for p in ("p50", "p75", "p90", "p99")}}]}
_ENDPOINT = {
    "type": "object",
    "required": ["name", "model_id", "model_name", "context_length", "pricing", "provider_name", "tag",
                 "supported_parameters", "status", "latency_last_30m", "throughput_last_30m"],
    "properties": {
        "name": {"type": "string"}, "model_id": {"type": "string"}, "model_name": {"type": "string"},
        "context_length": {"type": "integer"}, "pricing": _MODEL["properties"]["pricing"],
        "provider_name": {"type": "string", "description": "Its display name (as responses and records name it)"},
        "tag": {"type": "string", "description": "Its provider's config name (what `provider.only` etc. take)"},
        "quantization": _NSTR, "max_completion_tokens": _NINT, "max_prompt_tokens": _NINT,
        "supported_parameters": {"type": "array", "items": {"type": "string"}},
        "status": {"enum": [0, -5, -10], "description": "0 serving, -5 its circuit lets a probe through, -10 its "
                                                       "circuit is open"},
        "uptime_last_30m": _NNUM, "uptime_last_5m": _NNUM, "uptime_last_1d": _NNUM,
        "latency_last_30m": {**_PERCENTILES, "description": "Milliseconds to the first token (of a JSON answer: "
                                                            "the whole answer), from the last 30 minutes' records "
                                                            "(response-cache hits excluded); null without any"},
        "throughput_last_30m": {**_PERCENTILES, "description": "Completion tokens a second while generating (p90: "
                                                               "what 90 % of answers reach)"},
        "supports_implicit_caching": {"type": "boolean"},
        "available": {"type": "boolean", "description": "Its provider is configured with a key"},
    },
}
_MODEL_ENDPOINTS = {
    "type": "object",
    "required": ["id", "name", "created", "description", "architecture", "endpoints"],
    "properties": {
        "id": {"type": "string"}, "name": {"type": "string"}, "created": {"type": "integer"},
        "description": {"type": "string"}, "architecture": _MODEL["properties"]["architecture"],
        "endpoints": {"type": "array", "items": _ENDPOINT, "minItems": 1},
    },
}

_GENERATION = {
    "type": "object",
    "required": ["id", "model", "total_cost", "tokens_prompt", "tokens_completion", "status"],
    "properties": {
        "id": {"type": "string"}, "created_at": {"type": "string"}, "model": {"type": "string"},
        "requested_model": _NSTR, "provider_name": _NSTR, "router": _NSTR,
        "total_cost": _NUM, "usage": _NUM,
        "tokens_prompt": _NINT, "tokens_completion": _NINT,
        "native_tokens_reasoning": _NINT, "native_tokens_cached": _NINT,
        "latency": _NNUM, "time_to_first_token": _NNUM, "generation_time": _NNUM,
        "finish_reason": _NSTR, "streamed": {"type": ["boolean", "integer", "null"]},
        "cancelled": {"type": "boolean"}, "status": {"type": "string"},
        "http_referer": _NSTR, "origin": {"type": "string"},
        "app": {"type": "object", "properties": {"title": _NSTR, "referer": _NSTR}},
        "session_id": _NSTR, "external_user": _NSTR,
        "attempts": {"type": "array"},
        "insured": {"type": "boolean", "description": "Zero completion insurance: the answer delivered no content and "
                    "ended in an error or with no output tokens, so it was not charged (`total_cost` 0; the tokens "
                    "are still shown)"},
        "cache_hit": {"type": "boolean", "description": "Answered from the response cache: cost 0, no model called"},
    },
}

_COUNT = {"type": "integer", "minimum": 0}
#: a breakdown row of the Activity summary: counts, tokens, USD
_FIGURES = {
    "requests": _COUNT, "auto_requests": _COUNT, "errors": _COUNT, "cancelled": _COUNT, "prompt_tokens": _COUNT,
    "completion_tokens": _COUNT, "reasoning_tokens": _COUNT, "total_tokens": _COUNT, "usage": _NUM,
    "avg_latency_ms": _NNUM,
}
_ACTIVITY_SUMMARY = {
    "type": "object",
    "required": ["window", "totals", "models", "series", "apps"],
    "properties": {
        "window": {"type": "object", "required": ["since", "until", "chart_start", "chart_end", "bucket_seconds"],
                   "properties": {"since": _NSTR, "until": _NSTR, "chart_start": {"type": "string"},
                                  "chart_end": {"type": "string"}, "bucket_seconds": {"type": "integer"}}},
        "totals": {"type": "object", "required": list(_FIGURES),
                   "properties": {**_FIGURES, "first_at": _NSTR, "last_at": _NSTR}},
        "models": {"type": "array", "items": {
            "type": "object", "required": ["model", "requests", "auto_requests", "auto_share", "usage"],
            "properties": {"model": _NSTR, **_FIGURES, "auto_share": {"type": "number", "minimum": 0, "maximum": 1}}}},
        "series": {"type": "array", "items": {
            "type": "object", "required": ["bucket", "model", "requests", "usage", "total_tokens"],
            "properties": {"bucket": {"type": "string"}, "model": _NSTR, "requests": _COUNT, "usage": _NUM,
                           "total_tokens": _COUNT}}},
        "apps": {"type": "array", "items": {
            "type": "object", "required": ["app", "requests", "total_tokens", "usage"],
            "properties": {"app": {"type": "string"}, "requests": _COUNT, "total_tokens": _COUNT, "usage": _NUM}}},
        "facets": {"type": "object", "required": ["models", "apps", "providers"], "properties": {
            **{f: {"type": "array", "items": {"type": "string"}} for f in ("models", "apps", "providers")},
            "keys": {"type": "array", "description": "Admin only", "items": {
                "type": "object", "required": ["id", "label"],
                "properties": {"id": {"type": "string"}, "label": {"type": "string"}}}}}},
    },
}

_LIMIT_RESET = {"enum": ["daily", "weekly", "monthly", None],
                "description": "The limit applies to the spend of the current UTC day, week (Monday to Sunday) or "
                               "month, from its midnight; null: to all of it"}
_EXPIRES_AT = {"type": ["string", "null"], "format": "date-time", "pattern": r"(Z|\+00:00)$",
               "description": "ISO 8601 UTC timestamp from which the key is refused (401); other time zones are "
                              "refused with 400; null: never"}

_KEY_INFO = {
    "type": "object",
    "required": ["label", "usage", "limit", "limit_remaining"],
    "properties": {
        "label": {"type": "string"},
        "usage": {"type": "number", "description": "All the key has spent, USD (a reset does not zero it)"},
        "usage_daily": _NUM, "usage_weekly": _NUM, "usage_monthly": _NUM,
        "limit": _NNUM,
        "limit_remaining": {"type": ["number", "null"], "description": "What the limit leaves: of the current "
                            "period's with `limit_reset`, less what requests in flight hold"},
        "limit_reset": _LIMIT_RESET, "expires_at": _EXPIRES_AT,
        "is_free_tier": {"type": "boolean"},
        "rate_limit": {"type": "object", "properties": {"requests": {"type": "integer"},
                                                        "interval": {"type": "string"}}},
        "tokens_per_minute": _NINT,
    },
}

_CREDITS = {
    "type": "object",
    "required": ["total_credits", "total_usage", "unlimited"],
    "properties": {"total_credits": _NUM, "total_usage": _NUM,
                   "unlimited": {"type": "boolean", "description": "no account credit is set: spending is bounded "
                                 "by key limits only, and `total_credits` is the most the account could hold"}},
}

_ADMIN_KEY = {
    "type": "object",
    "required": ["id", "name", "disabled", "limit", "usage"],
    "properties": {
        "id": {"type": "string", "pattern": "^[0-9a-f]{12}$"}, "name": {"type": "string"},
        "label": {"type": "string"}, "disabled": {"type": "boolean"}, "limit": _NNUM, "limit_remaining": _NNUM,
        "limit_reset": _LIMIT_RESET, "expires_at": _EXPIRES_AT,
        "usage": _NUM, "rpm": _NINT, "tpm": _NINT, "created_at": {"type": "string"},
    },
}

_USD = {"oneOf": [{"type": "number", "minimum": 0, "maximum": 10**6},
                  {"type": "string", "description": "A decimal number of USD, 0 to 1e6"}]}
_PER_MINUTE = {"type": ["integer", "null"], "minimum": 1, "maximum": 10**9}
_LABEL = {"type": "string", "minLength": 1, "maxLength": 200, "pattern": r"\S"}

_ERROR = {
    "type": "object",
    "required": ["error"],
    "additionalProperties": False,
    "properties": {"error": {
        "type": "object",
        "required": ["code", "message"],
        "properties": {"code": {"type": "integer"}, "message": {"type": "string"},
                       "metadata": {"type": ["object", "null"]}},
    }},
}

_DATE = {"type": "string", "description": "A date, YYYY-MM-DD (others are 400)"}

# --- POST /messages: Anthropic's Messages API, checked by messages.py ---------------------------------------------

_CACHE = {"description": "e.g. {type: ephemeral}, for providers that cache prompts"}
_AN_TEXT = {"type": "object", "required": ["type", "text"],
            "properties": {"type": {"const": "text"}, "text": {"type": "string"}, "cache_control": _CACHE}}
_AN_IMAGE = {"type": "object", "required": ["type", "source"], "properties": {
    "type": {"const": "image"},
    "source": {"oneOf": [
        {"type": "object", "required": ["type", "media_type", "data"],
         "properties": {"type": {"const": "base64"},
                        "media_type": {"enum": ["image/jpeg", "image/png", "image/gif", "image/webp"]},
                        "data": {"type": "string", "minLength": 1, "description": "Base64, padded",
                                 "pattern": "^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"}}},
        {"type": "object", "required": ["type", "url"],
         "properties": {"type": {"const": "url"}, "url": {"type": "string", "pattern": "^https?://"}}},
    ]},
    "cache_control": _CACHE}}
_AN_TOOL_USE = {"type": "object", "required": ["type", "id", "name", "input"], "properties": {
    "type": {"const": "tool_use"}, "id": {"type": "string", "minLength": 1}, "name": {"type": "string", "minLength": 1},
    "input": {"type": "object"}}}
_AN_TOOL_RESULT = {"type": "object", "required": ["type", "tool_use_id"], "properties": {
    "type": {"const": "tool_result"}, "tool_use_id": {"type": "string", "minLength": 1},
    "content": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"oneOf": [_AN_TEXT, _AN_IMAGE]}},
                          {"type": "null"}]},
    "is_error": {"type": ["boolean", "null"]}}}
_AN_THINKING = {"type": "object", "required": ["type", "thinking", "signature"], "properties": {
    "type": {"const": "thinking"}, "thinking": {"type": "string"}, "signature": {"type": "string"}}}
_AN_REDACTED = {"type": "object", "required": ["type", "data"],
                "properties": {"type": {"const": "redacted_thinking"}, "data": {"type": "string"}}}


def _an_turn(role: str, *blocks: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "required": ["role", "content"], "properties": {
        "role": {"const": role},
        "content": {"oneOf": [{"type": "string"},
                              {"type": "array", "minItems": 1, "items": {"oneOf": list(blocks)}}]}}}


_AN_MESSAGE = {"oneOf": [_an_turn("user", _AN_TEXT, _AN_IMAGE, _AN_TOOL_RESULT),
                         _an_turn("assistant", _AN_TEXT, _AN_TOOL_USE, _AN_THINKING, _AN_REDACTED)],
               "description": "Thinking blocks in the history are not sent on."}
_PARALLEL = {"type": ["boolean", "null"]}


def messages_request_schema(max_messages: int = 2000) -> dict[str, Any]:
    return {
        "type": "object",
        "description": "Anthropic's Messages API body (fields not listed are ignored), plus OpenRouter's `models`, "
                       "`provider`, `plugins` and `session_id` as the chat endpoint takes them.",
        "required": ["model", "max_tokens", "messages"],
        "properties": {
            "model": {"type": "string", "minLength": 1, "maxLength": 256,
                      "description": "A model id from `GET /models`, or `auto`.",
                      "examples": ["anthropic/claude-3.5-sonnet", "auto"]},
            "max_tokens": {"type": "integer", "minimum": 1, "maximum": 2**64 - 1},
            "messages": {"type": "array", "minItems": 1, "maxItems": max_messages, "items": _AN_MESSAGE},
            "system": {"oneOf": [{"type": "string"}, {"type": "array", "items": _AN_TEXT}, {"type": "null"}]},
            "stream": {"type": ["boolean", "null"]},
            "temperature": {"type": ["number", "null"], "minimum": 0, "maximum": 1},
            "top_p": {"type": ["number", "null"], "minimum": 0, "maximum": 1},
            "top_k": {"type": ["integer", "null"], "minimum": 0},
            "stop_sequences": {"type": ["array", "null"], "maxItems": 16, "items": {"type": "string", "minLength": 1}},
            "metadata": {"type": ["object", "null"], "properties": {"user_id": {"type": ["string", "null"]}}},
            "tools": {"type": ["array", "null"], "items": {
                "type": "object", "required": ["name", "input_schema"],
                "description": "Custom tools only (server tools are 400).",
                "properties": {"type": {"enum": ["custom", None]}, "name": {"type": "string", "minLength": 1},
                               "description": {"type": ["string", "null"]}, "input_schema": {"type": "object"},
                               "cache_control": _CACHE}}},
            "tool_choice": {"oneOf": [
                {"type": "object", "required": ["type"], "properties": {
                    "type": {"enum": ["auto", "any", "none"]}, "disable_parallel_tool_use": _PARALLEL}},
                {"type": "object", "required": ["type", "name"], "properties": {
                    "type": {"const": "tool"}, "name": {"type": "string", "minLength": 1},
                    "disable_parallel_tool_use": _PARALLEL}},
                {"type": "null"},
            ]},
            "thinking": {"oneOf": [
                {"type": "object", "required": ["type", "budget_tokens"], "properties": {
                    "type": {"const": "enabled"},
                    "budget_tokens": {"type": "integer", "minimum": 1024, "description": "Less than max_tokens"}}},
                {"type": "object", "required": ["type"], "properties": {"type": {"enum": ["adaptive", "disabled"]}}},
                {"type": "null"},
            ], "description": "OpenRouter's `reasoning`; a model's reasoning comes back as `thinking` blocks only "
                              "when enabled."},
            "models": {"type": ["array", "null"], "items": {"type": "string", "maxLength": 256}},
            "provider": PROVIDER_PREFS,
            "plugins": {"type": ["array", "null"]},
            "session_id": {"type": ["string", "null"]},
        },
    }


_AN_USAGE = {"type": "object", "required": ["input_tokens", "output_tokens"], "properties": {
    k: {"type": "integer"} for k in ("input_tokens", "output_tokens", "cache_creation_input_tokens",
                                     "cache_read_input_tokens")}}
_AN_RESPONSE = {
    "type": "object",
    "required": ["id", "type", "role", "model", "content", "stop_reason", "stop_sequence", "usage"],
    "properties": {
        "id": {"type": "string", "description": "The generation's id (for `GET /generation`)"},
        "type": {"const": "message"}, "role": {"const": "assistant"},
        "model": {"type": "string", "description": "The model that answered"},
        "content": {"type": "array", "items": {"type": "object", "required": ["type"], "properties": {
            "type": {"enum": ["text", "tool_use", "thinking"]}}}},
        "stop_reason": {"enum": ["end_turn", "max_tokens", "stop_sequence", "tool_use", "refusal", None]},
        "stop_sequence": _NSTR,
        "usage": _AN_USAGE,
    },
}
_AN_SSE_EVENT = {
    "type": "object", "required": ["event", "data"],
    "properties": {"event": {"enum": ["message_start", "content_block_start", "content_block_delta",
                                      "content_block_stop", "message_delta", "message_stop", "ping", "error"]},
                   "data": {"type": "string", "description": "The event as JSON; its `type` is the event's name"}},
}
_AN_ERROR = {
    "type": "object",
    "required": ["type", "error"],
    "additionalProperties": False,
    "properties": {"type": {"const": "error"}, "error": {
        "type": "object", "required": ["type", "message"],
        "properties": {"type": {"enum": ["invalid_request_error", "authentication_error", "billing_error",
                                         "permission_error", "not_found_error", "rate_limit_error", "timeout_error",
                                         "api_error", "overloaded_error"]},
                       "message": {"type": "string"}}}},
}


def _route_request(chat: dict[str, Any]) -> dict[str, Any]:
    """A chat request whose ``model`` may be left out and is otherwise ``auto``."""
    props = dict(chat.get("properties", {}))
    props["model"] = {"type": "string", "enum": ["auto", "openrouter/auto", "metarouter/auto"]}
    return {**chat, "properties": props, "required": [r for r in chat.get("required", []) if r != "model"]}


_CANDIDATE = {"type": "object", "required": ["model_id", "quality", "cost_usd", "reason"], "properties": {
    "model_id": {"type": "string"}, "quality": {"type": "number", "description": "Predicted P(good answer)"},
    "cost_usd": {"type": "number"}, "prompt_tokens": {"type": "integer"}, "output_tokens": {"type": "integer"},
    "reason": {"type": "string"}, "score": {"type": "number"}, "prior_weight": {"type": "number"}}}
_ROUTE_DECISION = {"type": "object", "required": ["object", "model", "reason", "candidates"], "properties": {
    "object": {"const": "route"}, "model": {"type": "string"}, "reason": {"type": "string"},
    "tradeoff": {"type": "number"}, "familiarity": {"type": "number"}, "category": {"type": ["string", "null"]},
    "candidates": {"type": "array", "items": _CANDIDATE}, "fallbacks": {"type": "array", "items": {"type": "string"}},
    "excluded": {"type": "array", "items": {"type": "object", "properties": {
        "model_id": {"type": "string"}, "reason": {"type": "string"}}}}}}


# --- POST /responses (OpenAI's Responses API): the constraints of responses.py -------------------------------

_NULL = {"type": "null"}
_TEXT_OF = {"type": "object", "required": ["type", "text"],
            "properties": {"type": {"enum": ["input_text", "output_text"]}, "text": {"type": "string"}}}
_REFUSAL_OF = {"type": "object", "required": ["type", "refusal"],
               "properties": {"type": {"const": "refusal"}, "refusal": {"type": "string"}}}
_TEXT_CONTENT = {"oneOf": [{"type": "string"}, {"type": "array", "items": {"oneOf": [_TEXT_OF, _REFUSAL_OF]}}]}
_INPUT_PARTS = {"oneOf": [
    {"type": "string"},
    {"type": "array", "minItems": 1, "items": {"oneOf": [
        _TEXT_OF,
        {"type": "object", "required": ["type", "image_url"],
         "properties": {"type": {"const": "input_image"}, "image_url": {"type": "string", "minLength": 1,
                                                                        "description": "A URL or a data URL"},
                        "detail": {"enum": ["low", "high", "auto", None]}}},
        {"type": "object", "required": ["type", "file_data"],
         "properties": {"type": {"const": "input_file"}, "file_data": {"type": "string", "minLength": 1},
                        "filename": {"description": "A file name (a string)"}}},
    ]}},
]}
_INPUT_ITEM = {"anyOf": [
    {"type": "object", "required": ["role", "content"], "description": "A message (`type` may be left out)",
     "properties": {"type": {"const": "message"}, "role": {"enum": ["user", "system", "developer"]},
                    "content": _INPUT_PARTS}},
    {"type": "object", "required": ["role", "content"],
     "properties": {"type": {"const": "message"}, "role": {"const": "assistant"}, "content": _TEXT_CONTENT}},
    {"type": "object", "required": ["type", "call_id", "name", "arguments"],
     "properties": {"type": {"const": "function_call"}, "call_id": {"type": "string"}, "name": {"type": "string"},
                    "arguments": {"type": "string", "description": "The arguments, a JSON string"}}},
    {"type": "object", "required": ["type", "call_id", "output"],
     "properties": {"type": {"const": "function_call_output"}, "call_id": {"type": "string"},
                    "output": _TEXT_CONTENT}},
    {"type": "object", "required": ["type"], "description": "A model's earlier reasoning (not sent on)",
     "properties": {"type": {"const": "reasoning"}}},
]}


def responses_request_schema(max_items: int = 2000) -> dict[str, Any]:
    return {
        "type": "object",
        "description": "OpenAI's Responses API body (function tools only), run as a chat request; OpenRouter's "
                       "`models`, `provider`, `plugins` and `session_id` are honoured as on chat.",
        "required": ["model", "input"],
        "properties": {
            "model": {"type": "string", "minLength": 1, "maxLength": 256,
                      "examples": ["openai/gpt-4o-mini-2024-07-18", "auto"]},
            "input": {"oneOf": [{"type": "string"},
                                {"type": "array", "minItems": 1, "maxItems": max_items, "items": _INPUT_ITEM,
                                 "contains": {"not": {"required": ["type"],
                                                      "properties": {"type": {"const": "reasoning"}}}},
                                 "description": "At least one item that is not reasoning"}]},
            "instructions": {"type": ["string", "null"], "description": "A system message; not carried over by "
                                                                        "`previous_response_id`"},
            "previous_response_id": {"type": ["string", "null"],
                                     "description": "Continue a stored response of this key (within the "
                                                    "retention time; else 404)"},
            "store": {"type": ["boolean", "null"], "description": "false: do not keep this conversation"},
            "stream": {"type": ["boolean", "null"]},
            "parallel_tool_calls": {"type": ["boolean", "null"]},
            "user": {"type": ["string", "null"]},
            "temperature": {"type": ["number", "null"], "minimum": 0, "maximum": 2},
            "top_p": {"type": ["number", "null"], "minimum": 0, "maximum": 1},
            "max_output_tokens": {"type": ["integer", "null"], "minimum": 1, "maximum": 2**64 - 1},
            "metadata": {"type": ["object", "null"], "maxProperties": 16, "propertyNames": {"maxLength": 64},
                         "additionalProperties": {"type": "string", "maxLength": 512}},
            "reasoning": {"type": ["object", "null"], "properties": {"effort": {"enum": [
                "none", "minimal", "low", "medium", "high", "xhigh", "max", None]}}},
            "truncation": {"enum": ["auto", "disabled", None]},
            "tools": {"type": ["array", "null"], "items": {
                "type": "object", "required": ["type", "name"],
                "properties": {"type": {"const": "function"}, "name": {"type": "string", "minLength": 1},
                               "description": {"type": ["string", "null"]},
                               "parameters": {"type": ["object", "null"], "description": "A JSON Schema"},
                               "strict": {"type": ["boolean", "null"]}}}},
            "tool_choice": {"oneOf": [
                {"enum": ["auto", "none", "required"]},
                {"type": "object", "required": ["type", "name"],
                 "properties": {"type": {"const": "function"}, "name": {"type": "string"}}},
                _NULL,
            ]},
            "text": {"type": ["object", "null"], "properties": {"format": {"oneOf": [
                _NULL,
                {"type": "object", "required": ["type"], "properties": {"type": {"enum": ["text", "json_object"]}}},
                {"type": "object", "required": ["type", "name", "schema"],
                 "properties": {"type": {"const": "json_schema"}, "name": {"type": "string"},
                                "schema": {"type": "object"}, "strict": {"description": "true or false"},
                                "description": {"description": "A string"}}},
            ]}}},
            "models": {"type": ["array", "null"], "items": {"type": "string", "maxLength": 256}},
            "provider": PROVIDER_PREFS,
            "plugins": {"type": ["array", "null"]},
            "session_id": {"type": ["string", "null"]},
        },
    }


_RESPONSE = {
    "type": "object",
    "required": ["id", "object", "created_at", "status", "model", "output"],
    "properties": {
        "id": {"type": "string", "description": "The generation's id (`GET /generation?id=`)"},
        "object": {"const": "response"}, "created_at": _NUM,
        "status": {"enum": ["completed", "incomplete", "failed"]},
        "model": {"type": "string", "description": "The model that served"},
        "output": {"type": "array", "items": {"type": "object", "required": ["type"], "properties": {
            "type": {"enum": ["message", "function_call", "reasoning"]}}}},
        "usage": {"type": ["object", "null"], "properties": {
            "input_tokens": {"type": "integer"}, "output_tokens": {"type": "integer"},
            "total_tokens": {"type": "integer"}, "cost": _NUM}},
    },
}
_RESPONSE_EVENT = {
    "type": "object",
    "required": ["data"],
    "properties": {"event": {"type": "string", "description": "The event's type: response.created, "
                                                              "response.output_text.delta, … response.completed"},
                   "data": {"type": "string", "description": "The event as JSON"}},
}
#: the Responses API's errors are OpenAI's shape, not OpenRouter's
_OPENAI_ERROR = {
    "type": "object",
    "required": ["error"],
    "additionalProperties": False,
    "properties": {"error": {
        "type": "object",
        "required": ["message", "type", "param", "code"],
        "properties": {"message": {"type": "string"}, "type": {"type": "string"}, "param": {"type": ["string", "null"]},
                       "code": {"type": ["string", "null"]}},
    }},
}


def _data(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "required": ["data"], "properties": {"data": schema}}


#: the response cache (gateway/cache.py): asked for per request, and what the answer says about it
_CACHE_PARAMS = [
    {"name": "X-OpenRouter-Cache", "in": "header", "required": False,
     "schema": {"type": "string", "enum": ["true", "false"]},
     "description": "`true`: answer an identical earlier request of this key from the response cache (free, "
                    "`X-OpenRouter-Cache-Status: HIT`), else call the model and store its answer; `false`: not "
                    "this request, where the config caches every request (`response_cache.enabled`)."},
    {"name": "X-OpenRouter-Cache-TTL", "in": "header", "required": False,
     "schema": {"type": "integer", "minimum": 1, "maximum": MAX_TTL},
     "description": "Seconds a newly stored answer is kept (default `response_cache.ttl`, 300)."},
]
_CACHE_HEADERS = {
    "X-OpenRouter-Cache-Status": {"description": "With the cache asked for: `HIT` (answered from it, every usage "
                                                 "figure 0, nothing charged) or `MISS`.",
                                  "schema": {"type": "string", "enum": ["HIT", "MISS"]}},
    "X-OpenRouter-Cache-TTL": {"description": "The entry's TTL in seconds.", "schema": {"type": "integer"}},
    "Age": {"description": "On a hit: seconds since the answer was stored.", "schema": {"type": "integer"}},
}


def openapi_document(max_messages: int = 2000) -> dict[str, Any]:
    """The document (a fresh dict each call). Paths are under ``/api/v1``; the same routes answer under ``/v1``."""
    user = [{"apiKey": []}]
    admin = [{"adminKey": []}]
    activity_auth = [{"apiKey": []}, {"adminKey": []}]
    window = [
        {"name": "date_from", "in": "query", "required": False, "schema": _DATE},
        {"name": "date_to", "in": "query", "required": False, "schema": _DATE},
    ]
    epoch = {"type": "number", "minimum": 0, "maximum": 253_402_300_799}
    text = {"type": "string", "maxLength": 1024}
    filters = [
        *window,
        {"name": "since", "in": "query", "required": False, "schema": epoch,
         "description": "Records at or after this time, epoch seconds (with `date_from`: both hold)."},
        {"name": "until", "in": "query", "required": False, "schema": epoch,
         "description": "Records before this time, epoch seconds (with `date_to`: both hold)."},
        {"name": "app", "in": "query", "required": False, "schema": text,
         "description": "The app: its X-Title, else its HTTP-Referer."},
        {"name": "model", "in": "query", "required": False, "schema": text, "description": "The model that served."},
        {"name": "provider", "in": "query", "required": False, "schema": text},
        {"name": "status", "in": "query", "required": False,
         "schema": {"type": "string", "enum": ["ok", "error", "cancelled"]}},
        {"name": "key", "in": "query", "required": False, "schema": text,
         "description": "Admin only: one key's activity (a key's own activity otherwise)."},
    ]
    key_id = {"name": "public_id", "in": "path", "required": True,
              "schema": {"type": "string"}, "description": "A key's public id (12 hex digits); others are 404."}
    key_patch = {"type": "object", "additionalProperties": False, "properties": {
        "name": _LABEL, "label": _LABEL, "disabled": {"type": "boolean"},
        "limit": {"anyOf": [_USD, {"type": "null"}]}, "limit_reset": _LIMIT_RESET, "expires_at": _EXPIRES_AT,
        "rpm": _PER_MINUTE, "tpm": _PER_MINUTE}}
    key_create = {**key_patch, "properties": {k: v for k, v in key_patch["properties"].items() if k != "disabled"},
                  "anyOf": [{"required": ["name"]}, {"required": ["label"]}]}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "metarouter",
            "version": _version(),
            "description": "A self-hosted, OpenRouter-compatible LLM gateway. Every path below also answers "
                           "under `/v1` (for OpenAI clients). Errors are `{\"error\": {\"code\", \"message\", "
                           "\"metadata\"?}}` (`POST /messages` answers in Anthropic's shape instead).",
        },
        "servers": [{"url": "/api/v1"}],
        "security": user,
        "paths": {
            "/chat/completions": {"post": {
                "operationId": "createChatCompletion",
                "summary": "Chat completion (JSON, or server-sent events with `stream: true`)",
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": chat_request_schema(max_messages)}}},
                "parameters": [
                    {"name": "HTTP-Referer", "in": "header", "required": False, "schema": {"type": "string"},
                     "description": "The calling app's URL (Activity's app ranking)."},
                    {"name": "X-Title", "in": "header", "required": False, "schema": {"type": "string"},
                     "description": "The calling app's name (also `X-OpenRouter-Title`)."},
                    *_CACHE_PARAMS,
                ],
                "responses": _responses(
                    {"description": "The answer", "headers": _CACHE_HEADERS,
                     "content": {"application/json": {"schema": _CHAT_RESPONSE},
                                 "text/event-stream": {"schema": _SSE_EVENT}}},
                    400, 401, 402, 403, 408, 413, 429, 431, 502, 503),
            }},
            "/route": {"post": {
                "operationId": "routeChatRequest",
                "summary": "The auto router's decision for a chat request, without calling a model or charging",
                "requestBody": {"required": True, "content": {"application/json": {"schema": _route_request(
                    chat_request_schema(max_messages))}}},
                "responses": _responses(_json(_ROUTE_DECISION, "The decision"), 400, 401, 403, 404, 413, 503),
            }},
            "/messages": {"post": {
                "operationId": "createMessage",
                "summary": "Anthropic's Messages API (JSON, or Anthropic's stream events with `stream: true`); "
                           "errors in Anthropic's shape",
                "security": [{"apiKey": []}, {"anthropicKey": []}],
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": messages_request_schema(max_messages)}}},
                "parameters": _CACHE_PARAMS,
                "responses": {
                    "200": {"description": "The answer", "headers": _CACHE_HEADERS,
                            "content": {"application/json": {"schema": _AN_RESPONSE},
                                        "text/event-stream": {"schema": _AN_SSE_EVENT}}},
                    **{str(c): {"$ref": f"#/components/responses/AE{c}"}
                       for c in (400, 401, 402, 403, 404, 408, 413, 429, 431, 502, 503)},
                },
            }},
            "/responses": {"post": {
                "operationId": "createResponse",
                "summary": "OpenAI's Responses API (JSON, or its server-sent events with `stream: true`); "
                           "recorded and billed as a chat request",
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": responses_request_schema(max_messages)}}},
                "parameters": _CACHE_PARAMS,
                "responses": {
                    "200": {"description": "The response", "headers": _CACHE_HEADERS,
                            "content": {"application/json": {"schema": _RESPONSE},
                                        "text/event-stream": {"schema": _RESPONSE_EVENT}}},
                    **{str(c): {"$ref": f"#/components/responses/RE{c}"}
                       for c in (400, 401, 402, 403, 404, 408, 413, 429, 431, 502, 503)},
                },
            }},
            "/models": {"get": {
                "operationId": "listModels", "summary": "The catalog", "security": [],
                "responses": _responses(_json({"type": "object", "required": ["data"], "properties": {
                    "data": {"type": "array", "items": _MODEL}, "total_count": {"type": "integer"}}},
                    "Models"), 400),
            }},
            "/models/{author}/{slug}/endpoints": {"get": {
                "operationId": "listModelEndpoints", "summary": "The endpoints (providers) of one model",
                "description": "Each with its own prices, limits, health and measured latency and throughput, "
                               "cheapest first. The model's id is `{author}/{slug}`; for `openrouter/auto`, the "
                               "models auto may choose, each at the endpoint it is priced at.",
                "security": [],
                "parameters": [{"name": n, "in": "path", "required": True, "schema": {"type": "string"}}
                               for n in ("author", "slug")],
                "responses": _responses(_json(_data(_MODEL_ENDPOINTS), "The model and its endpoints"), 404),
            }},
            "/generation": {"get": {
                "operationId": "getGeneration", "summary": "One generation record of the calling key",
                "parameters": [{"name": "id", "in": "query", "required": True,
                                "schema": {"type": "string", "minLength": 1}}],
                "responses": _responses(_json(_data(_GENERATION), "The record"), 400, 401, 403, 404),
            }},
            "/key": {"get": {
                "operationId": "getKey", "summary": "The calling key: usage, limit, rate limits",
                "responses": _responses(_json(_data(_KEY_INFO), "The key"), 401, 403),
            }},
            "/credits": {
                "get": {
                    "operationId": "getCredits", "summary": "The account's credit and usage",
                    "responses": _responses(_json(_data(_CREDITS), "Credits"), 401, 403),
                },
                "post": {
                    "operationId": "addCredits", "summary": "Top up the account (admin)", "security": admin,
                    "requestBody": {"required": True, "content": {"application/json": {"schema": {
                        "type": "object", "required": ["amount"], "additionalProperties": False,
                        "properties": {"amount": {"oneOf": [
                            {"type": "number", "exclusiveMinimum": 0, "maximum": 10**6},
                            {"type": "string", "description": "A decimal number of USD, above 0, up to 1e6"}]}},
                        "description": "The account's credit, all top-ups together, is at most 9e6 USD."}}}},
                    "responses": _responses(_json(_data(_CREDITS), "Credits after the top-up"),
                                            400, 401, 403, 413),
                },
            },
            "/activity": {"get": {
                "operationId": "getActivity", "summary": "Usage per day and model", "security": activity_auth,
                "parameters": [*window, {"name": "app", "in": "query", "required": False,
                                         "schema": {"type": "string"}},
                               {"name": "key", "in": "query", "required": False, "schema": {"type": "string"},
                                "description": "Admin only: one key's activity."}],
                "responses": _responses(_json(_data({"type": "array", "items": {
                    "type": "object", "required": ["date", "model", "requests", "usage"],
                    "properties": {"date": {"type": "string"}, "model": {"type": "string"},
                                   "requests": {"type": "integer"}, "prompt_tokens": _NINT,
                                   "completion_tokens": _NINT, "reasoning_tokens": _NINT, "usage": _NUM,
                                   "total_tokens": {"type": "integer"}}}}), "Activity"), 400, 401, 403),
            }},
            "/activity/generations": {"get": {
                "operationId": "listGenerations", "summary": "Generations, newest first, filtered and paged",
                "security": activity_auth,
                "parameters": [*filters,
                               {"name": "limit", "in": "query", "required": False, "schema": {"type": "integer"},
                                "description": "Clamped to 1..500 (default 50)."},
                               {"name": "offset", "in": "query", "required": False,
                                "schema": {"type": "integer", "minimum": 0, "maximum": 10**9}}],
                "responses": _responses(_json({
                    "type": "object", "required": ["data", "total_count", "limit", "offset"],
                    "properties": {"data": {"type": "array", "items": _GENERATION}, "total_count": _COUNT,
                                   "limit": {"type": "integer"}, "offset": {"type": "integer"}}}, "Generations"),
                    400, 401, 403),
            }},
            "/activity/summary": {"get": {
                "operationId": "getActivitySummary", "security": activity_auth,
                "summary": "The Activity page's figures over one window: totals, per model (with the share of "
                           "`auto` traffic), chart series, apps and each filter's choices",
                "parameters": [*filters, {"name": "facets", "in": "query", "required": False,
                                          "schema": {"type": "string", "enum": ["true", "false"]},
                                          "description": "`false`: without the filters' choices (default `true`)."}],
                "responses": _responses(_json(_data(_ACTIVITY_SUMMARY), "Summary"), 400, 401, 403),
            }},
            "/activity/export.csv": {"get": {
                "operationId": "exportActivity", "security": activity_auth,
                "summary": "Every generation the filters cover, newest first, as CSV (RFC 4180)",
                "parameters": filters,
                "responses": _responses({"description": "CSV with a header row", "content": {
                    "text/csv": {"schema": {"type": "string"}}}}, 400, 401, 403),
            }},
            "/activity/apps": {"get": {
                "operationId": "appRanking", "summary": "Apps by tokens", "security": activity_auth,
                "parameters": [window[0]],
                "responses": _responses(_json(_data({"type": "array", "items": {
                    "type": "object", "required": ["app", "requests", "total_tokens", "usage"],
                    "properties": {"app": {"type": "string"}, "requests": {"type": "integer"},
                                   "total_tokens": {"type": "integer"}, "usage": _NUM}}}), "Apps"),
                    400, 401, 403),
            }},
            "/keys": {
                "get": {"operationId": "listKeys", "summary": "All keys (admin)", "security": admin,
                        "responses": _responses(_json(_data({"type": "array", "items": _ADMIN_KEY}), "Keys"),
                                                401, 403)},
                "post": {"operationId": "createKey", "summary": "Create a key (admin); its plaintext is "
                                                               "returned once", "security": admin,
                         "requestBody": {"required": True,
                                         "content": {"application/json": {"schema": key_create}}},
                         "responses": _responses(
                             _json({"type": "object", "required": ["data", "key"],
                                    "properties": {"data": _ADMIN_KEY,
                                                   "key": {"type": "string", "pattern": "^sk-mr-"}}},
                                   "The new key"), 400, 401, 403, 413, ok_status="201")},
            },
            "/keys/{public_id}": {
                "parameters": [key_id],
                "get": {"operationId": "getAdminKey", "summary": "One key (admin)", "security": admin,
                        "responses": _responses(_json(_data(_ADMIN_KEY), "The key"), 401, 403, 404)},
                "patch": {"operationId": "updateKey",
                          "summary": "Disable/enable, limit, limit_reset, expires_at, rpm, tpm, label (admin)",
                          "security": admin,
                          "requestBody": {"required": True,
                                          "content": {"application/json": {"schema": key_patch}}},
                          "responses": _responses(_json(_data(_ADMIN_KEY), "The key"), 400, 401, 403, 404, 413)},
                "delete": {"operationId": "deleteKey", "summary": "Disable a key (records and usage stay; admin)",
                           "security": admin,
                           "responses": _responses(
                               _json({"type": "object", "required": ["data", "deleted"],
                                      "properties": {"data": _ADMIN_KEY, "deleted": {"const": True}}},
                               "The disabled key"), 401, 403, 404)},
            },
        },
        "components": {
            "securitySchemes": {
                "apiKey": {"type": "http", "scheme": "bearer", "bearerFormat": "sk-mr-<public id>-<secret>",
                           "description": "A key from `metarouter keys create` or `POST /keys`."},
                "anthropicKey": {"type": "apiKey", "in": "header", "name": "x-api-key",
                                 "description": "The same key, as Anthropic's clients send it (`POST /messages`)."},
                "adminKey": {"type": "http", "scheme": "bearer",
                             "description": "The admin key, from `METAROUTER_ADMIN_KEY`."},
            },
            "schemas": {
                "Error": _ERROR,
                "OpenAIError": _OPENAI_ERROR,
                "ResponseRequest": responses_request_schema(max_messages),
                "Response": _RESPONSE,
                "ChatCompletionRequest": chat_request_schema(max_messages),
                "ChatCompletion": _CHAT_RESPONSE,
                "Model": _MODEL,
                "ModelEndpoints": _MODEL_ENDPOINTS,
                "Generation": _GENERATION,
                "AdminKey": _ADMIN_KEY,
                "MessagesRequest": messages_request_schema(max_messages),
                "Message": _AN_RESPONSE,
                "AnthropicError": _AN_ERROR,
            },
            "responses": {**{f"E{c}": _json(_ref("Error"), t) for c, t in _ERROR_TEXT.items()},
                          **{f"AE{c}": _json(_ref("AnthropicError"), t) for c, t in _ERROR_TEXT.items()},
                          **{f"RE{c}": _json(_ref("OpenAIError"), t) for c, t in _ERROR_TEXT.items()}},
        },
    }


__all__ = ["chat_request_schema", "messages_request_schema", "openapi_document", "responses_request_schema"]
