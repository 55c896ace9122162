"""Benchmark: fold-in of new items between retrains on a churning synthetic world.

For each run date t of the measured days (docs/architecture.md, "Fold-in of new items"):

- the live model is pre-trained for run date t (views of [t-W, t), Spark, models.pretrain);
- ``models.foldin.fold_in`` adds the items launched since, from the views of day t;
- the next full retrain is the pre-training for run date t+1 (views of [t+1-W, t+1), the same
  days the fold-in saw) — the vectors fold-in tries to anticipate.

Scored on the clicks of day t+1 (the day the folded-in slot serves), in the same process:

- coverage: share of the clicks on items the model can score (live, live + fold-in, retrain);
- recall@20 of the clicks: all clicks, and the clicks on folded-in items, for live + fold-in and
  the retrain (as it is, and with fold-in's biases for the new items, which compares the vectors
  alone); users' inputs are their views of [t+1-W, t+1), scored by ``models.scoring`` with
  ``V = E`` and the log-popularity bias (``models.led.initial_bias``; fold-in's bias rule on top)
  so both sides are scored alike, without a fine-tuning;
- neighbour overlap@20 between an item's folded-in vector and its retrained one (neighbours among
  the items both embed), and the share of its 10 nearest neighbours of its true topic (ground
  truth) for both, against the topic's share of the catalog (chance).

    .venv/bin/python benchmarks/foldin.py                         # 4 measured days, ~5 min
    .venv/bin/python benchmarks/foldin.py --users 3000 --days 3   # quicker
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from data_sources.synthetic import WorldConfig, generate  # noqa: E402
from infra import events  # noqa: E402
from models.export import ExportedModel  # noqa: E402
from models.foldin import fold_in  # noqa: E402
from models.led import initial_bias  # noqa: E402
from models.pretrain import Embeddings, PretrainConfig, pretrain_window  # noqa: E402
from models.scoring import top_k  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "foldin.json"
START = dt.date(2026, 1, 1)
K = 20


def svd_average(emb: Embeddings) -> ExportedModel:
    """The LED initialisation ``V = E``, ``b = log-popularity``: scores both sides alike."""
    return ExportedModel(emb.item_ids.astype(str), emb.E, initial_bias(emb.counts), emb.counts, {})


def with_biases_of(model: ExportedModel, source: ExportedModel, items: list[str]) -> ExportedModel:
    """``model`` with ``source``'s biases for ``items``: the retrain's vectors judged with fold-in's bias,
    so the new-item recall compares the vectors alone (a window of 1-day-old items has tiny counts)."""
    b = model.b.copy()
    for item in items:
        if item in model.index_of:
            b[model.index_of[item]] = source.b[source.index_of[item]]
    return ExportedModel(model.item_ids, model.V, b, model.counts, {})


def coverage(model: ExportedModel, clicked: np.ndarray) -> float:
    known = set(model.item_ids.tolist())
    return float(np.mean([i in known for i in clicked]))


def user_inputs(world: Path, day: dt.date, window: int) -> dict[str, set[str]]:
    views = events.read_window(world, "views", day, window)
    out: dict[str, set[str]] = {}
    for u, i in zip(views.column("user_id").to_pylist(), views.column("item_id").to_pylist()):
        out.setdefault(u, set()).add(i)
    return out


def recall_at_k(model: ExportedModel, inputs: dict[str, set[str]], clicks: dict[str, set[str]],
                only: set[str] | None = None) -> tuple[float, int]:
    """Mean recall@K over users with a (new, not already viewed) click target; (recall, users)."""
    rows, targets = [], []
    for user, clicked in clicks.items():
        wanted = clicked - inputs.get(user, set())
        if only is not None:
            wanted &= only
        known = model.known_positions(inputs.get(user, ()))
        if wanted and known:
            rows.append(np.asarray(known, np.int64))
            targets.append(wanted)
    if not rows:
        return float("nan"), 0
    tops = top_k(model.V, model.b, model.counts, rows, K)
    ids = model.item_ids
    hits = [len(set(ids[t].tolist()) & want) / min(K, len(want)) for t, want in zip(tops, targets)]
    return float(np.mean(hits)), len(rows)


def neighbours(E: np.ndarray, rows: np.ndarray, pool: np.ndarray, k: int) -> list[set[int]]:
    """Per row, the k nearest pool positions by cosine (E rows are unit norm)."""
    sims = E[rows] @ E[pool].T
    return [set(pool[np.argsort(-s)[:k]].tolist()) for s in sims]


def compare_vectors(enlarged: ExportedModel, retrain: Embeddings, folded: list[str],
                    topic: dict[str, int]) -> dict:
    """Neighbour overlap@20 of folded-in vs retrained vectors, and topic precision@10 of both."""
    index_f, index_r = enlarged.index_of, {str(i): r for r, i in enumerate(retrain.item_ids)}
    both = [i for i in folded if i in index_r]
    pool = [i for i in enlarged.item_ids[:len(enlarged.item_ids) - len(folded)] if i in index_r]
    if not both or not pool:
        return {"compared_items": 0}
    Ef = enlarged.V / np.maximum(np.linalg.norm(enlarged.V, axis=1, keepdims=True), 1e-12)
    rows_f = np.array([index_f[i] for i in both])
    pool_f = np.array([index_f[i] for i in pool])
    rows_r = np.array([index_r[i] for i in both])
    pool_r = np.array([index_r[i] for i in pool])
    to_id_f = {index_f[i]: i for i in pool}
    to_id_r = {index_r[i]: i for i in pool}
    nf = [{to_id_f[p] for p in s} for s in neighbours(Ef, rows_f, pool_f, K)]
    nr = [{to_id_r[p] for p in s} for s in neighbours(retrain.E, rows_r, pool_r, K)]
    pool_topics = np.array([topic[i] for i in pool])

    def precision(sets: list[set[str]]) -> float:
        return float(np.mean([np.mean([topic[j] == topic[i] for j in s]) for i, s in zip(both, sets)]))

    top10_f = [{to_id_f[p] for p in s} for s in neighbours(Ef, rows_f, pool_f, 10)]
    top10_r = [{to_id_r[p] for p in s} for s in neighbours(retrain.E, rows_r, pool_r, 10)]
    return {"compared_items": len(both),
            "neighbour_overlap@20": float(np.mean([len(a & b) / K for a, b in zip(nf, nr)])),
            "topic_precision@10_foldin": precision(top10_f), "topic_precision@10_retrain": precision(top10_r),
            "topic_chance": float(np.mean([np.mean(pool_topics == topic[i]) for i in both]))}


def measure_day(spark, world: Path, t: dt.date, window: int, cfg: PretrainConfig, topic: dict[str, int]) -> dict:
    t0 = time.perf_counter()
    live_emb = pretrain_window(spark, world, t, window, cfg)
    retrain_emb = pretrain_window(spark, world, t + dt.timedelta(days=1), window, cfg)
    pretrain_s = time.perf_counter() - t0
    live = svd_average(live_emb)
    t0 = time.perf_counter()
    result = fold_in(live, live_emb, events.read_window(world, "views", t + dt.timedelta(days=1), 1),
                     cfg, days_since=1, train_days=window)
    foldin_s = time.perf_counter() - t0
    retrain = svd_average(retrain_emb)
    next_day = t + dt.timedelta(days=1)
    clicks_t = events.read_day(world, "clicks", next_day)
    clicked = np.asarray(clicks_t.column("item_id").to_pylist(), dtype=str)
    clicks: dict[str, set[str]] = {}
    for u, i in zip(clicks_t.column("user_id").to_pylist(), clicked.tolist()):
        clicks.setdefault(u, set()).add(i)
    inputs = user_inputs(world, next_day, window)
    folded = set(result.items)
    row = {"run_date": t.isoformat(), "clicks_scored_on": next_day.isoformat(), "clicks": int(len(clicked)),
           "folded_in": len(result.items), **{f"foldin_{k}": v for k, v in result.stats.items()},
           "coverage_live": coverage(live, clicked), "coverage_foldin": coverage(result.model, clicked),
           "coverage_retrain": coverage(retrain, clicked),
           "clicks_on_folded_in": float(np.mean([i in folded for i in clicked])),
           "seconds_foldin": round(foldin_s, 3), "seconds_two_pretrains": round(pretrain_s, 1)}
    for name, model in (("live", live), ("foldin", result.model), ("retrain", retrain)):
        row[f"recall@20_{name}"], row[f"recall_users_{name}"] = recall_at_k(model, inputs, clicks)
    for name, model in (("foldin", result.model), ("retrain", retrain),
                        ("retrain_foldin_bias", with_biases_of(retrain, result.model, result.items))):
        row[f"recall@20_new_items_{name}"], row[f"recall_new_items_users_{name}"] = recall_at_k(
            model, inputs, clicks, folded)
    row |= compare_vectors(result.model, retrain_emb, result.items, topic)
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=5000)
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--item-churn", type=float, default=0.03)
    parser.add_argument("--window", type=int, default=7)
    parser.add_argument("--days", type=int, default=4, help="measured run dates")
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    from infra.settings import Settings
    from infra.spark import get_spark

    with tempfile.TemporaryDirectory(prefix="bench-foldin-") as tmp:
        world = Path(tmp) / "events"
        total_days = args.window + args.days + 1
        generate(world, WorldConfig(users=args.users, items=args.items, days=total_days, seed=args.seed,
                                    item_churn=args.item_churn))
        truth = pq.read_table(world / "truth" / "items.parquet", columns=["item_id", "topic"])
        topic = dict(zip(truth.column("item_id").to_pylist(), truth.column("topic").to_pylist()))
        spark = get_spark(Settings(spark_master="local[2]", spark_driver_memory="3g", spark_shuffle_partitions=4))
        cfg = PretrainConfig(dim=args.dim, min_count=5)
        rows = []
        try:
            for d in range(args.days):
                t = START + dt.timedelta(days=args.window + d)
                rows.append(measure_day(spark, world, t, args.window, cfg, topic))
                print(json.dumps(rows[-1]), flush=True)
        finally:
            spark.stop()
    summary = summarise(rows)
    report = {"config": vars(args) | {"out": str(args.out)}, "load_average": os.getloadavg(),
              "days": rows, "summary": summary}
    print(json.dumps(summary, indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1, default=str))
    return 0


def summarise(rows: list[dict]) -> dict:
    def mean(key: str) -> float:
        values = [r[key] for r in rows if key in r and np.isfinite(r[key])]
        return float(np.mean(values)) if values else float("nan")

    keys = ["coverage_live", "coverage_foldin", "coverage_retrain", "clicks_on_folded_in", "folded_in",
            "recall@20_live", "recall@20_foldin", "recall@20_retrain", "recall@20_new_items_foldin",
            "recall@20_new_items_retrain", "recall@20_new_items_retrain_foldin_bias", "neighbour_overlap@20", "topic_precision@10_foldin",
            "topic_precision@10_retrain", "topic_chance", "seconds_foldin"]
    out = {k: mean(k) for k in keys}
    out["uncovered_clicks_recovered"] = ((out["coverage_foldin"] - out["coverage_live"])
                                         / max(out["coverage_retrain"] - out["coverage_live"], 1e-12))
    out["new_item_recall_ratio_foldin_vs_retrain_vectors"] = (
        out["recall@20_new_items_foldin"] / max(out["recall@20_new_items_retrain_foldin_bias"], 1e-12))
    return out


if __name__ == "__main__":
    sys.exit(main())
