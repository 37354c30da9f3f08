"""Token estimates and prices: what a request may cost at worst, and what it did cost."""

from __future__ import annotations

from typing import Any

import orjson

from ..catalog import Model, pico_to_usd

#: tokens charged for one image part in worst-case estimates (a high-detail 1024² image is ~765 on OpenAI)
IMAGE_TOKENS = 1000
IMAGE_PART_TYPES = ("image_url", "input_image", "image")


def message_text_and_images(messages: list[dict[str, Any]]) -> tuple[int, int]:
    """Characters of text and count of images across a conversation."""
    chars = 0
    images = 0
    for m in messages:
        content = m.get("content")
        if isinstance(content, str):
            chars += len(content)
        elif isinstance(content, list):
            for part in content:
                if not isinstance(part, dict):
                    continue
                if part.get("type") == "text":
                    chars += len(str(part.get("text") or ""))
                elif part.get("type") in IMAGE_PART_TYPES:
                    images += 1
        for call in m.get("tool_calls") or ():
            fn = (call or {}).get("function") or {}
            chars += len(str(fn.get("name") or "")) + len(str(fn.get("arguments") or ""))
    return chars, images


def estimate_prompt_tokens(body: dict[str, Any]) -> int:
    """A tokenizer-free estimate of the prompt's tokens (~4 characters a token, plus per-message overhead, images
    and tool definitions): what is charged when the upstream reports no usage."""
    messages = body.get("messages") or []
    chars, images = message_text_and_images(messages)
    tools = body.get("tools")
    if tools:
        chars += len(orjson.dumps(tools))
    return chars // 4 + 4 * len(messages) + IMAGE_TOKENS * images + 3


#: Allowances of :func:`prompt_token_bound`, in tokens: the chat template around each message (role markers,
#: separators, a name), the template's start and the reply's priming, each image (OpenAI's largest high-detail
#: image on gpt-4o is 1,445; Anthropic's ~1,600; Gemini tiles large images at 258 a tile), and the instructions a
#: provider adds when tools or a response schema are given (Anthropic's tool-use prompt is a few hundred).
PER_MESSAGE_TOKENS = 16
PROMPT_BASE_TOKENS = 32
IMAGE_TOKENS_BOUND = 6_000
TOOLS_TOKENS = 1_000


def _utf8(value: Any) -> int:
    if not isinstance(value, str):
        return 0
    return len(value) if value.isascii() else len(value.encode("utf-8", "surrogatepass"))


def prompt_token_bound(body: dict[str, Any], image_tokens: int = IMAGE_TOKENS_BOUND) -> int:
    """The most prompt tokens an upstream can bill for ``body``: a byte-level tokenizer never makes more tokens than
    the text has UTF-8 bytes, plus the allowances above. Budget holds use this, so that no usage an upstream
    reports for an honest tokenizer can exceed what was held; anything beyond is an overage."""
    n = PROMPT_BASE_TOKENS
    for m in body.get("messages") or ():
        n += PER_MESSAGE_TOKENS + _utf8(m.get("name")) + _utf8(m.get("tool_call_id"))
        content = m.get("content")
        if isinstance(content, str):
            n += _utf8(content)
        elif isinstance(content, list):
            for part in content:
                if not isinstance(part, dict):
                    continue
                kind = part.get("type")
                if kind == "text":
                    n += _utf8(part.get("text"))
                elif kind in IMAGE_PART_TYPES:
                    n += image_tokens
                else:  # audio, files: their data is at least as many bytes as they can be tokens
                    n += len(orjson.dumps(part))
        if m.get("tool_calls"):
            n += len(orjson.dumps(m["tool_calls"]))
    for name in ("tools", "response_format"):
        if body.get(name):
            n += TOOLS_TOKENS + len(orjson.dumps(body[name]))
    return n


#: Output tokens held for a request without ``max_tokens`` on a limited budget (unless the budget affords no
#: more): what a typical answer fits in. It is also sent upstream as ``max_tokens``, so the answer stops there.
EXPECTED_OUTPUT_TOKENS = 512
#: ... or this share of what the key can still spend, when that is more (a large budget holds the model's max).
OUTPUT_HOLD_SHARE = 16


def output_hold_tokens(model: Model, requested: int | None, spendable: int, prompt_bound: int, choices: int = 1) -> int:
    """How many output tokens to hold (and allow) per choice: ``requested`` (``max_tokens``) up to the model's
    maximum; without it, the expected output or a 1/``OUTPUT_HOLD_SHARE`` share of ``spendable``, whichever affords
    more, never more than the model's maximum or than ``spendable`` pays for (``choices`` answers of that length,
    the prompt at the model's highest prompt rate). Below 1: not even one token is affordable."""
    ceiling = model.max_output()
    if requested is not None:
        return min(requested, ceiling)

    def affordable(amount: int) -> int:
        left = amount - prompt_bound * model.worst_prompt_pico
        return left // (model.output_pico * choices) if model.output_pico else ceiling

    share = affordable(spendable // OUTPUT_HOLD_SHARE + prompt_bound * model.worst_prompt_pico)
    return min(ceiling, max(EXPECTED_OUTPUT_TOKENS, share), affordable(spendable))


def max_response_bytes(max_tokens: int, *, stream: bool, logprobs: bool) -> int:
    """The most bytes an upstream answer of ``max_tokens`` may take (more is a broken upstream): a floor for the
    envelope, per token the framing of one stream event (or a few bytes of JSON), and the alternatives of
    ``logprobs``."""
    per_token = (1024 if stream else 64) + (8192 if logprobs else 0)
    return 1024 * 1024 + max_tokens * per_token


def estimate_text_tokens(chars: int) -> int:
    return (chars + 3) // 4


def requested_max_tokens(body: dict[str, Any]) -> int | None:
    for key in ("max_completion_tokens", "max_tokens"):
        v = body.get(key)
        if isinstance(v, int) and not isinstance(v, bool):
            return v
    return None


def worst_case_pico(model: Model, prompt_tokens: int, max_tokens: int) -> int:
    """What a request may cost at most: every prompt token at the highest prompt rate (a cache write costs more
    than plain input), every output token the request allows."""
    return prompt_tokens * model.worst_prompt_pico + max_tokens * model.output_pico


def cost_parts(model: Model, usage: dict[str, Any]) -> tuple[int, int]:
    """(prompt, completion) cost of an OpenAI-shaped usage in picodollars, cached and cache-write tokens at their
    own rates."""
    details = usage.get("prompt_tokens_details") or {}
    return model.cost_parts_pico(usage["prompt_tokens"], usage["completion_tokens"],
                                 cached_tokens=int(details.get("cached_tokens") or 0),
                                 cache_write_tokens=int(details.get("cache_write_tokens") or 0))


def charged_parts(parts: tuple[int, int], charged: int) -> tuple[int, int]:
    """``parts`` (prompt, completion) cut down to what was charged (at most the hold): the prompt first."""
    prompt, completion = parts
    if prompt + completion <= charged:
        return parts
    p = min(prompt, charged)
    return p, charged - p


def usage_with_cost(usage: dict[str, Any], parts: tuple[int, int]) -> dict[str, Any]:
    """The usage a client gets, as OpenRouter reports it: ``cost`` (USD), ``cost_details`` split into prompt and
    completion, and ``prompt_tokens_details.cached_tokens`` always present."""
    prompt_pico, completion_pico = parts
    out = dict(usage)
    out["prompt_tokens_details"] = {"cached_tokens": 0, **(usage.get("prompt_tokens_details") or {})}
    out["cost"] = pico_to_usd(prompt_pico + completion_pico)
    out["cost_details"] = {"upstream_inference_cost": out["cost"],
                           "upstream_inference_prompt_cost": pico_to_usd(prompt_pico),
                           "upstream_inference_completions_cost": pico_to_usd(completion_pico)}
    return out
