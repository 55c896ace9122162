"""Gate evaluation and registration costs.

1. Gate evaluation: ``models.scoring.top_k`` (one matrix product per chunk of users)
   against the baseline per-user ``ExportedModel.exact_topk`` loop, same model,
   same eval set, same process; checks both rank identically.
2. One ``register_export`` (run + artifacts + pyfunc + registration) and one
   ``gate`` on a local SQLite tracking store, at the same catalog size.
3. ``mlflow.pyfunc`` predict latency for one timeline (k=100) after loading
   ``models:/NAME@champion``.

    .venv/bin/python benchmarks/registry_gate.py [--items 20000 --dim 128 --users 2000]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def synthetic_model(folder: Path, items: int, dim: int, seed: int) -> Path:
    from models.export import save_model

    rng = np.random.default_rng(seed)
    ids = np.array([f"item{i}" for i in range(items)])
    V = rng.normal(size=(items, dim)).astype(np.float32) / np.sqrt(dim)
    counts = rng.zipf(1.3, size=items).clip(1, 10**6)
    b = np.log(counts / counts.sum()).astype(np.float32)
    return save_model(folder, ids, V, b, counts, {"d": dim, "loss": "synthetic", "trainable_params": dim * dim + items})


def synthetic_eval_set(items: int, users: int, seed: int):
    from models.evaluation import eval_set_from_json

    rng = np.random.default_rng(seed + 1)
    pick = lambda n: [f"item{i}" for i in rng.integers(0, items, n)]  # noqa: E731
    return eval_set_from_json({"inputs": [pick(int(rng.integers(2, 40))) for _ in range(users)],
                               "targets": [pick(int(rng.integers(1, 10))) for _ in range(users)],
                               "item_ids": [f"item{i}" for i in range(items)]}, name="synthetic")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=20000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--baseline-users", type=int, default=500, help="users timed with the per-user loop")
    args = parser.parse_args()

    from infra import registry
    from infra.settings import Settings
    from models import scoring
    from models.export import load_model
    from models.gate import gate
    from models.metrics import evaluate_rankings
    from models.registration import register_export

    results: dict = {"items": args.items, "dim": args.dim, "users": args.users}
    with tempfile.TemporaryDirectory(prefix="bench-registry-") as tmp:
        tmp = Path(tmp)
        model_dir = synthetic_model(tmp / "model", args.items, args.dim, seed=0)
        model = load_model(model_dir)
        eval_set = synthetic_eval_set(args.items, args.users, seed=0)
        sub = eval_set.timelines(args.baseline_users)

        t = time.perf_counter()
        loop = [model.exact_topk(x, 100)[0] for x in sub]
        loop_ms = (time.perf_counter() - t) / len(sub) * 1e3
        t = time.perf_counter()
        # the eval set's universe is the model's catalog here, so positions are the model's own
        positions = scoring.top_k(model.V, model.b, model.counts, eval_set.inputs.rows(), 100)
        batched = [[str(model.item_ids[i]) for i in row] for row in positions]
        batched_ms = (time.perf_counter() - t) / len(eval_set) * 1e3
        same = sum(a == b for a, b in zip(batched, loop)) / len(loop)
        metrics = evaluate_rankings(positions, eval_set.target_sets(), n_items=args.items)
        results["gate_eval"] = {"loop_ms_per_user": loop_ms, "batched_ms_per_user": batched_ms,
                                "speedup": loop_ms / batched_ms, "identical_rankings": same,
                                "ndcg@100": metrics["ndcg@100"]}
        print(f"gate eval  loop {loop_ms:.2f} ms/user  batched {batched_ms:.3f} ms/user  "
              f"speed-up x{loop_ms / batched_ms:.1f}  identical rankings {same:.0%}")

        settings = Settings(mlflow_tracking_uri=f"sqlite:///{tmp}/mlflow.db", mlflow_model_name="bench",
                            home=tmp)
        registry.connect(settings)
        t = time.perf_counter()
        info = register_export(settings, model_dir, "2026-01-01",
                               history=[{"epoch": e, "loss": 1 / e} for e in (1, 2, 3)])
        log_s = time.perf_counter() - t
        t = time.perf_counter()
        decision = gate(settings, info.model_version, eval_set)
        gate_s = time.perf_counter() - t
        import mlflow
        import pandas as pd

        t = time.perf_counter()
        served = mlflow.pyfunc.load_model("models:/bench@champion")
        load_s = time.perf_counter() - t
        frame = pd.DataFrame({"items": eval_set.timelines(1)})
        served.predict(frame, params={"k": 100})
        t = time.perf_counter()
        for _ in range(50):
            served.predict(frame, params={"k": 100})
        predict_ms = (time.perf_counter() - t) / 50 * 1e3
        results["sqlite"] = {"register_export_s": log_s, "gate_s": gate_s, "promoted": decision.promoted,
                             "pyfunc_load_s": load_s, "pyfunc_predict_ms": predict_ms}
        print(f"sqlite     register_export {log_s:.1f} s  gate {gate_s:.1f} s (first model, {args.users} users)  "
              f"pyfunc load {load_s:.2f} s  predict {predict_ms:.1f} ms/timeline (k=100)")

    out = ROOT / "benchmarks" / "results" / "registry_gate.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
