"""Pre-training of item embeddings on views: PMI + randomized SVD, in Spark.

This is the "large-scale matrix factorisation" half of LED (docs/architecture.md, "Pre-training"):

    views of [D-W, D)
      → per-user item sets (capped at ``max_timeline`` most recent items)
      → item-item co-occurrence (zero diagonal)        models/pmi.py
      → PPMI with context smoothing α, rare items dropped
      → randomized SVD, rank d                          models/rsvd.py
      → E = row-normalise(U · Σ)

Choice of E: deepr's movielens example fits ``TruncatedSVD`` on the PMI matrix
and keeps ``svd.transform(pmi) = U Σ``; we do the same, then L2-normalise the
rows (docs/architecture.md, "The model"). Σ weights the components by importance before the
normalisation, so the cosine between two items is dominated by the strong
directions, as with the full PMI rows. ``counts`` are raw view counts in the
input (the fine-tuning initialises the biases from them).

Explained variance is ``Σ_{i≤d} σ_i² / ‖PPMI‖²_F``: the share of the matrix's
energy kept by the rank-d approximation. ‖PPMI‖_F is exact (summed in Spark),
the σ_i come from the randomized SVD, hence an estimate.

Memory model (U users, T = max_timeline, L̄ ≤ T mean capped timeline, I items,
d rank, p oversampling, k = d + p, nnz = non-zeros of the co-occurrence, B
blocks):

- driver: O(I) ids, counts and marginals, plus at most three dense I × k
  factors (Ω or Q as float32 = ``4·I·k`` bytes, U in float64 = ``8·I·k``) and
  k × k matrices. For I = 20k, d = 600: about 150 MB. Nothing sparse.
- executors: timelines shuffle ``4 · U · L̄ · min(B, L̄)`` bytes; a block task
  holds its users' timelines, its rows of C (``12 · nnz / B``) and a broadcast
  I × k factor; the cache holds PPMI and PPMIᵀ (``16 · nnz``) and one dense
  I × k factor in blocks (``8·I·k``).
- co-occurrence work is ``Σ_u min(L_u, T)²`` ≤ ``U · T²`` multiply-adds.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from infra.atomic import atomic_dir
from infra.settings import default

log = logging.getLogger(__name__)

ARRAYS = ("item_ids", "E", "counts", "singular_values")
# What folding in new items needs (models/foldin.py); absent from folders written before fold-in existed.
FOLDIN_ARRAYS = ("W", "marginals")
E_DTYPES = {"W": np.float32, "marginals": np.float64}  # W at E's precision; marginals are exact counts
META = "pretrain.json"


@dataclass(frozen=True)
class PretrainConfig:
    dim: int = default("dim")
    min_count: int = default("min_count")
    smoothing: float = default("pmi_smoothing")
    oversampling: int = default("svd_oversampling")
    power_iters: int = default("svd_power_iters")
    max_timeline: int = default("max_timeline")
    seed: int = default("seed")

    def __post_init__(self) -> None:
        if self.dim < 1 or self.min_count < 1 or self.oversampling < 0 or self.power_iters < 0:
            raise ValueError("dim >= 1, min_count >= 1, oversampling >= 0 and power_iters >= 0 are required")
        if not 0 < self.smoothing <= 1:
            raise ValueError(f"smoothing must be in (0, 1], got {self.smoothing}")
        if self.max_timeline < 2:
            raise ValueError(f"max_timeline must be at least 2, got {self.max_timeline}")

    @classmethod
    def from_settings(cls, s, **overrides) -> "PretrainConfig":
        base = dict(dim=s.dim, min_count=s.min_count, smoothing=s.pmi_smoothing,
                    oversampling=s.svd_oversampling, power_iters=s.svd_power_iters,
                    max_timeline=s.max_timeline, seed=s.seed)
        base.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**base)


@dataclass
class Embeddings:
    item_ids: np.ndarray         # str (I,), kept items, row order of E
    E: np.ndarray                # float32 (I, d), rows L2-normalised
    counts: np.ndarray           # int64 (I,), views of each item in the input
    singular_values: np.ndarray  # float64 (d,), descending
    explained_variance: float
    timings: dict = field(default_factory=dict)
    sizes: dict = field(default_factory=dict)
    W: np.ndarray | None = None          # (I, d), right singular vectors of the PPMI (M ≈ U Σ Wᵀ)
    marginals: np.ndarray | None = None  # float64 (I,), the PMI's r'_i (models/pmi.py)

    def __post_init__(self) -> None:
        n = len(self.item_ids)
        if self.E.ndim != 2 or self.E.shape[0] != n or self.counts.shape != (n,) \
                or self.singular_values.shape != (self.E.shape[1],):
            raise ValueError(f"inconsistent embeddings: ids {n}, E {self.E.shape}, counts {self.counts.shape}, "
                             f"singular values {self.singular_values.shape}")
        if (self.W is not None and self.W.shape != self.E.shape) or \
                (self.marginals is not None and self.marginals.shape != (n,)):
            raise ValueError(f"inconsistent fold-in arrays: E {self.E.shape}, W "
                             f"{None if self.W is None else self.W.shape}, marginals "
                             f"{None if self.marginals is None else self.marginals.shape}")

    @property
    def can_fold_in(self) -> bool:
        return self.W is not None and self.marginals is not None

    @property
    def dim(self) -> int:
        return int(self.E.shape[1])

    def save(self, folder: Path) -> None:
        """Write plain arrays + pretrain.json atomically (temp sibling, then rename; replaces ``folder``)."""
        with atomic_dir(Path(folder)) as tmp:
            np.save(tmp / "item_ids.npy", np.asarray(self.item_ids, dtype=str))
            np.save(tmp / "E.npy", self.E.astype(np.float32))
            np.save(tmp / "counts.npy", self.counts.astype(np.int64))
            np.save(tmp / "singular_values.npy", self.singular_values.astype(np.float64))
            for name in FOLDIN_ARRAYS:
                if getattr(self, name) is not None:
                    np.save(tmp / f"{name}.npy", getattr(self, name).astype(E_DTYPES[name]))
            meta = {"dim": self.dim, "items": len(self.item_ids),
                    "explained_variance": self.explained_variance,
                    "timings": self.timings, "sizes": self.sizes}
            (tmp / META).write_text(json.dumps(meta, indent=2, default=float))

    @classmethod
    def load(cls, folder: Path) -> "Embeddings":
        folder = Path(folder)
        missing = [f"{a}.npy" for a in ARRAYS if not (folder / f"{a}.npy").is_file()]
        if missing or not (folder / META).is_file():
            from infra.errors import UserError
            raise UserError(f"not a pretrain output folder (missing {missing or [META]}): {folder}")
        meta = json.loads((folder / META).read_text())
        arrays = {a: np.load(folder / f"{a}.npy", allow_pickle=False) for a in ARRAYS}
        arrays |= {a: np.load(folder / f"{a}.npy", allow_pickle=False) for a in FOLDIN_ARRAYS
                   if (folder / f"{a}.npy").is_file()}
        return cls(explained_variance=float(meta["explained_variance"]), timings=meta.get("timings", {}),
                   sizes=meta.get("sizes", {}), **arrays)


def row_normalise(e: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (float32); all-zero rows stay zero."""
    norms = np.linalg.norm(e, axis=1, keepdims=True)
    return (e / np.where(norms > 0, norms, 1.0)).astype(np.float32)


def embeddings_from_svd(U: np.ndarray, s: np.ndarray) -> np.ndarray:
    """E = row-normalise(U Σ); all-zero rows stay zero."""
    return row_normalise(U * s[None, :])


def pretrain(spark, views, cfg: PretrainConfig) -> Embeddings:
    """Item embeddings from a Spark DataFrame of views (user_id, item_id[, ts])."""
    from models.pmi import build_pmi
    from models.rsvd import randomized_svd

    start = time.perf_counter()
    missing = {"user_id", "item_id"} - set(views.columns)
    if missing:
        raise ValueError(f"views lack columns {sorted(missing)} (have {views.columns})")
    views = views.select(*[c for c in ("user_id", "item_id", "ts") if c in views.columns]).where(
        "user_id IS NOT NULL AND item_id IS NOT NULL")
    pmi = _with_dim_hint(cfg, lambda: build_pmi(spark, views, min_count=cfg.min_count, smoothing=cfg.smoothing,
                                                max_timeline=cfg.max_timeline, seed=cfg.seed, min_items=cfg.dim))
    t0 = time.perf_counter()
    svd = randomized_svd(spark.sparkContext, pmi.matrix, cfg.dim, cfg.oversampling, cfg.power_iters, cfg.seed)
    pmi.matrix.unpersist()
    return _embeddings(pmi, svd, cfg, start, time.perf_counter() - t0, engine="spark")


def pretrain_local(views, cfg: PretrainConfig) -> Embeddings:
    """The same embeddings computed in this process from a pyarrow table of views (user_id, item_id,
    ts): the engine for windows where Spark's per-job overheads cost more than the work
    (``pretrain_engine``; docs/architecture.md, "Pre-training")."""
    import pyarrow.compute as pc

    from models.pmi import build_pmi_local
    from models.rsvd import randomized_svd_local

    start = time.perf_counter()
    missing = {"user_id", "item_id", "ts"} - set(views.column_names)
    if missing:
        raise ValueError(f"views lack columns {sorted(missing)} (have {views.column_names})")
    views = views.filter(pc.and_(pc.is_valid(views.column("user_id")), pc.is_valid(views.column("item_id"))))
    pmi = _with_dim_hint(cfg, lambda: build_pmi_local(views, min_count=cfg.min_count, smoothing=cfg.smoothing,
                                                      max_timeline=cfg.max_timeline, min_items=cfg.dim))
    t0 = time.perf_counter()
    svd = randomized_svd_local(pmi.matrix, cfg.dim, cfg.oversampling, cfg.power_iters, cfg.seed)
    return _embeddings(pmi, svd, cfg, start, time.perf_counter() - t0, engine="local")


def _with_dim_hint(cfg: PretrainConfig, build):
    try:
        return build()
    except ValueError as exc:
        raise ValueError(f"{exc} for {cfg.dim}-dimensional embeddings (lower dim or min_count, "
                         "or widen the window)") from None


def _embeddings(pmi, svd, cfg: PretrainConfig, start: float, svd_seconds: float, engine: str) -> Embeddings:
    """E, the explained variance and the figures from a PMI and its SVD (both engines)."""
    e = embeddings_from_svd(svd.U, svd.s)
    explained = float(np.sum(svd.s ** 2) / pmi.frobenius_sq) if pmi.frobenius_sq > 0 else 0.0
    timings = dict(pmi.timings, rsvd=svd_seconds, total=time.perf_counter() - start)
    sizes = dict(pmi.sizes, dim=cfg.dim, k=svd.stats["k"], products=svd.stats["products"],
                 qr_passes=svd.stats["qr_passes"], engine=engine,
                 zero_rows=int(np.sum(~np.any(e != 0, axis=1))))
    log.info("pretrain (%s): %d items, d=%d, explained variance %.3f, %.1fs", engine, len(pmi.item_ids), cfg.dim,
             explained, timings["total"])
    return Embeddings(item_ids=pmi.item_ids, E=e, counts=pmi.counts, singular_values=svd.s,
                      explained_variance=explained, timings=timings, sizes=sizes, W=svd.W, marginals=pmi.marginals)


def choose_engine(engine: str, train_views: int, local_max_views: int) -> str:
    """``local`` or ``spark``: the setting, or for ``auto`` local up to ``local_max_views`` views. On a
    small window Spark spends seconds in job scheduling for milliseconds of work; past the threshold
    the one-process engine's memory (the whole co-occurrence in scipy) is what Spark bounds."""
    if engine not in ("auto", "local", "spark"):
        raise ValueError(f"pre-training engine must be auto, local or spark, got {engine!r}")
    if engine != "auto":
        return engine
    return "local" if train_views <= local_max_views else "spark"


def read_window_views(spark, events_dir, run_date, window_days: int):
    """Spark DataFrame of the views of [D-W, D) (user_id, item_id, ts); UserError if there are none."""
    import datetime as dt

    from pyspark.sql import functions as F

    from infra import events
    from infra.errors import UserError

    root = events.require_event_store(Path(events_dir))
    days = events.window_dates(run_date, window_days)
    quarantined = events.quarantined_days(root)
    present = [d for d in events.list_days(root, "views") if days[0] <= d <= days[-1] and d not in quarantined]
    if not present:
        raise UserError(f"no views in the window [{days[0]}, {days[-1] + dt.timedelta(days=1)}) of {root}")
    paths = [str(events.partition_dir(root, "views", d)) for d in present]
    df = spark.read.option("basePath", str(root / "views")).parquet(*paths)
    return df.select("user_id", "item_id", "ts").where(
        (F.col("date") >= F.lit(days[0])) & (F.col("date") <= F.lit(days[-1])))


def pretrain_window(spark, events_dir, run_date, window_days, cfg: PretrainConfig) -> Embeddings:
    """Pre-train on the views of [D-W, D) read from the event store with Spark."""
    views = read_window_views(spark, events_dir, run_date, window_days)
    emb = pretrain(spark, views, cfg)
    emb.sizes.update(run_date=str(run_date), window_days=int(window_days))
    return emb
