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


def register(sub) -> None:
    p = sub.add_parser(
        "simulate", help="simulate N days: generate, run the daily flow, serve and query, with injected faults",
        description="Generates a synthetic world with catalog and user churn day by day into "
        "LED_HOME/simulation/events; after --warmup days, runs the daily flow every day (real Prefect, "
        "MLflow and S3 of the local stack, started if not running and stopped afterwards) and keeps one "
        "`led serve` process running, querying it with the day's timelines between days. Faults: "
        "--bad-data-days (0-based day indexes whose views lose 90%%: validation must stop the run) and "
        "--bad-model-days (a deliberately weak model: the gate must reject it). Ends with JSON: days, "
        "pushes, gate_rejections, validation_failures, serving_errors, ndcg@100 per run.")
    p.add_argument("--days", type=int, default=14, help="days to simulate (default 14)")
    p.add_argument("--warmup", type=int, default=3, help="days of data before the first run (default 3)")
    p.add_argument("--users", type=int, default=3000)
    p.add_argument("--items", type=int, default=800)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--bad-data-days", default="", help="comma-separated day indexes, e.g. 6")
    p.add_argument("--bad-model-days", default="", help="comma-separated day indexes, e.g. 9")
    p.add_argument("--queries", type=int, default=200, help="serving queries per day (default 200)")
    p.add_argument("--serve-port", type=int, default=None, help="default settings.serve_port")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE", help="flow parameter override")
    p.set_defaults(func=run)


def run(args) -> int:
    import os
    import time

    from cli.commands.run import parse_params
    from cli.common import emit, log
    from flows.runner import run_daily
    from flows.simulate import SimulationConfig, simulate, simulation_overrides
    from infra.errors import UserError
    from infra.settings import get_settings
    from infra.stack import LocalStack

    if args.days < 2 or not 2 <= args.warmup <= args.days:
        raise UserError("need --days >= 2 and 2 <= --warmup <= --days")
    os.environ.update(simulation_overrides(get_settings()))  # its own model name, experiment, S3 prefix
    get_settings.cache_clear()
    settings = get_settings()
    cfg = SimulationConfig(days=args.days, warmup_days=args.warmup, users=args.users, items=args.items,
                           seed=args.seed, bad_data_days=_days(args.bad_data_days),
                           bad_model_days=_days(args.bad_model_days), queries_per_day=args.queries,
                           params=parse_params(args.param))
    stack = LocalStack(settings)
    started = stack.up(log=log)["started"]
    t0 = time.perf_counter()
    try:
        result = simulate(settings, cfg, run_daily, args.serve_port or settings.serve_port, log=log)
    finally:
        if started:
            _flush_prefect_logs()  # ship buffered run logs while the Prefect server is still up
            stack.down(tuple(started))
    log(f"\nPrefect UI  {settings.prefect_url.removesuffix('/api')}   (flow runs, artifacts)")
    log(f"MLflow UI   {settings.mlflow_url}   (runs, model versions, aliases)")
    log(f"Serving     http://{settings.serve_host}:{args.serve_port or settings.serve_port}/recommend")
    if started:
        log("The stack was stopped; `led stack up` brings the UIs back with all state, "
            "`led serve` the service.")
    emit({k: result[k] for k in ("days", "runs", "pushes", "gate_rejections", "validation_failures",
                                 "failed_runs", "serving_queries", "serving_errors", "ndcg@100",
                                 "live_model_version", "runs_detail", "mean_next_day_scorable_share")}
         | {"seconds": round(time.perf_counter() - t0, 1)})
    return 0 if result["serving_errors"] == 0 and result["failed_runs"] == 0 else 1
