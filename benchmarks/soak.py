"""Benchmark: the soak — ``led simulate --soak`` on the embedded defaults, months under churn with faults.

Runs ``led simulate --days N --soak`` (docs/architecture.md, "The soak: months under churn") on its own
local stack (a fresh LED_HOME and free ports on 127.0.0.1, started and stopped by the command), then
prints the wall time (target: under 30 min for 60 days on this machine), the load average before and
after, and PASS/FAIL per criterion; writes the plots to benchmarks/plots/soak.png, the per-day record
to benchmarks/results/soak_record.csv and the figures to benchmarks/results/soak.json. Exit code: the
simulation's (1 on any FAIL).

    nice -n 19 .venv/bin/python benchmarks/soak.py                  # 60 days, the lead's run
    nice -n 19 .venv/bin/python benchmarks/soak.py --days 10 --users 600 --items 200 -- --param epochs=2
                                       # a quick check; what follows -- goes to led simulate as is
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from infra.stack import free_port  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
PLOTS = ROOT / "benchmarks" / "plots"
TARGET_SECONDS = 30 * 60  # for 60 days


def load_average() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def soak_env(home: Path) -> dict[str, str]:
    """A stack of its own: nothing shared with a running `led stack` or the test suite."""
    env = os.environ.copy() | {"LED_HOME": str(home), "PYTHONPATH": str(ROOT),
                               "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                               "AWS_DEFAULT_REGION": "us-east-1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                               "TF_CPP_MIN_LOG_LEVEL": "2", "SPARK_LOCAL_IP": "127.0.0.1"}
    for name in ("MOTO", "MLFLOW", "PREFECT"):
        env[f"LED_{name}_PORT"] = str(free_port())
    for name in ("LED_CONFIG", "LED_MLFLOW_TRACKING_URI", "LED_PREFECT_API_URL", "LED_S3_ENDPOINT_URL"):
        env.pop(name, None)
    return env


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--days", type=int, default=60)
    ap.add_argument("--users", type=int, default=None, help="default: led simulate's (the embedded defaults)")
    ap.add_argument("--items", type=int, default=None)
    ap.add_argument("simulate_args", nargs=argparse.REMAINDER, help="after --: more `led simulate` flags")
    args = ap.parse_args()
    home = Path(tempfile.mkdtemp(prefix="led-soak-"))
    out = home / "record"
    cmd = [sys.executable, "-m", "cli.main", "simulate", "--days", str(args.days), "--soak", "--out", str(out),
           "--serve-port", str(free_port())]
    for flag in ("users", "items"):
        if getattr(args, flag) is not None:
            cmd += [f"--{flag}", str(getattr(args, flag))]
    cmd += [a for a in args.simulate_args if a != "--"]
    load_before = load_average()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=soak_env(home), stdout=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - t0
    load_after = load_average()
    summary = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.stdout.strip() else {}
    if not summary:
        print(f"led simulate failed (exit {proc.returncode}); its stack home is {home}", file=sys.stderr)
        return proc.returncode or 1
    PLOTS.mkdir(exist_ok=True)
    RESULTS.mkdir(exist_ok=True)
    shutil.copy(out / "record.png", PLOTS / "soak.png")
    shutil.copy(out / "record.csv", RESULTS / "soak_record.csv")
    figures = {"days": args.days, "command": " ".join(cmd[1:]), "wall_seconds": round(seconds, 1),
               "target_seconds": TARGET_SECONDS * args.days / 60,
               "ratio_to_target": round(seconds / (TARGET_SECONDS * args.days / 60), 3),
               "load_average_before": load_before, "load_average_after": load_after,
               "passed": summary["passed"], "criteria": summary["criteria"], "outcomes": summary["outcomes"]}
    (RESULTS / "soak.json").write_text(json.dumps(figures, indent=1))
    print(f"soak: {args.days} days in {seconds / 60:.1f} min (target {figures['target_seconds'] / 60:.0f} min, "
          f"ratio {figures['ratio_to_target']}); load average before {load_before}, after {load_after}")
    for name, c in summary["criteria"].items():
        print(f"  {'PASS' if c['pass'] else 'FAIL'}  {name}: {c['detail']}")
    print(f"plots: {PLOTS / 'soak.png'}; record: {RESULTS / 'soak_record.csv'}; figures: {RESULTS / 'soak.json'}")
    shutil.rmtree(home, ignore_errors=True)
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
