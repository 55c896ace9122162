"""Task: evaluate challenger and champion on the same held-out clicks; move ``champion`` if it qualifies."""
from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from infra.registry import RunInfo
from infra.settings import Settings
from models.evaluation import load_eval_set
from models.gate import GateDecision, gate
from models.pipeline import Trained
from serving.publish import SlotBuild
from tasks.common import local_trained


@task(name="evaluate-and-gate", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def evaluate_and_gate(settings: Settings, trained: Trained, registered: RunInfo, slot: SlotBuild) -> GateDecision:
    trained = local_trained(settings, trained)  # a cache hit may name another host's folder
    return gate(settings, registered.model_version, load_eval_set(Path(trained.eval_set)), slot.ann_recall)
