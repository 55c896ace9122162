"""Synthetic exported models for serving tests and benchmarks (numpy only).

Shaped like a trained LED export: items in topical clusters (V rows near one
of ``clusters`` directions, norms varying around ``norm``), biases
``b = log(normalised counts)`` with Zipf-distributed counts, and held-out
timelines drawn from a single cluster (users are topical).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


def synthetic_arrays(items: int, dim: int, seed: int = 0, clusters: int = 64, norm: float = 3.0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(clusters, dim))
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    labels = rng.integers(0, clusters, items)
    V = centers[labels] + 0.5 * rng.normal(size=(items, dim)) / np.sqrt(dim)
    V *= (norm * rng.uniform(0.7, 1.3, size=(items, 1))) / np.linalg.norm(V, axis=1, keepdims=True)
    counts = rng.zipf(1.3, items).clip(1, 10**6).astype(np.int64)
    b = np.log(counts / counts.sum())
    return V.astype(np.float32), b.astype(np.float32), counts, labels


def synthetic_timelines(labels: np.ndarray, item_ids: list[str], n: int, seed: int = 1,
                        max_len: int = 20) -> list[list[str]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        members = np.flatnonzero(labels == labels[rng.integers(len(labels))])
        size = min(int(rng.integers(1, max_len + 1)), len(members))
        out.append([item_ids[i] for i in rng.choice(members, size=size, replace=False)])
    return out


def make_synthetic_model(folder: Path, items: int = 2000, dim: int = 32, seed: int = 0,
                         timelines: int = 200, card: dict | None = None, prefix: str = "item") -> Path:
    """Write an exported model (``models.export.save_model``) with held-out timelines."""
    from models.export import save_model

    V, b, counts, labels = synthetic_arrays(items, dim, seed)
    ids = [f"{prefix}{i}" for i in range(items)]
    held_out = synthetic_timelines(labels, ids, timelines, seed + 1) if timelines else None
    return save_model(Path(folder), ids, V, b, counts, {"loss": "synthetic", "seed": seed, **(card or {})},
                      held_out)
