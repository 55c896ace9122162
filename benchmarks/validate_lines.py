"""Where each traffic check's line is drawn: its largest value on clean days, its threshold, and its
value on the fault it must catch; and the sale day (benchmarks/README.md, "Traffic that is
well-formed but wrong").

The worlds and the fault injectors are the test suite's own (``tests/test_validation*.py``), so the
table is measured on exactly what the tests assert:

- clean: the 60 days of ``led simulate``'s world (3000 users, 800 items, churn), ``small_world``
  (800 users, 300 items, 10 days, the fault catalogue's) and the 30-day world (800 users, seed 11);
- faults: each traffic fault of ``tests/test_validation_traffic.py`` on a copy of ``small_world``,
  plus the issue's two examples (a partition ingested twice 1 s apart, views written into clicks);
- the sale day: day 10 of a 14-day ``led simulate`` world with more users, or the same users doing
  more, and what fails;
- the ML-100K replay (``../shared/data/ml-100k``, skipped when absent) with and without the
  active-user floor.

    .venv/bin/python benchmarks/validate_lines.py          # ~1-2 min; writes results/validate_lines.json
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from data_checks import suites  # noqa: E402
from data_checks.runner import validate_window  # noqa: E402
from data_sources.synthetic import WorldConfig, generate  # noqa: E402
from tests import test_validation as v1  # noqa: E402
from tests import test_validation_clean_traffic as clean  # noqa: E402
from tests import test_validation_traffic as traffic  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "validate_lines.json"
# check -> (per-day column, kinds it is computed for)
COLUMNS = {
    suites.NEAR_DUPLICATE_RATE: "near_duplicate_rate", suites.TOP_USER_SHARE: "top_user_share_increase",
    suites.TOP_ITEM_SHARE: "top_item_share_increase", suites.EVENTS_PER_USER: "events_per_user_ratio",
    suites.ITEM_DISTRIBUTION: "item_psi", suites.USER_ACTIVITY_DISTRIBUTION: "user_activity_psi",
    suites.CLICK_THROUGH: "click_through_ratio",
}
BOUNDS = {suites.NEAR_DUPLICATE_RATE: (None, "max_near_duplicate_rate"),
          suites.TOP_USER_SHARE: (None, "max_top_user_share_increase"),
          suites.TOP_ITEM_SHARE: (None, "max_top_item_share_increase"),
          suites.EVENTS_PER_USER: ("events_per_user_min_ratio", "events_per_user_max_ratio"),
          suites.ITEM_DISTRIBUTION: (None, "max_item_psi"),
          suites.USER_ACTIVITY_DISTRIBUTION: (None, "max_user_activity_psi"),
          suites.CLICK_THROUGH: ("click_through_min_ratio", "click_through_max_ratio")}
SALE_DAYS = [  # label, the sale day's WorldConfig fields (the world's active_share 0.3, 1.3 sessions)
    ("2x the usual active users", {"active_share": 0.6}),
    ("3x the usual active users (the sale)", {"active_share": 0.9}),
    ("every alive user active", {"active_share": 1.0}),
    ("usual users, 1.5x sessions each", {"sessions_per_active_user": 1.95}),
    ("usual users, 1.75x sessions each", {"sessions_per_active_user": 2.275}),
    ("usual users, 2x sessions each", {"sessions_per_active_user": 2.6}),
    ("3x users and 1.3x sessions each", {"active_share": 0.9, "sessions_per_active_user": 1.69}),
]


def _range(result, column: str) -> tuple[float, float] | None:
    values = [d[column] for d in result.days if d.get(column) is not None]
    return (min(values), max(values)) if values else None


def clean_ranges(tmp: Path) -> dict[str, dict]:
    sim_cfg = clean.simulate_world_config(clean.WARMUP + clean.CLEAN_DAYS)
    sim = tmp / "simulate" / "events"
    clean.write_world(sim, sim_cfg)
    small = tmp / "small" / "events"
    generate(small, WorldConfig(users=800, items=300, days=10, seed=7))
    thirty = tmp / "thirty" / "events"
    generate(thirty, WorldConfig(users=800, items=300, days=30, seed=11, start=dt.date(2026, 3, 1)))
    results = {"simulate (60 days)": validate_window(sim, clean._end(sim_cfg), clean.CLEAN_DAYS,
                                                     settings=v1.SETTINGS),
               "small_world": validate_window(small, v1.RUN_DATE, v1.WINDOW, settings=v1.SETTINGS),
               "30-day world": validate_window(thirty, "2026-03-31", 30, settings=v1.SETTINGS)}
    out = {}
    for name, result in results.items():
        out[name] = {"success": result.success, "failed": sorted(result.failed_checks),
                     "ranges": {check: _range(result, column) for check, column in COLUMNS.items()}}
    return out, small


def fault_values(small: Path, tmp: Path) -> dict[str, dict]:
    def twice_one_second_apart(store):
        t = v1._day(store)
        v1._rewrite(store, traffic._concat(t, traffic._shift(t, 1_000_000)))

    def views_into_clicks(store):
        v1._rewrite(store, v1._day(store, "views"), kind="clicks")

    faults = {f: check for f, (check, _) in traffic.FAULTS.items()}
    faults[twice_one_second_apart] = suites.NEAR_DUPLICATE_RATE
    faults[views_into_clicks] = suites.CLICK_THROUGH
    out = {}
    for k, (fault, check) in enumerate(faults.items()):
        store = v1._copy(small, tmp / f"fault{k}")
        fault(store)
        result = validate_window(store, v1.RUN_DATE, v1.WINDOW, settings=v1.SETTINGS)
        kind = "clicks" if check == suites.CLICK_THROUGH else "views"
        row = next(d for d in result.days if d["kind"] == kind and d["date"] == v1.FAULT_DAY.isoformat())
        out[fault.__name__] = {"check": check, "value": row.get(COLUMNS[check]),
                               "failed": sorted(result.failed_checks)}
    return out


def sale_days(tmp: Path) -> list[dict]:
    rows = []
    for k, (label, fields) in enumerate(SALE_DAYS):
        cfg = clean.simulate_world_config(clean.SALE_WORLD_DAYS)
        store = tmp / f"sale{k}" / "events"
        clean.write_world(store, cfg, {clean.SALE_DAY: fields})
        result = validate_window(store, clean._end(cfg), clean.SALE_WORLD_DAYS, settings=v1.SETTINGS)
        sale = (cfg.start + dt.timedelta(days=clean.SALE_DAY)).isoformat()
        row = next(d for d in result.days if d["kind"] == "views" and d["date"] == sale)
        rows.append({"day": label, "fields": fields, "volume_ratio": row["volume_ratio"],
                     "events_per_user_ratio": row["events_per_user_ratio"],
                     "failed": sorted(result.failed_checks)})
    return rows


def movielens_without_the_floor(ml100k: Path, tmp: Path) -> dict | None:
    """ML-100K replayed as one window, with the active-user floor and without it: failing days per check."""
    from data_sources.movielens import import_movielens
    from infra import events
    from infra.settings import Settings

    if not ml100k.exists():
        print(f"ML-100K not found at {ml100k}: its replay is skipped")
        return None
    store = tmp / "ml100k"
    import_movielens(ml100k, store)
    days = events.list_days(store, "views")
    end, span = days[-1] + dt.timedelta(days=1), (days[-1] - days[0]).days + 1
    with_floor = validate_window(store, end, span, settings=v1.SETTINGS)
    no_floor = validate_window(store, end, span, settings=Settings(volume_min_active_users=0))
    return {"days": span, "passes_with_floor": with_floor.success,
            "failing_days_without_floor": {c.check: len(c.days) for c in no_floor.failed}}


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.3f}"


def main() -> int:
    start, load = time.perf_counter(), os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="led-lines-") as tmp:
        tmp = Path(tmp)
        ranges, small = clean_ranges(tmp)
        faults = fault_values(small, tmp)
        sale = sale_days(tmp)
        movielens = movielens_without_the_floor(ROOT.parent / "shared" / "data" / "ml-100k", tmp)
    s = v1.SETTINGS
    print(f"suite v{suites.SUITE_VERSION}; clean worlds: " + "; ".join(
        f"{name} {'passes' if r['success'] else 'FAILS ' + ', '.join(r['failed'])}" for name, r in ranges.items()))
    print("\n| check | clean range: " + " / ".join(ranges) + " | threshold | fault: value |")
    print("|---|---|---|---|")
    for check, column in COLUMNS.items():
        lo, hi = BOUNDS[check]
        bound = (f"{getattr(s, lo)}-{getattr(s, hi)}" if lo else f"<= {getattr(s, hi)}")
        spans = " / ".join("-" if r["ranges"][check] is None else
                           (f"{r['ranges'][check][0]:.3f}-{r['ranges'][check][1]:.3f}" if lo
                            else _fmt(r["ranges"][check][1])) for r in ranges.values())
        hits = "; ".join(f"{name}: {_fmt(f['value'])}" for name, f in faults.items() if f["check"] == check)
        print(f"| `{check}` (`{column}`) | {spans} | {bound} | {hits} |")
    print("\n| sale day | volume | events/user | failed |\n|---|---|---|---|")
    for r in sale:
        print(f"| {r['day']} | {r['volume_ratio']:.2f}x | {r['events_per_user_ratio']:.2f} | "
              f"{', '.join(f'`{c}`' for c in r['failed']) or '-'} |")
    if movielens:
        print(f"\nML-100K replay ({movielens['days']} days): "
              f"{'passes' if movielens['passes_with_floor'] else 'FAILS'} with the active-user floor; without it, "
              "failing days per check: " + ", ".join(f"{c} {n}" for c, n in movielens["failing_days_without_floor"].items()))
    seconds = time.perf_counter() - start
    print(f"\n{seconds:.0f} s, load average {load:.2f} -> {os.getloadavg()[0]:.2f}")
    RESULTS.write_text(json.dumps({"suite_version": suites.SUITE_VERSION, "clean": ranges, "faults": faults,
                                   "sale_days": sale, "movielens": movielens, "seconds": round(seconds, 1)}, indent=2, default=str))
    print(f"written {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
