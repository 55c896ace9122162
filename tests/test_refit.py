"""The refit's carry-over of an evaluated model to the whole window's embeddings (models/refit.py)."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import ortho_group

from models.refit import carry_over, procrustes_rotation, projection_from_export, shared_rows


def _unit_rows(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_procrustes_recovers_a_rotation_of_the_basis():
    rng = np.random.default_rng(0)
    E_old = _unit_rows(rng.normal(size=(300, 16)))
    R_true = ortho_group.rvs(16, random_state=1).astype(np.float32)
    E_new = E_old @ R_true.T  # a new SVD: the same items, the basis rotated
    R = procrustes_rotation(E_new, E_old)
    np.testing.assert_allclose(R, R_true, atol=1e-4)
    np.testing.assert_allclose(R @ R.T, np.eye(16), atol=1e-5)


def test_carry_over_keeps_the_shared_items_scores_and_biases_and_places_new_items():
    rng = np.random.default_rng(2)
    d, old_ids = 8, [f"i{k:03d}" for k in range(100)]
    E_old = _unit_rows(rng.normal(size=(100, d)))
    P_old = rng.normal(size=(d, d)).astype(np.float32)
    b_old = rng.normal(size=100).astype(np.float32)
    # the whole window: items 10..99 stay, 20 new ones arrive, in another row order, the basis rotated
    new_ids = [f"n{k:03d}" for k in range(20)] + old_ids[10:][::-1]
    R_true = ortho_group.rvs(d, random_state=3).astype(np.float32)
    E_new = np.vstack([_unit_rows(rng.normal(size=(20, d))), E_old[10:][::-1] @ R_true.T])
    initial_b = rng.normal(size=len(new_ids)).astype(np.float32)

    P, b, info = carry_over(new_ids, E_new, initial_b, old_ids, E_old, P_old, b_old)
    new_rows, old_rows = shared_rows(new_ids, old_ids)
    assert info["shared_items"] == 90 and info["new_items"] == 20 and info["alignment_residual"] < 1e-4
    # a shared item's vector V = E P and its bias are what the evaluated model gave it
    np.testing.assert_allclose(E_new[new_rows] @ P, E_old[old_rows] @ P_old, atol=1e-4)
    np.testing.assert_array_equal(b[new_rows], b_old[old_rows])
    # a new item starts at its log-popularity bias, on the trained scale (shifted by the mean offset)
    offset = float(np.mean(b_old[old_rows] - initial_b[new_rows]))
    assert info["bias_offset_new_items"] == pytest.approx(offset, abs=1e-5)
    np.testing.assert_allclose(b[:20], initial_b[:20] + offset, atol=1e-5)


def test_too_few_shared_items_start_the_projection_afresh():
    rng = np.random.default_rng(4)
    d = 8
    E_old, E_new = _unit_rows(rng.normal(size=(5, d))), _unit_rows(rng.normal(size=(12, d)))
    P_old = rng.normal(size=(d, d)).astype(np.float32)
    old_ids, new_ids = [f"i{k}" for k in range(5)], [f"i{k}" for k in range(3)] + [f"n{k}" for k in range(9)]
    P, _, info = carry_over(new_ids, E_new, np.zeros(12, np.float32), old_ids, E_old, P_old, np.zeros(5, np.float32))
    assert info["shared_items"] == 3 < d
    np.testing.assert_allclose(P, P_old)  # rotation = identity: fewer shared items than dimensions fix none


def test_projection_from_export_inverts_v_equals_e_p():
    rng = np.random.default_rng(5)
    E = _unit_rows(rng.normal(size=(200, 12)))
    P = rng.normal(size=(12, 12)).astype(np.float32)
    np.testing.assert_allclose(projection_from_export(E, E @ P), P, atol=1e-4)
