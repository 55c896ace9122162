"""LED fine-tuning on clicks (TensorFlow): the Project variant, its ablations and losses.

The model (docs/architecture.md, "The model"; deepr's LED "Project"):

- ``E`` (I × d): item embeddings from the SVD pre-training, frozen (a constant,
  not a variable, so no optimizer can touch it);
- ``P`` (d × d) and ``b`` (I): the only trainable tensors, so the trainable
  parameter count is exactly ``d·d + I`` (checked in :class:`LedModel`);
- encoder ``u = mean_{j in x} E_j`` (no per-user parameters: new users are
  served from their timeline alone);
- decoder ``logits = u P Pᵀ Eᵀ + b``. With ``V = E P`` this is
  ``mean(V_x) · V_i + b_i``, which is how the exported model scores
  (numpy + Annoy, no TensorFlow).

Ablations (same code, other trainable sets): ``svd_average`` (no training,
``P = I``), ``train_e`` (E trainable as well) and ``no_projection`` (no P; E and
b trainable, ``logits = u Eᵀ + b``).

Losses. Sampled ones cost O(B·(T + N)·d) per step for B users, T targets and N
shared negatives, independent of the catalog size I:

- ``bpr``: mean over (target, negative) pairs of ``-log σ(s_t - s_n)``;
- ``ns``: negative sampling, ``-log σ(s_t) - mean_n log σ(-s_n)``;
- ``css``: complementarity sum sampling (Botev et al. 2017), a sampled
  multinomial whose normaliser sums the targets exactly and estimates the rest
  of the catalog from the negatives with importance weights ``(1 - Q_t)/(N q_n)``
  (``(I - T)/N`` for uniform sampling);
- ``multi``: the full softmax over the catalog, a reference for small catalogs.

Negatives are shared by a batch, drawn with replacement uniformly or by
popularity (``counts^0.75``), and a negative that is one of the user's targets is
masked out. Initialisation: ``P = init_scale · I`` and
``b = log(normalised counts)``. ``init_scale`` matters: inputs are means of
unit vectors, so ``u·E_i`` lies in [-1, 1] while the bias spans ~8 nats; with
``P = I`` the item term starts almost invisible and Adam needs many steps to
grow it. The default scale is chosen so ``u P Pᵀ Eᵀ`` starts on the bias's
scale (see the report in benchmarks/README.md).

Schedule (issue 16: one set of defaults from ML-100K to ML-20M size, no
per-data-set tuning; measurements in benchmarks/README.md, "Quality"):

- the budget is counted in optimizer steps (``max_steps``), not epochs: an
  epoch is 2 steps of 512 users on ML-100K and ~215 on an ML-20M-size window,
  so a fixed epoch count meant ~40 steps on one and ~4000 on the other. The
  old defaults (batch 512, 20 epochs, patience 3) stopped ML-100K after 16-40
  steps, best at step 10-38: NDCG@100 0.414, 0.90 of EASE;
- the batch is derived from the training users (``batch_size = 0``): a power
  of two near ``users / 10`` in [32, 512] (64 on ML-100K's 656 training users,
  512 from ~5k users on), so a small data set still gets ~10 steps per epoch
  and a large one a batch whose step cost O(B·(T + N)·d) is amortised;
- Adam's rate warms up linearly over ``warmup_share`` of the budget, then
  decays on a cosine to 0 at ``max_steps`` (``lr_schedule``): the peak can be
  high enough to move ``P`` (entries ~init_scale) within a few hundred steps
  while the end of the budget averages out the noise of small batches;
- validation NDCG@100 is measured before the first step (the initialisation,
  history row ``step 0``) and every ``eval_every`` steps (0: ~40 times over the
  budget); training stops after ``patience`` evaluations without a new best and
  returns the best evaluation's weights, the initialisation included;
- the biases can have their own rate (``bias_lr_scale``; measured, 1 kept).

Training is deterministic under ``seed`` (numpy generators for splits,
masking and negatives, seeded TF initialisation, op determinism) and reports
each evaluation on stderr.
"""
from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from infra.settings import default
from models import scoring
from models.data import EvalSet, Lists, TemporalSplit, UserData, UserSample, epoch_examples, evaluate_scorer
from models.evaluation import evaluate_model

VARIANTS = ("project", "train_e", "no_projection")
LOSSES = ("bpr", "ns", "css", "multi")

_TF = None


def import_tf():
    """Import TensorFlow once, with 2 intra-op / 1 inter-op threads (STACK_NOTES §7)."""
    global _TF
    if _TF is None:
        import os

        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # silences import noise; results stay deterministic
        import tensorflow as tf

        try:
            tf.config.threading.set_intra_op_parallelism_threads(2)
            tf.config.threading.set_inter_op_parallelism_threads(1)
        except RuntimeError:  # TF already initialised by someone else: keep its settings
            pass
        _TF = tf
    return _TF


# --------------------------------------------------------------------------- configuration
SCHEDULES = ("cosine", "constant")
EVALUATIONS_PER_BUDGET = 40  # eval_every = 0: validate ~40 times over the step budget


@dataclass
class LedConfig:
    dim: int = default("dim")
    loss: str = default("loss")
    num_negatives: int = default("num_negatives")
    negative_sampling: str = default("negative_sampling")
    learning_rate: float = default("learning_rate")
    batch_size: int = default("batch_size")  # 0: derived from the number of training users
    epochs: int = default("epochs")  # a cap on passes over the data; the budget is max_steps
    max_steps: int = default("max_steps")
    eval_every: int = default("eval_every")  # 0: derived from the step budget
    patience: int = default("patience")  # evaluations without improvement
    lr_schedule: str = default("lr_schedule")
    warmup_share: float = default("warmup_share")
    bias_lr_scale: float = default("bias_lr_scale")
    keep_prob: float = default("keep_prob")
    target_ratio: float = default("target_ratio")
    seed: int = default("seed")
    variant: str = "project"
    init_scale: float = default("init_scale")
    max_timeline: int = default("max_timeline")
    max_train_users: int = default("max_train_users")  # 0 = every clicking user of the window
    max_eval_users: int = default("max_eval_users")  # 0 = every clicker of the evaluation day
    valid_share: float = 0.1
    valid_max_users: int = 2000

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {self.variant!r}")
        if self.negative_sampling not in ("uniform", "popularity"):
            raise ValueError(f"negative_sampling must be uniform or popularity, got {self.negative_sampling!r}")
        if self.lr_schedule not in SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {SCHEDULES}, got {self.lr_schedule!r}")
        if not 0 < self.keep_prob <= 1 or not 0 < self.target_ratio < 1:
            raise ValueError("keep_prob must be in (0, 1] and target_ratio in (0, 1)")
        if self.batch_size < 0 or self.eval_every < 0 or self.max_steps < 1 or self.epochs < 1 or self.patience < 1:
            raise ValueError("batch_size and eval_every must be >= 0 (0 = derived); max_steps, epochs and "
                             "patience >= 1")
        if self.max_train_users < 0 or self.max_eval_users < 0:
            raise ValueError("max_train_users and max_eval_users must be >= 0 (0 = every user)")
        if not 0 <= self.warmup_share < 1 or self.bias_lr_scale <= 0:
            raise ValueError("warmup_share must be in [0, 1) and bias_lr_scale > 0")

    @classmethod
    def from_settings(cls, settings, **overrides) -> "LedConfig":
        names = ("dim", "loss", "num_negatives", "negative_sampling", "learning_rate", "batch_size",
                 "epochs", "max_steps", "eval_every", "patience", "lr_schedule", "warmup_share",
                 "bias_lr_scale", "keep_prob", "target_ratio", "seed", "init_scale", "max_timeline",
                 "max_train_users", "max_eval_users")
        values = {n: getattr(settings, n) for n in names}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Schedule:
    """The resolved training schedule of one fine-tuning (what the ``0 = derived`` knobs became)."""

    batch_size: int
    steps_per_epoch: int
    max_steps: int
    eval_every: int
    warmup_steps: int

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


def auto_batch_size(n_users: int) -> int:
    """A power of two near ``n_users / 10`` within [32, 512]: at least ~10 steps per epoch on a small
    data set, and the batch of the large ones (where a step costs O(B·(T + N)·d))."""
    return int(np.clip(2 ** round(math.log2(max(n_users, 1) / 10)), 32, 512))


def resolve_schedule(cfg: LedConfig, n_users: int) -> Schedule:
    batch = cfg.batch_size or auto_batch_size(n_users)
    per_epoch = max(1, math.ceil(n_users / batch))
    max_steps = min(cfg.max_steps, cfg.epochs * per_epoch)
    every = cfg.eval_every or max(1, math.ceil(max_steps / EVALUATIONS_PER_BUDGET))
    return Schedule(batch, per_epoch, max_steps, min(every, max_steps), int(round(cfg.warmup_share * max_steps)))


def learning_rate_schedule(cfg: LedConfig, schedule: Schedule, scale: float = 1.0):
    """Linear warm-up to ``scale · learning_rate``, then cosine decay to 0 at ``max_steps`` (or constant)."""
    tf = import_tf()
    peak = scale * cfg.learning_rate
    if cfg.lr_schedule == "constant":
        return peak
    decay = max(1, schedule.max_steps - schedule.warmup_steps)
    return tf.keras.optimizers.schedules.CosineDecay(
        0.0 if schedule.warmup_steps else peak, decay, warmup_target=peak if schedule.warmup_steps else None,
        warmup_steps=schedule.warmup_steps)


def initial_bias(counts: np.ndarray) -> np.ndarray:
    """log of normalised counts (+1 so unseen items get a finite, low bias)."""
    c = np.asarray(counts, dtype=np.float64) + 1.0
    return np.log(c / c.sum()).astype(np.float32)


def align_embeddings(catalog: Sequence[str], item_ids: Sequence[str], E: np.ndarray) -> tuple[np.ndarray, int]:
    """Rows of E re-ordered to ``catalog``; items without an embedding get a zero row (bias only)."""
    index = {str(i): r for r, i in enumerate(item_ids)}
    out = np.zeros((len(catalog), E.shape[1]), dtype=np.float32)
    found = 0
    for r, item in enumerate(catalog):
        j = index.get(str(item))
        if j is not None:
            out[r] = E[j]
            found += 1
    return out, found


# --------------------------------------------------------------------------- the model
class LedModel:
    """E, P, b as TensorFlow tensors; ``trainable`` lists exactly what the optimizer updates."""

    def __init__(self, E: np.ndarray, counts: np.ndarray, variant: str = "project",
                 init_scale: float = 1.0, seed: int = 0):
        tf = import_tf()
        E = np.asarray(E, dtype=np.float32)
        n_items, d = E.shape
        if len(counts) != n_items:
            raise ValueError(f"counts ({len(counts)}) and E ({n_items} rows) disagree")
        self.variant, self.n_items, self.dim = variant, n_items, d
        tf.random.set_seed(seed)
        if variant == "project":
            self.E = tf.constant(E)  # frozen: a constant is never in a gradient
        else:
            self.E = tf.Variable(E, name="E", trainable=True)
        self.P = None
        if variant != "no_projection":
            self.P = tf.Variable(init_scale * np.eye(d, dtype=np.float32), name="P", trainable=True)
        self.b = tf.Variable(initial_bias(counts), name="b", trainable=True)
        # log-probabilities of the negative sampler (CSS importance weights); fine_tune sets the real one
        self.log_q = tf.fill([n_items], -float(np.log(n_items)))
        self.trainable = [v for v in (self.E, self.P, self.b) if isinstance(v, tf.Variable)]
        if variant == "project" and self.trainable_params != d * d + n_items:
            raise AssertionError(f"LED Project must train d*d + I = {d * d + n_items} parameters, "
                                 f"got {self.trainable_params}")

    @property
    def trainable_params(self) -> int:
        return int(sum(int(np.prod(v.shape)) for v in self.trainable))

    def hidden(self, inputs):
        """``u P Pᵀ`` for a ragged batch of input item indices (B × d)."""
        tf = import_tf()
        u = tf.reduce_mean(tf.gather(self.E, inputs), axis=1)
        if self.P is None:
            return u
        return tf.matmul(tf.matmul(u, self.P), self.P, transpose_b=True)

    def logits(self, inputs):
        """Full logits (B × I): ``u P Pᵀ Eᵀ + b``."""
        tf = import_tf()
        return tf.matmul(self.hidden(inputs), self.E, transpose_b=True) + self.b

    def export_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """``V = E P`` and ``b`` as float32 numpy arrays."""
        E = np.asarray(self.E.numpy(), dtype=np.float32)
        V = E if self.P is None else E @ self.P.numpy()
        return V.astype(np.float32), self.b.numpy().astype(np.float32)

    def get_weights(self) -> list[np.ndarray]:
        return [v.numpy().copy() for v in self.trainable]

    def set_weights(self, weights: list[np.ndarray]) -> None:
        for v, w in zip(self.trainable, weights):
            v.assign(w)


# --------------------------------------------------------------------------- losses
def _target_scores(model: LedModel, h, targets):
    tf = import_tf()
    rows = targets.value_rowids()
    items = targets.flat_values
    s = tf.reduce_sum(tf.gather(h, rows) * tf.gather(model.E, items), axis=1) + tf.gather(model.b, items)
    return s, rows, items


def _negative_scores(model: LedModel, h, negatives, target_items, target_rows):
    """Scores (B × N) of the shared negatives and a mask that drops the user's own targets."""
    tf = import_tf()
    s = tf.matmul(h, tf.gather(model.E, negatives), transpose_b=True) + tf.gather(model.b, negatives)
    hit = tf.cast(tf.equal(target_items[:, None], negatives[None, :]), tf.float32)  # T × N
    hit_rows = tf.math.unsorted_segment_max(hit, target_rows, tf.shape(h)[0])
    return s, 1.0 - tf.maximum(hit_rows, 0.0)


def _per_user_mean(values, rows, n_rows):
    tf = import_tf()
    per_user = tf.math.unsorted_segment_mean(values, rows, n_rows)
    has = tf.math.unsorted_segment_max(tf.ones_like(values), rows, n_rows) > 0
    return tf.reduce_mean(tf.boolean_mask(per_user, has))


def bpr_loss(model, h, targets, negatives, neg_logq=None):
    tf = import_tf()
    s_t, rows, items = _target_scores(model, h, targets)
    s_n, valid = _negative_scores(model, h, negatives, items, rows)
    diff = s_t[:, None] - tf.gather(s_n, rows)  # T × N
    w = tf.gather(valid, rows)
    pair = tf.reduce_sum(tf.nn.softplus(-diff) * w, axis=1) / tf.maximum(tf.reduce_sum(w, axis=1), 1.0)
    return _per_user_mean(pair, rows, tf.shape(h)[0])


def ns_loss(model, h, targets, negatives, neg_logq=None):
    tf = import_tf()
    s_t, rows, items = _target_scores(model, h, targets)
    s_n, valid = _negative_scores(model, h, negatives, items, rows)
    positive = _per_user_mean(tf.nn.softplus(-s_t), rows, tf.shape(h)[0])
    negative = tf.reduce_sum(tf.nn.softplus(s_n) * valid, axis=1) / tf.maximum(tf.reduce_sum(valid, axis=1), 1.0)
    return positive + tf.reduce_mean(negative)


def css_loss(model, h, targets, negatives, neg_logq):
    """Sampled multinomial: log Z = log(Σ_targets e^s + Σ_neg w_n e^s_n), w_n = (1 - Q_t)/(N q_n)."""
    tf = import_tf()
    n_rows = tf.shape(h)[0]
    s_t, rows, items = _target_scores(model, h, targets)
    s_n, valid = _negative_scores(model, h, negatives, items, rows)
    n_neg = tf.cast(tf.shape(negatives)[0], tf.float32)
    q_targets = tf.math.unsorted_segment_sum(tf.exp(tf.gather(model.log_q, items)), rows, n_rows)
    log_w = tf.math.log(tf.maximum(1.0 - q_targets, 1e-6))[:, None] - tf.math.log(n_neg) - neg_logq[None, :]
    neg_terms = tf.where(valid > 0, s_n + log_w, tf.fill(tf.shape(s_n), -1e9))
    m = tf.maximum(tf.math.unsorted_segment_max(s_t, rows, n_rows), tf.reduce_max(neg_terms, axis=1))
    m = tf.stop_gradient(tf.where(tf.math.is_finite(m), m, tf.zeros_like(m)))
    z = (tf.math.unsorted_segment_sum(tf.exp(s_t - tf.gather(m, rows)), rows, n_rows)
         + tf.reduce_sum(tf.exp(neg_terms - m[:, None]), axis=1))
    log_z = m + tf.math.log(z)
    return _per_user_mean(tf.gather(log_z, rows) - s_t, rows, n_rows)


def multi_loss(model, h, targets, negatives=None, neg_logq=None):
    """Full softmax over the catalog (cost grows with I: a reference for small catalogs)."""
    tf = import_tf()
    log_p = tf.nn.log_softmax(tf.matmul(h, model.E, transpose_b=True) + model.b, axis=1)
    rows, items = targets.value_rowids(), targets.flat_values
    nll = -tf.gather_nd(log_p, tf.stack([rows, tf.cast(items, tf.int64)], axis=1))
    return _per_user_mean(nll, rows, tf.shape(h)[0])


LOSS_FUNCTIONS: dict[str, Callable] = {"bpr": bpr_loss, "ns": ns_loss, "css": css_loss, "multi": multi_loss}


# --------------------------------------------------------------------------- negatives and data
class NegativeSampler:
    """Draws N negatives with replacement: uniform, or ∝ counts^0.75 via a CDF (O(N log I))."""

    def __init__(self, counts: np.ndarray, kind: str, rng: np.random.Generator):
        self.n_items, self.kind, self.rng = len(counts), kind, rng
        if kind == "popularity":
            w = (np.asarray(counts, dtype=np.float64) + 1.0) ** 0.75
        else:
            w = np.ones(len(counts))
        self.q = w / w.sum()
        self.cdf = np.cumsum(self.q)
        self.cdf[-1] = 1.0

    def sample(self, n: int) -> np.ndarray:
        if self.kind == "uniform":
            return self.rng.integers(0, self.n_items, n).astype(np.int32)
        return np.searchsorted(self.cdf, self.rng.random(n), side="right").astype(np.int32)


def epoch_batches(data: UserData, cfg: LedConfig, sampler: NegativeSampler, rng: np.random.Generator,
                  batch_size: int | None = None):
    """One epoch of batches: inputs and targets as ragged (values, row_splits) numpy pairs, and the
    batch's sampled negatives. Plain numpy slices of one epoch's examples (no tf.data pipeline: at
    daily sizes building one per epoch cost more than the steps it fed)."""
    batch_size = batch_size or cfg.batch_size or auto_batch_size(len(data))
    inputs, targets = epoch_examples(data, cfg.target_ratio, cfg.keep_prob, rng)
    for start in range(0, len(inputs), batch_size):
        stop = min(start + batch_size, len(inputs))
        yield _rows(inputs, start, stop), _rows(targets, start, stop), sampler.sample(cfg.num_negatives)


def _rows(lists: Lists, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
    lo, hi = lists.indptr[start], lists.indptr[stop]
    return lists.items[lo:hi], lists.indptr[start:stop + 1] - lo


# --------------------------------------------------------------------------- scoring and evaluation
def score_with(V: np.ndarray, b: np.ndarray | None,
               counts: np.ndarray | None = None) -> Callable[[list[np.ndarray]], np.ndarray]:
    """``models.scoring``'s rule as a batch scorer for ``evaluate_scorer`` (``b=None``: no bias)."""
    bias = b if b is not None else np.zeros(V.shape[0], V.dtype)
    return lambda inputs: scoring.score_batch(V, bias, counts, inputs)


@dataclass
class TrainedModel:
    """A fine-tuned LED model as plain arrays plus its training record.

    ``history`` has one row per validation evaluation, the first one (step 0)
    being the initialisation; ``initial_valid`` / ``valid_metrics`` are the
    validation NDCG@100 and Recall@20 of the initialisation and of the kept
    (best) weights, so the gain of the fine-tuning is their difference.
    """

    item_ids: np.ndarray
    V: np.ndarray
    b: np.ndarray
    counts: np.ndarray
    config: LedConfig
    trainable_params: int
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    train_seconds: float = 0.0
    P: np.ndarray | None = None
    best_step: int = 0
    steps: int = 0
    initial_valid: dict = field(default_factory=dict)
    valid_metrics: dict = field(default_factory=dict)
    schedule: dict = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return int(self.V.shape[1])

    def scorer(self) -> Callable[[list[np.ndarray]], np.ndarray]:
        return score_with(self.V, self.b, self.counts)

    def evaluate(self, eval_set: EvalSet) -> dict[str, float]:
        return evaluate_model(self, eval_set)

    def model_card(self, metrics: dict | None = None, data_window: dict | None = None,
                   extra: dict | None = None) -> dict[str, Any]:
        trained = self.trainable_params > 0
        card = {"model": "LED" if trained else "SVD-average", "variant": self.config.variant, "d": self.dim,
                "loss": self.config.loss if trained else "none",
                "trainable_params": self.trainable_params, "items": len(self.item_ids),
                "hyper_parameters": self.config.as_dict(), "schedule": self.schedule,
                "best_epoch": self.best_epoch, "best_step": self.best_step, "steps": self.steps,
                "validation": {"initialisation": self.initial_valid, "trained": self.valid_metrics},
                "train_seconds": round(self.train_seconds, 3), "history": self.history,
                "metrics": metrics or {}, "data_window": data_window or {}}
        return card | (extra or {})

    def export(self, folder: Path, metrics: dict | None = None, data_window: dict | None = None,
               eval_set: EvalSet | None = None, extra: dict | None = None, max_eval_users: int = 2000) -> Path:
        """Write V, b, ids, counts and the model card with ``models.export.save_model``.

        ``eval_set`` goes whole to eval_set.json (what ``led register`` gates on) and its inputs (up
        to ``max_eval_users``) to eval_timelines.json, serving's ANN-recall queries.
        """
        from models.evaluation import eval_set_json
        from models.export import EVAL_SET, save_model

        timelines, files = None, {}
        if eval_set is not None:
            timelines = eval_set.timelines(max_eval_users)
            files[EVAL_SET] = json.dumps(eval_set_json(eval_set))
        return save_model(folder, self.item_ids, self.V, self.b, self.counts,
                          self.model_card(metrics, data_window, extra), timelines, files)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


VALID_METRICS = ("ndcg@100", "recall@20")


def _valid_metrics(model: LedModel, valid: EvalSet, counts: np.ndarray) -> dict[str, float]:
    V, b = model.export_arrays()
    out = evaluate_scorer(score_with(V, b, counts), valid, model.n_items)
    return {m: out[m] for m in VALID_METRICS}


def _optimizers(cfg: LedConfig, schedule: Schedule, model: LedModel):
    """(optimizer, variables) pairs: one Adam for E/P, one for b (its own rate, ``bias_lr_scale``)."""
    tf = import_tf()
    weights = [v for v in model.trainable if v is not model.b]
    pairs = [(tf.keras.optimizers.Adam(learning_rate_schedule(cfg, schedule, cfg.bias_lr_scale)), [model.b])]
    if weights:
        pairs.insert(0, (tf.keras.optimizers.Adam(learning_rate_schedule(cfg, schedule)), weights))
    return pairs


def _batches(train: UserData, cfg: LedConfig, schedule: Schedule, sampler: NegativeSampler,
             rng: np.random.Generator):
    """(epoch, inputs, targets, negatives) until ``max_steps`` batches or ``epochs`` passes."""
    step = 0
    for epoch in range(1, cfg.epochs + 1):
        for inputs, targets, negatives in epoch_batches(train, cfg, sampler, rng, schedule.batch_size):
            if step >= schedule.max_steps:
                return
            step += 1
            yield epoch, inputs, targets, negatives


def fine_tune(embeddings, train: UserData, valid: EvalSet | None, cfg: LedConfig,
              counts: np.ndarray | None = None, progress: Callable[[str], None] | None = _log,
              initial: tuple[np.ndarray, np.ndarray] | None = None) -> TrainedModel:
    """Fine-tune LED on ``train`` (indices into ``embeddings.item_ids``), early-stopping on ``valid``.

    ``initial``: (P, b) to start from instead of ``init_scale · I`` and the log-popularity bias
    (the refit of ``models.refit`` warm-starts from the evaluated model).

    ``embeddings`` is anything with ``item_ids``, ``E`` (I × d) and ``counts``
    (the pre-training's :class:`models.pretrain.Embeddings`); ``counts`` overrides
    the counts used for the bias initialisation and popularity negatives.

    The budget is ``max_steps`` optimizer steps (see :func:`resolve_schedule`);
    validation NDCG@100 is measured before the first step and every
    ``eval_every`` steps, training stops after ``patience`` evaluations without
    improvement and the best evaluation's weights are kept (the initialisation
    included: a fine-tuning that only hurts returns the initialisation). With
    ``valid`` None or empty the whole budget is trained and the last weights
    are returned.
    """
    tf = import_tf()
    try:
        tf.config.experimental.enable_op_determinism()
    except Exception:  # pragma: no cover - older TF
        pass
    E = np.asarray(embeddings.E, dtype=np.float32)
    counts = np.asarray(embeddings.counts if counts is None else counts, dtype=np.int64)
    if len(train) == 0 or train.clicks.items.size == 0:
        raise ValueError("no training clicks: nothing to fine-tune on")
    start = time.perf_counter()
    rng = np.random.default_rng(cfg.seed)
    schedule = resolve_schedule(cfg, len(train))
    model = LedModel(E, counts, cfg.variant, cfg.init_scale, cfg.seed)
    if initial is not None:
        if model.P is None:
            raise ValueError("a warm start needs a variant with a projection P")
        model.P.assign(np.asarray(initial[0], np.float32))
        model.b.assign(np.asarray(initial[1], np.float32))
    sampler = NegativeSampler(counts, cfg.negative_sampling, np.random.default_rng(cfg.seed + 7))
    model.log_q = tf.constant(np.log(sampler.q).astype(np.float32))
    optimizers = _optimizers(cfg, schedule, model)
    loss_fn = LOSS_FUNCTIONS[cfg.loss]
    values, splits = tf.TensorSpec([None], tf.int32), tf.TensorSpec([None], tf.int64)

    # plain tensors in, ragged inside, and the concrete function called directly: the polymorphic
    # function's per-call dispatch cost as much as the step itself at daily sizes
    @tf.function(input_signature=[values, splits, values, splits, values])
    def train_step_fn(input_values, input_splits, target_values, target_splits, negatives):
        inputs = tf.RaggedTensor.from_row_splits(input_values, input_splits, validate=False)
        targets = tf.RaggedTensor.from_row_splits(target_values, target_splits, validate=False)
        variables = [v for _, vs in optimizers for v in vs]
        with tf.GradientTape() as tape:
            loss = loss_fn(model, model.hidden(inputs), targets, negatives, tf.gather(model.log_q, negatives))
        grads = iter(tape.gradient(loss, variables))
        for optimizer, vs in optimizers:
            optimizer.apply_gradients(zip([next(grads) for _ in vs], vs))
        return loss

    train_step = train_step_fn.get_concrete_function()

    use_valid = valid is not None and len(valid) > 0
    initial = _valid_metrics(model, valid, counts) if use_valid else {}
    history: list[dict] = [{"step": 0, "epoch": 0, "seconds": 0.0} | {f"val_{k}": v for k, v in initial.items()}]
    best = {"score": initial.get("ndcg@100", -1.0), "step": 0, "epoch": 0, "weights": model.get_weights(),
            "metrics": initial}
    losses: list[float] = []
    step, epoch, t0 = 0, 0, time.perf_counter()
    if progress:
        progress(f"[led {cfg.variant}/{cfg.loss}] epoch 1/{cfg.epochs} starts: batch {schedule.batch_size}, "
                 f"{schedule.steps_per_epoch} steps per epoch, budget {schedule.max_steps} steps, "
                 f"warm-up {schedule.warmup_steps}, validation every {schedule.eval_every}")
    _report(progress, cfg, schedule, history[0], True)
    for epoch, inputs, targets, negatives in _batches(train, cfg, schedule, sampler, rng):
        losses.append(float(train_step(*inputs, *targets, negatives)))
        step += 1
        if not np.isfinite(losses[-1]):
            raise FloatingPointError(f"training diverged at step {step} (loss {losses[-1]})")
        if step % schedule.eval_every and step < schedule.max_steps:
            continue
        record = {"step": step, "epoch": epoch, "loss": float(np.mean(losses)),
                  "learning_rate": float(optimizers[0][0].learning_rate.numpy()),
                  "seconds": round(time.perf_counter() - t0, 3)}
        losses = []
        if use_valid:
            metrics = _valid_metrics(model, valid, counts)
            record |= {f"val_{k}": v for k, v in metrics.items()}
        history.append(record)
        improved = (record["val_ndcg@100"] > best["score"]) if use_valid else True
        if improved:
            best = {"score": record.get("val_ndcg@100", 0.0), "step": step, "epoch": epoch,
                    "weights": model.get_weights(), "metrics": metrics if use_valid else {}}
        _report(progress, cfg, schedule, record, improved)
        if use_valid and (step - best["step"]) >= cfg.patience * schedule.eval_every:
            break
    model.set_weights(best["weights"])
    V, b = model.export_arrays()
    P = model.P.numpy() if model.P is not None else None
    return TrainedModel(np.asarray(embeddings.item_ids, dtype=str), V, b, counts, cfg, model.trainable_params,
                        history, best["epoch"], time.perf_counter() - start, P, best_step=best["step"],
                        steps=step, initial_valid=initial, valid_metrics=best["metrics"],
                        schedule=schedule.as_dict())


def _report(progress, cfg: LedConfig, schedule: Schedule, record: dict, improved: bool) -> None:
    if not progress:
        return
    val = f" val ndcg@100 {record['val_ndcg@100']:.4f}{' *' if improved else ''}" if "val_ndcg@100" in record else ""
    loss = f" loss {record['loss']:.4f}" if "loss" in record else ""
    progress(f"[led {cfg.variant}/{cfg.loss}] step {record['step']}/{schedule.max_steps} (epoch {record['epoch']}/"
             f"{cfg.epochs}, batch {schedule.batch_size}){loss}{val} {record['seconds']:.1f}s")


def initialisation(embeddings, cfg: LedConfig, counts: np.ndarray | None = None) -> TrainedModel:
    """The model :func:`fine_tune` starts from (``P = init_scale·I``, ``b = log-popularity``), untrained:
    the reference its gain is measured against."""
    counts = np.asarray(embeddings.counts if counts is None else counts, dtype=np.int64)
    model = LedModel(np.asarray(embeddings.E, dtype=np.float32), counts, cfg.variant, cfg.init_scale, cfg.seed)
    V, b = model.export_arrays()
    return TrainedModel(np.asarray(embeddings.item_ids, dtype=str), V, b, counts, cfg, 0)


def svd_average(embeddings, counts: np.ndarray | None = None, with_bias: bool = False,
                cfg: LedConfig | None = None) -> TrainedModel:
    """The no-training ablation: ``P = I``; with_bias adds the log-popularity bias ``b``."""
    counts = np.asarray(embeddings.counts if counts is None else counts, dtype=np.int64)
    E = np.asarray(embeddings.E, dtype=np.float32)
    b = initial_bias(counts) if with_bias else np.zeros(len(counts), np.float32)
    cfg = cfg or LedConfig(dim=E.shape[1], epochs=1)
    return TrainedModel(np.asarray(embeddings.item_ids, dtype=str), E.copy(), b, counts,
                        cfg, 0)


# --------------------------------------------------------------------------- the daily stage
def fine_tune_window(embeddings, views, clicks, cfg: LedConfig,
                     progress: Callable[[str], None] | None = _log,
                     sample: UserSample | None = None) -> tuple[TrainedModel, TemporalSplit, dict]:
    """The daily fine-tune stage on one window's events (arrow tables from ``infra.events.read_window``).

    Temporal protocol: trains on the days before the window's last day (a share
    of those users held out for early stopping), evaluates on the last day's
    clicks. ``embeddings`` must have been pre-trained without the last day
    (``models.data.evaluation_day``), so nothing of the evaluation day leaks.
    ``sample``: the users to train and evaluate on when the tables hold only some users' events
    (``max_train_users`` / ``max_eval_users``, see ``models.pipeline.TrainingWindow``).
    Returns (model, split, metrics).
    """
    from models.data import split_validation, temporal_split

    split = temporal_split(views, clicks, embeddings.item_ids, cfg.max_timeline, sample)
    if len(split.test) == 0:
        raise ValueError(f"no user clicked a known item on {split.eval_date} after earlier activity: "
                         "nothing to evaluate on")
    train, valid = split_validation(split.train, split.item_ids, cfg.valid_share, cfg.valid_max_users, cfg.seed)
    model = fine_tune(embeddings, train, valid, cfg, progress=progress)
    metrics = evaluate_model(model, split.test)
    return model, split, metrics
