"""The held-out-user quality table (Mult-VAE strong generalisation) on any event store.

For each seed: split users (``models.data.heldout_split``: clicks are the
positives, 20% test users, 10% validation users, 80/20 fold-in/targets),
pre-train E with the Spark PMI + SVD stage on the *training users'* clicks
(never a held-out user's events: their targets would leak into E), then fit
and evaluate every requested model with the same scorer-based evaluation.

Model names:

- ``popularity``, ``ease``, ``mult_vae`` (models.baselines);
- ``svd_average`` (E only, ``P = I``, no bias), ``svd_average_bias`` (with the
  log-popularity bias);
- ``led_init``: LED-Project's initialisation (``P = init_scale·I``, ``b`` =
  log-popularity) before any optimizer step, so ``led_project - led_init`` is
  what the fine-tuning added;
- ``led_project`` (the configured loss), ``led_project_<loss>`` for another
  loss (bpr, ns, css, multi), ``led_train_e`` and ``led_no_projection``
  (ablations);
- ``led_project_views``: E pre-trained on the training users' views and
  clicks (the second feedback), fine-tuned exactly like ``led_project``.

- ``oracle`` (synthetic worlds only, from ``truth/``): ranks by the generating
  model's expected clicks ``P(view) · P(click | view)`` with the true tastes,
  an (approximate) upper bound for every learned model.

``infer_ms_per_user`` is exact scoring of the whole catalog plus the top-100
ranking, per test user, for every model.
"""
from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from models.data import HeldoutSplit, evaluate_scorer, heldout_split, load_events

DEFAULT_MODELS = ("popularity", "ease", "mult_vae", "svd_average", "led_init", "led_project")
METRICS = ("recall@20", "recall@50", "ndcg@100", "coverage@20")


def known_model(name: str) -> bool:
    from models.led import LOSSES

    fixed = {"oracle", "popularity", "ease", "mult_vae", "svd_average", "svd_average_bias", "led_init", "led_project",
             "led_train_e", "led_no_projection", "led_project_views"}
    return name in fixed or (name.startswith("led_project_") and name[len("led_project_"):] in LOSSES)


@dataclass
class QualityConfig:
    seeds: int = 3
    models: Sequence[str] = DEFAULT_MODELS
    led: object = None  # models.led.LedConfig
    pretrain_overrides: dict = field(default_factory=dict)
    mult_vae: object = None  # models.baselines.MultVaeConfig
    min_positives: int = 5


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _embeddings_for(spark, split: HeldoutSplit, views, clicks, seed: int, dim: int, overrides: dict,
                    with_views: bool):
    """Pre-train E on the training users' clicks (and views) and align it to the split's catalog."""
    import types

    import pyarrow as pa
    import pyarrow.compute as pc

    from models.led import align_embeddings
    from models.pretrain import PretrainConfig, pretrain, pretrain_local

    train_users = pa.array(split.train.user_ids.tolist(), pa.string())
    tables = [clicks.select(["user_id", "item_id", "ts"])]
    if with_views:
        tables.append(views.select(["user_id", "item_id", "ts"]))
    events = pa.concat_tables(tables)
    events = events.filter(pc.is_in(events.column("user_id"), value_set=train_users))
    cfg = PretrainConfig(**({"dim": dim, "seed": seed} | overrides))
    if spark is None:  # the local engine (run_quality picks it as the daily flow would)
        emb = pretrain_local(events, cfg)
    else:
        emb = pretrain(spark, spark.createDataFrame(events.to_pandas()), cfg)
    E, found = align_embeddings(split.item_ids, emb.item_ids, emb.E)
    info = {"embedded_items": found, "catalog": len(split.item_ids), "explained_variance": emb.explained_variance}
    return types.SimpleNamespace(item_ids=split.item_ids, E=E, counts=split.train_counts), info


def oracle_scores(truth_dir: Path, split: HeldoutSplit) -> np.ndarray:
    """Expected clicks of every test user on every catalog item under the synthetic world's truth."""
    import json

    import pyarrow.parquet as pq

    world = json.loads((truth_dir / "world.json").read_text())
    items = pq.read_table(truth_dir / "items.parquet").to_pandas().set_index("item_id")
    users = pq.read_table(truth_dir / "users.parquet").to_pandas().set_index("user_id")
    items = items.loc[list(split.item_ids)]
    theta = np.stack(users.loc[list(split.test.user_ids), "theta"].to_numpy()).astype(np.float64)
    phi = np.stack(items["phi"].to_numpy()).astype(np.float64)
    topic = items["topic"].to_numpy()
    pop = items["popularity"].to_numpy(dtype=np.float64)
    topic_mass = np.bincount(topic, weights=pop, minlength=theta.shape[1])
    explore = world["explore_share"]
    p_view = (1 - explore) * theta[:, topic] * (pop / topic_mass[topic])[None, :] + explore * pop[None, :] / pop.sum()
    logit = world["click_bias"] + world["click_affinity"] * theta @ phi.T + items["quality"].to_numpy()[None, :]
    return p_view / (1.0 + np.exp(-logit))


def _evaluate(name: str, score: Callable, split: HeldoutSplit, train_seconds: float, info: dict) -> dict:
    n = len(split.item_ids)
    start = time.perf_counter()
    metrics = evaluate_scorer(score, split.test, n)
    infer = (time.perf_counter() - start) * 1000 / max(1, len(split.test))
    row = {m: metrics[m] for m in METRICS} | {"train_seconds": train_seconds, "infer_ms_per_user": infer}
    return row | {"info": info}


def run_seed(spark, views, clicks, seed: int, cfg: QualityConfig, progress=_log,
             truth_dir: Path | None = None) -> dict[str, dict]:
    from models import baselines
    from models.led import LedConfig, fine_tune, initialisation, svd_average

    led_cfg: LedConfig = dataclasses.replace(cfg.led or LedConfig(), seed=seed)
    split = heldout_split(views, clicks, seed, min_positives=cfg.min_positives)
    progress(f"[quality] seed {seed}: {split.info}")
    n = len(split.item_ids)
    rows: dict[str, dict] = {}
    emb_cache: dict[bool, tuple] = {}

    def embeddings(with_views: bool):
        if with_views not in emb_cache:
            t0 = time.perf_counter()
            emb, info = _embeddings_for(spark, split, views, clicks, seed, led_cfg.dim,
                                        cfg.pretrain_overrides, with_views)
            emb_cache[with_views] = (emb, info | {"pretrain_seconds": time.perf_counter() - t0})
        return emb_cache[with_views]

    for name in cfg.models:
        progress(f"[quality] seed {seed}: {name}")
        if name == "oracle":
            if truth_dir is None or not (truth_dir / "world.json").is_file():
                raise ValueError("the oracle needs a synthetic world's truth/ folder next to views/ and clicks/")
            matrix = oracle_scores(truth_dir, split)
            cursor = iter(range(len(matrix)))
            # evaluate_scorer asks for the test users in order, batch by batch
            fitted = baselines.Fitted("oracle", lambda rows: matrix[[next(cursor) for _ in rows]], 0.0)
        elif name == "popularity":
            fitted = baselines.fit_popularity(split.train, n)
        elif name == "ease":
            fitted = baselines.fit_ease(split.train, split.valid, n)
        elif name == "mult_vae":
            vae_cfg = dataclasses.replace(cfg.mult_vae or baselines.MultVaeConfig(), seed=seed)
            fitted = baselines.fit_mult_vae(split.train, split.valid, n, vae_cfg, progress)
        else:
            emb, emb_info = embeddings(name == "led_project_views")
            if name.startswith("svd_average"):
                model = svd_average(emb, with_bias=name.endswith("_bias"), cfg=led_cfg)
                info = dict(emb_info)
            elif name == "led_init":
                model = initialisation(emb, led_cfg)
                info = dict(emb_info)
            else:
                overrides = {}
                if name == "led_train_e":
                    overrides["variant"] = "train_e"
                elif name == "led_no_projection":
                    overrides["variant"] = "no_projection"
                elif name.startswith("led_project_") and name != "led_project_views":
                    overrides["loss"] = name[len("led_project_"):]
                model = fine_tune(emb, split.train, split.valid, dataclasses.replace(led_cfg, **overrides),
                                  progress=progress)
                info = emb_info | {"trainable_params": model.trainable_params, "best_epoch": model.best_epoch,
                                   "best_step": model.best_step, "steps": model.steps, "schedule": model.schedule,
                                   "loss": model.config.loss, "variant": model.config.variant,
                                   "valid_initialisation": model.initial_valid, "valid_trained": model.valid_metrics,
                                   "history": model.history}
            # LED's own cost includes the pre-training it depends on
            seconds = model.train_seconds + emb_info["pretrain_seconds"]
            fitted = baselines.Fitted(name, model.scorer(), seconds, info)
        rows[name] = _evaluate(name, fitted.score, split, fitted.train_seconds, fitted.info)
        r = rows[name]
        progress(f"[quality] seed {seed}: {name} ndcg@100 {r['ndcg@100']:.4f} recall@20 {r['recall@20']:.4f} "
                 f"train {r['train_seconds']:.1f}s")
    return rows


def aggregate(per_seed: list[dict[str, dict]]) -> dict[str, dict]:
    """Mean (and std over seeds) of every figure, per model."""
    out: dict[str, dict] = {}
    for name in per_seed[0]:
        rows = [r[name] for r in per_seed if name in r]
        entry: dict = {}
        for key in (*METRICS, "train_seconds", "infer_ms_per_user"):
            values = np.array([r[key] for r in rows], dtype=np.float64)
            entry[key] = float(values.mean())
            entry[f"{key}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        entry["seeds"] = len(rows)
        entry["info"] = [r["info"] for r in rows]
        out[name] = entry
    return out


def format_table(models: dict[str, dict]) -> str:
    head = f"{'model':<22} {'Recall@20':>15} {'Recall@50':>15} {'NDCG@100':>15} {'cov@20':>7} " \
           f"{'train s':>8} {'ms/user':>8}"
    lines = [head, "-" * len(head)]
    for name, r in models.items():
        def cell(k):
            return f"{r[k]:.4f} ± {r[k + '_std']:.4f}"
        lines.append(f"{name:<22} {cell('recall@20'):>15} {cell('recall@50'):>15} {cell('ndcg@100'):>15} "
                     f"{r['coverage@20']:>7.3f} {r['train_seconds']:>8.1f} {r['infer_ms_per_user']:>8.3f}")
    return "\n".join(lines)


def run_quality(events_dir: Path, cfg: QualityConfig, spark=None, progress=_log) -> dict:
    """The whole table: ``{"models": {name: figures}, "data": ..., "config": ...}``."""
    from infra.settings import get_settings
    from models.pretrain import choose_engine

    views, clicks = load_events(Path(events_dir))
    needs_pretraining = any(m not in ("oracle", "popularity", "ease", "mult_vae") for m in cfg.models)
    settings = get_settings()
    engine = choose_engine(settings.pretrain_engine, views.num_rows + clicks.num_rows,
                           settings.pretrain_local_max_views)
    if needs_pretraining and spark is None and engine == "spark":  # same engine rule as the daily flow
        from infra.spark import get_spark

        spark = get_spark()
    per_seed = []
    for k in range(cfg.seeds):
        per_seed.append(run_seed(spark, views, clicks, 1000 + k, cfg, progress, Path(events_dir) / "truth"))
    led = cfg.led.as_dict() if cfg.led is not None else {}
    return {"models": aggregate(per_seed),
            "data": {"events": str(events_dir), "views": views.num_rows, "clicks": clicks.num_rows},
            "config": {"seeds": cfg.seeds, "led": led, "pretrain": cfg.pretrain_overrides,
                       "pretrain_engine": "spark" if spark is not None else "local",
                       "mult_vae": dataclasses.asdict(cfg.mult_vae) if cfg.mult_vae else None}}
