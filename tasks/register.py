"""Task: log the training as an MLflow run and register its pyfunc model (alias ``challenger``)."""
from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from infra.registry import DatasetRef, RunInfo
from infra.settings import Settings
from models.gate import REFIT_OF_TAG
from models.pipeline import Pretrained, Trained, WindowPlan
from models.registration import find_registered, register_export
from tasks.common import local_trained


@task(name="register", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def register_model(settings: Settings, plan: WindowPlan, trained: Trained, pretrained: Pretrained,
                   validation_docs: str | None, timings: dict, refit_of: str | None = None) -> RunInfo:
    """A rerun of a date whose model is byte-identical keeps its version (``reused``).

    ``refit_of``: the promoted version this model is the whole-window refit of (a version tag).

    ``validation_docs`` is the Data Docs' index page: its whole folder (sub-pages, assets,
    result.json) is logged, or the links in the page would be broken in MLflow.
    """
    trained = local_trained(settings, trained)  # a cache hit may name another host's folder
    existing = find_registered(settings, Path(trained.model_dir), plan.run_date)
    if existing is not None:
        return existing
    params = {"window_start": plan.start, "window_days": settings.window_days, "eval_date": plan.eval_day,
              "train_end": plan.train_end,
              "min_count": settings.min_count, "vocabulary_size": pretrained.items, **trained.config}
    metrics = dict(trained.metrics) | trained.figures() | {"explained_variance": pretrained.explained_variance}
    return register_export(settings, Path(trained.model_dir), plan.run_date, params=params, metrics=metrics,
                           history=list(trained.history), timings=timings,
                           artifacts=[Path(validation_docs).parent] if validation_docs else [],
                           tags={REFIT_OF_TAG: refit_of} if refit_of else None,
                           dataset=DatasetRef(f"events [{plan.start}, {plan.train_end})", plan.fingerprint,
                                              plan.events_dir))
