"""Ranking metrics shared by every model, the gate and the benchmarks.

Definitions follow Liang et al. 2018 (Mult-VAE), as used in the LED paper:

- ``Recall@K = |top-K ∩ targets| / min(K, |targets|)``
- ``NDCG@K = DCG@K / IDCG@K`` with binary relevance, ``DCG = Σ 1/log2(rank+1)``
  over hits in the top-K, ``IDCG`` over ``min(K, |targets|)`` hits.
- ``coverage@K``: share of the catalog appearing in at least one top-K list.

Inputs are rankings (item indices, best first, fold-in items already
excluded) and target sets; users without targets are skipped.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

DEFAULT_KS = {"recall@20": 20, "recall@50": 50, "ndcg@100": 100}


def recall_at_k(ranked: Sequence[int], targets: set, k: int) -> float:
    if not targets:
        return float("nan")
    hits = sum(1 for i in ranked[:k] if i in targets)
    return hits / min(k, len(targets))


def ndcg_at_k(ranked: Sequence[int], targets: set, k: int) -> float:
    if not targets:
        return float("nan")
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = sum(discounts[r] for r, i in enumerate(ranked[:k]) if i in targets)
    idcg = discounts[: min(k, len(targets))].sum()
    return float(dcg / idcg)


def top_k_indices(scores: np.ndarray, k: int) -> np.ndarray:
    """Row-wise indices of the k largest scores, best first (scores: users × items)."""
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def evaluate_rankings(rankings: Iterable[Sequence[int]], targets: Iterable[set],
                      n_items: int | None = None, coverage_k: int = 20) -> dict[str, float]:
    """Mean Recall@20, Recall@50, NDCG@100 (and coverage@20 when n_items is given)."""
    return summarise(per_user_metrics(rankings, targets, coverage_k), n_items, coverage_k)


def per_user_metrics(rankings: Iterable[Sequence[int]], targets: Iterable[set],
                     coverage_k: int = 20) -> dict[str, np.ndarray]:
    """Recall@20, Recall@50, NDCG@100 of each user with targets (in input order), plus ``covered``:
    the items in at least one top-``coverage_k`` list."""
    per_metric: dict[str, list[float]] = {name: [] for name in DEFAULT_KS}
    covered: set = set()
    for ranked, target in zip(rankings, targets):
        if not target:
            continue
        ranked = list(ranked)
        covered.update(ranked[:coverage_k])
        per_metric["recall@20"].append(recall_at_k(ranked, target, 20))
        per_metric["recall@50"].append(recall_at_k(ranked, target, 50))
        per_metric["ndcg@100"].append(ndcg_at_k(ranked, target, 100))
    return {name: np.asarray(v, dtype=np.float64) for name, v in per_metric.items()} | {
        "covered": np.fromiter(covered, dtype=np.int64, count=len(covered))}


def summarise(per_user: dict[str, np.ndarray], n_items: int | None = None, coverage_k: int = 20) -> dict[str, float]:
    """The means of :func:`per_user_metrics` (nan without users), ``users`` and coverage@k."""
    out = {name: float(per_user[name].mean()) if len(per_user[name]) else float("nan") for name in DEFAULT_KS}
    out["users"] = len(per_user["ndcg@100"])
    if n_items:
        out[f"coverage@{coverage_k}"] = len(per_user["covered"]) / n_items
    return out


def beyond_noise(value: float, bar: float, se: float, z: float) -> bool:
    """Is ``value`` below ``bar`` by more than ``z`` standard errors? The one rule that tells a real
    shortfall from sampling noise (the gate's NDCG@100 against the champion's, the soak's quality
    against its 7-day median); without a finite standard error, or with ``z`` 0, any shortfall counts."""
    if z <= 0 or not np.isfinite(se):
        return value < bar
    return value + z * se < bar


def standard_error(values: np.ndarray) -> float:
    """Standard error of the mean of per-user values (nan below two)."""
    values = np.asarray(values, dtype=np.float64)
    return float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) >= 2 else float("nan")


def paired_difference(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Mean of ``a - b`` over paired per-user values, and its standard error (nan below two pairs)."""
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    return (float(diff.mean()) if len(diff) else float("nan")), standard_error(diff)
