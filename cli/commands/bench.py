"""``led bench quality``: the held-out-user quality table (models/quality.py) on any event store."""
from __future__ import annotations

import json
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("bench", help="offline benchmarks (quality table)",
                       description="Offline benchmarks. `led bench quality` runs the Mult-VAE "
                       "strong-generalisation table (held-out users) on any event store.")
    bench = p.add_subparsers(dest="bench", metavar="BENCH", required=True)
    q = bench.add_parser(
        "quality", help="Recall@20/50, NDCG@100 of LED and baselines on held-out users",
        description="Held-out users (20%% test, 10%% validation, 80/20 fold-in/targets), clicks as positives. "
        "Models: popularity, ease, mult_vae, svd_average, svd_average_bias, led_init (LED's initialisation, "
        "before any step), led_project, led_project_<loss> "
        "(bpr, ns, css, multi), led_train_e, led_no_projection, led_project_views, oracle (synthetic worlds). "
        "LED's hyper-parameters default to the settings (`led config`), the same as the daily flow's. "
        "Prints the table (mean ± std over seeds) and ends with one JSON line.")
    q.add_argument("--events", type=Path, required=True, help="event store folder")
    q.add_argument("--seeds", type=int, default=3, help="number of user splits (default 3)")
    q.add_argument("--models", default=None,
                   help="comma-separated model names "
                   "(default popularity,ease,mult_vae,svd_average,led_init,led_project)")
    q.add_argument("--views-pretrain", action="store_true",
                   help="also report led_project_views: E pre-trained on views and clicks")
    q.add_argument("--dim", type=int, default=None, help="LED embedding size d (default settings.dim)")
    q.add_argument("--loss", choices=["bpr", "ns", "css", "multi"], default=None)
    q.add_argument("--num-negatives", type=int, default=None)
    q.add_argument("--negative-sampling", choices=["uniform", "popularity"], default=None)
    q.add_argument("--epochs", type=int, default=None, help="cap on passes over the training users")
    q.add_argument("--max-steps", type=int, default=None, help="optimizer-step budget")
    q.add_argument("--eval-every", type=int, default=None, help="steps between validations (0 = derived)")
    q.add_argument("--patience", type=int, default=None, help="validations without improvement before stopping")
    q.add_argument("--batch-size", type=int, default=None, help="users per step (0 = derived)")
    q.add_argument("--learning-rate", type=float, default=None, help="peak learning rate")
    q.add_argument("--lr-schedule", choices=["cosine", "constant"], default=None)
    q.add_argument("--warmup-share", type=float, default=None, help="share of the budget spent warming up")
    q.add_argument("--bias-lr-scale", type=float, default=None, help="rate of the biases relative to P's")
    q.add_argument("--keep-prob", type=float, default=None)
    q.add_argument("--init-scale", type=float, default=None, help="P initialised to INIT_SCALE x identity")
    q.add_argument("--min-count", type=int, default=None, help="pre-training min co-occurrence count")
    q.add_argument("--vae-epochs", type=int, default=None, help="Mult-VAE epochs (default 200)")
    q.add_argument("--json-out", type=Path, default=None, help="also write the full results JSON here")
    q.set_defaults(func=run)


def run(args) -> int:
    from cli.common import emit, log
    from infra import events
    from infra.errors import UserError
    from infra.settings import get_settings

    root = events.require_event_store(args.events)
    if args.seeds < 1:
        raise UserError("--seeds must be at least 1")
    from models.quality import DEFAULT_MODELS, QualityConfig, format_table, known_model, run_quality

    models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else list(DEFAULT_MODELS)
    if args.views_pretrain and "led_project_views" not in models:
        models.append("led_project_views")
    unknown = [m for m in models if not known_model(m)]
    if unknown:
        raise UserError(f"unknown model(s): {', '.join(unknown)}")

    from models.baselines import MultVaeConfig
    from models.led import LedConfig

    settings = get_settings()
    try:
        led_cfg = LedConfig.from_settings(
            settings, dim=args.dim, loss=args.loss, num_negatives=args.num_negatives,
            negative_sampling=args.negative_sampling, epochs=args.epochs, max_steps=args.max_steps,
            eval_every=args.eval_every, patience=args.patience, batch_size=args.batch_size,
            learning_rate=args.learning_rate, lr_schedule=args.lr_schedule, warmup_share=args.warmup_share,
            bias_lr_scale=args.bias_lr_scale, keep_prob=args.keep_prob, init_scale=args.init_scale)
    except (ValueError, TypeError) as exc:
        raise UserError(str(exc)) from None
    vae = MultVaeConfig(epochs=args.vae_epochs) if args.vae_epochs else MultVaeConfig()
    overrides = {"min_count": args.min_count} if args.min_count else {}
    cfg = QualityConfig(seeds=args.seeds, models=models, led=led_cfg,
                        pretrain_overrides=overrides, mult_vae=vae)
    try:
        result = run_quality(root, cfg)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    print(format_table(result["models"]))
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(result, indent=2, default=str))
        log(f"[bench] results written to {args.json_out}")
    keys = ("recall@20", "recall@50", "ndcg@100", "train_seconds", "infer_ms_per_user")
    emit({"models": {name: {k: r[k] for k in keys} | {f"{k}_std": r[f"{k}_std"] for k in keys[:3]}
                     for name, r in result["models"].items()}})
    return 0
