"""Distil a static embedding table from all-MiniLM-L6-v2 (training only: needs the ``[train]`` extra).

Model2vec-style: every vocabulary item (MiniLM's WordPiece vocabulary plus frequent whole words of the training
corpus) is run through the transformer on its own, mean-pooled, reduced by PCA and weighted by SIF
(``a / (a + p(token))``) using token frequencies of the training corpus. The result is a few-MB table that
:class:`~metarouter.router.encoder.StaticEncoder` averages at run time with no ML framework.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable

import numpy as np

from .encoder import _TOKEN_RE, FEATURE_NAMES, StaticEncoder, clip


def _minilm_vocab() -> list[str]:
    from .minilm import model_dir

    return (model_dir() / "vocab.txt").read_text(encoding="utf-8").splitlines()


def build_vocab(corpus: Iterable[str], min_count: int = 3, max_extra: int = 12_000) -> list[str]:
    """MiniLM's vocabulary (minus unused slots) + frequent corpus words it would split into pieces."""
    base = [t for t in _minilm_vocab() if not (t.startswith("[unused") or t in ("[PAD]", "[CLS]", "[SEP]", "[MASK]"))]
    known = set(base)
    counts: collections.Counter[str] = collections.Counter()
    for text in corpus:
        counts.update(_TOKEN_RE.findall(clip(text).lower()))
    extra = [w for w, c in counts.most_common() if c >= min_count and w not in known and len(w) > 2
             and not w.isdigit()][:max_extra]
    return base + sorted(extra)


def embed_vocab(vocab: list[str], batch_size: int = 1024, progress: bool = True) -> np.ndarray:
    """Mean-pooled MiniLM output of each vocabulary item fed alone ([CLS] item [SEP])."""
    import torch

    from .minilm import load_sentence_transformer

    st = load_sentence_transformer()
    tok = st.tokenizer
    bert = st[0].auto_model if hasattr(st[0], "auto_model") else st[0].model
    bert.eval()
    tv = tok.get_vocab()  # (the .vocab property rebuilds this dict on every access)
    seqs: list[list[int]] = []
    for t in vocab:
        if t in tv:
            seqs.append([tv[t]])
        else:
            seqs.append(tok(t, add_special_tokens=False)["input_ids"][:16] or [tok.unk_token_id])
    order = np.argsort([len(s) for s in seqs], kind="stable")
    out = np.zeros((len(vocab), bert.config.hidden_size), np.float32)
    it = range(0, len(order), batch_size)
    if progress:
        try:
            from tqdm import tqdm

            it = tqdm(it, desc="distil vocabulary", unit="batch")
        except ImportError:
            pass
    torch.set_num_threads(max(1, torch.get_num_threads()))
    with torch.inference_mode():
        for b in it:
            idx = order[b: b + batch_size]
            batch = [[tok.cls_token_id] + seqs[i] + [tok.sep_token_id] for i in idx]
            n = max(len(s) for s in batch)
            ids = torch.zeros((len(batch), n), dtype=torch.long)
            mask = torch.zeros((len(batch), n), dtype=torch.long)
            for r, s in enumerate(batch):
                ids[r, : len(s)] = torch.tensor(s)
                mask[r, : len(s)] = 1
            h = bert(input_ids=ids, attention_mask=mask).last_hidden_state
            m = mask.unsqueeze(-1).float()
            out[idx] = ((h * m).sum(1) / m.sum(1)).numpy()
    return out


def distil(corpus: list[str], dims: int = 128, sif_a: float = 1e-3, seed: int = 0,
           progress: bool = True) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Return ``(vocab, table, weights)``; table rows are PCA-reduced embeddings already scaled by SIF weight."""
    vocab = build_vocab(corpus)
    raw = embed_vocab(vocab, progress=progress)
    raw /= np.linalg.norm(raw, axis=1, keepdims=True) + 1e-9
    mu = raw.mean(0)
    x = raw - mu
    rng = np.random.default_rng(seed)
    sample = x[rng.choice(len(x), size=min(len(x), 20_000), replace=False)]
    _, _, vt = np.linalg.svd(sample, full_matrices=False)
    comp = vt[:dims]
    comp *= np.sign(comp[:, :1] + 1e-12)  # deterministic sign
    red = x @ comp.T
    # Token frequencies under the run-time tokeniser give the SIF weights.
    enc = StaticEncoder(vocab, np.zeros((len(vocab), 1), np.float32), np.ones(len(vocab), np.float32),
                        np.zeros(len(FEATURE_NAMES)), np.ones(len(FEATURE_NAMES)))
    counts = np.zeros(len(vocab), np.float64)
    for text in corpus:
        ids = enc.token_ids(text)
        if ids:
            np.add.at(counts, ids, 1)
    p = counts / max(counts.sum(), 1)
    w = (sif_a / (sif_a + p)).astype(np.float32)
    table = (red * w[:, None]).astype(np.float32)
    return vocab, table, w
