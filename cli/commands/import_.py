"""``led import movielens|generic``: replay an external log into a new event store."""
from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("import", help="import MovieLens or a generic CSV/parquet log into an event store",
                       description="Replay interactions by timestamp into daily partitions of a new event store.")
    kinds = p.add_subparsers(dest="source", metavar="SOURCE", required=True)

    ml = kinds.add_parser("movielens", help="MovieLens 100K/1M/20M/25M/latest",
                          description="Every rating is a view; a rating >= --click-threshold is also a click. "
                          "PATH is a ratings file (u.data, ml-100k.inter, ratings.dat, ratings.csv) or a folder "
                          "holding one.")
    ml.add_argument("path")
    ml.add_argument("--out", required=True, help="new (or empty) output folder")
    ml.add_argument("--click-threshold", type=float, default=None,
                    help="rating that makes a click (default: settings click_rating_threshold, 4)")
    ml.set_defaults(func=run_movielens)

    g = kinds.add_parser("generic", help="CSV or parquet with user, item, timestamp (and event type) columns",
                         description="Columns are named by flags. Without --event-col every row is a view.")
    g.add_argument("path")
    g.add_argument("--out", required=True, help="new (or empty) output folder")
    g.add_argument("--user-col", default="user_id")
    g.add_argument("--item-col", default="item_id")
    g.add_argument("--ts-col", default="timestamp")
    g.add_argument("--ts-unit", choices=["s", "ms", "us", "iso"], default="s",
                   help="numeric epoch unit, or iso for ISO-8601 strings (default s)")
    g.add_argument("--event-col", default=None, help="event-type column (optional)")
    g.add_argument("--view-values", nargs="+", default=["view"], help="event types that are views")
    g.add_argument("--click-values", nargs="+", default=["click"], help="event types that are clicks")
    g.add_argument("--clicks-not-views", action="store_true",
                   help="do not also record clicks as views (default: a click is also a view)")
    g.set_defaults(func=run_generic)


def _run(label: str, do_import) -> int:
    import time

    from cli.common import Progress, emit

    progress = Progress(f"import {label}")

    def on_day(date, done: int, total: int) -> None:
        progress.total = total
        progress.update(done, str(date))

    t0 = time.perf_counter()
    result = do_import(on_day)
    emit(result | {"seconds": round(time.perf_counter() - t0, 3)})
    return 0


def run_movielens(args) -> int:
    from data_sources.movielens import import_movielens
    from infra.settings import get_settings

    threshold = args.click_threshold if args.click_threshold is not None else get_settings().click_rating_threshold
    return _run("movielens", lambda on_day: import_movielens(args.path, args.out, threshold, on_day))


def run_generic(args) -> int:
    from data_sources.generic import import_generic

    return _run("generic", lambda on_day: import_generic(
        args.path, args.out, on_day, user_col=args.user_col, item_col=args.item_col, ts_col=args.ts_col,
        ts_unit=args.ts_unit, event_col=args.event_col, view_values=args.view_values,
        click_values=args.click_values, clicks_are_views=not args.clicks_not_views))
