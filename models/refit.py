"""Shipping the freshest day: carry an evaluated model over to the whole window's embeddings
(docs/architecture.md, "Shipping the freshest day").

The gate judges a model trained without the window's last day; the model that
ships is refit on the whole window so that yesterday's items and tastes are in
it. The refit's pre-training is a new randomized SVD, whose basis is the old
one up to a rotation (and noise) on the items both know, so the evaluated
``P`` is carried over through the orthogonal Procrustes rotation ``R`` that
best maps the new embeddings onto the old ones on those shared items:

    E_old[shared] ≈ E_new[shared] · R   ⇒   V_new = E_new · (R · P_old)

Item biases are carried over by id; an item the evaluated model did not know
gets the initial log-popularity bias, shifted by the mean offset the training
gave the shared items, so it enters on the trained scale. Fine-tuning then
continues from these weights on the whole window.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def procrustes_rotation(E_new: np.ndarray, E_old: np.ndarray) -> np.ndarray:
    """The orthogonal ``R`` (d × d) minimising ``‖E_new R − E_old‖_F`` (rows: the same items)."""
    U, _, Wt = np.linalg.svd(E_new.astype(np.float64).T @ E_old.astype(np.float64))
    return (U @ Wt).astype(np.float32)


def shared_rows(new_ids: Sequence[str], old_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Row positions (in new, in old) of the items both catalogs hold."""
    old = {str(i): r for r, i in enumerate(old_ids)}
    pairs = [(r, old[str(i)]) for r, i in enumerate(new_ids) if str(i) in old]
    if not pairs:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    new_rows, old_rows = map(np.asarray, zip(*pairs))
    return new_rows.astype(np.int64), old_rows.astype(np.int64)


def carry_over(new_ids: Sequence[str], E_new: np.ndarray, initial_b: np.ndarray,
               old_ids: Sequence[str], E_old: np.ndarray, P_old: np.ndarray,
               b_old: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict]:
    """(P, b) for the new catalog from an evaluated model; plus figures on the alignment."""
    new_rows, old_rows = shared_rows(new_ids, old_ids)
    d = E_new.shape[1]
    if len(new_rows) < d:  # too few shared items to fix a rotation: start the projection afresh
        R = np.eye(d, dtype=np.float32)
    else:
        R = procrustes_rotation(E_new[new_rows], E_old[old_rows])
    b = np.asarray(initial_b, dtype=np.float32).copy()
    offset = float(np.mean(b_old[old_rows] - b[new_rows])) if len(new_rows) else 0.0
    b += offset
    b[new_rows] = b_old[old_rows]
    residual = float(np.linalg.norm(E_new[new_rows] @ R - E_old[old_rows]) /
                     max(np.linalg.norm(E_old[old_rows]), 1e-12)) if len(new_rows) else float("nan")
    info = {"shared_items": int(len(new_rows)), "new_items": int(len(new_ids) - len(new_rows)),
            "alignment_residual": residual, "bias_offset_new_items": offset}
    return (R @ P_old).astype(np.float32), b, info


def projection_from_export(E: np.ndarray, V: np.ndarray) -> np.ndarray:
    """``P`` of an export from ``V = E P`` (least squares; exact when E has full column rank)."""
    P, *_ = np.linalg.lstsq(E.astype(np.float64), V.astype(np.float64), rcond=None)
    return P.astype(np.float32)
