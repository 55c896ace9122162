"""``led push``: index an exported model and push it blue/green to S3."""
from __future__ import annotations

from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser(
        "push", help="build the Annoy index of an exported model and push it blue/green to S3",
        description="Build the Annoy index over [V_i, b_i] (metric dot), measure ANN recall@100 against exact "
        "scoring, refuse it below min_ann_recall (exit 1), then write the idle slot of "
        "s3://s3_bucket/s3_prefix/slots/{blue,green}/, re-read and verify every sha256 in its manifest and flip "
        "ACTIVE with a conditional PUT. Last line: JSON with slot, model_version, ann_recall.")
    p.add_argument("--model", required=True, type=Path, help="exported model folder (models/export.py layout)")
    p.add_argument("--n-trees", type=int, default=None, help="override settings.n_trees")
    p.add_argument("--search-k", type=int, default=None, help="override settings.search_k")
    p.set_defaults(func=run)


def run(args) -> int:
    from cli.common import emit, log
    from infra.errors import UserError
    from infra.settings import get_settings

    settings = get_settings().with_overrides(n_trees=args.n_trees, search_k=args.search_k)
    if not args.model.is_dir():
        raise UserError(f"--model {args.model}: no such folder")

    from botocore.exceptions import BotoCoreError, ClientError

    from serving.publish import IndexRejected, publish_model
    from serving.storage import ConcurrentPushError, StorageError

    log(f"[push] indexing {args.model} (n_trees={settings.n_trees}, search_k={settings.search_k})")
    try:
        result = publish_model(args.model, settings)
    except ValueError as exc:  # not an exported model folder / corrupt arrays
        raise UserError(str(exc)) from None
    except IndexRejected as exc:
        log(f"[push] refused: {exc}")
        emit({**exc.result, "error": str(exc)})
        return 1
    except ConcurrentPushError as exc:
        log(f"[push] lost the flip: {exc}")
        emit({"pushed": False, "slot": None, "error": str(exc)})
        return 1
    except StorageError as exc:
        log(f"[push] refused to flip: {exc}")
        emit({"pushed": False, "slot": None, "error": str(exc)})
        return 1
    except (BotoCoreError, ClientError) as exc:
        raise UserError(f"S3 store {settings.s3_endpoint_url or 'AWS'} / {settings.s3_bucket}: {exc}") from None
    log(f"[push] {result['model_version']} is live in slot {result['slot']} "
        f"(ANN recall@100 {result['ann_recall']:.4f})")
    emit(result)
    return 0
