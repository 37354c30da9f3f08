"""Prompt / conversation → fixed-size vector, numpy only, in a fraction of a millisecond.

The vector is a static word/subword embedding (a vocabulary × dims table distilled from all-MiniLM-L6-v2, see
:mod:`metarouter.router.distill`) averaged with SIF-style frequency weights, plus a few cheap hand features (length,
code and math markers, turn count). Tokenisation is a regex and dict lookups: words in the table map to one row,
other words fall back to greedy WordPiece over the table's ``##`` pieces (cached).

Whole conversations are read: the last user message weighs most, earlier turns less, the system prompt least.
Long texts cost no more than their first and last ``HEAD_CHARS`` / ``TAIL_CHARS`` characters (a few thousand tokens).
"""

from __future__ import annotations

import re
import threading
import unicodedata
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any, NamedTuple

import numpy as np

from . import kernel

HEAD_CHARS = 12_000  # ≈ 3,000 tokens
TAIL_CHARS = 12_000
MAX_WORD_CHARS = 100

_TOKEN_RE = re.compile(r"[^\W\d_]+|\d+|[^\w\s]|_", re.UNICODE)

# Hand features come from token counts: each table row carries, after its embedding, a few count columns
# (is it a code marker, a maths marker, a number, ...), so one gather gives both the embedding and the counts.
_CODE_TOKENS = frozenset([
    "{", "}", ";", "`", "def", "return", "assert", "import", "function", "class", "lambda", "self", "print",
    "const", "var", "void", "elif",
])
_MATH_TOKENS = frozenset([
    "\\", "$", "^", "+", "=", "*", "/", "<", ">", "frac", "sqrt", "cdot", "times", "pi", "theta", "equation",
    "integral",
])
_COUNT_COLUMNS = ("code", "math", "number", "question", "nonascii", "punct", "unseen")

FEATURE_NAMES = (
    "log_chars", "log_total_chars", "log_turns", "log_tokens", "code_density", "math_density", "number_density",
    "question_marks", "nonascii_density", "punct_density", "newline_density", "has_system", "has_image",
)

FEATURE_CLIP = kernel.FEATURE_CLIP  # standardised features beyond this many standard deviations of training read as this
CONSTANT_SCALE = 1e6  # the scale of a feature that never varied in training: whatever its value, it reads as 0


def feature_scale(std: np.ndarray) -> np.ndarray:
    """Training's standard deviations as the scale features are divided by: a feature that never varied there
    (images, JSON mode: no labelled prompt had one) teaches nothing, so it is read as 0 rather than as thousands of
    standard deviations (which once made a system prompt look like nothing the router had seen)."""
    std = np.asarray(std, np.float32)
    return np.where(std > 1e-6, std + 1e-3, CONSTANT_SCALE).astype(np.float32)


standardised = kernel.standardised  # training's standardisation, clipped: one definition, the kernel's


def count_columns(token: str) -> list[float]:
    """The count columns of one vocabulary entry (``##`` pieces count as their text)."""
    t = token.removeprefix("##")
    return [
        float(t in _CODE_TOKENS),
        float(t in _MATH_TOKENS),
        float(t.isdigit()),
        float(t == "?"),
        float(not t.isascii()),
        float(len(t) == 1 and not t.isalnum()),
    ]

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


_HASH_P = 0x9E3779B97F4A7C15  # odd: invertible mod 2^64
_MAX_VEC_CHARS = 2 * (HEAD_CHARS + TAIL_CHARS) + 16
_MIN_VEC_CHARS = 1_200  # below this the dict path wins (numpy's per-call overhead) ...
_MIN_COMPILED_CHARS = 300  # ... or, with the compiled kernel, below this (its one call's overhead)
# str.split() whitespace within ASCII: \t \n \v \f \r, \x1c-\x1f and space
_WS_LUT = np.zeros(256, bool)
_WS_LUT[[9, 10, 11, 12, 13, 28, 29, 30, 31, 32]] = True
_UNICODE_WS = re.compile("[\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]")


def _pow_table(n: int) -> np.ndarray:
    out = np.empty(n, np.uint64)
    v = 1
    for i in range(n):
        out[i] = v
        v = (v * _HASH_P) % 2**64
    return out


_POW = _pow_table(_MAX_VEC_CHARS + 1)
_inv = pow(_HASH_P, -1, 2**64)
_INV_POW = np.empty(_MAX_VEC_CHARS + 1, np.uint64)
_v = 1
for _i in range(_MAX_VEC_CHARS + 1):
    _INV_POW[_i] = _v
    _v = (_v * _inv) % 2**64
del _v, _i, _inv


def _strip_accents(word: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFD", word) if unicodedata.category(c) != "Mn")



#: no counts (no last user message) and no tail, read-only as the arrays the kernel is otherwise given are
_NO_COUNTS = np.zeros(len(_COUNT_COLUMNS), np.float32)
_NO_TAIL = np.zeros(0, np.float32)
_NO_COUNTS.flags.writeable = _NO_TAIL.flags.writeable = False


class Parsed(NamedTuple):
    """A conversation as the encoder reads it."""

    segments: list[tuple[str, float]]  # (text, weight), the newest turn first
    last_user: str  # the last user message's text
    total_chars: int
    turns: int  # user turns
    has_system: bool
    has_image: bool

class StaticEncoder:
    """Static-embedding encoder. ``vocab`` maps table rows to strings (``##x`` = continuation piece)."""

    def __init__(self, vocab: list[str], table: np.ndarray, weights: np.ndarray, feat_mean: np.ndarray,
                 feat_std: np.ndarray, cache_size: int = 100_000, chunk_rows: int = 32_768,
                 seen: np.ndarray | None = None, text_cache_entries: int = 4096,
                 text_cache_chars: int = 4_000_000):
        self.vocab = list(vocab)
        v, self.dim = np.asarray(table).shape
        self.n_vocab = v
        # Rows already scaled by their SIF weight, then the raw count columns. Spare rows at the end hold whole
        # multi-piece chunks ("eggs.", "tokenisation") as the sum of their pieces: every whitespace chunk is one row.
        nc = len(_COUNT_COLUMNS)
        self.table = np.zeros((v + chunk_rows, self.dim + nc), np.float32)
        self.table[:v, : self.dim] = table
        self.table[:v, self.dim: self.dim + nc - 1] = [count_columns(t) for t in self.vocab]
        # "unseen": not in the router's training prompts (default: SIF weight 1, i.e. not in the distillation
        # corpus) or unknown — how familiar a prompt's words are
        unseen = ~np.asarray(seen, bool) if seen is not None else np.asarray(weights, np.float32) >= 0.999
        self.table[:v, -1] = unseen | (np.array(self.vocab) == "[UNK]")
        self.weights = np.zeros(v + chunk_rows, np.float32)
        self.weights[:v] = weights
        self._zero_row = v  # stays all-zero, weight 0: chunks without content (e.g. a lone "_")
        self._n_rows = v + 1
        self.feat_mean = np.asarray(feat_mean, np.float32)
        self.feat_std = np.asarray(feat_std, np.float32)
        self.n_features = len(FEATURE_NAMES)
        self.out_dim = self.dim + self.n_features
        self._word: dict[str, int] = {}
        self._piece: dict[str, int] = {}
        for i, tok in enumerate(self.vocab):
            if tok.startswith("##"):
                self._piece[tok[2:]] = i
            else:
                self._word.setdefault(tok, i)
        self._cache: dict[str, tuple[int, ...]] = {}  # word / chunk -> vocabulary ids (bounded)
        self._cache_size = cache_size
        self._chunk_row: dict[str, int] = dict(self._word)  # whitespace chunk -> one table row
        self._lock = threading.Lock()
        self._unk = self._word.get("[UNK]", 0)
        self._max_piece = max((len(t) for t in self._word), default=1) + 1
        self._generation = 0
        self._build_hash_index()
        # message text -> its row sum, weight sum and row count: system prompts and the earlier turns of a
        # conversation recur request after request (LRU, bounded in entries and in characters held)
        self._texts: OrderedDict[str, tuple[np.ndarray, float, int]] = OrderedDict()
        self._texts_chars = 0
        self._texts_max = text_cache_entries
        self._texts_max_chars = text_cache_chars
        self._texts_lock = threading.Lock()

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
        if ids is None and len(w) > MAX_WORD_CHARS:  # as BERT: overlong words are unknown (and cost nothing)
            ids = (self._unk,)
        if ids is None:
            out, start, n = [], 0, len(w)
            while start < n:
                end = min(n, start + self._max_piece)
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
        if len(self._cache) >= self._cache_size:
            self._cache.clear()
        self._cache[word] = ids
        return ids

    def _chunk_ids(self, chunk: str) -> tuple[int, ...]:
        """Vocabulary ids of one whitespace-free chunk (``eggs.`` → ``eggs`` ``.``)."""
        ids = self._cache.get(chunk)
        if ids is not None:
            return ids
        get = self._word.get
        out: list[int] = []
        for tok in _TOKEN_RE.findall(chunk):
            j = get(tok)
            if j is not None:
                out.append(j)
            elif tok.isdigit() and len(tok) > 4:
                out.append(get(tok[:4], self._unk))
            else:
                out.extend(self._wordpiece(tok))
        ids = tuple(out)
        if len(self._cache) >= self._cache_size:
            self._cache.clear()
        self._cache[chunk] = ids
        return ids

    def token_ids(self, text: str, lowered: bool = False) -> list[int]:
        """Vocabulary ids of a text: whitespace chunks, each a vocabulary word or split by regex + WordPiece."""
        get = self._word.get
        out: list[int] = []
        for chunk in (text if lowered else clip(text).lower()).split():
            j = get(chunk)
            if j is not None:
                out.append(j)
            else:
                out.extend(self._chunk_ids(chunk))
        return out

    def _chunk_to_row(self, chunk: str) -> int:
        """A table row for a chunk outside the vocabulary: its single piece, or a new row summing its pieces."""
        ids = self._chunk_ids(chunk)
        if len(ids) == 1:
            row = ids[0]
        elif not ids:
            row = self._zero_row
        else:
            with self._lock:
                row = self._chunk_row.get(chunk)
                if row is not None:
                    return row
                if self._n_rows >= len(self.table):
                    self._new_generation()
                row = self._n_rows
                self.table[row], self.weights[row] = kernel.row_sum(self.table, self.weights, np.array(ids, np.intp))
                self._n_rows += 1
        self._chunk_row[chunk] = row
        return row

    def _new_generation(self) -> None:
        """Spare rows exhausted: forget the chunks that use them (vocabulary words stay) and start refilling.

        Keeps memory bounded; chunks seen again get a row again on their next use. (Called under the lock; a
        concurrent reader may, in a rare race, read one re-used row: a one-chunk error in one embedding.)
        """
        first = self._zero_row + 1
        self._chunk_row = {k: r for k, r in self._chunk_row.items() if r < first}
        self._n_rows = first
        self._generation += 1  # the hash index forgets every chunk row too
        self._index = self._base_index
        self._pending = []
        if len(self._cache) >= self._cache_size:
            self._cache.clear()

    def rows(self, low: str) -> list[int]:
        """One table row per whitespace chunk of a lower-cased text."""
        chunks = low.split()
        rows = list(map(self._chunk_row.get, chunks))
        if None in rows:
            for k, r in enumerate(rows):
                if r is None:
                    rows[k] = self._chunk_to_row(chunks[k])
        return rows

    # -- vectorised look-up for ASCII text ---------------------------------------------------------------------
    def _build_hash_index(self) -> None:
        """A sorted array of 64-bit hashes of the ASCII vocabulary words → their rows (numpy ``searchsorted``)."""
        words = list(self._word)
        enc = [w.encode() for w in words]
        n = max((len(w) for w in enc), default=1)
        pw = _pow_table(n + 1)
        hs = np.array([int((np.frombuffer(w, np.uint8).astype(np.uint64) * pw[: len(w)]).sum()) for w in enc],
                      np.uint64)
        order = np.argsort(hs, kind="stable")
        # (sorted hashes, rows) swapped as one tuple, so a concurrent reader never sees a mismatched pair
        self._base_index = (hs[order], np.array([self._word[w] for w in words], np.intp)[order])
        self._index = self._base_index
        self._pending: list[tuple[int, int]] = []  # (hash, row) of chunks resolved since the last merge
        self._slots: kernel.Slots | None = None  # the compiled lookup's table of the index (kernel.slots)

    def _merge_pending(self) -> None:
        """Fold recently resolved chunks into the sorted hash index (amortised: every 512 new chunks)."""
        with self._lock:
            if not self._pending:
                return
            h = np.array([p[0] for p in self._pending], np.uint64)
            r = np.array([p[1] for p in self._pending], np.intp)
            self._pending = []
            keys = np.concatenate([self._index[0], h])
            rows = np.concatenate([self._index[1], r])
            keys, first = np.unique(keys, return_index=True)
            self._index = (keys, rows[first])

    def rows_array(self, low: str) -> np.ndarray:
        """:meth:`rows` as an array, split and looked up in one pass over the bytes (:func:`.kernel.chunk_rows`:
        the same rows, far fewer Python steps).

        Works on the UTF-8 bytes: no multi-byte sequence contains an ASCII byte, so splitting on ASCII whitespace
        gives ``str.split()``'s chunks unless the text has non-ASCII whitespace (then: the plain path).
        """
        raw = low.encode()
        least = _MIN_COMPILED_CHARS if kernel.compiled_ready() else _MIN_VEC_CHARS
        if len(raw) < least or len(raw) > _MAX_VEC_CHARS or (len(raw) != len(low) and _UNICODE_WS.search(low)):
            return np.array(self.rows(low), np.intp)
        b = np.frombuffer(raw, np.uint8)
        if not len(b):
            return np.zeros(0, np.intp)
        keys, krows = self._index
        table = self._slots
        if table is None or table.keys is not keys:  # a new index (or the compiled kernel just became ready)
            table = self._slots = kernel.slots(keys, krows)
        rows, starts, ends, h = kernel.chunk_rows(b, _WS_LUT, _POW, _INV_POW, keys, krows, table)
        found = rows >= 0
        if not found.all():
            get = self._chunk_row.get
            miss = np.flatnonzero(~found)
            st, en, hh = starts[miss].tolist(), ends[miss].tolist(), h[miss].tolist()
            fixed = []
            gen = self._generation
            for a, z, hk in zip(st, en, hh):
                chunk = raw[a:z].decode()
                r = get(chunk)
                if r is None:
                    r = self._chunk_to_row(chunk)
                fixed.append(r)
                if r >= 0 and gen == self._generation:
                    self._pending.append((hk, r))
            rows[miss] = fixed
            if len(self._pending) >= 512:
                self._merge_pending()
        return rows

    # -- encoding -----------------------------------------------------------------------------------------------
    def _embed_text(self, low: str) -> tuple[np.ndarray, float, int]:
        """Sum of the rows of a lower-cased text (SIF-scaled embedding + counts), their weight sum, row count."""
        arr = self.rows_array(low)
        n = len(arr)
        if not n:
            return np.zeros(self.table.shape[1], np.float32), 0.0, 0
        tot, w = kernel.row_sum(self.table, self.weights, arr)
        return tot, w, n

    def embed_segment(self, text: str) -> tuple[np.ndarray, float, int]:
        """:meth:`_embed_text` of a message text (clipped, lower-cased), through the LRU cache of recent texts.

        Exact: a text always maps to the same rows, so a cached sum is the sum that would be computed again.
        """
        with self._texts_lock:
            hit = self._texts.get(text)
            if hit is not None:
                self._texts.move_to_end(text)
                return hit
        hit = self._embed_text(clip(text).lower())
        hit[0].flags.writeable = False  # shared between requests
        size = len(text)
        if size <= self._texts_max_chars // 8:
            with self._texts_lock:
                if text not in self._texts:
                    self._texts[text] = hit
                    self._texts_chars += size
                    while len(self._texts) > self._texts_max or self._texts_chars > self._texts_max_chars:
                        old, _ = self._texts.popitem(last=False)
                        self._texts_chars -= len(old)
        return hit

    def parse(self, messages: list[dict] | str) -> Parsed:
        """Messages → (text, weight) segments, the last user text, total chars, turns, has_system, has_image."""
        return self.parse_with_tokens(messages)[0]

    def parse_with_tokens(self, messages: list[dict] | str) -> tuple[tuple, int]:
        """:meth:`parse` and :func:`estimate_prompt_tokens` in one pass over the messages."""
        if isinstance(messages, str):
            return Parsed([(messages, LAST_USER_WEIGHT)], messages, len(messages), 1, False, False), \
                text_prompt_tokens(messages)
        texts: list[tuple[str, str]] = []
        has_image = has_system = False
        last_user = -1
        total = n_turns = 0
        tokens = PROMPT_OVERHEAD_TOKENS
        for m in messages:
            content = m.get("content")
            if type(content) is str:
                t, img = content, False
            else:
                t, img = message_text(content)
            role = str(m.get("role", "user"))
            if img:
                has_image = True
            if role == "user":
                last_user = len(texts)
                n_turns += 1
            elif role in ("system", "developer"):
                has_system = True
            total += len(t)
            tokens += message_tokens(len(t), img)
            texts.append((role, t))
        if last_user < 0:
            last_user = len(texts) - 1
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
        return Parsed(segs, last, total, n_turns, has_system, has_image), tokens

    def encode(self, messages: list[dict] | str, parsed: Parsed | None = None, raw: bool = False,
               with_coverage: bool = False, tail: np.ndarray | None = None):
        """One prompt or conversation → vector of ``out_dim`` floats (embedding, then standardised features), with
        ``tail`` (float32) appended when given.

        ``with_coverage``: also return the share of the last user message's tokens seen in training (0–1).
        """
        segs, last, total, n_turns, has_system, has_image = parsed or self.parse(messages)
        d = self.dim
        vec = np.zeros(d, np.float32)
        counts, n_tok, n_chars, newlines = None, 0, len(last), last.count("\n")
        embed = self.embed_segment
        for text, w in segs:
            tot, s, n = embed(text)
            if s > 0:
                vec += (w / s) * tot[:d]
            if counts is None and w == LAST_USER_WEIGHT:
                counts, n_tok = tot[d:], n
        if counts is None:
            counts = _NO_COUNTS
        x = kernel.prompt_vector(vec, vec @ vec, counts, n_tok, n_chars, newlines, total, n_turns, has_system,
                                 has_image, self.feat_mean, self.feat_std, _NO_TAIL if tail is None else tail,
                                 standardise=not raw)
        if with_coverage:
            return x, (1.0 - float(counts[-1]) / n_tok) if n_tok else 1.0
        return x

    def encode_many(self, items: Iterable[list[dict] | str]) -> np.ndarray:
        items = list(items)
        return np.stack([self.encode(x) for x in items]) if items else np.zeros((0, self.out_dim), np.float32)


PROMPT_OVERHEAD_TOKENS = 16  # per conversation


def text_prompt_tokens(text: str) -> int:
    """:func:`estimate_prompt_tokens` of a bare string prompt."""
    return len(text) // 4 + 20


def message_tokens(chars: int, has_image: bool) -> int:
    """One message's share of :func:`estimate_prompt_tokens`."""
    return chars // 4 + 4 + (85 if has_image else 0)


def estimate_prompt_tokens(messages: list[dict] | str) -> int:
    """Prompt tokens ≈ characters / 4 plus a few per message (good enough for context and cost checks)."""
    if isinstance(messages, str):
        return text_prompt_tokens(messages)
    n = 0
    for m in messages:
        t, img = message_text(m.get("content"))
        n += message_tokens(len(t), img)
    return n + PROMPT_OVERHEAD_TOKENS
