"""Task: evaluate challenger and champion on the same held-out clicks; move ``champion`` if it qualifies."""
from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from infra import registry
from infra.settings import Settings


@task(name="evaluate-and-gate", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def evaluate_and_gate(settings: Settings, trained: dict, registered: dict) -> dict:
    eval_set = registry.load_eval_set(Path(trained["eval_set"]))
    return registry.gate(settings, registered["model_version"], eval_set).as_dict()
