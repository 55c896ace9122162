"""``led rollback``: point ACTIVE back at the other slot if it holds a verified model."""
from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("rollback", help="flip ACTIVE to the other blue/green slot (verified first)",
                       description="Verify every sha256 of the other slot's manifest, then flip ACTIVE to it with a "
                       "conditional PUT. Refuses (exit 2) when that slot is empty, partial or corrupt.")
    p.set_defaults(func=run)


def run(args) -> int:
    from botocore.exceptions import BotoCoreError, ClientError

    from cli.common import emit, log
    from infra.errors import UserError
    from infra.settings import get_settings
    from serving.storage import BlueGreenStore, StorageError, rollback

    settings = get_settings()
    try:
        result = rollback(BlueGreenStore.from_settings(settings))
    except StorageError as exc:
        raise UserError(str(exc)) from None
    except (BotoCoreError, ClientError) as exc:
        raise UserError(f"S3 store {settings.s3_endpoint_url or 'AWS'} / {settings.s3_bucket}: {exc}") from None
    log(f"[rollback] ACTIVE -> {result['slot']} ({result['model_version']})")
    emit(result)
    return 0
