"""``led generate``: write a synthetic world (views, clicks, ground truth) to a new event store."""
from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser(
        "generate", help="generate a synthetic world with catalog and user churn",
        description="Latent-taste synthetic world: Zipf-like popularity, users with mixtures of tastes, "
        "sessions of several views, clicks driven by affinity, items launched/retired and users joining/"
        "leaving every day. Written day by day (bounded memory) to a new event store, with its ground "
        "truth under OUT/truth/. Deterministic by seed.")
    p.add_argument("--out", required=True, help="new (or empty) output folder")
    p.add_argument("--days", type=int, default=7, help="number of days (default 7)")
    p.add_argument("--users", type=int, default=5000, help="initial users (default 5000)")
    p.add_argument("--items", type=int, default=2000, help="initial catalog size (default 2000)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--start", default="2026-01-01", help="first day, YYYY-MM-DD (default 2026-01-01)")
    p.add_argument("--item-churn", type=float, default=0.01, help="share of the catalog replaced per day")
    p.add_argument("--user-churn", type=float, default=0.01, help="share of users joining/leaving per day")
    p.add_argument("--views-per-session", type=float, default=5.0)
    p.add_argument("--active-share", type=float, default=0.3, help="share of users active on a day")
    p.set_defaults(func=run)


def run(args) -> int:
    import time

    from cli.common import Progress, emit
    from data_sources.synthetic import WorldConfig, generate
    from infra.errors import UserError
    from infra.events import parse_date

    try:
        cfg = WorldConfig(users=args.users, items=args.items, days=args.days, seed=args.seed,
                          start=parse_date(args.start), item_churn=args.item_churn, user_churn=args.user_churn,
                          views_per_session=args.views_per_session, active_share=args.active_share)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    progress = Progress("generate", total=args.days)
    done = {"n": 0}

    def on_day(day):
        done["n"] += 1
        progress.update(done["n"], f"{day.date} views={day.views.num_rows} clicks={day.clicks.num_rows}")

    t0 = time.perf_counter()
    result = generate(args.out, cfg, on_day)
    seconds = time.perf_counter() - t0
    emit(result | {"seconds": round(seconds, 3), "out": str(args.out)})
    return 0
