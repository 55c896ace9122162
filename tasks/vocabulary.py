"""Task: plan the window and fix the vocabulary (``models.pipeline.plan_window``)."""
from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from infra.settings import Settings
from models.pipeline import WindowPlan, plan_window


@task(name="vocabulary", cache_policy=NO_CACHE)
def plan_run_window(settings: Settings, run_date: str, whole_window: bool = False) -> WindowPlan:
    return plan_window(settings, run_date, whole_window)
