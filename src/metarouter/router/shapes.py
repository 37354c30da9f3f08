"""Conversation shapes for training: generic system prompts and earlier turns, written for this project.

No labelled benchmark prompt has a system prompt or a conversation before it, while real requests often do ("You are
a helpful assistant." is what many apps send). Trained on bare prompts alone, a router reads a system prompt or a
history as a feature it has never seen vary — and, where only some everyday anchors have one, as a sign of an everyday
request — so that a competition problem behind "You are a helpful assistant." went to the cheapest model. Training
therefore reads a share of its labelled requests in one of these shapes instead of bare — a domain-neutral system
prompt, a domain-neutral exchange before the request, or both — with the same labels (the assumption this makes: a
greeting before a question does not change which model answers it well), and adds such copies of a share of the
anchors and reference prompts, so that every kind of request the familiarity classifier tells apart comes in every
shape. (Reshaping in place scored better on training prompts than adding reshaped copies, which weighs the copied
prompts twice: bench/router/RESULTS.md, "What was tried".)
"""

from __future__ import annotations

import hashlib
from dataclasses import replace

from .request import RouteRequest

SHARE = 0.3  # of the requests of each kind that are reshaped

SYSTEM_PROMPTS = (
    "You are a helpful assistant.",
    "You are a helpful, respectful and honest assistant.",
    "You are an AI assistant. Give accurate, complete answers.",
    "You are a knowledgeable assistant. Be precise and concise.",
    "Answer the user's question as well as you can.",
    "You are a friendly assistant. Keep your answers clear and easy to follow.",
    "Reply in the same language as the user.",
    "If you are not sure of something, say so rather than guessing.",
    "Format your answers in Markdown.",
    "You are a careful assistant: check your answer before you give it.",
    "Be concise.",
    "You are an assistant inside a productivity app. Help the user with whatever they ask.",
    "Think step by step when a question needs it, and give the final answer clearly.",
    "You are a patient tutor. Explain your reasoning.",
    "The current date is 2026-12-01. You are a helpful assistant.",
    "Respond politely and professionally.",
)

EARLIER_TURNS = (
    ("Hi! Can you help me with something?", "Of course. What do you need?"),
    ("I have a question for you.", "Sure, go ahead."),
    ("Can you help me with my homework?", "Happy to help. What is the question?"),
    ("I'm stuck on something, maybe you can help.", "Let's work through it together. What is it?"),
    ("Thanks for your help earlier!", "You're welcome! Is there anything else?"),
    ("Quick question.", "Sure, what is it?"),
    ("hello", "Hello! How can I help you today?"),
    ("I need a hand with a task.", "Glad to help. Tell me more."),
)


def pick(key: str) -> int | None:
    """Which shape the request named ``key`` gets a copy in (an index of :func:`reshape`), or None: a hash, so the
    same requests are reshaped on every run."""
    h = int.from_bytes(hashlib.sha256(("shape\x00" + key).encode()).digest()[:8], "big")
    if (h % 10_000) / 10_000 >= SHARE:
        return None
    return h // 10_000


def reshape(req: RouteRequest, k: int) -> RouteRequest:
    """``req`` in shape ``k``: a system prompt (half of the shapes), earlier turns (a quarter) or both."""
    messages = [{"role": "user", "content": req.messages}] if isinstance(req.messages, str) else list(req.messages)
    kind, rest = k % 4, k // 4
    head: list[dict] = []
    if kind in (0, 1, 3) and not any(m.get("role") in ("system", "developer") for m in messages):
        head.append({"role": "system", "content": SYSTEM_PROMPTS[rest % len(SYSTEM_PROMPTS)]})
    if kind in (2, 3):
        user, assistant = EARLIER_TURNS[(rest // len(SYSTEM_PROMPTS)) % len(EARLIER_TURNS)]
        head += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    system = [m for m in messages if m.get("role") in ("system", "developer")]
    chat = [m for m in messages if m.get("role") not in ("system", "developer")]
    if head and head[0]["role"] == "system":
        return replace(req, messages=[head[0], *system, *head[1:], *chat])
    return replace(req, messages=[*system, *head, *chat])
