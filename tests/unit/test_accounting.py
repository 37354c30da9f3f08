"""The bounds budget holds are made of: what a prompt can be billed at most, and how much output is held."""

from __future__ import annotations

from metarouter.catalog import default_catalog
from metarouter.gateway.accounting import (
    EXPECTED_OUTPUT_TOKENS,
    IMAGE_TOKENS_BOUND,
    PER_MESSAGE_TOKENS,
    PROMPT_BASE_TOKENS,
    TOOLS_TOKENS,
    estimate_prompt_tokens,
    output_hold_tokens,
    prompt_token_bound,
)

MINI = default_catalog().get("openai/gpt-4o-mini-2024-07-18")  # 150,000 / 600,000 picodollars a token


def test_the_prompt_bound_is_the_utf8_bytes_plus_allowances():
    text = "naïve 日本語 🙂"  # 11 characters, 21 bytes
    body = {"messages": [{"role": "system", "content": "be brief"},
                         {"role": "user", "content": [{"type": "text", "text": text},
                                                      {"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}]}
    assert prompt_token_bound(body) == PROMPT_BASE_TOKENS + 2 * PER_MESSAGE_TOKENS + 8 + 21 + IMAGE_TOKENS_BOUND
    assert prompt_token_bound(body) > estimate_prompt_tokens(body)  # the bound is never below the estimate
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    assert prompt_token_bound({**body, "tools": tools}) > prompt_token_bound(body) + TOOLS_TOKENS


def test_the_bound_covers_an_upstream_that_counts_a_token_per_byte():
    body = {"messages": [{"role": "user", "content": "é" * 1000, "name": "bob"},
                         {"role": "assistant", "content": None,
                          "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
                         {"role": "tool", "tool_call_id": "c1", "content": "42"}]}
    worst = sum(len(str(m.get("content") or "").encode()) + 8 for m in body["messages"]) + 60  # bytes + a template
    assert prompt_token_bound(body) >= worst


def test_output_hold():
    bound = 50
    prompt = bound * MINI.input_pico
    assert output_hold_tokens(MINI, 100, 10**6, bound) == 100  # max_tokens as asked (the budget check is apart)
    assert output_hold_tokens(MINI, 2**63, 10**6, bound) == MINI.max_output()  # clamped to the model
    # $0.001: the expected output, not the ~1,600 tokens the whole budget affords
    assert output_hold_tokens(MINI, None, 10**9, bound) == EXPECTED_OUTPUT_TOKENS
    # $0.0001: what it affords, as fewer than that
    assert output_hold_tokens(MINI, None, 10**8, bound) == (10**8 - prompt) // MINI.output_pico < EXPECTED_OUTPUT_TOKENS
    # $10: a sixteenth of it affords more than the model's maximum
    assert output_hold_tokens(MINI, None, 10**13, bound) == MINI.max_output()
    # not even the prompt: below one token
    assert output_hold_tokens(MINI, None, prompt, bound) < 1
