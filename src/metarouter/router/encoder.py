"""Prompt / conversation → fixed-size vector, numpy only, in a fraction of a millisecond.

The vector is a static word/subword embedding (a vocabulary × dims table distilled from all-MiniLM-L6-v2, see
:mod:`metarouter.router.distill`) averaged with SIF-style frequency weights, plus a few cheap hand features (length,
code and math markers, turn count). Tokenisation is a regex and dict lookups: words in the table map to one row,
other words fall back to greedy WordPiece over the table's ``##`` pieces (cached).

Whole conversations are read: the last user message weighs most, earlier turns less, the system prompt least.
Long texts cost no more than their first and last ``HEAD_CHARS`` / ``TAIL_CHARS`` characters (a few thousand tokens).
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Iterable
from typing import Any

import numpy as np

HEAD_CHARS = 12_000  # ≈ 3,000 tokens
TAIL_CHARS = 12_000

_TOKEN_RE = re.compile(r"[^\W\d_]+|\d+|[^\w\s]|_", re.UNICODE)

# Hand features: each a cheap regex count or length, on the last user message (or whole text).
_CODE_RE = re.compile(r"```|\bdef |\breturn\b|\bassert\b|\bimport |\bfunction\b|[{};]|=>|==|\bclass ")
_MATH_RE = re.compile(r"\\frac|\\sqrt|\\[a-z]+\{|\$|\^|\\\(|\d\s*[-+*/=]\s*\d")
_DIGIT_RE = re.compile(r"\d")
_OPTION_RE = re.compile(r"(?m)^\s*(?:\(?[A-J][).:]|[A-J]\s*[-:])\s")
_NONASCII_RE = re.compile(r"[^\x00-\x7f]")

FEATURE_NAMES = (
    "log_chars", "log_total_chars", "n_turns", "code_density", "math_density", "digit_frac", "question_marks",
    "options", "non_ascii_frac", "newline_density", "has_system", "has_image",
)

ROLE_WEIGHT = {"system": 0.3, "developer": 0.3, "assistant": 0.5, "tool": 0.3, "user": 0.7}
LAST_USER_WEIGHT = 2.0


def message_text(content: Any) -> tuple[str, bool]:
    """Text of an OpenAI message ``content`` (string or list of parts) and whether it holds an image."""
    if content is None:
        return "", False
    if isinstance(content, str):
        return content, False
    if isinstance(content, list):
        texts, image = [], False
        for part in content:
            if isinstance(part, dict):
                t = part.get("type")
                if t in ("text", "input_text"):
                    texts.append(str(part.get("text", "")))
                elif t in ("image_url", "input_image", "image"):
                    image = True
            elif isinstance(part, str):
                texts.append(part)
        return "\n".join(texts), image
    return str(content), False


def clip(text: str) -> str:
    """First and last few thousand tokens of a long text."""
    if len(text) <= HEAD_CHARS + TAIL_CHARS:
        return text
    return text[:HEAD_CHARS] + "\n" + text[-TAIL_CHARS:]


def _strip_accents(word: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFD", word) if unicodedata.category(c) != "Mn")


class StaticEncoder:
    """Static-embedding encoder. ``vocab`` maps table rows to strings (``##x`` = continuation piece)."""

    def __init__(self, vocab: list[str], table: np.ndarray, weights: np.ndarray, feat_mean: np.ndarray,
                 feat_std: np.ndarray, cache_size: int = 200_000):
        self.vocab = list(vocab)
        self.table = np.ascontiguousarray(table, dtype=np.float32)  # rows already scaled by their SIF weight
        self.weights = np.asarray(weights, np.float32)
        self.feat_mean = np.asarray(feat_mean, np.float32)
        self.feat_std = np.asarray(feat_std, np.float32)
        self.dim = self.table.shape[1]
        self.n_features = len(FEATURE_NAMES)
        self.out_dim = self.dim + self.n_features
        self._word: dict[str, int] = {}
        self._piece: dict[str, int] = {}
        for i, tok in enumerate(self.vocab):
            if tok.startswith("##"):
                self._piece[tok[2:]] = i
            else:
                self._word.setdefault(tok, i)
        self._cache: dict[str, tuple[int, ...]] = {}
        self._cache_size = cache_size
        self._unk = self._word.get("[UNK]", 0)

    # -- tokenisation -------------------------------------------------------------------------------------------
    def _wordpiece(self, word: str) -> tuple[int, ...]:
        ids = self._cache.get(word)
        if ids is not None:
            return ids
        w = word
        if not w.isascii():
            w = _strip_accents(w)
            if w in self._word:
                ids = (self._word[w],)
        if ids is None:
            out, start, n = [], 0, len(w)
            while start < n:
                end = n
                found = -1
                table = self._word if start == 0 else self._piece
                while end > start:
                    j = table.get(w[start:end])
                    if j is not None:
                        found = j
                        break
                    end -= 1
                if found < 0:
                    out = [self._unk]
                    break
                out.append(found)
                start = end
            ids = tuple(out[:8])
        if len(self._cache) < self._cache_size:
            self._cache[word] = ids
        return ids

    def token_ids(self, text: str) -> list[int]:
        get = self._word.get
        out: list[int] = []
        append = out.append
        for tok in _TOKEN_RE.findall(clip(text).lower()):
            j = get(tok)
            if j is not None:
                append(j)
            elif tok.isdigit() and len(tok) > 4:
                append(get(tok[:4], self._unk))
            else:
                out.extend(self._wordpiece(tok))
        return out

    # -- encoding -----------------------------------------------------------------------------------------------
    def _embed_ids(self, ids: list[int]) -> tuple[np.ndarray, float]:
        if not ids:
            return np.zeros(self.dim, np.float32), 0.0
        arr = np.fromiter(ids, np.intp, len(ids))
        return self.table[arr].sum(0), float(self.weights[arr].sum())

    def hand_features(self, last: str, total_chars: int, n_turns: int, has_system: bool, has_image: bool) -> np.ndarray:
        n = max(len(last), 1)
        f = np.array([
            math.log1p(len(last)),
            math.log1p(total_chars),
            math.log1p(n_turns),
            len(_CODE_RE.findall(last)) * 100.0 / n,
            len(_MATH_RE.findall(last)) * 100.0 / n,
            len(_DIGIT_RE.findall(last)) / n,
            min(last.count("?"), 10),
            min(len(_OPTION_RE.findall(last)), 10),
            len(_NONASCII_RE.findall(last)) / n,
            last.count("\n") * 100.0 / n,
            float(has_system),
            float(has_image),
        ], np.float32)
        return (f - self.feat_mean) / self.feat_std

    def parse(self, messages: list[dict] | str) -> tuple[list[tuple[str, float]], str, int, int, bool, bool]:
        """Messages → (text, weight) segments, the last user text, total chars, turns, has_system, has_image."""
        if isinstance(messages, str):
            return [(messages, LAST_USER_WEIGHT)], messages, len(messages), 1, False, False
        texts: list[tuple[str, str]] = []
        has_image = False
        for m in messages:
            t, img = message_text(m.get("content"))
            has_image |= img
            texts.append((str(m.get("role", "user")), t))
        last_user = max((i for i, (r, _) in enumerate(texts) if r == "user"), default=len(texts) - 1)
        segs: list[tuple[str, float]] = []
        budget = HEAD_CHARS + TAIL_CHARS  # the conversation as a whole is clipped: newest turns first
        for i in range(len(texts) - 1, -1, -1):
            role, t = texts[i]
            if not t or budget <= 0:
                continue
            if i == last_user:
                w = LAST_USER_WEIGHT
            else:
                w = ROLE_WEIGHT.get(role, 0.3) * (0.7 ** max(0, last_user - i - 1))
            if len(t) > budget:
                t = clip(t) if budget >= HEAD_CHARS + TAIL_CHARS else t[:budget // 2] + "\n" + t[-budget // 2:]
            budget -= len(t)
            segs.append((t, w))
        last = texts[last_user][1] if texts else ""
        total = sum(len(t) for _, t in texts)
        n_turns = sum(1 for r, _ in texts if r == "user")
        has_system = any(r in ("system", "developer") for r, _ in texts)
        return segs, last, total, n_turns, has_system, has_image

    def encode(self, messages: list[dict] | str) -> np.ndarray:
        """One prompt or conversation → vector of ``out_dim`` floats (embedding, then standardised features)."""
        segs, last, total, n_turns, has_system, has_image = self.parse(messages)
        vec = np.zeros(self.dim, np.float32)
        wsum = 0.0
        for text, w in segs:
            v, s = self._embed_ids(self.token_ids(text))
            if s > 0:
                vec += (w / s) * v
                wsum += w
        if wsum > 0:
            norm = float(np.sqrt(vec @ vec))
            if norm > 0:
                vec /= norm
        feats = self.hand_features(clip(last), total, n_turns, has_system, has_image)
        return np.concatenate([vec, feats])

    def encode_many(self, items: Iterable[list[dict] | str]) -> np.ndarray:
        return np.stack([self.encode(x) for x in items]) if items else np.zeros((0, self.out_dim), np.float32)

    def raw_features(self, messages: list[dict] | str) -> np.ndarray:
        """Unstandardised hand features (training computes their mean and std from these)."""
        segs, last, total, n_turns, has_system, has_image = self.parse(messages)
        mean, std = self.feat_mean, self.feat_std
        self.feat_mean, self.feat_std = np.zeros_like(mean), np.ones_like(std)
        try:
            return self.hand_features(clip(last), total, n_turns, has_system, has_image)
        finally:
            self.feat_mean, self.feat_std = mean, std


def estimate_prompt_tokens(messages: list[dict] | str) -> int:
    """Prompt tokens ≈ characters / 4 plus a few per message (good enough for context and cost checks)."""
    if isinstance(messages, str):
        return len(messages) // 4 + 20
    n = 0
    for m in messages:
        t, img = message_text(m.get("content"))
        n += len(t) // 4 + 4 + (85 if img else 0)
    return n + 16
