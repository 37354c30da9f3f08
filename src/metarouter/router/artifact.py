"""The router artifact: one ``.npz`` of plain arrays (no pickle) + a JSON metadata string.

Strings (vocabulary, model ids, metadata) are stored as UTF-8 byte arrays so that ``np.load(allow_pickle=False)``
reads everything.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

FORMAT_VERSION = 1


def str_to_arr(s: str) -> np.ndarray:
    return np.frombuffer(s.encode("utf-8"), dtype=np.uint8).copy()


def arr_to_str(a: np.ndarray) -> str:
    return a.tobytes().decode("utf-8")


def save(path: str | Path, arrays: dict[str, np.ndarray], meta: dict[str, Any], vocab: list[str],
         model_ids: list[str]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = dict(meta, format_version=FORMAT_VERSION)
    out = dict(arrays)
    out["vocab_utf8"] = str_to_arr("\n".join(vocab))
    out["model_ids_utf8"] = str_to_arr("\n".join(model_ids))
    out["meta_utf8"] = str_to_arr(json.dumps(meta, sort_keys=True))
    with open(path, "wb") as f:  # np.savez_compressed(path) would append .npz to other suffixes
        np.savez_compressed(f, **out)
    return path


def load(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, Any], list[str], list[str]]:
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(arr_to_str(arrays.pop("meta_utf8")))
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: artifact format {meta.get('format_version')} != {FORMAT_VERSION}")
    vocab = arr_to_str(arrays.pop("vocab_utf8")).split("\n")
    ids = arr_to_str(arrays.pop("model_ids_utf8"))
    return arrays, meta, vocab, (ids.split("\n") if ids else [])
