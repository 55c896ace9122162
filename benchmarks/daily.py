"""Benchmark: wall time per stage of one daily run at several scales.

Each scale is a synthetic world (the same generator as `led generate`) whose
window of ``--window`` days holds the given share of ML-20M's size (138k users,
20k items, ~10M views at scale 1). The daily flow runs once per scale through
the real local stack (Prefect, MLflow, moto S3), started by this script under
a temporary LED_HOME on free ports and stopped at the end.

Targets (issue 8): full scale at most 20 minutes end to end; doubling the
events at most 2.2x the time (half → full is the doubling measured).

    .venv/bin/python benchmarks/daily.py                              # small, quarter, half, full
    .venv/bin/python benchmarks/daily.py --scales small,quarter       # quicker
    .venv/bin/python benchmarks/daily.py --plot-from benchmarks/results/daily.json   # redraw only

Every run also draws ``results/daily_stages.png``: seconds per stage (stacked) per scale.
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

SCALES = {"small": 0.1, "quarter": 0.25, "half": 0.5, "full": 1.0}
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
        print(plot_stages(rows_from(json.loads(args.plot_from.read_text())), PLOT))
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
    out = ROOT / "benchmarks" / "results" / args.out
    out.write_text(json.dumps(result, indent=2))
    print(f"plot: {plot_stages(rows, PLOT)}")
    print(json.dumps(result))


PLOT = ROOT / "benchmarks" / "results" / "daily_stages.png"


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


if __name__ == "__main__":
    main()
