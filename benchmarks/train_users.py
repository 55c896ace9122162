"""Benchmark: fine-tuning quality, time and memory against the number of training users (max_train_users).

LED has no per-user parameters, so P and b can be fitted on a bounded sample of the
window's clicking users. On the ML-20M-size synthetic window (the world of
``benchmarks/daily.py --scales full``: 138k users, 20k items, ~10M views in 37 days),
this pre-trains once and fine-tunes with the flow's own stages
(``models.pipeline``) at each sample size, every other knob at its default. Printed
per size: NDCG@100 / Recall@20 on the evaluation day's clicks (the same eval set for
every size), its ratio to the all-users model, seconds and peak RSS (this process,
``infra.resources``) of the stage. Results: benchmarks/results/train_users.json,
plot benchmarks/plots/train_users.png.

    .venv/bin/python benchmarks/train_users.py                        # 10k, 30k, 100k, all
    .venv/bin/python benchmarks/train_users.py --sizes 5000,20000,0 --scale 0.25
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "results" / "train_users.json"
PLOT = ROOT / "benchmarks" / "plots" / "train_users.png"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10000,30000,100000,0", help="max_train_users values (0 = all users)")
    ap.add_argument("--scale", type=float, default=1.0, help="share of ML-20M size (1.0 = 138k users)")
    ap.add_argument("--window", type=int, default=37)
    args = ap.parse_args()

    from data_sources.synthetic import WorldConfig, generate
    from infra.resources import PeakRss
    from infra.settings import get_settings
    from models.led import LedConfig
    from models.pipeline import fine_tune_stage, plan_window, pretrain_stage
    from models.pretrain import PretrainConfig

    home = Path(tempfile.mkdtemp(prefix="led-bench-users-"))
    users, items = int(138_000 * args.scale), int(20_000 * args.scale)
    t0 = time.perf_counter()
    world = generate(home / "events", WorldConfig(users=users, items=items, days=args.window + 1, seed=1))
    print(f"world: {users:,} users, {items:,} items, {args.window + 1} days in {time.perf_counter() - t0:.0f} s",
          flush=True)
    run_date = dt.date.fromisoformat(str(world["end"]))
    settings = get_settings().with_overrides(events_dir=home / "events", window_days=args.window,
                                             work_dir=home / "work")
    plan = plan_window(settings, run_date)
    pretrained = pretrain_stage(settings, plan, PretrainConfig.from_settings(settings))
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        config = LedConfig.from_settings(settings, max_train_users=size)
        t0 = time.perf_counter()
        with PeakRss() as peak:
            trained = fine_tune_stage(settings, plan, pretrained, config)
        row = {"max_train_users": size, "seconds": round(time.perf_counter() - t0, 1), "peak_rss_mb": peak.mb,
               "ndcg@100": trained.metrics["ndcg@100"], "recall@20": trained.metrics["recall@20"],
               "initialisation_ndcg@100": trained.initialisation_metrics["ndcg@100"],
               "popularity_ndcg@100": trained.popularity_metrics["ndcg@100"],
               "best_step": trained.best_step, "load_average": round(os.getloadavg()[0], 2)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    full = next((r for r in rows if r["max_train_users"] == 0), rows[-1])
    for r in rows:
        r["ndcg_ratio_to_all"] = round(r["ndcg@100"] / full["ndcg@100"], 4)
        r["seconds_ratio_to_all"] = round(r["seconds"] / full["seconds"], 3)
    print("\nmax_train_users | NDCG@100 | ratio to all | Recall@20 | seconds | ratio | peak RSS MB")
    for r in rows:
        print(f"{r['max_train_users'] or 'all':>15} | {r['ndcg@100']:.4f} | {r['ndcg_ratio_to_all']:.3f} | "
              f"{r['recall@20']:.4f} | {r['seconds']:7.1f} | {r['seconds_ratio_to_all']:.2f} | {r['peak_rss_mb']}")
    result = {"users": users, "items": items, "window_days": args.window, "window_views": plan.views, "rows": rows}
    RESULTS.write_text(json.dumps(result, indent=2))
    print(f"plot: {plot(rows, users)}")


def plot(rows: list[dict], users: int) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [r["max_train_users"] or users for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(xs, [r["ndcg@100"] for r in rows], "o-", label="LED fine-tuned")
    a.axhline(rows[0]["initialisation_ndcg@100"], ls="--", c="grey", label="initialisation")
    a.axhline(rows[0]["popularity_ndcg@100"], ls=":", c="k", label="popularity")
    a.set_xscale("log")
    a.set_xlabel("training users (sample)")
    a.set_ylabel("NDCG@100, evaluation day")
    a.legend(fontsize=8)
    b.plot(xs, [r["seconds"] for r in rows], "o-", label="seconds")
    b.set_xscale("log")
    b.set_xlabel("training users (sample)")
    b.set_ylabel("fine-tune stage seconds")
    b2 = b.twinx()
    b2.plot(xs, [r["peak_rss_mb"] for r in rows], "s--", c="tab:red", label="peak RSS MB")
    b2.set_ylabel("peak RSS MB", color="tab:red")
    fig.suptitle("fine-tuning on a sample of users (ML-20M-size synthetic window)")
    fig.tight_layout()
    PLOT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(PLOT, dpi=100)
    plt.close(fig)
    return PLOT


if __name__ == "__main__":
    main()
