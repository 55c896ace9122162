"""``led compare``: registered versions side by side (run date, metrics, deltas vs champion, aliases, gate)."""
from __future__ import annotations

COLUMNS = ("recall_at_20", "recall_at_50", "ndcg_at_100", "coverage_at_20")


def register(sub) -> None:
    p = sub.add_parser(
        "compare", help="compare the latest registered model versions with the champion",
        description="List the last N versions of the registered model, newest first: run date, final "
        "metrics, deltas against the champion, aliases, gate decision and the gate's same-eval-set NDCG@100 "
        "for challenger and champion.")
    p.add_argument("--last", type=int, default=10, metavar="N", help="number of versions (default 10)")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.set_defaults(func=run)


def _fmt(value, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.4f}" if signed else f"{value:.4f}"


def table(rows: list[dict]) -> str:
    head = ["version", "run_date", "aliases", *COLUMNS, "d_ndcg", "gate", "gate_ndcg (chal/champ)"]
    lines = [head]
    for r in rows:
        m, d = r["metrics"], r["delta_vs_champion"]
        gate_pair = f"{_fmt(m.get('gate_ndcg_at_100'))}/{_fmt(m.get('gate_champion_ndcg_at_100'))}"
        lines.append([r["version"], r["run_date"] or "-", ",".join(r["aliases"]) or "-",
                      *[_fmt(m.get(c)) for c in COLUMNS], _fmt(d.get("ndcg_at_100"), signed=True),
                      r["gate"], gate_pair])
    widths = [max(len(str(row[i])) for row in lines) for i in range(len(head))]
    out = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in lines]
    for r in rows:
        if r["gate_reasons"]:
            out.append(f"v{r['version']} gate: {r['gate_reasons']}")
    return "\n".join(out)


def run(args) -> int:
    from cli.common import emit
    from infra import registry
    from infra.errors import UserError
    from infra.settings import get_settings

    if args.last < 1:
        raise UserError(f"--last must be at least 1, got {args.last}")
    settings = get_settings()
    rows = registry.compare(settings, args.last)
    champion = next((r["version"] for r in rows if "champion" in r["aliases"]), None)
    if args.format == "json":  # the whole comparison is the final JSON line
        emit({"model": settings.mlflow_model_name, "champion": champion, "versions": rows})
        return 0
    print(table(rows))
    emit({"model": settings.mlflow_model_name, "champion": champion, "versions": [r["version"] for r in rows]})
    return 0
