"""``led stats``: events per day, users, items, items launched/retired per day."""
from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("stats", help="statistics of an event store",
                       description="Print a per-day table (views, clicks, users, items, items launched and "
                       "retired, new users) and end with a JSON summary. Launched = first day an item is "
                       "viewed in the store; retired = the day after it was last viewed.")
    p.add_argument("--events", default=None, help="event store (default: settings events_dir)")
    p.set_defaults(func=run)


def run(args) -> int:
    from cli.common import emit
    from data_sources.stats import store_stats
    from infra.settings import get_settings

    stats = store_stats(args.events or get_settings().events_dir)
    cols = ["date", "views", "clicks", "users", "new_users", "items", "launched", "retired"]
    print("  ".join(f"{c:>10s}" for c in cols))
    for row in stats["per_day"]:
        print("  ".join(f"{row[c]!s:>10s}" for c in cols))
    emit(stats)
    return 0
