"""The validation gate: a catalogue of injected faults, and no false alarms on clean data.

Faulty stores are copies of the clean ``small_world`` (10 days from
2026-01-01) with ONE partition rewritten as raw parquet, so every failure can
only come from the injected fault. The run date 2026-01-11 with a 10-day
window validates every day; the fault sits on 2026-01-08, which has 7 trailing
days so the volume checks apply to it.
"""
from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from data_checks import suites
from data_checks.runner import validate_window
from infra import events
from infra.errors import UserError
from infra.settings import Settings

RUN_DATE, WINDOW = dt.date(2026, 1, 11), 10
FAULT_DAY = dt.date(2026, 1, 8)
SETTINGS = Settings()  # defaults: thresholds as shipped, no led.toml / env influence


def _copy(world: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "events"
    shutil.copytree(world, dst, ignore=shutil.ignore_patterns("truth"))
    return dst


def _rewrite(store: Path, table: pa.Table, kind: str = "views", day: dt.date = FAULT_DAY) -> None:
    """Replace one partition with a raw parquet file (no schema enforcement: type faults survive)."""
    folder = events.partition_dir(store, kind, day)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    pq.write_table(table, folder / "part-0.parquet")


def _day(store: Path, kind: str = "views", day: dt.date = FAULT_DAY) -> pa.Table:
    return events.read_day(store, kind, day)


def _replace(t: pa.Table, name: str, values) -> pa.Table:
    return t.set_column(t.schema.get_field_index(name), name, values)


# --- the faults: each rewrites one partition of a clean copy ------------------------

def renamed_column(s):
    t = _day(s)
    _rewrite(s, t.rename_columns(["uid", "item_id", "ts"]))


def missing_column(s):
    _rewrite(s, _day(s).drop_columns(["item_id"]))


def wrong_type(s):
    t = _day(s)
    numeric = pc.cast(pc.utf8_slice_codeunits(t.column("item_id"), 1), pa.int64())  # "i42" -> 42
    _rewrite(s, _replace(t, "item_id", numeric))


def naive_timestamps(s):
    t = _day(s)
    _rewrite(s, _replace(t, "ts", t.column("ts").cast(pa.timestamp("us"))))


def null_ids(s):
    t = _day(s)
    mask = pa.array(np.arange(t.num_rows) % 20 == 0)
    _rewrite(s, _replace(t, "user_id", pc.if_else(mask, pa.scalar(None, pa.string()), t.column("user_id"))))


def malformed_ids(s):
    t = _day(s)
    mask = pa.array(np.arange(t.num_rows) % 50 == 0)
    padded = pc.binary_join_element_wise(pa.scalar(" "), t.column("item_id"), "")
    _rewrite(s, _replace(t, "item_id", pc.if_else(mask, padded, t.column("item_id"))))


def future_timestamps(s):
    t = _day(s)
    future = pa.scalar(int((dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=30)).timestamp() * 1e6),
                       pa.timestamp("us", tz="UTC"))
    mask = pa.array(np.arange(t.num_rows) % 10 == 0)
    _rewrite(s, _replace(t, "ts", pc.if_else(mask, future, t.column("ts"))))


def ts_outside_day(s):
    """A partition holding some events of two days earlier (a mis-partitioned backfill)."""
    t = _day(s)
    shifted = pc.subtract(t.column("ts"), pa.scalar(dt.timedelta(days=2)))
    mask = pa.array(np.arange(t.num_rows) % 4 == 0)
    _rewrite(s, _replace(t, "ts", pc.if_else(mask, shifted, t.column("ts"))))


def duplicated_day(s):
    """The day loaded twice (a retried ingestion that appended instead of replacing)."""
    t = _day(s)
    _rewrite(s, pa.concat_tables([t, t]))


def empty_day(s):
    _rewrite(s, events.SCHEMA.empty_table())


def missing_day(s):
    shutil.rmtree(events.partition_dir(s, "views", FAULT_DAY))


def volume_drop(s):
    t = _day(s)
    keep = np.random.default_rng(0).random(t.num_rows) < 0.1
    _rewrite(s, t.filter(pa.array(keep)))


def volume_spike(s):
    """10x the day's traffic: 9 extra copies under fresh user ids with shifted times (no duplicates)."""
    t = _day(s)
    copies = [t]
    for k in range(1, 10):
        users = pc.binary_join_element_wise(t.column("user_id"), pa.scalar(f"-bot{k}"), "")
        ts = pc.add(t.column("ts"), pa.scalar(dt.timedelta(microseconds=k)))
        copies.append(_replace(_replace(t, "user_id", users), "ts", ts))
    _rewrite(s, pa.concat_tables(copies, promote_options="permissive"))


def all_new_items(s):
    t = _day(s)
    _rewrite(s, _replace(t, "item_id", pc.binary_join_element_wise(pa.scalar("new-"), t.column("item_id"), "")))


def orphan_clicks(s):
    """Clicks on items nobody viewed in the window (e.g. ids from another catalog)."""
    t = _day(s, "clicks")
    _rewrite(s, _replace(t, "item_id", pc.binary_join_element_wise(pa.scalar("ghost-"), t.column("item_id"), "")),
             kind="clicks")


def unreadable_partition(s):
    folder = events.partition_dir(s, "views", FAULT_DAY)
    (folder / "part-0.parquet").write_bytes(b"this is not parquet")


FAULTS = {
    renamed_column: suites.REQUIRED_COLUMNS_CHECK,
    missing_column: suites.REQUIRED_COLUMNS_CHECK,
    wrong_type: suites.COLUMN_TYPES_CHECK,
    naive_timestamps: suites.COLUMN_TYPES_CHECK,
    null_ids: suites.IDS_NOT_NULL,
    malformed_ids: suites.IDS_WELL_FORMED,
    future_timestamps: suites.TS_NOT_IN_FUTURE,
    ts_outside_day: suites.TS_IN_PARTITION_DAY,
    duplicated_day: suites.DUPLICATE_RATE,
    empty_day: suites.EVENTS_EVERY_DAY,
    missing_day: suites.EVENTS_EVERY_DAY,
    volume_drop: suites.VOLUME_NOT_BELOW,
    volume_spike: suites.VOLUME_NOT_ABOVE,
    all_new_items: suites.NEW_ITEM_SHARE,
    orphan_clicks: suites.ORPHAN_CLICK_RATE,
    unreadable_partition: suites.PARTITION_READABLE,
}


def test_clean_small_world_passes(small_world):
    result = validate_window(small_world, RUN_DATE, WINDOW, settings=SETTINGS)
    assert result.success, [(c.check, c.days, c.examples) for c in result.failed]
    # the volume checks really ran: every day with >= 3 trailing days was checked
    checked = {d["date"] for d in result.days if d["kind"] == "views" and d["volume_checked"]}
    assert checked == {(dt.date(2026, 1, 4) + dt.timedelta(days=k)).isoformat() for k in range(7)}


@pytest.mark.parametrize("fault", list(FAULTS), ids=lambda f: f.__name__)
def test_fault_fails_naming_the_right_check(fault, small_world, tmp_path):
    store = _copy(small_world, tmp_path)
    fault(store)
    result = validate_window(store, RUN_DATE, WINDOW, settings=SETTINGS)
    expected = FAULTS[fault]
    assert not result.success
    assert expected in result.failed_checks, result.failed_checks
    hit = [c for c in result.failed if c.check == expected]
    kind = "clicks" if fault is orphan_clicks else "views"
    assert any(c.kind == kind and FAULT_DAY.isoformat() in c.days for c in hit), \
        [(c.kind, c.days, c.examples) for c in hit]
    # no collateral damage: the other kind and the other days are still clean
    other_days = {d for c in result.failed for d in c.days} - {FAULT_DAY.isoformat()}
    assert not other_days, other_days


def test_failure_details_name_column_count_and_examples(small_world, tmp_path):
    store = _copy(small_world, tmp_path)
    null_ids(store)
    nulls = sum(1 for v in _day(store).column("user_id").to_pylist() if v is None)
    result = validate_window(store, RUN_DATE, WINDOW, settings=SETTINGS)
    (check,) = [c for c in result.failed if c.check == suites.IDS_NOT_NULL]
    assert check.column == "user_id" and check.unexpected_count == nulls and check.kind == "views"
    assert check.examples and all(e["date"] == FAULT_DAY.isoformat() for e in check.examples)
    json.dumps(result.to_dict())  # JSON-ready


def test_report_has_data_docs_and_result_json(small_world, tmp_path):
    result = validate_window(small_world, RUN_DATE, WINDOW, settings=SETTINGS, report_dir=tmp_path / "run")
    index = Path(result.report_path)
    assert index == tmp_path / "run" / "validation" / "index.html" and index.is_file()
    pages = list((index.parent / "validations").rglob("*.html"))
    assert len(pages) >= 6  # schema, rows and window suites per kind
    saved = json.loads((index.parent / "result.json").read_text())
    assert saved["success"] is True and saved["report_path"] == str(index)
    # a second run replaces the report atomically (no staging folder left behind)
    validate_window(small_world, RUN_DATE, WINDOW, settings=SETTINGS, report_dir=tmp_path / "run")
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["validation"]


def test_thresholds_come_from_settings(small_world, tmp_path):
    store = _copy(small_world, tmp_path)
    volume_drop(store)
    lenient = Settings(volume_min_ratio=0.05)
    assert suites.VOLUME_NOT_BELOW not in validate_window(store, RUN_DATE, WINDOW, settings=lenient).failed_checks
    # with a floor above the world's ~240 daily users the volume bounds do not apply at all
    floor = Settings(volume_min_active_users=1000)
    assert validate_window(store, RUN_DATE, WINDOW, settings=floor).success


def test_window_before_the_store_began_is_not_a_failure(small_world):
    # 2026-01-05 with 14 days: 10 days precede the store, they are reported, not failed
    result = validate_window(small_world, "2026-01-05", 14, settings=SETTINGS)
    assert result.success
    assert sum(d["partition"] == "before_store" for d in result.days if d["kind"] == "views") == 10


@pytest.mark.parametrize("args, message", [
    (("nowhere", RUN_DATE, 5), "event store not found"),
    (("WORLD", "2026-02-30", 5), "not a date"),
    (("WORLD", RUN_DATE, 0), "at least 1 day"),
    (("WORLD", "2030-01-01", 7), "no views or clicks partition"),
])
def test_unusable_arguments_raise_user_error(small_world, tmp_path, args, message):
    root = small_world if args[0] == "WORLD" else tmp_path / args[0]
    with pytest.raises(UserError, match=message):
        validate_window(root, args[1], args[2], settings=SETTINGS)


def test_suite_structure_is_versioned():
    """Changing an expectation's type, column or check name must come with a SUITE_VERSION bump."""
    # v3: the item PSI leaves out items gone from the day (same expectations as v2, another meaning)
    pinned = {1: "2a6f7984e2a0c9c3", 2: "f7fbf2609a62e4e0", 3: "b2fe3a48b5667e24"}
    fingerprint = suites.structure_fingerprint(SETTINGS)
    assert pinned[suites.SUITE_VERSION] == fingerprint, (
        f"suite structure changed ({fingerprint}): bump SUITE_VERSION and pin the new fingerprint")
    names = {s.name for s in suites.all_suites(SETTINGS)}
    assert names == {f"led_{k}_{p}_v{suites.SUITE_VERSION}" for k in suites.KINDS for p in ("schema", "rows")} \
        | {f"led_window_v{suites.SUITE_VERSION}"}


@pytest.mark.slow
def test_thirty_clean_days_raise_no_false_alarm(tmp_path):
    """Every daily run over 30 clean synthetic days (default 14-day window) passes."""
    from data_sources.synthetic import WorldConfig, generate

    store = tmp_path / "events"
    generate(store, WorldConfig(users=800, items=300, days=30, seed=11, start=dt.date(2026, 3, 1)))
    failures = {}
    for k in range(1, 31):
        run_date = dt.date(2026, 3, 1) + dt.timedelta(days=k)
        result = validate_window(store, run_date, settings=SETTINGS)
        if not result.success:
            failures[run_date.isoformat()] = [(c.check, c.days) for c in result.failed]
    assert not failures
    # the same 30 days in one window: every day with >= 3 trailing days had its volume checked
    whole = validate_window(store, "2026-03-31", 30, settings=SETTINGS)
    assert whole.success and sum(d["volume_checked"] for d in whole.days) == 2 * 27


def test_movielens_replay_passes(ml100k_dir, tmp_path):
    """ML-100K replayed day by day: every day of the replay passes, in one window covering all of it."""
    from data_sources.movielens import import_movielens

    store = tmp_path / "ml100k"
    import_movielens(ml100k_dir, store)
    days = events.list_days(store, "views")
    span = (days[-1] - days[0]).days + 1
    result = validate_window(store, days[-1] + dt.timedelta(days=1), span, settings=SETTINGS)
    assert result.success, [(c.check, c.days[:5]) for c in result.failed]
    assert len(result.days) == 2 * span
    # the near-duplicate check (no active-user floor) ran on every day with events: a rating is
    # one (user, item) event, so a repeat within seconds never happens in a clean replay
    with_events = [d for d in result.days if d["rows"]]
    assert with_events and all(d["near_duplicate_rate"] == 0 for d in with_events)
    # the daily run at the end of the replay (default window) passes too
    assert validate_window(store, days[-1] + dt.timedelta(days=1), settings=SETTINGS).success
    # ... and it passes because of the active-user floor, not because the checks are blind:
    # ML-100K has ~11 users a day, days of 0 to 3550 ratings; ratio bounds alone would fail it.
    no_floor = validate_window(store, days[-1] + dt.timedelta(days=1), span,
                               settings=Settings(volume_min_active_users=0))
    assert {suites.VOLUME_NOT_BELOW, suites.VOLUME_NOT_ABOVE} <= set(no_floor.failed_checks)


def test_future_is_relative_to_the_validation_time(small_world):
    """Validating at 2026-01-09 00:00 UTC: the events of the 9th and 10th are in the future."""
    now = dt.datetime(2026, 1, 9, tzinfo=dt.timezone.utc)
    result = validate_window(small_world, RUN_DATE, WINDOW, settings=SETTINGS, now=now)
    assert result.failed_checks == [suites.TS_NOT_IN_FUTURE]
    assert {d for c in result.failed for d in c.days} == {"2026-01-09", "2026-01-10"}
