"""Task: plan the window and fix the vocabulary (items with enough views) for the run."""
from __future__ import annotations

import datetime as dt

import pyarrow.compute as pc
from prefect import task
from prefect.cache_policies import NO_CACHE

from infra import events
from infra.errors import UserError
from infra.settings import Settings
from tasks.common import events_fingerprint


@task(name="vocabulary", cache_policy=NO_CACHE)
def plan_window(settings: Settings, run_date: str) -> dict:
    """Training days, evaluation day (the window's last day with events) and the vocabulary.

    The temporal protocol trains on the days before the evaluation day and
    evaluates on that day's clicks, so nothing of it leaks into training.
    The vocabulary is the items with at least ``min_count`` views in the
    training days, sorted by id (a stable item index).
    """
    day = events.parse_date(run_date)
    views = events.require_window(settings.events_dir, "views", day, settings.window_days)
    days = sorted({d.as_py() for d in pc.unique(views.column("date"))})
    if len(days) < 2:
        raise UserError(f"the window before {day} has views on {len(days)} day(s): at least 2 are needed")
    start, eval_day = day - dt.timedelta(days=settings.window_days), days[-1]
    train = views.filter(pc.less(views.column("date"), eval_day))
    counts = pc.value_counts(train.column("item_id")).to_pylist()
    vocab = sorted(c["values"] for c in counts if c["counts"] >= settings.min_count)
    if not vocab:
        raise UserError(f"no item has {settings.min_count}+ views in [{start}, {eval_day}): lower min_count")
    return {
        "events_dir": str(settings.events_dir), "run_date": day.isoformat(), "start": start.isoformat(), "eval_day": eval_day.isoformat(),
        "train_days": (eval_day - start).days, "views": views.num_rows, "train_views": train.num_rows,
        "items_seen": len(counts), "vocabulary_size": len(vocab), "vocabulary": vocab,
        "fingerprint": events_fingerprint(settings.events_dir, start, day),
    }
