"""``led train``: pre-train E on views, fine-tune LED on clicks, evaluate on the last day, export.

Temporal protocol (models/data.py): the window's last day with events is the
evaluation day; E is pre-trained (Spark) and P, b fine-tuned (TensorFlow) on
the days before it only, then Recall@20/50, NDCG@100 and coverage@20 are
measured on the evaluation day's clicks given each user's earlier timeline.
The exported folder (models/export.py) holds V = E P, b, ids, counts, the
model card and up to 2000 evaluation timelines for serving's ANN check.
"""
from __future__ import annotations

import datetime as dt
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser(
        "train", help="pre-train + fine-tune LED on a window, evaluate on its last day, export",
        description="Pre-train item embeddings (PMI + randomized SVD, Spark) on the views of the window, "
        "fine-tune LED Project (TensorFlow) on the clicks, evaluate on the clicks of the window's last day "
        "(temporal protocol: that day is never trained on) and export V = E P, b and the model card to OUT. "
        "Hyper-parameters default to the settings (`led config`).")
    p.add_argument("--events", type=Path, required=True, help="event store folder")
    p.add_argument("--date", required=True, help="run date D (YYYY-MM-DD): the window is [D-W, D)")
    p.add_argument("--window", type=int, default=None, help="window W in days (default: settings.window_days)")
    p.add_argument("--out", type=Path, required=True, help="export folder (written atomically)")
    p.add_argument("--dim", type=int, default=None, help="embedding size d")
    p.add_argument("--loss", choices=["bpr", "ns", "css", "multi"], default=None)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--learning-rate", type=float, default=None)
    p.add_argument("--num-negatives", type=int, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.set_defaults(func=run)


def run(args) -> int:
    from cli.common import emit, log
    from infra import events
    from infra.errors import UserError
    from infra.settings import get_settings

    settings = get_settings()
    root = events.require_event_store(args.events)
    run_date = events.parse_date(args.date)
    window = args.window or settings.window_days
    if window < 2:
        raise UserError("--window must be at least 2 days (the last one is the evaluation day)")
    if args.out.exists() and args.out.is_file():
        raise UserError(f"--out is a file: {args.out}")

    from models.led import LedConfig, eval_day, fine_tune_window
    from models.pretrain import PretrainConfig, pretrain_window

    try:
        cfg = LedConfig.from_settings(settings, dim=args.dim, loss=args.loss, epochs=args.epochs,
                                      batch_size=args.batch_size, learning_rate=args.learning_rate,
                                      num_negatives=args.num_negatives, seed=args.seed)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    views = events.read_window(root, "views", run_date, window)
    clicks = events.read_window(root, "clicks", run_date, window)
    if clicks.num_rows == 0:
        raise UserError(f"no clicks in the window [{run_date - dt.timedelta(days=window)}, {run_date})")
    last = eval_day(views, clicks)
    start = run_date - dt.timedelta(days=window)
    if last <= start:
        raise UserError("the window has events on one day only: the temporal protocol needs two")
    log(f"[train] window [{start}, {run_date}): pre-train and fine-tune on [{start}, {last}), evaluate on {last}")

    import numpy as np

    from infra.spark import get_spark

    spark = get_spark(settings)
    pre_cfg = PretrainConfig.from_settings(settings, dim=cfg.dim, seed=cfg.seed)
    try:
        emb = pretrain_window(spark, root, last, (last - start).days, pre_cfg)
    except ValueError as exc:  # too few items for d, etc.
        raise UserError(f"pre-training failed: {exc}") from None
    log(f"[train] pre-trained {len(emb.item_ids)} items, d={emb.E.shape[1]}, "
        f"explained variance {emb.explained_variance:.3f}")
    try:
        model, split, metrics = fine_tune_window(emb, views, clicks, cfg)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    # context for the reader: the same evaluation with a popularity ranking (view counts)
    from models.data import evaluate_scorer

    counts = model.counts.astype(float)
    popularity = evaluate_scorer(lambda rows: np.broadcast_to(counts, (len(rows), len(counts))),
                                 split.test, len(counts))
    window_info = {"run_date": str(run_date), "window_days": window, "train_days": [str(start), str(last - dt.timedelta(days=1))],
                   "eval_date": str(last), "views": views.num_rows, "clicks": clicks.num_rows} | split.info
    card_extra = {"baselines": {"popularity": popularity}, "pretrain": {"explained_variance": emb.explained_variance, "timings": emb.timings,
                               "sizes": emb.sizes, "config": pre_cfg.__dict__}}
    model.export(args.out, metrics=metrics, data_window=window_info, eval_set=split.test, extra=card_extra)
    log(f"[train] exported to {args.out}")
    emit({"out": str(args.out.resolve()), "trainable_params": model.trainable_params, "d": model.dim,
          "items": len(model.item_ids), "loss": cfg.loss, "best_epoch": model.best_epoch,
          "recall@20": metrics["recall@20"], "recall@50": metrics["recall@50"], "ndcg@100": metrics["ndcg@100"],
          "coverage@20": metrics["coverage@20"], "popularity_ndcg@100": popularity["ndcg@100"],
          "eval_users": metrics["users"], "eval_date": str(last),
          "train_seconds": round(model.train_seconds, 2)})
    return 0
