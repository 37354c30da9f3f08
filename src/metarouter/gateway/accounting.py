"""Token estimates and prices: what a request may cost at worst, and what it did cost."""

from __future__ import annotations

from typing import Any

from ..catalog import Model, pico_to_usd

#: tokens charged for one image part in worst-case estimates (a high-detail 1024² image is ~765 on OpenAI)
IMAGE_TOKENS = 1000


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
                elif part.get("type") in ("image_url", "input_image", "image"):
                    images += 1
        for call in m.get("tool_calls") or ():
            fn = (call or {}).get("function") or {}
            chars += len(str(fn.get("name") or "")) + len(str(fn.get("arguments") or ""))
    return chars, images


def estimate_prompt_tokens(body: dict[str, Any], *, conservative: bool = False) -> int:
    """A tokenizer-free estimate of the prompt's tokens: ~4 characters a token (3 when ``conservative``, for
    budget checks that must not under-estimate), plus per-message overhead, images and tool definitions."""
    messages = body.get("messages") or []
    chars, images = message_text_and_images(messages)
    tools = body.get("tools")
    if tools:
        import orjson

        chars += len(orjson.dumps(tools))
    per = 3 if conservative else 4
    return chars // per + 4 * len(messages) + IMAGE_TOKENS * images + 3


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
