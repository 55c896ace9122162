"""Task: build the Annoy index over [V_i, b_i] and measure its recall against exact scoring."""
from __future__ import annotations

import shutil
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from infra import registry
from infra.registry import RunInfo
from infra.settings import Settings
from models.pipeline import Trained
from serving.publish import SlotBuild, build_slot_files
from tasks.common import local_trained, run_dir


@task(name="index", cache_policy=NO_CACHE)
def build_index(settings: Settings, run_date: str, trained: Trained, registered: RunInfo,
                folder: str = "index") -> SlotBuild:
    """Slot files (arrays + index) under the run's ``folder``, served as the registry's version; the ANN
    recall@100 is also logged on the MLflow run for the UI (the gate gets it from here directly)."""
    trained = local_trained(settings, trained)  # a cache hit may name another host's folder
    work = run_dir(settings, run_date) / folder
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    slot = build_slot_files(Path(trained.model_dir), work, settings.n_trees, settings.search_k,
                            settings.min_ann_recall, settings.seed, model_version=registered.model_version)
    registry.connect(settings).log_metric(registered.run_id, "ann_recall", slot.ann_recall)
    return slot
