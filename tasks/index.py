"""Task: build the Annoy index over [V_i, b_i] and measure its recall against exact scoring."""
from __future__ import annotations

import shutil
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from infra import registry
from infra.settings import Settings
from serving.publish import build_slot_files
from tasks.common import run_dir


@task(name="index", cache_policy=NO_CACHE)
def build_index(settings: Settings, run_date: str, trained: dict, registered: dict) -> dict:
    """Slot files (arrays + index) under the run folder; ANN recall@100 logged on the MLflow run."""
    work = run_dir(settings, run_date) / "index"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    files, manifest = build_slot_files(Path(trained["model_dir"]), work, settings.n_trees, settings.search_k,
                                       settings.min_ann_recall, settings.seed)
    manifest["model_version"] = str(registered["model_version"])  # the registry's version is the name served
    registry.connect(settings).log_metric(registered["run_id"], "ann_recall", manifest["ann_recall"])
    return {"files": {name: str(path) for name, path in files.items()}, "manifest": manifest,
            "ann_recall": manifest["ann_recall"]}
