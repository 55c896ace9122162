"""``led status``: which blue/green slot is live and what both slots hold."""
from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("status", help="show ACTIVE and both blue/green slots' model versions (JSON)",
                       description="Read s3://s3_bucket/s3_prefix/ACTIVE and both slots' manifests; print JSON with "
                       "active_slot, active_model_version and each slot's model_version, created_at, ann_recall.")
    p.set_defaults(func=run)


def run(args) -> int:
    from botocore.exceptions import BotoCoreError, ClientError

    from cli.common import emit
    from infra.errors import UserError
    from infra.settings import get_settings
    from serving.storage import BlueGreenStore, StorageError, status

    settings = get_settings()
    try:
        emit(status(BlueGreenStore.from_settings(settings)))
    except (BotoCoreError, ClientError, StorageError) as exc:
        raise UserError(f"S3 store {settings.s3_endpoint_url or 'AWS'} / {settings.s3_bucket}: {exc}") from None
    return 0
