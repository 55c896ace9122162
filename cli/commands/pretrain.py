"""``led pretrain``: item embeddings from a window of views (PMI + randomized SVD, locally or in Spark)."""
from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser(
        "pretrain", help="pre-train item embeddings on views (PMI + randomized SVD, local or Spark)",
        description="Read the views of [DATE-WINDOW, DATE) from the event store, build the item-item PMI "
        "matrix and its rank-DIM randomized SVD (in this process for a small window, in Spark for a large "
        "one: --engine), and write item_ids.npy, E.npy, counts.npy, singular_values.npy and pretrain.json "
        "to OUT (atomically). Defaults come from the settings (`led config`).")
    p.add_argument("--events", required=True, help="event store folder (views/ partitioned by date)")
    p.add_argument("--date", required=True, help="run date D (YYYY-MM-DD); views strictly before D are used")
    p.add_argument("--window", type=int, default=None, help="window W in days (default: settings window_days)")
    p.add_argument("--dim", type=int, default=None, help="embedding size d (default: settings dim)")
    p.add_argument("--out", required=True, help="output folder (must not exist or be empty)")
    p.add_argument("--min-count", type=int, default=None, help="drop items with fewer co-occurrences")
    p.add_argument("--max-timeline", type=int, default=None, help="cap on distinct items per user")
    p.add_argument("--oversampling", type=int, default=None, help="randomized SVD oversampling p")
    p.add_argument("--power-iters", type=int, default=None, help="randomized SVD power iterations q")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--engine", choices=("auto", "local", "spark"), default=None,
                   help="where PMI + SVD run (default: settings pretrain_engine; auto = local up to "
                   "pretrain_local_max_views views, else Spark)")
    p.set_defaults(func=run)


def run(args) -> int:
    import time
    from pathlib import Path

    from cli.common import emit, log
    from infra import events
    from infra.errors import UserError
    from infra.settings import get_settings

    settings = get_settings()
    window = args.window if args.window is not None else settings.window_days
    events.window_dates(args.date, window)  # validates date and window
    events.require_event_store(Path(args.events))
    out = Path(args.out).resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"output folder is not empty: {out} (choose a new folder or remove it)")

    from models.pretrain import PretrainConfig, pretrain_window

    try:
        cfg = PretrainConfig.from_settings(
            settings, dim=args.dim, min_count=args.min_count, max_timeline=args.max_timeline,
            oversampling=args.oversampling, power_iters=args.power_iters, seed=args.seed)
    except ValueError as exc:
        raise UserError(str(exc)) from None

    from models.pretrain import choose_engine, pretrain_local

    start = time.perf_counter()
    engine = choose_engine(args.engine or settings.pretrain_engine,
                           events.window_rows(Path(args.events), "views", args.date, window),
                           settings.pretrain_local_max_views)
    log(f"[pretrain] window of {window} days before {args.date}, d={cfg.dim}, {engine} engine")
    try:
        if engine == "local":
            views = events.require_window(Path(args.events), "views", args.date, window)
            emb = pretrain_local(views.select(["user_id", "item_id", "ts"]), cfg)
        else:
            from infra.spark import get_spark

            emb = pretrain_window(get_spark(settings), Path(args.events), args.date, window, cfg)
    except ValueError as exc:  # too few items for the requested dimension, empty input
        raise UserError(str(exc)) from None
    emb.save(out)
    seconds = time.perf_counter() - start
    log(f"[pretrain] {len(emb.item_ids)} items, explained variance {emb.explained_variance:.3f}, "
        f"{seconds:.1f}s -> {out}")
    emit({"items": len(emb.item_ids), "dim": emb.dim, "engine": engine, "seconds": round(seconds, 3),
          "explained_variance": round(emb.explained_variance, 6), "out": str(out),
          "users": emb.sizes.get("users"), "nnz": emb.sizes.get("pmi_nnz"),
          "timings": {k: round(v, 3) for k, v in emb.timings.items()}})
    return 0
