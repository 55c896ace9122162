"""Benchmark: wall time and peak memory per stage of one daily run at several scales: the cost curve.

Each scale is a synthetic world (the same generator as `led generate`) whose
window of ``--window`` days holds the given multiple of ML-20M's size (138k users,
20k items, ~10M views at ``full`` = 1x; users, items and events scale together:
``4x`` is 552k users, 80k items, ~40M views). The daily flow runs once per scale
through the real local stack (Prefect, MLflow, moto S3), started by this script under
a temporary LED_HOME on free ports and stopped at the end. Per stage it records
seconds and peak RSS (the flow process and its Spark JVM, ``infra.resources``),
and between consecutive scales the slope per doubling of the events (time ratio
divided by events ratio: above 1 a stage grows faster than its input).

Targets (issue 17): 4x completes within 24 GB; the whole day at 4x under 30 minutes
on 2 cores; no stage's time grows faster than its input (issue 8: full scale at most
20 minutes).

    .venv/bin/python benchmarks/daily.py --scales full,2x,4x --out daily_scale.json   # the cost curve
    .venv/bin/python benchmarks/daily.py --scales small,quarter       # quicker
    .venv/bin/python benchmarks/daily.py --plot-from benchmarks/results/daily_scale.json   # redraw only

Every run draws ``results/daily_stages.png`` (seconds per stage, stacked, per scale) and
``results/daily_loglog.png`` (seconds per stage against window views, log-log).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from infra.stack import free_port  # noqa: E402

SCALES = {"small": 0.1, "quarter": 0.25, "half": 0.5, "full": 1.0, "2x": 2.0, "4x": 4.0}
MAX_RSS_MB = 24 * 1024
MAX_4X_MINUTES = 30
STAGES = ("validate", "vocabulary", "pretrain", "fine-tune", "register", "index", "evaluate-and-gate",
          "refit-vocabulary", "refit-pretrain", "refit", "refit-register", "refit-index", "ship-refit", "push")
REFIT_STAGES = tuple(s for s in STAGES if "refit" in s)


def led(env: dict, *args: str) -> dict:
    proc = subprocess.run([sys.executable, "-m", "cli.main", *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    if proc.returncode not in (0, 1):
        raise SystemExit(f"led {args[0]} failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scales", default="small,quarter,half,full")
    ap.add_argument("--window", type=int, default=37, help="window days (37 days ~ 10M views at full scale)")
    ap.add_argument("--param", action="append", default=[], help="flow parameter override NAME=VALUE")
    ap.add_argument("--plot-from", type=Path, help="only redraw the plot from a results JSON (newest row per scale)")
    ap.add_argument("--out", default="daily.json", help="results file under benchmarks/results/")
    args = ap.parse_args()
    if args.plot_from:
        rows = rows_from(json.loads(args.plot_from.read_text()))
        print_pretrain(rows)
        print_pretrain_growth(pretrain_growth(rows))
        print(plot_stages(rows, PLOT), plot_loglog(rows, LOGLOG))
        return
    home = Path(tempfile.mkdtemp(prefix="led-bench-daily-"))
    env = os.environ.copy() | {"LED_HOME": str(home), "LED_MOTO_PORT": str(free_port()),
                               "LED_MLFLOW_PORT": str(free_port()), "LED_PREFECT_PORT": str(free_port()),
                               "LED_WINDOW_DAYS": str(args.window)}
    for key in ("LED_MLFLOW_TRACKING_URI", "LED_PREFECT_API_URL", "LED_S3_ENDPOINT_URL"):
        env.pop(key, None)
    led(env, "stack", "up")
    rows = []
    try:
        for name in args.scales.split(","):
            scale = SCALES[name]
            store = home / f"events-{name}"
            gen = led(env, "generate", "--out", store, "--days", args.window + 1, "--users", int(138_000 * scale),
                      "--items", int(20_000 * scale), "--seed", 1)
            run_date = gen["end"]  # the window [end - W, end) holds W full days
            t0 = time.perf_counter()
            res = led(env | {"LED_MLFLOW_MODEL_NAME": f"bench-{name}", "LED_S3_PREFIX": f"bench-{name}"},
                      "run", "--events", store, "--date", run_date, *sum((["--param", p] for p in args.param), []))
            wall = time.perf_counter() - t0
            row = {"scale": name, "users": int(138_000 * scale), "items": int(20_000 * scale),
                   "window_views": int(gen["views"] * args.window / (args.window + 1)), "state": res["state"],
                   "wall_seconds": round(wall, 1), "ndcg@100": res.get("ndcg@100"),
                   "initialisation_ndcg@100": res.get("initialisation_ndcg@100"),
                   "popularity_ndcg@100": res.get("popularity_ndcg@100"), "refit_shipped": res.get("refit_shipped")} | \
                  {s: (res.get("seconds") or {}).get(s) for s in STAGES}
            row["refit_seconds"] = round(sum(row[s] or 0 for s in REFIT_STAGES), 1)
            row["peak_rss_mb"] = res.get("peak_rss_mb") or {}
            row["max_rss_mb"] = max(row["peak_rss_mb"].values(), default=None)
            row["pretrain_detail"] = {"evaluated": pretrain_detail(res.get("evaluated_model_dir")),
                                      "refit": pretrain_detail(res.get("pushed_model_dir"))}
            row["load_average"] = round(os.getloadavg()[0], 2)
            rows.append(row)
            print(json.dumps(row), flush=True)
    finally:
        led(env, "stack", "down")
    print_table(rows)
    by = {r["scale"]: r for r in rows}
    result = {"rows": rows, "window_days": args.window}
    if "half" in by and "full" in by:
        result["doubling_ratio_half_to_full"] = round(by["full"]["wall_seconds"] / by["half"]["wall_seconds"], 2)
        print(f"\ndoubling the events (half → full): {result['doubling_ratio_half_to_full']}x (target <= 2.2)")
    if "full" in by:
        result["full_minutes"] = round(by["full"]["wall_seconds"] / 60, 1)
        print(f"full scale end to end: {result['full_minutes']} min (target <= 20)")
    result["slopes"] = slopes(rows)
    print_slopes(result["slopes"])
    print_pretrain(rows)
    result["pretrain_growth"] = pretrain_growth(rows)
    print_pretrain_growth(result["pretrain_growth"])
    if "4x" in by:
        result["4x_minutes"] = round(by["4x"]["wall_seconds"] / 60, 1)
        result["4x_max_rss_mb"] = by["4x"]["max_rss_mb"]
        print(f"4x end to end: {result['4x_minutes']} min (target <= {MAX_4X_MINUTES}); peak RSS "
              f"{result['4x_max_rss_mb']} MB (target <= {MAX_RSS_MB})")
    out = ROOT / "benchmarks" / "results" / args.out
    out.write_text(json.dumps(result, indent=2))
    print(f"plots: {plot_stages(rows, PLOT)} {plot_loglog(rows, LOGLOG)}")
    print(json.dumps(result))


def pretrain_detail(model_dir: str | None) -> dict:
    """The pre-training behind a model: its phases' seconds and its sizes (co-occurrence and PPMI
    non-zeros), from the model card's pre-training folder: what inside the stage grows with the input."""
    if not model_dir:
        return {}
    card = json.loads((Path(model_dir) / "model_card.json").read_text())
    meta = json.loads((Path(card["pretrain"]["path"]) / "pretrain.json").read_text())
    return {"timings": meta.get("timings", {}), "sizes": meta.get("sizes", {})}


PLOT = ROOT / "benchmarks" / "results" / "daily_stages.png"
LOGLOG = ROOT / "benchmarks" / "results" / "daily_loglog.png"


def slopes(rows: list[dict]) -> list[dict]:
    """Between consecutive scales: per stage, (time ratio) / (events ratio); 1.0 = linear in the input."""
    out = []
    for a, b in zip(rows, rows[1:]):
        growth = b["window_views"] / a["window_views"]
        per_stage = {s: round((b[s] / a[s]) / growth, 2) for s in (*STAGES, "wall_seconds")
                     if a.get(s) and b.get(s) and a[s] >= 1.0}  # sub-second stages: noise, not slope
        out.append({"from": a["scale"], "to": b["scale"], "events_ratio": round(growth, 2), "slope": per_stage})
    return out


def print_slopes(found: list[dict]) -> None:
    for step in found:
        worst = sorted(step["slope"].items(), key=lambda kv: -kv[1])[:4]
        print(f"{step['from']} -> {step['to']} (events x{step['events_ratio']}): time/events slope "
              + ", ".join(f"{k} {v}" for k, v in worst) + " (1.0 = linear)")


def print_pretrain(rows: list[dict]) -> None:
    """Per scale, the evaluated model's pre-training: phases' seconds and the sizes they work on."""
    print("\npre-training (evaluated model): seconds per phase and sizes")
    for r in rows:
        d = (r.get("pretrain_detail") or {}).get("evaluated") or {}
        t, z = d.get("timings", {}), d.get("sizes", {})
        print(f"{r['scale']:>8s}: " + ", ".join(f"{k} {v:.1f}s" for k, v in t.items() if isinstance(v, (int, float)))
              + f" | work {z.get('cooccurrence_work')}, co-occurrence nnz {z.get('cooccurrence_nnz')}, "
              f"PPMI nnz {z.get('pmi_nnz')}, items {z.get('items')}")


PRETRAIN_INPUTS = ("views", "cooccurrence_work", "cooccurrence_nnz", "pmi_nnz")


def pretrain_growth(rows: list[dict]) -> list[dict]:
    """Between consecutive scales, the growth of the pre-training's inputs (views; co-occurrence work
    Σ timeline²; co-occurrence and PPMI non-zeros) and of each phase's seconds: whether a phase
    outgrows the size it works on, or the size itself outgrows the events."""
    out = []
    for a, b in zip(rows, rows[1:]):
        da = (a.get("pretrain_detail") or {}).get("evaluated") or {}
        db = (b.get("pretrain_detail") or {}).get("evaluated") or {}
        if not da or not db:
            continue
        sizes = {k: round(db["sizes"][k] / da["sizes"][k], 2) for k in PRETRAIN_INPUTS if da["sizes"].get(k)}
        phases = {k: round(db["timings"][k] / da["timings"][k], 2) for k in da["timings"]
                  if da["timings"][k] >= 1.0 and k in db["timings"]}
        out.append({"from": a["scale"], "to": b["scale"], "size_growth": sizes, "seconds_growth": phases})
    return out


def print_pretrain_growth(found: list[dict]) -> None:
    for step in found:
        print(f"pre-training {step['from']} -> {step['to']}: sizes x " +
              ", ".join(f"{k} {v}" for k, v in step["size_growth"].items()) + "; seconds x " +
              ", ".join(f"{k} {v}" for k, v in step["seconds_growth"].items()))


def plot_loglog(rows: list[dict], out: Path) -> Path:
    """Seconds per stage (stages of at least a second somewhere) against window views, log-log."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [r["window_views"] for r in rows]
    fig, ax = plt.subplots(figsize=(8, 5))
    for k, stage in enumerate((*STAGES, "wall_seconds")):
        ys = [r.get(stage) for r in rows]
        if all(y and y > 0 for y in ys) and max(ys) >= 1.0:
            ax.plot(xs, ys, "o-", label=stage, color="k" if stage == "wall_seconds" else plt.cm.tab20(k % 20))
    if len(xs) > 1:  # a reference line of slope 1 through the first wall time
        ax.plot(xs, [rows[0]["wall_seconds"] * x / xs[0] for x in xs], ":", c="grey", label="linear (slope 1)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("window views")
    ax.set_ylabel("seconds")
    ax.set_title("one daily run: seconds per stage against events (log-log)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def rows_from(result) -> list[dict]:
    """Every ``rows`` list in a results JSON (also nested, e.g. a first run and a re-run), the last row
    of each scale winning, in scale order."""
    found: dict[str, dict] = {}

    def walk(node):
        if isinstance(node, dict):
            for row in node.get("rows", []):
                found[row["scale"]] = row
            for value in node.values():
                if isinstance(value, dict):
                    walk(value)

    walk(result)
    return [found[s] for s in SCALES if s in found]


def plot_stages(rows: list[dict], out: Path) -> Path:
    """Seconds per stage, stacked, one bar per scale (labelled with its window's views)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['scale']}\n{r['window_views'] / 1e6:.2f} M views" for r in rows]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    bottom = [0.0] * len(rows)
    for k, stage in enumerate(STAGES):
        heights = [float(r.get(stage) or 0.0) for r in rows]
        ax.bar(labels, heights, bottom=bottom, label=stage, color=plt.cm.tab20(k % 20))  # 14 stages: 10 colours repeat
        bottom = [b + h for b, h in zip(bottom, heights)]
    for x, total in enumerate(bottom):
        ax.text(x, total, f"{total:.0f} s", ha="center", va="bottom", fontsize=8)  # stage sum, not wall
    ax.set_ylabel("seconds")
    ax.set_title("one daily run: seconds per stage per scale")
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def print_table(rows: list[dict]) -> None:
    cols = ["scale", "window_views", "state", *STAGES, "wall_seconds"]
    print("\n" + " | ".join(f"{c:>10s}" for c in cols))
    for r in rows:
        print(" | ".join(f"{(f'{r[c]:.1f}' if isinstance(r[c], float) else str(r[c])):>10s}" for c in cols))
    print("\npeak RSS MB (flow process + Spark JVM) per stage")
    print(" | ".join(f"{c:>10s}" for c in ["scale", *STAGES]))
    for r in rows:
        rss = r.get("peak_rss_mb") or {}
        print(" | ".join(f"{str(v):>10s}" for v in [r["scale"], *(rss.get(s, "-") for s in STAGES)]))


if __name__ == "__main__":
    main()
