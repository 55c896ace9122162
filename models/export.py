"""A trained model as plain arrays and JSON (no pickle: a reader never executes what it loads).

Layout of an exported model folder::

    item_ids.npy         unicode array (I,)          the stable item index
    V.npy                float32 (I, d)              V = E P
    b.npy                float32 (I,)                item biases
    counts.npy           int64 (I,)                  item view counts (popularity fallback)
    model_card.json      d, loss, parameter count, data window, metrics, hyper-parameters
    eval_timelines.json  optional: {"timelines": [[item ids], ...]} held-out inputs for ANN recall
    eval_set.json        optional: the held-out clicks it was judged on (models/evaluation.py format),
                         what ``led register`` gates on

Scoring: ``models.scoring`` (docs/architecture.md, "Scoring"). The model's identity is
:func:`model_fingerprint`, a hash of its arrays: the registry de-duplicates on it and
serving names an unregistered model after it. This module needs numpy only, so
serving can import it.
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

from models import scoring

ARRAYS = ("item_ids.npy", "V.npy", "b.npy", "counts.npy")
CARD = "model_card.json"
TIMELINES = "eval_timelines.json"
EVAL_SET = "eval_set.json"


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

    def known_positions(self, timeline: Iterable[str]) -> list[int]:
        idx = self.index_of
        return [idx[str(i)] for i in timeline if str(i) in idx]

    def exact_topk(self, timeline: Sequence[str], k: int) -> tuple[list[str], np.ndarray]:
        """Exact top-k by ``models.scoring`` (inputs excluded, popularity when no input is known)."""
        known = np.asarray(self.known_positions(timeline), dtype=np.int64)
        scores = scoring.score_batch(self.V, self.b, self.counts, [known])
        top = scoring.ranked(scores, k)[0]
        return [str(self.item_ids[i]) for i in top], scores[0, top]


def save_model(folder: Path, item_ids: Sequence[str], V: np.ndarray, b: np.ndarray, counts: np.ndarray,
               card: dict[str, Any], eval_timelines: list[list[str]] | None = None,
               files: dict[str, str] | None = None) -> Path:
    """Write an exported model atomically (temporary folder, then rename); ``files``: extra text files."""
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
        for name, text in (files or {}).items():
            (tmp / name).write_text(text)
        if folder.exists():
            shutil.rmtree(folder)
        os.rename(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def model_fingerprint(folder: Path) -> str:
    """The model's identity: sha256 of its arrays (ids, V, b, counts), equal for byte-identical exports."""
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
