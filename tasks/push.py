"""Task: blue/green push of the indexed model to S3 (write idle slot, verify, flip ACTIVE)."""
from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from infra.settings import Settings
from serving.storage import BlueGreenStore, push_slot


@task(name="push", cache_policy=NO_CACHE, retries=3, retry_delay_seconds=5)
def push_model(settings: Settings, index: dict) -> dict:
    """Retried on transient S3 faults: a retry rewrites the idle slot, ACTIVE only flips after verification.

    A rerun whose model version is already live pushes nothing (idempotent backfills).
    """
    store = BlueGreenStore.from_settings(settings)
    active = store.read_active()
    version = str(index["manifest"]["model_version"])
    if active is not None and active.model_version == version:
        return {"slot": active.slot, "model_version": version, "store": store.url, "already_live": True}
    files = {name: Path(path) for name, path in index["files"].items()}
    return push_slot(store, files, index["manifest"]) | {"already_live": False}
