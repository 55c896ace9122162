"""Baselines of the quality table: popularity, EASE (closed form, λ on validation), Mult-VAE."""
from __future__ import annotations

import numpy as np

from models.data import Lists, UserData, evaluate_scorer
from tests.test_led import clustered_problem


def test_popularity_ranks_by_training_clicks():
    from models.baselines import fit_popularity

    clicks = Lists.from_lists([[0, 1], [1, 2], [1]])
    fitted = fit_popularity(UserData(np.array(["a", "b", "c"]), clicks, clicks), 4)
    scores = fitted.score([np.array([0]), np.array([], dtype=np.int32)])
    assert scores.shape == (2, 4)
    assert list(np.argsort(-scores[0], kind="stable")) == [1, 0, 2, 3]


def test_ease_matches_the_closed_form_and_picks_lambda_on_validation():
    from models.baselines import _ease_weights, fit_ease

    _, train, valid = clustered_problem()
    n = 120
    fitted = fit_ease(train, valid, n, lambdas=(1.0, 50.0, 5000.0))
    lam = fitted.info["lambda"]
    assert fitted.info["valid_ndcg@100_by_lambda"][lam] == max(fitted.info["valid_ndcg@100_by_lambda"].values())
    X = train.clicks.to_dense(n, np.float64)
    P = np.linalg.inv(X.T @ X + lam * np.eye(n))
    B = np.eye(n) - P / np.diag(P)[None, :]
    eig, Q = np.linalg.eigh(X.T @ X)
    weights = _ease_weights(eig, Q, lam)
    np.testing.assert_allclose(weights, B, atol=1e-4)
    np.testing.assert_allclose(np.diag(weights), 0, atol=1e-6)  # EASE's constraint: no self-recommendation


def test_ease_and_mult_vae_beat_popularity_on_a_clustered_world():
    from models.baselines import MultVaeConfig, fit_ease, fit_mult_vae, fit_popularity

    _, train, valid = clustered_problem()
    n = 120
    pop = evaluate_scorer(fit_popularity(train, n).score, valid, n)["ndcg@100"]
    ease = evaluate_scorer(fit_ease(train, valid, n).score, valid, n)["ndcg@100"]
    vae_fit = fit_mult_vae(train, valid, n, MultVaeConfig(hidden=32, latent=8, epochs=15, batch_size=64,
                                                         anneal_epochs=10, learning_rate=1e-2))
    vae = evaluate_scorer(vae_fit.score, valid, n)["ndcg@100"]
    assert ease > pop + 0.05
    assert vae > pop + 0.05
    assert vae_fit.info["best_epoch"] >= 1
