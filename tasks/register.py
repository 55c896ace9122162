"""Task: log the training as an MLflow run and register its pyfunc model (alias ``challenger``)."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from infra import registry
from infra.settings import Settings


@task(name="register", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def register_model(settings: Settings, plan: dict, trained: dict, pretrained: dict, validation: dict,
                   timings: dict) -> dict:
    params = {"window_start": plan["start"], "window_days": settings.window_days,
              "eval_date": plan["eval_day"], "min_count": settings.min_count,
              "vocabulary_size": pretrained["items"], **trained["config"]}
    metrics = dict(trained["metrics"]) | {"explained_variance": pretrained["explained_variance"]}
    reports = [Path(validation["report_path"])] if validation.get("report_path") else []
    existing = registry.find_registered(settings, Path(trained["model_dir"]), plan["run_date"])
    if existing is not None:  # a rerun of this date with the same model: keep its version
        return asdict(existing) | {"reused": True}
    info = registry.log_training_run(settings, Path(trained["model_dir"]), plan["run_date"], params=params,
                                     metrics=metrics, history=trained["history"], timings=timings,
                                     artifacts=reports)
    return asdict(info) | {"reused": False}
