"""``led run``: run the daily flow once for a date (through the Prefect API of the settings)."""
from __future__ import annotations

import json


def parse_params(pairs: list[str]) -> dict:
    """``key=value`` pairs; values parsed as JSON, else kept as strings (as ``prefect deployment run``)."""
    from infra.errors import UserError

    params = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UserError(f"--param expects key=value, got {pair!r}")
        try:
            params[key.replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            params[key.replace("-", "_")] = value
    return params


def register(sub) -> None:
    p = sub.add_parser(
        "run", help="run the daily flow once (validate → train → gate → push)",
        description="Run the Prefect flow `led-daily` for run date D on the events of [D-W, D), in this "
        "process, reporting to the Prefect API of the settings (start it with `led stack up`). Any flow "
        "parameter can be changed with --param NAME=VALUE (e.g. --param dim=64 --param loss=ns); "
        "`led run --list-params` shows them. Exit 0 when the run completed (promoted or not), 1 when it "
        "failed (e.g. validation), 2 for bad arguments.")
    p.add_argument("--events", help="event store (default: settings events_dir)")
    p.add_argument("--date", help="run date D, YYYY-MM-DD (default: today, UTC)")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE", help="flow parameter override")
    p.add_argument("--list-params", action="store_true", help="print the flow's parameters and defaults")
    p.set_defaults(func=run)


def run(args) -> int:
    from cli.common import emit
    from flows.runner import flow_parameters, run_daily
    from infra import events
    from infra.errors import UserError

    if args.list_params:
        for name, (group, default) in flow_parameters().items():
            print(f"{name:20s} {group:10s} {default!r}")
        return 0
    params = parse_params(args.param)
    unknown = set(params) - set(flow_parameters())
    if unknown:
        raise UserError(f"unknown flow parameter(s): {', '.join(sorted(unknown))} (see --list-params)")
    if args.events:
        params["events_dir"] = str(events.require_event_store(args.events).resolve())
    if args.date:
        params["run_date"] = events.parse_date(args.date).isoformat()
    result = run_daily(params)
    emit(result)
    return 0 if result["state"] == "COMPLETED" else 1
