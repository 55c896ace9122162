"""A trained model as plain arrays and JSON (no pickle: a reader never executes what it loads).

Layout of an exported model folder::

    item_ids.npy         unicode array (I,)          the stable item index
    V.npy                float32 (I, d)              V = E P
    b.npy                float32 (I,)                item biases
    counts.npy           int64 (I,)                  item view counts (popularity fallback)
    model_card.json      d, loss, parameter count, data window, metrics, hyper-parameters
    eval_timelines.json  optional: {"timelines": [[item ids], ...]} held-out inputs for ANN recall

Scoring (DESIGN.md): ``q = mean(V_x)``, ``score_i = q . V_i + b_i``. This module
needs numpy only, so serving can import it.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

ARRAYS = ("item_ids.npy", "V.npy", "b.npy", "counts.npy")
CARD = "model_card.json"
TIMELINES = "eval_timelines.json"


@dataclass
class ExportedModel:
    item_ids: np.ndarray
    V: np.ndarray
    b: np.ndarray
    counts: np.ndarray
    card: dict[str, Any] = field(default_factory=dict)
    eval_timelines: list[list[str]] | None = None

    def __post_init__(self) -> None:
        n = len(self.item_ids)
        if self.V.ndim != 2 or self.V.shape[0] != n or self.b.shape != (n,) or self.counts.shape != (n,):
            raise ValueError(
                f"inconsistent model arrays: ids {n}, V {self.V.shape}, b {self.b.shape}, counts {self.counts.shape}"
            )
        self._index = None

    @property
    def dim(self) -> int:
        return int(self.V.shape[1])

    @property
    def index_of(self) -> dict[str, int]:
        if self._index is None:
            self._index = {str(item): i for i, item in enumerate(self.item_ids)}
        return self._index

    def encode(self, timeline: Iterable[str]) -> tuple[np.ndarray | None, list[int], int]:
        """Query vector ``mean(V_x)`` over known items; returns (q or None, known indices, unknown count)."""
        idx, timeline = self.index_of, [str(i) for i in timeline]
        known = [idx[i] for i in timeline if i in idx]
        unknown = len(timeline) - len(known)
        if not known:
            return None, [], unknown
        return self.V[known].mean(axis=0), known, unknown

    def exact_topk(self, timeline: Sequence[str], k: int, exclude_inputs: bool = True) -> tuple[list[str], np.ndarray]:
        """Exact top-k by ``q . V_i + b_i``; popularity (counts) when no input item is known."""
        q, known, _ = self.encode(timeline)
        scores = (self.V @ q + self.b) if q is not None else self.counts.astype(np.float64)
        scores = scores.astype(np.float64, copy=True)
        if exclude_inputs and known:
            scores[known] = -np.inf
        k = min(k, len(scores))
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top], kind="stable")]
        return [str(self.item_ids[i]) for i in top], scores[top]


def save_model(folder: Path, item_ids: Sequence[str], V: np.ndarray, b: np.ndarray, counts: np.ndarray,
               card: dict[str, Any], eval_timelines: list[list[str]] | None = None) -> Path:
    """Write an exported model atomically (temporary folder, then rename)."""
    folder = Path(folder).resolve()
    model = ExportedModel(np.asarray(item_ids, dtype=str), np.asarray(V, np.float32),
                          np.asarray(b, np.float32), np.asarray(counts, np.int64), dict(card), eval_timelines)
    if not np.isfinite(model.V).all() or not np.isfinite(model.b).all():
        raise ValueError("refusing to export a model with NaN or inf values")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{folder.name}-", dir=folder.parent))
    try:
        np.save(tmp / "item_ids.npy", model.item_ids)
        np.save(tmp / "V.npy", model.V)
        np.save(tmp / "b.npy", model.b)
        np.save(tmp / "counts.npy", model.counts)
        card = {"items": len(model.item_ids), "dim": model.dim} | model.card
        (tmp / CARD).write_text(json.dumps(card, indent=2, default=str))
        if eval_timelines is not None:
            (tmp / TIMELINES).write_text(json.dumps({"timelines": eval_timelines}))
        if folder.exists():
            shutil.rmtree(folder)
        os.rename(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def content_sha256(folder: Path) -> str:
    """Fingerprint of a model's arrays (ids, V, b, counts): equal for byte-identical exports."""
    import hashlib

    h = hashlib.sha256()
    for name in ARRAYS:
        h.update((Path(folder) / name).read_bytes())
    return h.hexdigest()


def load_model(folder: Path) -> ExportedModel:
    """Load an exported model; ``ValueError`` naming the problem when files are missing or corrupt."""
    folder = Path(folder)
    missing = [name for name in (*ARRAYS, CARD) if not (folder / name).is_file()]
    if missing:
        raise ValueError(f"not an exported model folder ({', '.join(missing)} missing): {folder}")
    try:
        arrays = {name: np.load(folder / name, allow_pickle=False) for name in ARRAYS}
        card = json.loads((folder / CARD).read_text())
        timelines = None
        if (folder / TIMELINES).is_file():
            timelines = json.loads((folder / TIMELINES).read_text())["timelines"]
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(f"corrupt exported model in {folder}: {exc}") from None
    return ExportedModel(arrays["item_ids.npy"].astype(str), arrays["V.npy"], arrays["b.npy"],
                         arrays["counts.npy"], card, timelines)
