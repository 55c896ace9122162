"""Quarantine: a failed day is set aside so the next run trains without it, and says so."""
from __future__ import annotations

import datetime as dt
import json

import pyarrow.compute as pc

from data_checks import suites
from data_checks.runner import validate_window
from infra import events
from infra.settings import Settings
from models.pipeline import plan_window
from tasks.validate import _summary
from tests.test_validation import FAULT_DAY, RUN_DATE, SETTINGS, WINDOW, _copy
from tests.test_validation_traffic import client_retries

ARGS = ("--date", RUN_DATE.isoformat(), "--window", str(WINDOW))


def _days(table) -> set[dt.date]:
    return {d.as_py() for d in pc.unique(table.column("date"))}


def test_quarantine_sets_the_failed_day_aside_then_release_restores_it(led, small_world, tmp_path):
    store = _copy(small_world, tmp_path)
    client_retries(store)
    code, last, out, err = led("validate", "--events", store, *ARGS, "--report-dir", tmp_path / "r")
    assert code == 1 and last["failed_expectations"] == [suites.NEAR_DUPLICATE_RATE]

    code, last, out, err = led("validate", "--events", store, *ARGS, "--quarantine", "--report-dir", tmp_path / "r")
    assert code == 0, err
    assert last["success"] and last["newly_quarantined"] == [FAULT_DAY.isoformat()]
    assert suites.NEAR_DUPLICATE_RATE in last["quarantined"][FAULT_DAY.isoformat()]
    assert out.startswith("FAILED")  # the table of what was set aside comes first
    saved = json.loads((store / events.QUARANTINE_FILE).read_text())
    assert list(saved) == [FAULT_DAY.isoformat()] and "near_duplicate_rate (views)" in saved[FAULT_DAY.isoformat()]
    assert (events.partition_dir(store, "views", FAULT_DAY) / "part-0.parquet").is_file()  # kept for repair

    # every window reader skips it, both kinds; the gate reports it instead of checking it
    for kind in events.KINDS:
        assert FAULT_DAY not in _days(events.read_window(store, kind, RUN_DATE, WINDOW))
    result = validate_window(store, RUN_DATE, WINDOW, settings=SETTINGS)
    assert result.success and list(result.quarantined) == [FAULT_DAY.isoformat()]
    assert {d["partition"] for d in result.days if d["date"] == FAULT_DAY.isoformat()} == {"quarantined"}

    code, last, _, _ = led("validate", "--events", store, *ARGS, "--release", FAULT_DAY.isoformat(),
                           "--report-dir", tmp_path / "r")
    assert code == 1 and last["quarantined"] == {} and last["failed_expectations"] == [suites.NEAR_DUPLICATE_RATE]
    assert json.loads((store / events.QUARANTINE_FILE).read_text()) == {}


def test_the_next_run_trains_without_the_day_and_its_report_says_so(small_world, tmp_path):
    store = _copy(small_world, tmp_path)
    client_retries(store)
    last_day = RUN_DATE - dt.timedelta(days=1)  # the run's evaluation day, quarantined too
    events.update_quarantine(store, add={FAULT_DAY: "near_duplicate_rate (views)", last_day: "operator"})
    settings = Settings(events_dir=store, window_days=WINDOW, work_dir=tmp_path / "work")
    plan = plan_window(settings, RUN_DATE.isoformat())
    all_views = sum(events.read_day(store, "views", d).num_rows for d in events.window_dates(RUN_DATE, WINDOW))
    skipped = sum(events.read_day(store, "views", d).num_rows for d in (FAULT_DAY, last_day))
    assert plan.views == all_views - skipped
    assert plan.eval_day == (last_day - dt.timedelta(days=1)).isoformat()
    summary = _summary(validate_window(store, RUN_DATE, WINDOW, settings=SETTINGS))
    assert "Quarantined, not trained on: 2026-01-08 (near_duplicate_rate (views)); 2026-01-10 (operator)" in summary


def test_a_quarantined_day_is_not_history_for_the_next_days(small_world, tmp_path):
    """The bad day must not move the trailing medians the following days are compared with."""
    store = _copy(small_world, tmp_path)
    events.update_quarantine(store, add={FAULT_DAY: "test"})
    result = validate_window(store, RUN_DATE, WINDOW, settings=SETTINGS)
    day_after = next(d for d in result.days if d["kind"] == "views" and d["date"] == "2026-01-09")
    assert day_after["history_days"] == 6  # 7 trailing days minus the quarantined one


def test_unreadable_quarantine_list_is_a_user_error(led, small_world, tmp_path):
    store = _copy(small_world, tmp_path)
    (store / events.QUARANTINE_FILE).write_text("[not a mapping")
    code, last, out, err = led("validate", "--events", store, *ARGS)
    assert code == 2 and "unreadable quarantine list" in err and "Traceback" not in err
    code, _, _, err = led("validate", "--events", store, *ARGS, "--release", "2026-13-01")
    assert code == 2


def test_the_spark_views_reader_skips_the_day_too(spark, small_world, tmp_path):
    """Pre-training reads the window with Spark (models/pretrain.py): it must honour the list too."""
    from models.pretrain import read_window_views

    store = _copy(small_world, tmp_path)
    events.update_quarantine(store, add={FAULT_DAY: "test"})
    views = read_window_views(spark, store, RUN_DATE, WINDOW)
    days = {r["d"] for r in views.selectExpr("to_date(ts) AS d").distinct().collect()}
    assert FAULT_DAY not in days and len(days) == WINDOW - 1
