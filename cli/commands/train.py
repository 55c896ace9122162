"""``led train``: pre-train E on views, fine-tune LED on clicks, evaluate on the last day, export.

Temporal protocol (models/data.py): the window's last day with events is the
evaluation day; E is pre-trained (Spark) and P, b fine-tuned (TensorFlow) on
the days before it only, then Recall@20/50, NDCG@100 and coverage@20 are
measured on the evaluation day's clicks given each user's earlier timeline.
It runs the daily flow's own stage functions (``models.pipeline``: the same
vocabulary, pre-training and fine-tuning), so it trains the model the flow
would train; pre-training is cached under the work directory like the flow's.
The exported folder (models/export.py) holds V = E P, b, ids, counts, the
model card, the eval set (``led register --model OUT`` gates on it) and up to
2000 evaluation timelines for serving's ANN check.
"""
from __future__ import annotations

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

    root = events.require_event_store(args.events)
    run_date = events.parse_date(args.date)
    settings = get_settings().with_overrides(
        events_dir=root, window_days=args.window, dim=args.dim, loss=args.loss, epochs=args.epochs,
        batch_size=args.batch_size, learning_rate=args.learning_rate, num_negatives=args.num_negatives,
        seed=args.seed)
    if settings.window_days < 2:
        raise UserError("--window must be at least 2 days (the last one is the evaluation day)")
    if args.out.exists() and args.out.is_file():
        raise UserError(f"--out is a file: {args.out}")

    from models.led import LedConfig
    from models.pipeline import fine_tune_stage, plan_window, pretrain_stage
    from models.pretrain import PretrainConfig

    plan = plan_window(settings, run_date)
    log(f"[train] window [{plan.start}, {plan.run_date}): pre-train and fine-tune on [{plan.start}, "
        f"{plan.eval_day}), evaluate on {plan.eval_day}; vocabulary {plan.vocabulary_size}")
    pretrained = pretrain_stage(settings, plan, PretrainConfig.from_settings(settings))
    log(f"[train] pre-trained {pretrained.items} items, d={pretrained.dim}, "
        f"explained variance {pretrained.explained_variance:.3f}")
    try:
        config = LedConfig.from_settings(settings)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    trained = fine_tune_stage(settings, plan, pretrained, config, model_dir=args.out)
    log(f"[train] exported to {args.out}")
    metrics, gain = trained.metrics, trained.side_by_side()
    log("[train] NDCG@100 on the evaluation day: " + ", ".join(
        f"{name} {gain[name]['ndcg@100']:+.4f}" if name == "gain" else f"{name} {gain[name]['ndcg@100']:.4f}"
        for name in ("popularity", "initialisation", "trained", "gain")))
    emit({"out": str(args.out.resolve()), "trainable_params": trained.trainable_params, "d": pretrained.dim,
          "items": pretrained.items, "loss": config.loss, "best_epoch": trained.best_epoch,
          "best_step": trained.best_step,
          "recall@20": metrics["recall@20"], "recall@50": metrics["recall@50"], "ndcg@100": metrics["ndcg@100"],
          "coverage@20": metrics["coverage@20"], **trained.figures(),
          "eval_users": metrics["users"], "eval_date": plan.eval_day, "eval_set": trained.eval_set,
          "train_seconds": round(trained.train_seconds, 2)})
    return 0
