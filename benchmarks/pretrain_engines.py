"""Benchmark: the two pre-training engines on both sides of ``pretrain_local_max_views``.

The same synthetic views (the ML-20M-shaped world of ``benchmarks/svd.py``, scaled
down) go through ``models.pretrain.pretrain_local`` (pyarrow + scipy in this
process) and ``models.pretrain.pretrain`` (Spark, ``local[*]``) with the daily
defaults (d = 128). Per size: seconds, peak RSS (this process for the local
engine, which runs before the JVM starts; the process tree with the JVM for
Spark), Spark / local, and their agreement (same items, singular values,
item-item cosines). The threshold in the settings is read off this table:
where the local engine stops being faster, or its memory (the whole
co-occurrence in one process) stops being small.

    .venv/bin/python benchmarks/pretrain_engines.py                     # 0.02x .. 0.5x ML-20M
    .venv/bin/python benchmarks/pretrain_engines.py --scales 0.01,0.05  # quick
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from benchmarks.svd import START, agreement, world  # noqa: E402
from infra import events  # noqa: E402
from infra.resources import PeakRss  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "pretrain_engines.json"
PLOT = Path(__file__).resolve().parent / "plots" / "pretrain_engines.png"


def run_local(store: Path, run_date: str, days: int, cfg) -> tuple[dict, object]:
    from models.pretrain import pretrain_local

    with PeakRss() as peak:
        t0 = time.perf_counter()
        emb = pretrain_local(events.read_window(store, "views", run_date, days).select(["user_id", "item_id", "ts"]),
                             cfg)
        seconds = time.perf_counter() - t0
    return {"seconds": round(seconds, 2), "peak_rss_mb": peak.mb, "views": emb.sizes["views"],
            "items": len(emb.item_ids), "cooccurrence_nnz": emb.sizes["cooccurrence_nnz"]}, emb


def run_spark(spark, store: Path, run_date: str, days: int, cfg) -> tuple[dict, object]:
    from models.pretrain import pretrain_window

    with PeakRss() as peak:
        t0 = time.perf_counter()
        emb = pretrain_window(spark, store, run_date, days, cfg)
        seconds = time.perf_counter() - t0
    return {"seconds": round(seconds, 2), "peak_rss_mb": peak.mb}, emb


def plot(rows: list[dict], threshold: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    views = [r["views"] for r in rows]
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(10, 4))
    for engine, style in (("local", "o-"), ("spark", "s--")):
        ax_t.plot(views, [r[engine]["seconds"] for r in rows], style, label=engine)
        ax_m.plot(views, [r[engine]["peak_rss_mb"] / 1024 for r in rows], style, label=engine)
    for ax, label in ((ax_t, "seconds"), (ax_m, "peak RSS (GB)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.axvline(threshold, color="grey", lw=0.8, ls=":")
        ax.set_xlabel("training views")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    ax_t.set_title("pre-training time (d=128)")
    ax_m.set_title("peak memory")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scales", default="0.02,0.1,0.25,0.5", help="fractions of ML-20M users and items")
    ap.add_argument("--days", type=int, default=37)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--data", default="/tmp/led-bench-svd", help="where the synthetic stores are kept")
    args = ap.parse_args()

    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    from infra.settings import Settings
    from models.pretrain import PretrainConfig

    cfg = PretrainConfig(dim=args.dim)
    run_date = (np.datetime64(START) + np.timedelta64(args.days, "D")).astype(str)
    scales = [float(s) for s in args.scales.split(",")]
    stores = [world(Path(args.data), int(138_000 * s), max(int(20_000 * s), 200), args.days) for s in scales]
    settings = Settings()
    threshold = settings.pretrain_local_max_views
    load_start = os.getloadavg()[0]

    rows, local_embs = [], []
    for scale, store in zip(scales, stores):  # every local run before the JVM exists: its RSS is its own
        fig, emb = run_local(store, run_date, args.days, cfg)
        rows.append({"scale": scale, "views": fig.pop("views"), "local": fig})
        local_embs.append(emb)
        print(f"[local] {scale}x: {rows[-1]['views']:,} views, {fig['seconds']:.1f} s, {fig['peak_rss_mb']} MB",
              flush=True)

    from infra.spark import get_spark

    spark = get_spark(Settings(spark_master="local[*]", spark_shuffle_partitions=8), app_name="bench-engines")
    from models.pretrain import pretrain_window
    pretrain_window(spark, stores[0], (np.datetime64(START) + np.timedelta64(1, "D")).astype(str), 1,
                    PretrainConfig(dim=8, power_iters=0))  # JVM warm-up, not timed
    for row, store, emb_local in zip(rows, stores, local_embs):
        fig, emb = run_spark(spark, store, run_date, args.days, cfg)
        base = {"item_ids": emb.item_ids, "s": emb.singular_values, "E": emb.E}
        row["spark"] = fig
        row["spark_over_local"] = round(fig["seconds"] / row["local"]["seconds"], 2)
        row["agreement"] = agreement(base, emb_local)
        print(f"[spark] {row['scale']}x: {fig['seconds']:.1f} s, {fig['peak_rss_mb']} MB, "
              f"spark/local {row['spark_over_local']:.2f}x, agreement {row['agreement']}", flush=True)
    spark.stop()

    print("\n| scale | training views | local s | local peak MB | Spark s | Spark peak MB | Spark / local |"
          " max rel diff of singular values |\n|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['scale']}x | {r['views']:,} | {r['local']['seconds']:.1f} | {r['local']['peak_rss_mb']:,} | "
              f"{r['spark']['seconds']:.1f} | {r['spark']['peak_rss_mb']:,} | {r['spark_over_local']:.1f}x | "
              f"{r['agreement']['singular_values_max_rel_diff']:.1e} |")
    print(f"threshold pretrain_local_max_views = {threshold:,}; load average {load_start:.2f} -> "
          f"{os.getloadavg()[0]:.2f}")
    RESULTS.write_text(json.dumps({"dim": args.dim, "days": args.days, "threshold": threshold, "rows": rows,
                                   "cpus": os.cpu_count(), "load_avg": [load_start, os.getloadavg()[0]]},
                                  indent=2))
    plot(rows, threshold, PLOT)
    print(f"written {RESULTS} and {PLOT}")


if __name__ == "__main__":
    main()
