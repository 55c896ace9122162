"""``led backfill``: run the daily flow for every date of a range, in order."""
from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser(
        "backfill", help="run the daily flow for each date from --start to --end (inclusive), in order",
        description="Idempotent: rerunning a date replaces its run folder; cached stages (pre-training, "
        "fine-tuning) are reused when their inputs are unchanged. Stops at the first failed date unless "
        "--keep-going. Exit 0 when every date completed, 1 otherwise.")
    p.add_argument("--start", required=True, help="first run date, YYYY-MM-DD")
    p.add_argument("--end", required=True, help="last run date, YYYY-MM-DD (inclusive)")
    p.add_argument("--events", help="event store (default: settings events_dir)")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE", help="flow parameter override")
    p.add_argument("--keep-going", action="store_true", help="continue after a failed date")
    p.set_defaults(func=run)


def run(args) -> int:
    import datetime as dt

    from cli.commands.run import parse_params
    from cli.common import Progress, emit
    from flows.runner import run_daily
    from infra import events
    from infra.errors import UserError

    start, end = events.parse_date(args.start), events.parse_date(args.end)
    if end < start:
        raise UserError(f"--end {end} is before --start {start}")
    params = parse_params(args.param)
    if args.events:
        params["events_dir"] = str(events.require_event_store(args.events).resolve())
    dates = [start + dt.timedelta(days=k) for k in range((end - start).days + 1)]
    progress = Progress("backfill", total=len(dates), every_seconds=0)
    runs = []
    for n, day in enumerate(dates, 1):
        result = run_daily(params | {"run_date": day.isoformat()})
        runs.append({k: result.get(k) for k in ("run_date", "state", "model_version", "promoted",
                                                "pushed_slot", "ndcg@100", "error")})
        progress.update(n, f"{day} {result['state']}", force=True)
        if result["state"] != "COMPLETED" and not args.keep_going:
            break
    failed = [r["run_date"] for r in runs if r["state"] != "COMPLETED"]
    emit({"dates": len(dates), "completed": len(runs) - len(failed), "failed": failed, "runs": runs})
    return 0 if not failed and len(runs) == len(dates) else 1
