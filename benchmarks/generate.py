"""Benchmark: synthetic world generation at ML-20M scale (events/s and peak RSS).

Targets (issue 2): >= 1M events/s and peak RSS < 4 GB at about 138k users, 20k
items and 10M views. Baseline in the same run: the I/O floor, i.e. writing
the same day tables to parquet without generating them, so the ratio shows
what the generation itself costs on top of the writes.

    .venv/bin/python benchmarks/generate.py               # ML-20M scale (~10M views)
    .venv/bin/python benchmarks/generate.py --scale 0.1   # quick
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_sources.synthetic import SyntheticWorld, WorldConfig, generate  # noqa: E402
from infra import events  # noqa: E402


def _generate(cfg: WorldConfig, out: str, queue) -> None:
    t0 = time.perf_counter()
    stats = generate(Path(out), cfg)
    seconds = time.perf_counter() - t0
    queue.put({"stats": stats, "seconds": seconds,
               "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})


def _write_floor(cfg: WorldConfig, out: Path) -> float:
    """Seconds spent writing the same day tables (generated beforehand, untimed)."""
    total = 0.0
    for day in SyntheticWorld(cfg).days():
        t0 = time.perf_counter()
        events.write_day(out, "views", day.date, day.views)
        events.write_day(out, "clicks", day.date, day.clicks)
        total += time.perf_counter() - t0
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of ML-20M size (default 1.0)")
    ap.add_argument("--days", type=int, default=37, help="days (37 days ~ 10M views at scale 1)")
    args = ap.parse_args()
    cfg = WorldConfig(users=int(138_000 * args.scale), items=max(int(20_000 * args.scale), 100), days=args.days)
    tmp = Path(tempfile.mkdtemp(prefix="led-bench-gen-"))
    try:
        ctx = mp.get_context("spawn")  # a fresh process: its peak RSS is the generator's alone
        queue = ctx.Queue()
        proc = ctx.Process(target=_generate, args=(cfg, str(tmp / "world"), queue))
        proc.start()
        res = queue.get()
        proc.join()
        floor = _write_floor(cfg, tmp / "floor")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    st = res["stats"]
    n_events = st["views"] + st["clicks"]
    eps = n_events / res["seconds"]
    result = {
        "users": cfg.users, "items": cfg.items, "days": cfg.days, "views": st["views"], "clicks": st["clicks"],
        "events": n_events, "seconds": round(res["seconds"], 2), "events_per_s": round(eps),
        "peak_rss_mb": round(res["peak_rss_mb"]), "write_floor_seconds": round(floor, 2),
        "ratio_to_write_floor": round(res["seconds"] / floor, 2),
        "target_events_per_s": 1_000_000, "target_peak_rss_mb": 4096,
        "meets_targets": eps >= 1_000_000 and res["peak_rss_mb"] < 4096,
    }
    print(f"synthetic world: {cfg.users} users, {cfg.items} items, {cfg.days} days")
    print(f"  events          {n_events:,} ({st['views']:,} views, {st['clicks']:,} clicks)")
    print(f"  wall time       {res['seconds']:.1f} s  -> {eps / 1e6:.2f} M events/s (target >= 1.0)")
    print(f"  peak RSS        {res['peak_rss_mb']:.0f} MB (target < 4096)")
    print(f"  baseline        parquet writes alone {floor:.1f} s; generation+write = {result['ratio_to_write_floor']}x")
    out = Path(__file__).parent / "results" / "generate.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
