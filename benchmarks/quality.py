"""The paper-style quality table: LED vs baselines on held-out users (thin wrapper over `led bench quality`).

Data sets:
- ML-100K (``--ml100k PATH``, default ../shared/data/ml-100k): imported with
  ``data_sources.movielens.import_movielens`` into a temporary event store
  (every rating a view, rating >= 4 a click);
- a synthetic world (``data_sources.synthetic``) whose truth gives an oracle row.

For each data set it runs ``led bench quality`` with NO tuning flags (LED uses
the settings' defaults, exactly as the daily flow does; mean ± std over
``--seeds`` user splits), prints the table, the ratio LED-Project /
max(EASE, Mult-VAE) on NDCG@100 against the 0.97 target and the gain of the
fine-tuning over its own initialisation (``led_project - led_init``). It then
runs LED once more with the schedule the settings had before issue 16 (batch
512, constant Adam 1e-3, one validation per epoch, patience 3 epochs, at most
20 epochs; every other knob at today's defaults) and plots validation NDCG@100 against optimizer steps for both
(benchmarks/plots/quality_val_ndcg_vs_steps.png), and NDCG@100 per model
(benchmarks/plots/quality_per_model.png). Results go to benchmarks/results/quality.json.

    nice -n 10 .venv/bin/python benchmarks/quality.py            # full run
    nice -n 10 .venv/bin/python benchmarks/quality.py --quick    # 1 seed, core rows only
    .venv/bin/python benchmarks/quality.py --plot-from benchmarks/results/quality.json   # plots only
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "quality.json"
PLOT = ROOT / "benchmarks" / "plots" / "quality_val_ndcg_vs_steps.png"
MODELS_PLOT = ROOT / "benchmarks" / "plots" / "quality_per_model.png"
TARGET_RATIO = 0.97
FULL_MODELS = ["popularity", "ease", "mult_vae", "svd_average", "svd_average_bias", "led_init", "led_project",
               "led_project_ns", "led_project_css", "led_project_multi", "led_train_e", "led_no_projection"]
CORE_MODELS = ["popularity", "ease", "mult_vae", "svd_average", "led_init", "led_project"]


def legacy_flags(train_users: int) -> list[str]:
    """The pre-issue-16 schedule in the new loop: batch 512, constant Adam 1e-3, one validation per epoch,
    patience 3 epochs, at most 20 epochs (the other knobs, keep_prob included, stay at today's defaults)."""
    per_epoch = max(1, math.ceil(train_users / 512))
    return ["--batch-size", "512", "--learning-rate", "1e-3", "--lr-schedule", "constant", "--warmup-share", "0",
            "--epochs", "20", "--max-steps", "1000000", "--eval-every", str(per_epoch), "--patience", "3"]


def train_users(events: Path) -> int:
    """Training users of the held-out split (the same count for every seed)."""
    from models.data import heldout_split, load_events

    views, clicks = load_events(events)
    return len(heldout_split(views, clicks, 1000).train)


def bench(events: Path, seeds: int, models: list[str], extra: list[str]) -> dict:
    cmd = [sys.executable, "-m", "cli.main", "bench", "quality", "--events", str(events), "--seeds", str(seeds),
           "--models", ",".join(models), *extra]
    print("$ led " + " ".join(cmd[3:]), flush=True)
    env = os.environ | {"TF_CPP_MIN_LOG_LEVEL": "2", "TF_ENABLE_ONEDNN_OPTS": "0", "SPARK_LOCAL_IP": "127.0.0.1"}
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as tmp:
        out = Path(tmp.name)
    start = time.perf_counter()
    proc = subprocess.run([*cmd, "--json-out", str(out)], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"led bench quality failed ({proc.returncode})")
    table = "\n".join(proc.stdout.strip().splitlines()[:-1])
    print(table, flush=True)
    result = json.loads(out.read_text())
    out.unlink()
    result["table"] = table
    result["wall_seconds"] = time.perf_counter() - start
    return result


def verdict(models: dict, legacy: dict | None) -> dict:
    best_baseline = max(models[m]["ndcg@100"] for m in ("ease", "mult_vae") if m in models)
    led = models["led_project"]
    out = {"led_project_ndcg@100": led["ndcg@100"], "led_project_ndcg@100_std": led["ndcg@100_std"],
           "best_of_ease_mult_vae": best_baseline, "ratio": led["ndcg@100"] / best_baseline,
           "target_ratio": TARGET_RATIO, "meets_target": led["ndcg@100"] >= TARGET_RATIO * best_baseline}
    print(f"LED-Project NDCG@100 {led['ndcg@100']:.4f} ± {led['ndcg@100_std']:.4f} / max(EASE, Mult-VAE) "
          f"{best_baseline:.4f} = {out['ratio']:.3f} (target >= {TARGET_RATIO}: "
          f"{'met' if out['meets_target'] else 'NOT met'})", flush=True)
    if "led_init" in models:
        init = models["led_init"]
        out |= {"led_init_ndcg@100": init["ndcg@100"], "gain_ndcg@100": led["ndcg@100"] - init["ndcg@100"],
                "gain_recall@20": led["recall@20"] - init["recall@20"]}
        print(f"gain over the initialisation: NDCG@100 {init['ndcg@100']:.4f} -> {led['ndcg@100']:.4f} "
              f"({out['gain_ndcg@100']:+.4f}), Recall@20 {init['recall@20']:.4f} -> {led['recall@20']:.4f}",
              flush=True)
    steps = [i["best_step"] for i in led["info"]]
    out["best_steps"], out["steps_run"] = steps, [i["steps"] for i in led["info"]]
    out["batch_size"] = led["info"][0]["schedule"]["batch_size"]
    if legacy is not None:
        old = legacy["models"]["led_project"]
        out |= {"old_defaults_ndcg@100": old["ndcg@100"], "old_defaults_ndcg@100_std": old["ndcg@100_std"],
                "old_defaults_ratio": old["ndcg@100"] / best_baseline,
                "old_defaults_best_steps": [i["best_step"] for i in old["info"]]}
        print(f"old defaults: NDCG@100 {old['ndcg@100']:.4f} ± {old['ndcg@100_std']:.4f} "
              f"(ratio {out['old_defaults_ratio']:.3f}, best steps {out['old_defaults_best_steps']})", flush=True)
    return out


def plot_curves(datasets: dict, out: Path) -> Path:
    """Validation NDCG@100 against optimizer steps, old vs new defaults, one panel per data set."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n, r in datasets.items() if "legacy" in r]
    fig, axes = plt.subplots(1, len(names), figsize=(6 * len(names), 4.2), squeeze=False)
    for ax, name in zip(axes[0], names):
        for label, result, style in (("new defaults", datasets[name], "-"),
                                     ("old defaults", datasets[name]["legacy"], "--")):
            for k, info in enumerate(result["models"]["led_project"]["info"]):
                rows = [h for h in info["history"] if "val_ndcg@100" in h]
                ax.plot([h["step"] for h in rows], [h["val_ndcg@100"] for h in rows], style,
                        color=f"C{k}", label=f"{label}, seed {1000 + k}", alpha=0.85)
        ax.set_xscale("symlog", linthresh=10)
        ax.set_xlabel("optimizer steps (step 0 = the initialisation)")
        ax.set_ylabel("validation NDCG@100")
        ax.set_title(name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_models(datasets: dict, out: Path) -> Path:
    """NDCG@100 per model (mean ± std over the seeds), one panel per data set, LED rows highlighted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(datasets), figsize=(6 * len(datasets), 4.6), squeeze=False)
    for ax, (name, result) in zip(axes[0], datasets.items()):
        rows = sorted(result["models"].items(), key=lambda kv: kv[1]["ndcg@100"])
        labels = [m for m, _ in rows]
        ax.barh(labels, [r["ndcg@100"] for _, r in rows], xerr=[r.get("ndcg@100_std", 0) for _, r in rows],
                color=["C1" if m.startswith("led_project") else "C0" if m.startswith("led") else "C7"
                       for m in labels])
        best = max(result["models"][m]["ndcg@100"] for m in ("ease", "mult_vae") if m in result["models"])
        ax.axvline(TARGET_RATIO * best, color="k", ls=":", lw=0.8, label=f"{TARGET_RATIO} x max(EASE, Mult-VAE)")
        ax.set_xlabel(f"NDCG@100 (mean ± std over {result['models'][labels[-1]].get('seeds', 1)} seeds)")
        ax.set_title(name)
        ax.legend(fontsize=7, loc="lower right")
        ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def run_dataset(name: str, store: Path, seeds: int, models: list[str], with_legacy: bool) -> dict:
    res = bench(store, seeds, models, [])
    legacy = None
    if with_legacy:
        print(f"== {name}: LED with the old defaults ==", flush=True)
        legacy = bench(store, seeds, ["ease", "led_init", "led_project"], legacy_flags(train_users(store)))
        res["legacy"] = legacy
    res["verdict"] = verdict(res["models"], legacy)
    return res


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ml100k", type=Path, default=ROOT.parent / "shared" / "data" / "ml-100k")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="1 seed, core rows only")
    parser.add_argument("--core", action="store_true", help="core rows only (no loss/variant ablations)")
    parser.add_argument("--no-legacy", action="store_true", help="skip the old-defaults run and the plot")
    parser.add_argument("--skip-synthetic", action="store_true")
    parser.add_argument("--synthetic-users", type=int, default=3000)
    parser.add_argument("--synthetic-items", type=int, default=1000)
    parser.add_argument("--synthetic-days", type=int, default=30)
    parser.add_argument("--plot-from", type=Path, help="only redraw the plots from a results JSON")
    args = parser.parse_args()
    if args.plot_from:
        datasets = json.loads(args.plot_from.read_text())["datasets"]
        print(f"written {plot_models(datasets, MODELS_PLOT)}", flush=True)
        if any("legacy" in r for r in datasets.values()):
            print(f"written {plot_curves(datasets, PLOT)}", flush=True)
        return 0
    seeds = 1 if args.quick else args.seeds
    models = CORE_MODELS if (args.quick or args.core) else FULL_MODELS
    results: dict = {"seeds": seeds, "led_flags": [], "load_average_start": load_average(), "datasets": {}}

    from data_sources.movielens import import_movielens
    from data_sources.synthetic import WorldConfig, generate

    with tempfile.TemporaryDirectory(prefix="led-quality-") as tmp:
        if args.ml100k.exists():
            store = Path(tmp) / "ml100k"
            print(f"== ML-100K ({args.ml100k}) ==", flush=True)
            imported = import_movielens(args.ml100k, store)
            results["datasets"]["ml-100k"] = run_dataset("ML-100K", store, seeds, models, not args.no_legacy)
            results["datasets"]["ml-100k"]["import"] = imported
        else:
            print(f"ML-100K not found at {args.ml100k}: skipped", flush=True)
        if not args.skip_synthetic:
            world = WorldConfig(users=args.synthetic_users, items=args.synthetic_items, days=args.synthetic_days,
                                seed=7)
            store = Path(tmp) / "synthetic"
            print(f"== synthetic world ({world.users} users, {world.items} items, {world.days} days) ==", flush=True)
            generated = generate(store, world)
            res = run_dataset("synthetic world", store, seeds, ["oracle", *models], not args.no_legacy)
            results["datasets"]["synthetic"] = res | {"generated": generated}
    results["load_average_end"] = load_average()
    if not args.no_legacy and results["datasets"]:
        results["plot"] = str(plot_curves(results["datasets"], PLOT).relative_to(ROOT))
        print(f"plot written to {PLOT}", flush=True)
    if results["datasets"]:
        results["models_plot"] = str(plot_models(results["datasets"], MODELS_PLOT).relative_to(ROOT))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2, default=str))
    print(f"results written to {RESULTS} (load average {results['load_average_start']} -> "
          f"{results['load_average_end']})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
