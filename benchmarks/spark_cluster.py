"""Benchmark: pre-training on local[*] vs a two-worker Spark standalone cluster, by configuration only.

For each scale (a `led generate` world holding that share of ML-20M in its window, as in
benchmarks/daily.py), `led pretrain` runs in a subprocess, as a user runs it, with
``LED_SPARK_MASTER=local[*]`` and with ``LED_SPARK_MASTER=spark://127.0.0.1:PORT`` of a
master and two workers (one core each) started on this machine from pyspark's jars
(infra/spark_cluster.py). Nothing else changes. Printed per scale: wall seconds of each command
(JVM start included) and of the pre-training itself, the ratio cluster / local (best of
``--repeats`` runs each, alternating which goes first), and the agreement
of the two embeddings (same items, singular values, item-item cosines: benchmarks/svd.py).

On a 2-core machine the cluster cannot be faster (the same two cores, plus executor JVMs and
shuffles over the network stack): the point is that it works, and what it costs.

    .venv/bin/python benchmarks/spark_cluster.py                     # small (0.1) and quarter (0.25), ~15 min
    .venv/bin/python benchmarks/spark_cluster.py --scales small --dim 64
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.daily import SCALES, led  # noqa: E402
from benchmarks.svd import agreement  # noqa: E402
from infra.spark_cluster import StandaloneCluster  # noqa: E402
from models.pretrain import Embeddings  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "spark_cluster.json"


def pretrain(env: dict, master: str, store: Path, run_date: str, window: int, dim: int, out: Path) -> dict:
    t0 = time.perf_counter()
    res = led(env | {"LED_SPARK_MASTER": master}, "pretrain", "--events", store, "--date", run_date,
              "--window", window, "--dim", dim, "--out", out)
    wall = time.perf_counter() - t0
    row = {"wall_seconds": round(wall, 1), "pretrain_seconds": res["timings"]["total"],
           "items": res["items"], "users": res["users"], "load_avg": round(os.getloadavg()[0], 2)}
    print(f"  {master:<28} wall {wall:6.1f} s   pre-training {row['pretrain_seconds']:6.1f} s   "
          f"load {row['load_avg']}", flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scales", default="small,quarter")
    ap.add_argument("--window", type=int, default=37, help="window days (37 days ~ 10M views at full scale)")
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--worker-memory", default="3g")
    ap.add_argument("--executor-memory", default="2g")
    ap.add_argument("--driver-memory", default="4g")
    ap.add_argument("--repeats", type=int, default=2, help="runs per master, in ABBA order; the best is compared")
    args = ap.parse_args()

    home = Path(tempfile.mkdtemp(prefix="led-bench-cluster-"))
    env = os.environ.copy() | {"LED_HOME": str(home), "LED_SPARK_DRIVER_MEMORY": args.driver_memory,
                               "LED_SPARK_EXECUTOR_MEMORY": args.executor_memory, "SPARK_LOCAL_IP": "127.0.0.1"}
    result = {"config": {"window_days": args.window, "dim": args.dim, "workers": args.workers,
                         "cores_per_worker": 1, "worker_memory": args.worker_memory,
                         "executor_memory": args.executor_memory, "driver_memory": args.driver_memory,
                         "cpus": os.cpu_count(), "load_avg_at_start": round(os.getloadavg()[0], 2)},
              "rows": []}
    with StandaloneCluster(home / "cluster", workers=args.workers, cores=1, memory=args.worker_memory) as cluster:
        for name in args.scales.split(","):
            scale = SCALES[name]
            store = home / f"events-{name}"
            gen = led(env, "generate", "--out", store, "--days", args.window + 1,
                      "--users", int(138_000 * scale), "--items", int(20_000 * scale), "--seed", 1)
            print(f"\n[{name}: scale {scale}, {gen['views']:,} views over {args.window + 1} days]", flush=True)
            masters = {"local": "local[*]", "cluster": cluster.master_url}
            runs = {label: [] for label in masters}
            for r in range(args.repeats):  # ABBA order: a load that drifts weighs on both sides alike
                for label in (("local", "cluster") if r % 2 == 0 else ("cluster", "local")):
                    runs[label].append(pretrain(env, masters[label], store, gen["end"], args.window, args.dim,
                                                home / f"{name}-{label}-{r}"))
            ref, emb = (Embeddings.load(home / f"{name}-{label}-0") for label in ("local", "cluster"))
            agree = agreement({"item_ids": ref.item_ids, "E": ref.E, "s": ref.singular_values}, emb)
            best = {label: {k: min(run[k] for run in rs) for k in ("wall_seconds", "pretrain_seconds")}
                    for label, rs in runs.items()}
            row = {"scale": name, "share_of_ml20m": scale, "views": gen["views"], "items": runs["local"][0]["items"],
                   "runs": runs, "best": best, "agreement": agree,
                   "cluster_over_local_wall": round(best["cluster"]["wall_seconds"] / best["local"]["wall_seconds"], 2),
                   "cluster_over_local_pretrain": round(best["cluster"]["pretrain_seconds"]
                                                        / best["local"]["pretrain_seconds"], 2)}
            print(f"  cluster / local (best of {args.repeats}): wall {row['cluster_over_local_wall']}x, pre-training "
                  f"{row['cluster_over_local_pretrain']}x; agreement {agree}", flush=True)
            result["rows"].append(row)
        result["applications_on_the_master"] = [{k: a[k] for k in ("id", "name", "cores", "state")}
                                                for a in cluster.status()["completedapps"]]
    result["load_avg_at_end"] = round(os.getloadavg()[0], 2)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2))
    print(f"\nwritten {RESULTS}")


if __name__ == "__main__":
    main()
