"""``led register``: log an exported model as an MLflow run + model version, then gate it.

Thin wrapper over ``models.registration`` and ``models.gate`` for scripts and
tests; the daily flow calls the same functions. ``led train --out DIR`` then
``led register --model DIR`` composes: the export carries its eval set. Exit code 0 whether or not the challenger is
promoted (a rejected challenger is a normal outcome, recorded in MLflow);
2 for bad input or an unreachable tracking server.
"""
from __future__ import annotations

import json
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser(
        "register", help="log + register an exported model in MLflow and run the champion gate",
        description="Log one MLflow run for an exported model folder (params, metrics, per-epoch history, "
        "timings, artifacts, pyfunc model), register it as a new version with alias 'challenger', then "
        "compare it with the champion on the eval set (the export's eval_set.json unless --eval-set is given) "
        "and move alias 'champion' if it qualifies. "
        "With --promote VERSION, move 'champion' to that version by hand (recorded with --reason).")
    p.add_argument("--model", type=Path, help="exported model folder (models/export.py layout)")
    p.add_argument("--run-date", help="run date YYYY-MM-DD (default: the model card's run_date, else today)")
    p.add_argument("--eval-set", type=Path,
                   help='JSON {"inputs": [[item ids]], "targets": [[item ids]]} used by the gate '
                   "(default: MODEL/eval_set.json, written by `led train`)")
    p.add_argument("--no-gate", action="store_true", help="register only; the version stays challenger")
    for name, what in (("params", "extra parameters"), ("metrics", "final metrics (recall@20, ndcg@100, ...)"),
                       ("history", "list of per-epoch dicts (epoch, loss, val_ndcg@100, ...)"),
                       ("timings", "seconds per stage")):
        p.add_argument(f"--{name}", type=Path, help=f"JSON file: {what}")
    p.add_argument("--report", type=Path, action="append", default=[],
                   help="validation report file or folder to attach (repeatable)")
    p.add_argument("--promote", metavar="VERSION", help="manual override: make VERSION the champion")
    p.add_argument("--reason", default="", help="why (required with --promote)")
    p.set_defaults(func=run)


def _json_file(path: Path | None, kind: str):
    from infra.errors import UserError

    if path is None:
        return None
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"--{kind}: cannot read JSON from {path}: {exc}") from None


def run(args) -> int:
    import datetime as dt

    from cli.common import emit, log
    from infra import registry
    from infra.errors import UserError
    from infra.events import parse_date
    from infra.settings import get_settings
    from models.evaluation import load_eval_set
    from models.export import EVAL_SET
    from models.gate import gate
    from models.registration import register_export

    settings = get_settings()
    if args.promote:
        if not args.reason:
            raise UserError("--promote needs --reason (it is recorded on the version)")
        registry.promote(settings, args.promote, args.reason)
        emit({"promoted": True, "version": str(args.promote), "manual": True})
        return 0
    if args.model is None:
        raise UserError("--model DIR is required (or --promote VERSION)")
    eval_file = args.eval_set or args.model / EVAL_SET
    if not args.no_gate and not eval_file.is_file():
        raise UserError(f"eval set not found: {eval_file} (pass --eval-set FILE, or --no-gate)")
    eval_set = load_eval_set(eval_file) if not args.no_gate else None
    card = _json_file(args.model / "model_card.json", "model") if (args.model / "model_card.json").is_file() else {}
    run_date = parse_date(args.run_date or registry.card_run_date(card) or dt.date.today().isoformat())
    log(f"[register] logging {args.model} for {run_date} to {settings.mlflow_tracking_uri}")
    info = register_export(
        settings, args.model, run_date, params=_json_file(args.params, "params"),
        metrics=_json_file(args.metrics, "metrics"), history=_json_file(args.history, "history"),
        timings=_json_file(args.timings, "timings"), artifacts=args.report)
    log(f"[register] run {info.run_id} -> {settings.mlflow_model_name} version {info.model_version}")
    result = {"run_id": info.run_id, "version": info.model_version, "model_uri": info.model_uri}
    if eval_set is not None:
        decision = gate(settings, info.model_version, eval_set)
        log(f"[gate] {'promoted' if decision.promoted else 'kept as challenger'}: {'; '.join(decision.reasons)}")
        result |= {"promoted": decision.promoted, "reasons": decision.reasons,
                   "champion_version": decision.champion_version,
                   "challenger_metrics": decision.challenger_metrics,
                   "champion_metrics": decision.champion_metrics}
    emit(result)
    return 0
