"""Baselines for the quality table, scored by the same evaluation code as LED.

Each ``fit_*`` function takes the training users (their clicks are the
positives, as in the Mult-VAE / LED papers' tables), the validation users and
the catalog size, and returns a :class:`Fitted` whose ``score(inputs)`` maps a
batch of fold-in lists to dense scores (users × items). Ranking, fold-in
exclusion and metrics live in ``models.data.evaluate_scorer``.

- Popularity: training click counts (the same list for everyone).
- EASE (Steck 2019): closed form ``B = I - P·diag(1/diag(P))`` with
  ``P = (XᵀX + λI)⁻¹``, zero diagonal. λ is picked on the validation users;
  one eigendecomposition of ``XᵀX`` serves every λ of the grid.
- Mult-VAE (Liang et al. 2018), TensorFlow: L2-normalised input with dropout
  0.5, encoder I→600→(μ, log σ²) of size 200 with tanh, decoder 200→600→I,
  multinomial log-likelihood, KL weight annealed linearly to β = 0.2, Adam
  1e-3, batch 500, L2 0.01/2 on weights, best epoch by validation NDCG@100.
- SVD-average lives in ``models.led.svd_average`` (LED with no training).
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from models.data import EvalSet, UserData, evaluate_scorer


@dataclass
class Fitted:
    name: str
    score: Callable[[list[np.ndarray]], np.ndarray]
    train_seconds: float
    info: dict = field(default_factory=dict)


def _dense(rows: Sequence[np.ndarray], n_items: int) -> np.ndarray:
    X = np.zeros((len(rows), n_items), dtype=np.float32)
    for r, items in enumerate(rows):
        X[r, items] = 1.0
    return X


def fit_popularity(train: UserData, n_items: int) -> Fitted:
    start = time.perf_counter()
    counts = np.bincount(train.clicks.items, minlength=n_items).astype(np.float32)

    def score(inputs: list[np.ndarray]) -> np.ndarray:
        return np.broadcast_to(counts, (len(inputs), n_items))

    return Fitted("popularity", score, time.perf_counter() - start)


EASE_LAMBDAS = (10.0, 30.0, 100.0, 200.0, 300.0, 500.0, 1000.0, 2000.0, 5000.0)


def _ease_weights(eigvals: np.ndarray, Q: np.ndarray, lam: float) -> np.ndarray:
    P = (Q / (eigvals + lam)) @ Q.T
    B = -P / np.diag(P)[None, :]
    np.fill_diagonal(B, 0.0)
    return B.astype(np.float32)


def fit_ease(train: UserData, valid: EvalSet, n_items: int, lambdas: Sequence[float] = EASE_LAMBDAS) -> Fitted:
    """EASE with λ chosen by validation NDCG@100 (dense I × I: for catalogs up to ~20k items)."""
    start = time.perf_counter()
    X = train.clicks.to_dense(n_items, np.float64)
    eigvals, Q = np.linalg.eigh(X.T @ X)
    best = None
    tried = {}
    for lam in lambdas:
        B = _ease_weights(eigvals, Q, lam)
        ndcg = evaluate_scorer(lambda rows, B=B: _dense(rows, n_items) @ B, valid, n_items)["ndcg@100"]
        tried[lam] = round(ndcg, 5)
        if best is None or ndcg > best[0]:
            best = (ndcg, lam, B)
    B = best[2]
    return Fitted("ease", lambda rows: _dense(rows, n_items) @ B, time.perf_counter() - start,
                  {"lambda": best[1], "valid_ndcg@100_by_lambda": tried})


@dataclass
class MultVaeConfig:
    hidden: int = 600
    latent: int = 200
    dropout: float = 0.5
    beta_max: float = 0.2
    anneal_epochs: int = 100
    epochs: int = 200
    patience: int = 30
    batch_size: int = 500
    learning_rate: float = 1e-3
    l2: float = 0.01
    seed: int = 42


def fit_mult_vae(train: UserData, valid: EvalSet, n_items: int, cfg: MultVaeConfig | None = None,
                 progress: Callable[[str], None] | None = None) -> Fitted:
    """Mult-VAE^PR in TensorFlow; keeps the epoch with the best validation NDCG@100."""
    from models.led import import_tf

    tf = import_tf()
    cfg = cfg or MultVaeConfig()
    start = time.perf_counter()
    tf.random.set_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)

    def dense(n_in, n_out, k):
        return (tf.Variable(tf.keras.initializers.GlorotUniform(seed=cfg.seed + k)((n_in, n_out))),
                tf.Variable(tf.random.normal((n_out,), stddev=0.001, seed=cfg.seed + k)))

    layers = [dense(n_items, cfg.hidden, 1), dense(cfg.hidden, 2 * cfg.latent, 2),
              dense(cfg.latent, cfg.hidden, 3), dense(cfg.hidden, n_items, 4)]
    variables = [v for layer in layers for v in layer]
    weights = [w for w, _ in layers]
    optimizer = tf.keras.optimizers.Adam(cfg.learning_rate)

    def forward(x, training: bool):
        x = tf.math.l2_normalize(x, axis=1)
        if training:
            x = tf.nn.dropout(x, cfg.dropout, seed=cfg.seed)
        h = tf.tanh(x @ layers[0][0] + layers[0][1])
        stats = h @ layers[1][0] + layers[1][1]
        mu, logvar = stats[:, :cfg.latent], stats[:, cfg.latent:]
        z = mu + tf.exp(0.5 * logvar) * tf.random.normal(tf.shape(mu)) if training else mu
        h = tf.tanh(z @ layers[2][0] + layers[2][1])
        return h @ layers[3][0] + layers[3][1], mu, logvar

    @tf.function(reduce_retracing=True)
    def train_step(x, beta):
        with tf.GradientTape() as tape:
            logits, mu, logvar = forward(x, True)
            nll = -tf.reduce_mean(tf.reduce_sum(tf.nn.log_softmax(logits) * x, axis=1))
            kl = tf.reduce_mean(tf.reduce_sum(0.5 * (-logvar + tf.exp(logvar) + mu ** 2 - 1), axis=1))
            reg = cfg.l2 * tf.add_n([tf.nn.l2_loss(w) for w in weights])
            loss = nll + beta * kl + reg / 2.0
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    @tf.function(reduce_retracing=True)
    def infer(x):
        return forward(x, False)[0]

    def score(rows: list[np.ndarray]) -> np.ndarray:
        return infer(tf.constant(_dense(rows, n_items))).numpy()

    X = train.clicks.to_dense(n_items, np.float32)
    X = X[X.sum(axis=1) > 0]
    steps_per_epoch = max(1, int(np.ceil(len(X) / cfg.batch_size)))
    anneal_steps = cfg.anneal_epochs * steps_per_epoch
    step, best, history = 0, (-1.0, 0, None), []
    for epoch in range(1, cfg.epochs + 1):
        order = rng.permutation(len(X))
        losses = []
        for s in range(0, len(X), cfg.batch_size):
            beta = min(cfg.beta_max, cfg.beta_max * step / anneal_steps)
            losses.append(float(train_step(tf.constant(X[order[s:s + cfg.batch_size]]), tf.constant(beta))))
            step += 1
        ndcg = evaluate_scorer(score, valid, n_items)["ndcg@100"]
        history.append({"epoch": epoch, "loss": float(np.mean(losses)), "val_ndcg@100": ndcg})
        if ndcg > best[0]:
            best = (ndcg, epoch, [v.numpy().copy() for v in variables])
        if progress and (epoch % 10 == 0 or epoch == 1):
            progress(f"[mult-vae] epoch {epoch}/{cfg.epochs} loss {np.mean(losses):.3f} "
                     f"val ndcg@100 {ndcg:.4f} (best {best[0]:.4f} @ {best[1]})")
        if epoch - best[1] >= cfg.patience:
            break
    for v, w in zip(variables, best[2]):
        v.assign(w)
    return Fitted("mult_vae", score, time.perf_counter() - start,
                  {"best_epoch": best[1], "epochs_run": len(history), "valid_ndcg@100": best[0]})


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
