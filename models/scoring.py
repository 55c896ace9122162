"""The one scoring rule of an exported LED model (docs/architecture.md, "Scoring").

``q = mean(V_x)`` over the known items of a timeline ``x``, ``score_i = q . V_i + b_i``;
the timeline's own items are never recommended; a timeline with no known item
falls back to popularity (``counts``). Every consumer ranks through this module:
the export's ``exact_topk``, the gate's evaluation, the TensorFlow fine-tuning's
validation (on ``V = E P``), the MLflow pyfunc and serving's exact re-scoring of
ANN candidates. Numpy only, so serving can import it.

Scores are float64: float32 dot products tie on large catalogs and the ranking
must not depend on which consumer computed it.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from models.metrics import top_k_indices


def query_vector(V: np.ndarray, known: Sequence[int]) -> np.ndarray | None:
    """``mean(V_x)`` over the known item positions, or None when there is none."""
    if len(known) == 0:
        return None
    return V[np.asarray(known, dtype=np.int64)].mean(axis=0)


def item_scores(V: np.ndarray, b: np.ndarray, q: np.ndarray, items: np.ndarray | None = None) -> np.ndarray:
    """Exact ``q . V_i + b_i`` for ``items`` (default: the whole catalog), float64."""
    if items is None:
        return (V @ q + b).astype(np.float64)
    return (V[items] @ q + b[items]).astype(np.float64)


def score_batch(V: np.ndarray, b: np.ndarray, counts: np.ndarray | None,
                rows: Sequence[np.ndarray]) -> np.ndarray:
    """Scores (len(rows) x I) of a batch of timelines given as item positions.

    Input items get ``-inf``; a row with no item gets the popularity ``counts``
    (or the biases alone when ``counts`` is None, as during training).
    """
    Q = np.zeros((len(rows), V.shape[1]), dtype=V.dtype)
    for r, known in enumerate(rows):
        if len(known):
            Q[r] = V[np.asarray(known, dtype=np.int64)].mean(axis=0)
    scores = exclude_inputs((Q @ V.T + b).astype(np.float64), rows)
    if counts is not None:
        for r, known in enumerate(rows):
            if not len(known):
                scores[r] = counts
    return scores


def exclude_inputs(scores: np.ndarray, rows: Sequence[np.ndarray]) -> np.ndarray:
    """``scores`` (len(rows) x I) with each row's input items at ``-inf`` (in place): what a timeline
    holds is never recommended back, whoever computed the scores (LED, the baselines, popularity)."""
    for r, known in enumerate(rows):
        if len(known):
            scores[r, np.asarray(known, dtype=np.int64)] = -np.inf
    return scores


def top_k(V: np.ndarray, b: np.ndarray, counts: np.ndarray | None, rows: Sequence[np.ndarray], k: int,
          chunk: int = 256) -> list[np.ndarray]:
    """Exact top-k item positions per timeline, best first, never an input item."""
    out: list[np.ndarray] = []
    for start in range(0, len(rows), chunk):
        out.extend(ranked(score_batch(V, b, counts, rows[start:start + chunk]), k))
    return out


def ranked(scores: np.ndarray, k: int) -> list[np.ndarray]:
    """Per row, the positions of the k best finite scores, best first."""
    top = top_k_indices(scores, k)
    # on tiny catalogs the top-k reaches the excluded inputs (-inf): drop them
    return [row[np.isfinite(scores[r, row])] for r, row in enumerate(top)]
