"""``led simulate``: days of a synthetic world with churn through the whole product."""
from __future__ import annotations


def _days(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip()) if text else ()


def _flush_prefect_logs() -> None:
    """Ship buffered run logs while the Prefect server is still up (best effort, bounded)."""
    import sys

    if "prefect" not in sys.modules:
        return
    from prefect.logging.handlers import APILogWorker

    try:
        APILogWorker.drain_all(timeout=10)
    except Exception:  # noqa: BLE001 - losing trailing log lines must not keep the stack running
        pass


FAULT_FLAGS = {"bad_data": "90%% of the day's views lost: validation must stop the run",
               "bad_model": "a deliberately weak model: the gate must reject it",
               "s3_outage": "S3 unreachable for the run: the push fails, nothing is activated",
               "mlflow_outage": "MLflow stopped during the run: it fails at registration, the rerun ships",
               "worker_kill": "a serving worker SIGKILLed mid-queries: replaced, no 5xx",
               "kill_training": "the run killed mid-training: the rerun resumes from the cache"}


def register(sub) -> None:
    p = sub.add_parser(
        "simulate", help="simulate N days: generate, run the daily flow, serve and query, with injected faults",
        description="Generates a synthetic world with catalog and user churn day by day into "
        "LED_HOME/simulation/events; after --warmup days, runs the daily flow every day (real Prefect, "
        "MLflow and S3 of the local stack, started if not running and stopped afterwards) and keeps one "
        "`led serve` process running, querying it with the day's timelines between days. Faults: the "
        "--*-days flags (0-based day indexes) or --soak (every fault spread over the run). Writes the "
        "per-day record (record.csv, record.json, record.png) to --out, logs it to MLflow (a `simulation` "
        "run) and as Prefect artifacts, prints PASS/FAIL per criterion and ends with JSON; exit 1 on a FAIL.")
    p.add_argument("--days", type=int, default=14, help="days to simulate (default 14)")
    p.add_argument("--warmup", type=int, default=3, help="days of data before the first run (default 3)")
    p.add_argument("--users", type=int, default=3000)
    p.add_argument("--items", type=int, default=800)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--soak", action="store_true", help="spread every fault over the run (about one of each "
                   "per 18 days, at least once); explicit --*-days flags are then not allowed")
    for name, what in FAULT_FLAGS.items():
        flag = name.replace("_", "-")
        p.add_argument(f"--{flag}-days", default="", help=f"comma-separated day indexes: {what}")
    p.add_argument("--queries", type=int, default=200, help="serving queries per day (default 200)")
    p.add_argument("--panel", type=int, default=50, help="users of the stability panel (default 50)")
    p.add_argument("--quality-tolerance", type=float, default=0.05, help="how far (a share) a clean day's "
                   "NDCG@100 may fall under its trailing 7-day median (default 0.05)")
    p.add_argument("--out", default=None, help="folder for the record and plots (default "
                   "LED_HOME/simulation/record)")
    p.add_argument("--serve-port", type=int, default=None, help="default settings.serve_port")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE", help="flow parameter override")
    p.set_defaults(func=run)


def _fault_days(args) -> dict[str, tuple[int, ...]]:
    from flows.simulate import soak_plan
    from infra.errors import UserError

    try:
        explicit = {f"{name}_days": _days(getattr(args, f"{name}_days")) for name in FAULT_FLAGS}
    except ValueError:
        raise UserError("fault days must be comma-separated integers, e.g. --bad-data-days 6,20") from None
    if not args.soak:
        return explicit
    if any(explicit.values()):
        raise UserError("--soak places the faults itself: drop the --*-days flags or --soak")
    try:
        return soak_plan(args.days, args.warmup)
    except ValueError as exc:
        raise UserError(str(exc)) from None


def _config(args):
    from cli.commands.run import parse_params
    from flows.simulate import SimulationConfig
    from infra.errors import UserError

    if args.days < 2 or not 2 <= args.warmup <= args.days:
        raise UserError("need --days >= 2 and 2 <= --warmup <= --days")
    if not 0 < args.quality_tolerance < 1:
        raise UserError("--quality-tolerance must be in (0, 1)")
    cfg = SimulationConfig(days=args.days, warmup_days=args.warmup, users=args.users, items=args.items,
                           seed=args.seed, queries_per_day=args.queries, panel_users=args.panel,
                           quality_tolerance=args.quality_tolerance,
                           params=parse_params(args.param), **_fault_days(args))
    try:
        for day in range(cfg.days):
            cfg.fault(day)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    return cfg


def run(args) -> int:
    import os
    import time
    from pathlib import Path

    from cli.common import emit, log
    from flows.runner import run_daily
    from flows.simulate import Ops, log_to_mlflow, publish_artifacts, simulate, simulation_overrides, write_record
    from infra.settings import get_settings
    from infra.stack import LocalStack

    cfg = _config(args)
    os.environ.update(simulation_overrides(get_settings()))  # its own model name, experiment, S3 prefix
    get_settings.cache_clear()
    settings = get_settings()
    stack = LocalStack(settings)
    started = stack.up(log=log)["started"]
    t0 = time.perf_counter()
    try:
        result = simulate(settings, cfg, run_daily, args.serve_port or settings.serve_port, log=log,
                          ops=Ops(settings, stack))
        seconds = round(time.perf_counter() - t0, 1)
        out = Path(args.out) if args.out else Path(result["root"]) / "record"
        paths = write_record(result["records"], result["criteria"], out, cfg.quality_tolerance)
        mlflow_run = log_to_mlflow(settings, result["records"], result["criteria"], paths)
        publish_artifacts(result["records"], result["criteria"], paths)
    finally:
        if started:
            _flush_prefect_logs()  # ship buffered run logs while the Prefect server is still up
            stack.down(tuple(started))
    criteria = result["criteria"]
    log("\nPass criteria")
    for name, c in criteria.items():
        log(f"  {'PASS' if c['pass'] else 'FAIL'}  {name}: {c['detail']}")
    log(f"\nRecord      {paths['csv']}  (plots {paths['png']})")
    log(f"Prefect UI  {settings.prefect_url.removesuffix('/api')}   (flow runs, artifacts)")
    log(f"MLflow UI   {settings.mlflow_url}   (runs, model versions, aliases; the `simulation` run)")
    log(f"Serving     http://{settings.serve_host}:{args.serve_port or settings.serve_port}/recommend")
    if started:
        log("The stack was stopped; `led stack up` brings the UIs back with all state, "
            "`led serve` the service.")
    records = result["records"]
    emit({"days": cfg.days, "runs": sum(1 for r in records if r.run_date),
          "outcomes": {r.run_date: f"{r.fault}: {r.outcome}" for r in records if r.run_date},
          "criteria": criteria, "passed": all(c["pass"] for c in criteria.values()),
          "live_model_version": result["live_model_version"], "record": {k: str(v) for k, v in paths.items()},
          "mlflow_run_id": mlflow_run, "seconds": seconds})
    return 0 if all(c["pass"] for c in criteria.values()) else 1
