"""Task: blue/green push of the indexed model to S3 (write idle slot, verify, flip ACTIVE)."""
from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from infra.settings import Settings
from serving.storage import BlueGreenStore, push_slot


@task(name="push", cache_policy=NO_CACHE, retries=3, retry_delay_seconds=5)
def push_model(settings: Settings, index: dict) -> dict:
    """Retried on transient S3 faults: a retry rewrites the idle slot, ACTIVE only flips after verification."""
    files = {name: Path(path) for name, path in index["files"].items()}
    return push_slot(BlueGreenStore.from_settings(settings), files, index["manifest"])
