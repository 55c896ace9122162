"""What the stage tasks share: the cache policy and the run's folder.

Tasks are thin: each calls one function of ``models/``, ``data_checks/``,
``infra/`` or ``serving/``. Expensive stages are cached by Prefect on their
inputs (``INPUTS + TASK_SOURCE``, results persisted under the work directory),
so a rerun after a late failure resumes without recomputing them; the inputs
include the plan's fingerprint of the event partitions read, so new or
replaced data invalidates the cache.
"""
from __future__ import annotations

from pathlib import Path

from prefect.cache_policies import INPUTS, TASK_SOURCE

from infra.settings import Settings, get_settings

# Cache on the stage's explicit inputs (plan, config, upstream outputs) and its code, not on
# the whole settings object: an unrelated knob (n_trees, ports) must not invalidate a cached SVD.
STAGE_CACHE = (INPUTS - "settings") + TASK_SOURCE


def stage_timeout(stage: str) -> float:
    """The stage's ``timeout_seconds`` (``LED_<STAGE>_TIMEOUT_SECONDS``), read when the task is defined:
    a hung Spark or TensorFlow job then fails its stage (and the run) instead of hanging the day."""
    return getattr(get_settings(), f"{stage}_timeout_seconds")


def run_dir(settings: Settings, run_date: str) -> Path:
    return settings.work_dir / "runs" / str(run_date)
