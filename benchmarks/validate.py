"""Benchmark of the validation gate: seconds per 1M events (target <= 10 s).

Generates a synthetic event store sized so the validated window holds about
``--events`` events (views + clicks; 7 more days of history are written
because the volume and new-item checks read them), then times:

- ``read``: reading the window's partitions with pyarrow (the floor any
  validator pays);
- ``validate_window`` (pandas GX, the shipped path): the GX import and the
  first call (once per process), the median of ``--repeat`` warm calls, and
  one call that also writes the Data Docs report;
- the traffic checks of suite v2 (data_checks/traffic.py: near-duplicates,
  concentration, PSI, click-through): their per-day statistics against the
  same ``day_summary`` with them switched off, and the window suite's GX run
  (where their expectations live), all in the same process;
- the same rows suite on the same events through GX's Spark engine (baseline
  for the pandas-vs-Spark choice), with and without the session start-up.

    nice -n 10 .venv/bin/python benchmarks/validate.py --events 1000000
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")

EVENTS_PER_USER_DAY = 2.5  # synthetic defaults: ~1.95 views + ~0.55 clicks per user and day


def build_store(out: Path, events: int, window: int, seed: int) -> dict:
    from data_sources.synthetic import WorldConfig, generate

    users = max(100, int(events / window / EVENTS_PER_USER_DAY))
    cfg = WorldConfig(users=users, items=max(300, users // 10), days=window + 7, seed=seed,
                      start=dt.date(2026, 1, 1))
    t = time.perf_counter()
    totals = generate(out, cfg)
    return totals | {"users_config": users, "generate_s": round(time.perf_counter() - t, 2),
                     "run_date": (cfg.start + dt.timedelta(days=cfg.days)).isoformat()}


def timed(fn, *args, **kw):
    t = time.perf_counter()
    value = fn(*args, **kw)
    return time.perf_counter() - t, value


def read_window(store: Path, run_date: str, window: int) -> int:
    from infra import events

    return sum(events.read_window(store, kind, run_date, window).num_rows for kind in events.KINDS)


def spark_rows_baseline(store: Path, run_date: str, window: int) -> dict:
    """The views+clicks rows suites on Spark DataFrames (GX Spark engine), same expectations."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig
    from pyspark.sql import functions as F

    from data_checks import suites
    from infra.settings import Settings
    from infra.spark import get_spark

    t0 = time.perf_counter()
    spark = get_spark(Settings(spark_master="local[2]", spark_driver_memory="4g", spark_shuffle_partitions=4))
    spark.range(1).count()
    startup = time.perf_counter() - t0
    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    source = ctx.data_sources.add_spark("spark_events")
    t1 = time.perf_counter()
    rows, ok = 0, True
    first = dt.date.fromisoformat(run_date) - dt.timedelta(days=window)
    for kind in suites.KINDS:
        df = (spark.read.parquet(str(store / kind)).filter(F.col("date") >= F.lit(first.isoformat()))
              .filter(F.col("date") < F.lit(run_date))
              .withColumn("date", F.col("date").cast("string"))
              .withColumn("day_start", F.to_timestamp(F.col("date")))
              .withColumn("next_day", F.col("day_start") + F.expr("INTERVAL 1 DAY")))
        rows += df.count()
        suite = ctx.suites.add(suites.rows_suite(kind))
        batch = source.add_dataframe_asset(kind).add_batch_definition_whole_dataframe("all")
        vd = ctx.validation_definitions.add(gx.ValidationDefinition(name=f"{kind}_vd", data=batch, suite=suite))
        res = vd.run(batch_parameters={"dataframe": df},
                     expectation_parameters={"now": dt.datetime.now(dt.timezone.utc)})
        ok = ok and res.success
    seconds = time.perf_counter() - t1
    return {"startup_s": round(startup, 2), "rows_suites_s": round(seconds, 2), "rows": rows, "success": ok}


def pandas_rows_only(store: Path, run_date: str, window: int) -> float:
    """The same two rows suites through the shipped pandas path (read + cast + GX), for a fair ratio."""
    from data_checks import runner, stats, suites
    from infra.settings import Settings

    gate = runner._GxGate(Settings())
    now = __import__("pandas").Timestamp.now(tz="UTC")
    t = time.perf_counter()
    for kind in suites.KINDS:
        parts = [p for p in stats.load_kind(store, kind, dt.date.fromisoformat(run_date), window) if p.in_window]
        for p in parts:
            if p.raw is not None:
                stats.canonicalize(p)
        runner._row_checks(gate, kind, parts, now)
    return time.perf_counter() - t


def _v1_duplicate_rows(t) -> int:
    """Suite v1's exact-duplicate count (a group-by on the three columns): the baseline of the one
    sort that now gives both exact and near duplicates."""
    import pyarrow.compute as pc

    counts = t.group_by(["user_id", "item_id", "ts"]).aggregate([([], "count_all")]).column("count_all")
    return int(pc.sum(pc.if_else(pc.greater(counts, 1), counts, 0)).as_py() or 0)


def traffic_checks_cost(store: Path, run_date: str, window: int, repeat: int) -> dict:
    """Seconds the v2 traffic checks add, each part against its v1 counterpart in this process."""
    from unittest import mock

    import great_expectations as gx

    from data_checks import runner, stats, suites, traffic
    from infra.settings import Settings

    settings = Settings()

    def loaded() -> dict:
        parts = {k: stats.load_kind(store, k, dt.date.fromisoformat(run_date), window) for k in suites.KINDS}
        for plist in parts.values():
            for p in plist:
                if p.raw is not None:
                    stats.canonicalize(p)
        return parts

    def median_s(fn) -> float:
        return statistics.median(fn() for _ in range(repeat))

    # 1. per-day statistics: day_summary with the traffic rows, and with them switched off
    #    (fresh partitions each time: the id counts are cached on them)
    with_traffic = median_s(lambda: timed(stats.day_summary, loaded(), settings)[0])
    with mock.patch.object(stats, "_traffic_row", lambda *a, **k: {}):
        without = median_s(lambda: timed(stats.day_summary, loaded(), settings)[0])
    # 2. duplicates: v2's one sort (exact + near) against v1's group-by (exact only)
    tables = [p.table for plist in loaded().values() for p in plist if p.in_window and p.usable]
    one_sort = median_s(lambda: timed(lambda: [traffic.repeated_rows(t, 10.0) for t in tables])[0])
    group_by = median_s(lambda: timed(lambda: [_v1_duplicate_rows(t) for t in tables])[0])
    # 3. the window suite's GX run: all 13 expectations against the 6 of v1
    gate = runner._GxGate(settings)
    v1 = suites.window_suite(settings)
    v1.expectations = [e for e in v1.expectations if e.meta["check"] not in suites.TRAFFIC_CHECKS]
    v1.name = "led_window_v1_subset"
    gate.suites[v1.name] = gate.ctx.suites.add(gx.ExpectationSuite(name=v1.name, expectations=[
        e.configuration.to_domain_obj() for e in v1.expectations]))
    summary = stats.day_summary(loaded(), settings)

    def window_run(name: str) -> float:
        frames = [summary[summary["kind"] == k].reset_index(drop=True) for k in suites.KINDS]
        return timed(lambda: [gate.run(name, f, kind=k, index_columns=["date"])
                              for f, k in zip(frames, suites.KINDS)])[0]

    gx_v2 = median_s(lambda: window_run(suites.suite_name("window")))
    gx_v1 = median_s(lambda: window_run(v1.name))
    added = (with_traffic - without) + (one_sort - group_by) + (gx_v2 - gx_v1)
    return {"day_summary_s": round(with_traffic, 3), "day_summary_without_traffic_s": round(without, 3),
            "duplicates_one_sort_s": round(one_sort, 3), "duplicates_v1_group_by_s": round(group_by, 3),
            "window_suite_gx_v2_s": round(gx_v2, 3), "window_suite_gx_v1_s": round(gx_v1, 3),
            "traffic_added_s": round(added, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=1_000_000, help="events in the validated window")
    ap.add_argument("--window", type=int, default=14, help="window length in days")
    ap.add_argument("--repeat", type=int, default=3, help="warm validate_window calls (median reported)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-spark", action="store_true", help="skip the Spark baseline")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "validate.json"))
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-validate-") as tmp:
        store = Path(tmp) / "events"
        world = build_store(store, args.events, args.window, args.seed)
        run_date = world["run_date"]
        print(f"store: {world['views'] + world['clicks']:,} events over {world['days']} days "
              f"({world['generate_s']} s to generate)", flush=True)

        read_s, n = timed(read_window, store, run_date, args.window)
        millions = n / 1e6
        print(f"window: {n:,} events in {args.window} days; pyarrow read {read_s:.2f} s", flush=True)

        import_s, _ = timed(__import__, "great_expectations")
        from data_checks.runner import validate_window

        cold_s, result = timed(validate_window, store, run_date, args.window)
        warm = [timed(validate_window, store, run_date, args.window)[0] for _ in range(args.repeat)]
        warm_s = statistics.median(warm)
        report_s, _ = timed(validate_window, store, run_date, args.window, report_dir=Path(tmp) / "report")
        rows_pandas_s = pandas_rows_only(store, run_date, args.window)
        traffic = traffic_checks_cost(store, run_date, args.window, args.repeat)
        print(f"validate_window (pandas GX): warm {warm_s:.2f} s -> {warm_s / millions:.2f} s per 1M events "
              f"(target <= 10); success={result.success}", flush=True)
        print(f"  once per process: import great_expectations {import_s:.2f} s, first call {cold_s:.2f} s; "
              f"with the Data Docs report {report_s:.2f} s", flush=True)
        print(f"  rows suites only (pandas): {rows_pandas_s:.2f} s", flush=True)
        t = traffic
        print(f"  traffic checks (v2) add {t['traffic_added_s']:.2f} s -> {t['traffic_added_s'] / millions:.2f} s "
              f"per 1M events: statistics {t['day_summary_s'] - t['day_summary_without_traffic_s']:+.2f} s "
              f"(day_summary {t['day_summary_s']:.2f} s with them, {t['day_summary_without_traffic_s']:.2f} s "
              f"without); duplicates {t['duplicates_one_sort_s'] - t['duplicates_v1_group_by_s']:+.2f} s "
              f"(one sort, exact + near, {t['duplicates_one_sort_s']:.2f} s; v1 group-by, exact only, "
              f"{t['duplicates_v1_group_by_s']:.2f} s); window suite GX {t['window_suite_gx_v2_s'] - t['window_suite_gx_v1_s']:+.2f} s "
              f"(13 expectations {t['window_suite_gx_v2_s']:.2f} s, v1's 6 {t['window_suite_gx_v1_s']:.2f} s)", flush=True)

        spark = None
        if not args.no_spark:
            spark = spark_rows_baseline(store, run_date, args.window)
            print(f"  rows suites only (Spark GX, local[2]): {spark['rows_suites_s']:.2f} s "
                  f"+ {spark['startup_s']:.2f} s session start; "
                  f"pandas is {spark['rows_suites_s'] / rows_pandas_s:.1f}x faster on the suites, "
                  f"{(spark['rows_suites_s'] + spark['startup_s']) / rows_pandas_s:.1f}x with start-up", flush=True)

    out = {
        "events": n, "window_days": args.window, "world": world,
        "read_s": round(read_s, 3),
        "gx_import_s": round(import_s, 3), "validate_first_call_s": round(cold_s, 3),
        "validate_warm_s": round(warm_s, 3), "validate_with_report_s": round(report_s, 3),
        "validate_warm_runs_s": [round(w, 3) for w in warm],
        "seconds_per_1m_events": round(warm_s / millions, 3),
        "rows_suites_pandas_s": round(rows_pandas_s, 3),
        "traffic_checks": traffic | {"traffic_added_s_per_1m_events": round(traffic["traffic_added_s"] / millions, 3)},
        "spark_baseline": spark, "success": result.success,
        "cpu_count": os.cpu_count(), "load_avg_1m": os.getloadavg()[0], "suite_version": result.suite_version,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
