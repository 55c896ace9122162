"""Task: blue/green push of the indexed model to S3 (write idle slot, verify, flip ACTIVE)."""
from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from infra.settings import Settings
from serving.publish import SlotBuild
from serving.storage import BlueGreenStore, Push, push_slot


@task(name="push", cache_policy=NO_CACHE, retries=3, retry_delay_seconds=5)
def push_model(settings: Settings, slot: SlotBuild) -> Push:
    """Retried on transient S3 faults: a retry rewrites the idle slot, ACTIVE only flips after verification.

    A rerun whose model version is already live pushes nothing (idempotent backfills).
    """
    store = BlueGreenStore.from_settings(settings)
    active = store.read_active()
    if active is not None and active.model_version == slot.model_version:
        return Push(active.slot, str(slot.model_version), store.url, already_live=True)
    return push_slot(store, slot.files, slot.manifest)
