"""Routing data: prompts, per-model correctness labels, splits and the benchmark cost convention.

Reads the shared layout (``prompts.csv.gz``, ``labels.csv.gz``, ``aliases.csv``, Arena-Hard files) and Not Diamond's
custom-router CSV (a ``prompt`` column and ``<provider>/<model>/score`` columns, optionally ``…/response``).
Standard library + numpy only, so the benchmark and the CLI can load data without the ``[train]`` extra.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

csv.field_size_limit(min(sys.maxsize, 2**31 - 1))

def _open_text(path: Path):
    if str(path).endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


@dataclass
class RoutingData:
    """Prompts × models matrix of correctness (NaN = not labelled) and output length in characters."""

    prompts: list[str]
    sources: list[str]
    datasets: list[str]
    item_ids: list[str]
    models: list[str]  # column names: catalog ids where an alias exists, else "<source>:<source model>"
    correct: np.ndarray  # float32 (n_prompts, n_models), NaN where unlabelled
    out_chars: np.ndarray  # float32 (n_prompts, n_models), NaN where unknown
    catalog_ids: dict[str, str] = field(default_factory=dict)  # column name -> catalog id (only aliased columns)
    tools: list[list | None] | None = None  # per prompt: the OpenAI ``tools`` offered (function-calling data), or None
    messages: list[list | None] | None = None  # per prompt: a whole conversation instead of the bare prompt, or None

    def subset(self, idx) -> RoutingData:
        idx = np.asarray(idx, int)
        return RoutingData(
            [self.prompts[i] for i in idx], [self.sources[i] for i in idx], [self.datasets[i] for i in idx],
            [self.item_ids[i] for i in idx], list(self.models), self.correct[idx], self.out_chars[idx],
            dict(self.catalog_ids), [self.tools_of(i) for i in idx], [self.messages_of(i) for i in idx],
        )

    def tools_of(self, i: int) -> list | None:
        return self.tools[i] if self.tools else None

    def messages_of(self, i: int) -> list | None:
        return self.messages[i] if self.messages else None

    def request(self, i: int):
        """Prompt ``i`` as the router reads a request (:class:`~metarouter.router.request.RouteRequest`)."""
        from .request import RouteRequest

        msgs = self.messages_of(i) or [{"role": "user", "content": self.prompts[i]}]
        return RouteRequest.from_body({"messages": msgs, "tools": self.tools_of(i) or None})

    def requests(self) -> list:
        return [self.request(i) for i in range(len(self))]

    def prompt_chars(self) -> np.ndarray:
        """Characters of each prompt plus, for function calling, of its ``tools`` JSON (the cost convention)."""
        import json

        return np.array([len(self.prompts[i]) + (len(json.dumps(t)) if (t := self.tools_of(i)) else 0)
                         for i in range(len(self))], float)

    def __len__(self) -> int:
        return len(self.prompts)


def load_shared(data_dir: str | Path) -> RoutingData:
    """Load the shared ``routing/`` folder: ``prompts``/``labels`` and, where present, the function-calling
    ``bfcl_prompts``/``bfcl_labels`` (with their ``tools``)."""
    d = Path(data_dir)
    parts = [_load_pair(d, d / "prompts.csv.gz", d / "labels.csv.gz")]
    if (d / "bfcl_prompts.csv.gz").exists() and (d / "bfcl_labels.csv.gz").exists():
        parts.append(_load_pair(d, d / "bfcl_prompts.csv.gz", d / "bfcl_labels.csv.gz"))
    return concat(parts) if len(parts) > 1 else parts[0]


def _load_pair(d: Path, prompts_file: Path, labels_file: Path) -> RoutingData:
    import json

    aliases: dict[tuple[str, str], str] = {}
    if (d / "aliases.csv").exists():
        with _open_text(d / "aliases.csv") as f:
            for r in csv.DictReader(f):
                aliases[(r["source"], r["source_model"])] = r["model_id"]
    key_to_row: dict[tuple[str, str], int] = {}
    prompts, sources, datasets, items, tools = [], [], [], [], []
    with _open_text(prompts_file) as f:
        reader = csv.DictReader(f)
        _require_columns(prompts_file, reader.fieldnames, ("source", "item_id", "prompt"))
        for line, r in enumerate(reader, start=2):
            key_to_row[(r["source"], r["item_id"])] = len(prompts)
            try:
                tools.append(json.loads(r["tools"]) if r.get("tools") else None)
            except ValueError as e:
                raise ValueError(f"{prompts_file}:{line}: `tools` is not JSON ({e})") from None
            prompts.append(r["prompt"])
            sources.append(r["source"])
            datasets.append(r.get("dataset") or r["source"])
            items.append(r["item_id"])
    col: dict[str, int] = {}
    rows, cols, corr, chars = [], [], [], []
    catalog_ids: dict[str, str] = {}
    with _open_text(labels_file) as f:
        reader = csv.DictReader(f)
        _require_columns(labels_file, reader.fieldnames, ("source", "item_id", "model", "correct"))
        for r in reader:
            i = key_to_row.get((r["source"], r["item_id"]))
            if i is None:
                continue
            cid = aliases.get((r["source"], r["model"]))
            name = cid or f'{r["source"]}:{r["model"]}'
            j = col.setdefault(name, len(col))
            if cid:
                catalog_ids[name] = cid
            rows.append(i)
            cols.append(j)
            corr.append(float(r["correct"]))
            oc = r.get("output_chars", "")
            chars.append(float(oc) if oc not in ("", None, "0") else np.nan)  # 0 = not measured
    n, m = len(prompts), len(col)
    correct = np.full((n, m), np.nan, np.float32)
    out_chars = np.full((n, m), np.nan, np.float32)
    correct[rows, cols] = corr
    out_chars[rows, cols] = chars
    models = [None] * m
    for k, j in col.items():
        models[j] = k
    return RoutingData(prompts, sources, datasets, items, models, correct, out_chars, catalog_ids,
                       tools if any(t is not None for t in tools) else None)


def _require_columns(path: Path, header: list[str] | None, needed: tuple[str, ...]) -> None:
    missing = [c for c in needed if c not in (header or [])]
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(missing)} (has: {', '.join(header or []) or 'none'})")


def load_anchors(path: str | Path, model_ids: list[str], source: str = "everyday") -> RoutingData:
    """Everyday requests (``anchors.jsonl``: ``kind`` and ``prompt`` or ``messages``) that every model of the pool
    answers well, labelled correct for each of ``model_ids``: a stated assumption, not a measurement. Training uses
    them only for the prior's difficulty (on such requests the choice does not matter, so price decides) and as
    reference traffic for familiarity, never for the per-model quality model. The prompts were written for this
    project (greetings, small talk, one-line facts, short translations, simple classification, rewrites,
    formatting, one-step arithmetic, short creative requests, everyday how-tos; several languages)."""
    import json

    prompts, kinds, msgs = [], [], []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
            except ValueError as e:
                raise ValueError(f"{path}:{line_no}: not JSON ({e})") from None
            m = r.get("messages")
            text = r.get("prompt") or next((x.get("content") for x in reversed(m or []) if x.get("role") == "user"), "")
            if not isinstance(text, str) or not text:
                raise ValueError(f"{path}:{line_no}: needs `prompt` or `messages` with a user message")
            prompts.append(text)
            kinds.append(str(r.get("kind", "")))
            msgs.append(m)
    n = len(prompts)
    correct = np.ones((n, len(model_ids)), np.float32)
    return RoutingData(prompts, [source] * n, [f"{source}/{k}" if k else source for k in kinds],
                       [f"{k}:{i}" for i, k in enumerate(kinds)], list(model_ids), correct,
                       np.full((n, len(model_ids)), np.nan, np.float32), {m: m for m in model_ids}, None,
                       msgs if any(msgs) else None)


def load_notdiamond_csv(path: str | Path, source: str = "custom") -> RoutingData:
    """Not Diamond custom-router format: ``prompt`` + ``<provider>/<model>/score`` (+ optional ``/response``)."""
    with _open_text(Path(path)) as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        rows = list(reader)
    if "prompt" not in header:
        raise ValueError(f"{path}: no 'prompt' column")
    models = [h[: -len("/score")] for h in header if h.endswith("/score")]
    if not models:
        raise ValueError(f"{path}: no '<provider>/<model>/score' columns")
    n, m = len(rows), len(models)
    correct = np.full((n, m), np.nan, np.float32)
    out_chars = np.full((n, m), np.nan, np.float32)
    for i, r in enumerate(rows):
        for j, mid in enumerate(models):
            s = (r.get(f"{mid}/score") or "").strip()
            if s:
                correct[i, j] = min(1.0, max(0.0, float(s)))
            resp = r.get(f"{mid}/response")
            if resp:
                out_chars[i, j] = len(resp)
    prompts = [r["prompt"] for r in rows]
    items = [str(i) for i in range(n)]
    return RoutingData(prompts, [source] * n, [source] * n, items, models, correct, out_chars,
                       {mm: mm for mm in models})


def load_any(path: str | Path) -> RoutingData:
    """A shared routing folder, a Not Diamond CSV, or a folder with CSVs in that format (concatenated)."""
    p = Path(path)
    if p.is_dir() and (p / "prompts.csv.gz").exists():
        return load_shared(p)
    files = [p] if p.is_file() else sorted(p.glob("*.csv")) + sorted(p.glob("*.csv.gz"))
    if not files:
        raise FileNotFoundError(f"no routing data under {path}")
    parts = [load_notdiamond_csv(f, source=f.name.split(".")[0]) for f in files]
    return concat(parts) if len(parts) > 1 else parts[0]


def concat(parts: list[RoutingData]) -> RoutingData:
    models: list[str] = []
    for p in parts:
        models += [m for m in p.models if m not in models]
    n = sum(len(p) for p in parts)
    correct = np.full((n, len(models)), np.nan, np.float32)
    out_chars = np.full((n, len(models)), np.nan, np.float32)
    off = 0
    cat: dict[str, str] = {}
    for p in parts:
        idx = [models.index(m) for m in p.models]
        correct[off: off + len(p), idx] = p.correct
        out_chars[off: off + len(p), idx] = p.out_chars
        off += len(p)
        cat.update(p.catalog_ids)
    tools = [p.tools_of(i) for p in parts for i in range(len(p))]
    msgs = [p.messages_of(i) for p in parts for i in range(len(p))]
    return RoutingData(
        sum((p.prompts for p in parts), []), sum((p.sources for p in parts), []),
        sum((p.datasets for p in parts), []), sum((p.item_ids for p in parts), []), models, correct, out_chars, cat,
        tools if any(t is not None for t in tools) else None, msgs if any(m is not None for m in msgs) else None,
    )


def is_test(source: str, item_id: str, test_fraction: float = 0.2) -> bool:
    """Deterministic held-out split by hash of (source, item id): stable across runs, machines and data order."""
    h = hashlib.sha256(f"{source}\x00{item_id}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64 < test_fraction


def split_mask(data: RoutingData, test_fraction: float = 0.2) -> np.ndarray:
    """True for held-out (test) prompts."""
    return np.array([is_test(s, i, test_fraction) for s, i in zip(data.sources, data.item_ids)], bool)


def load_arena_hard(data_dir: str | Path) -> tuple[list[str], dict[str, float], dict[str, dict]]:
    """Arena-Hard prompts (unlabelled), mean output tokens per source model, and leaderboard rows (latest date wins)."""
    d = Path(data_dir)
    prompts: list[str] = []
    if (d / "arena_hard_prompts.csv.gz").exists():
        with _open_text(d / "arena_hard_prompts.csv.gz") as f:
            prompts = [r["prompt"] for r in csv.DictReader(f)]
    toks: dict[str, list[float]] = {}
    if (d / "arena_hard_output_tokens.csv.gz").exists():
        with _open_text(d / "arena_hard_output_tokens.csv.gz") as f:
            for r in csv.DictReader(f):
                if r.get("output_tokens"):
                    toks.setdefault(r["model"], []).append(float(r["output_tokens"]))
    mean_toks = {k: float(np.mean(v)) for k, v in toks.items()}
    board: dict[str, dict] = {}
    if (d / "arena_hard_leaderboard.csv").exists():
        with _open_text(d / "arena_hard_leaderboard.csv") as f:
            for r in csv.DictReader(f):
                if r["model"] not in board or r["date"] >= board[r["model"]]["date"]:
                    board[r["model"]] = r
    return prompts, mean_toks, board


def benchmark_cost_usd(prompt_chars: np.ndarray, out_chars: np.ndarray, input_usd_per_tok: np.ndarray,
                       output_usd_per_tok: np.ndarray, hidden: np.ndarray) -> np.ndarray:
    """The shared convention: ``(len/4 + 20) * in + (out_chars/4 + hidden) * out`` (broadcasts prompts × models)."""
    return (prompt_chars[:, None] / 4 + 20) * input_usd_per_tok[None, :] + (
        out_chars / 4 + hidden[None, :]) * output_usd_per_tok[None, :]
