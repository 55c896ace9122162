"""What the stage tasks share: the run's settings, its folders and the events fingerprint.

Tasks are thin: each calls one pure function of ``models/``, ``data_checks/``,
``infra/`` or ``serving/``. Expensive stages are cached by Prefect on their
inputs (``INPUTS + TASK_SOURCE``, results persisted under the work directory),
so a rerun after a late failure resumes without recomputing them; the inputs
include a fingerprint of the event partitions read, so new or replaced data
invalidates the cache.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path

from prefect.cache_policies import INPUTS, TASK_SOURCE

from infra import events
from infra.settings import Settings

# Cache on the stage's explicit inputs (plan, config, upstream outputs) and its code, not on
# the whole settings object: an unrelated knob (n_trees, ports) must not invalidate a cached SVD.
STAGE_CACHE = (INPUTS - "settings") + TASK_SOURCE


def run_dir(settings: Settings, run_date: str) -> Path:
    return settings.work_dir / "runs" / str(run_date)


def cache_dir(settings: Settings, stage: str, key: dict) -> Path:
    """A content-addressed folder for a cached stage's output."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:20]
    return settings.work_dir / "cache" / stage / digest


def events_fingerprint(root: Path, start: dt.date, end: dt.date) -> str:
    """Hash of the partition files of [start, end): names, sizes and modification times."""
    h = hashlib.sha256()
    day = start
    while day < end:
        for kind in events.KINDS:
            folder = events.partition_dir(root, kind, day)
            for f in sorted(folder.glob("*.parquet")) if folder.is_dir() else []:
                st = f.stat()
                h.update(f"{kind}/{day}/{f.name}:{st.st_size}:{st.st_mtime_ns};".encode())
        day += dt.timedelta(days=1)
    return h.hexdigest()[:20]
