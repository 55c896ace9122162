"""What the stage tasks share: the cache policy and the run's folder.

Tasks are thin: each calls one function of ``models/``, ``data_checks/``,
``infra/`` or ``serving/``. Expensive stages are cached by Prefect on their
inputs (``INPUTS + TASK_SOURCE``, results persisted under the work directory),
so a rerun after a late failure resumes without recomputing them; the inputs
include the plan's fingerprint of the event partitions read, so new or
replaced data invalidates the cache.
"""
from __future__ import annotations

import dataclasses
import shutil
import tempfile
from pathlib import Path

from prefect.cache_policies import INPUTS, TASK_SOURCE

from infra.settings import Settings

# Cache on the stage's explicit inputs (plan, config, upstream outputs) and its code, not on
# the whole settings object: an unrelated knob (n_trees, ports) must not invalidate a cached SVD.
STAGE_CACHE = (INPUTS - "settings") + TASK_SOURCE


# The settings field of each stage task's timeout, where it is not the task's own name.
TIMEOUT_FIELD = {"fine-tune": "fine_tune", "evaluate-and-gate": "gate", "ship-refit": "gate"}


def with_timeout(stage_task, settings: Settings):
    """The task with this run's ``timeout_seconds`` (``LED_<STAGE>_TIMEOUT_SECONDS``): a hung Spark or
    TensorFlow job then fails its stage (and the run) instead of hanging the day. Applied by the flow
    with the run's settings, so nothing reads the settings when a task module is imported."""
    field = TIMEOUT_FIELD.get(stage_task.name, stage_task.name)
    return stage_task.with_options(timeout_seconds=getattr(settings, f"{field}_timeout_seconds"))


def run_dir(settings: Settings, run_date: str) -> Path:
    return settings.work_dir / "runs" / str(run_date)


# --------------------------------------------------------------------------- stage folders across hosts
# With result storage on S3 (``result_storage_url``), another worker host gets Prefect cache hits
# for pretrain and fine-tune, i.e. records naming folders of the host that computed them. Those
# folders are uploaded beside the results (``stage-cache/<stage>/<digest>``) by the producing task
# and fetched into this host's work dir by the consuming one.
SHARED_PREFIX = "stage-cache"


def _relative(folder: str | Path) -> Path:
    """``/any/work/cache/pretrain/ab12`` -> ``pretrain/ab12`` (the part that is the same on every host)."""
    parts = Path(folder).parts
    if "cache" not in parts:
        raise ValueError(f"{folder} is not a stage cache folder")
    return Path(*parts[len(parts) - parts[::-1].index("cache"):])


def _bucket(settings: Settings):
    if not settings.result_storage_url:
        return None
    from prefect_aws import S3Bucket

    from infra.orchestration import RESULT_BLOCK

    return S3Bucket.load(RESULT_BLOCK)


def share_stage(settings: Settings, folder: str | Path) -> None:
    """Upload a stage's folder to the shared result storage (no-op when results stay on this host)."""
    bucket = _bucket(settings)
    if bucket is not None:
        bucket.upload_from_folder(str(folder), f"{SHARED_PREFIX}/{_relative(folder).as_posix()}")


def local_stage(settings: Settings, folder: str | Path) -> str:
    """The folder on this host: as recorded when present, else fetched from the shared storage into
    this host's work dir (downloaded beside it, then renamed: never half a folder)."""
    if Path(folder).exists() or (bucket := _bucket(settings)) is None:
        return str(folder)
    rel = _relative(folder)
    local = settings.work_dir / "cache" / rel
    if not local.exists():
        local.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=local.parent, prefix=".fetch-") as tmp:
            bucket.download_folder_to_path(f"{SHARED_PREFIX}/{rel.as_posix()}", tmp)
            if not any(Path(tmp).iterdir()):
                raise FileNotFoundError(f"stage folder {rel} is neither on this host nor in the result storage")
            shutil.move(tmp, local)
            Path(tmp).mkdir()  # TemporaryDirectory removes what it created
    return str(local)


def local_pretrained(settings: Settings, pretrained):
    """A ``Pretrained`` record whose embeddings folder is on this host."""
    return dataclasses.replace(pretrained, path=local_stage(settings, pretrained.path))


def local_trained(settings: Settings, trained):
    """A ``Trained`` record whose exported model (and the eval set inside it) is on this host."""
    model_dir = local_stage(settings, trained.model_dir)
    eval_set = Path(model_dir) / Path(trained.eval_set).relative_to(trained.model_dir)
    return dataclasses.replace(trained, model_dir=model_dir, eval_set=str(eval_set))
