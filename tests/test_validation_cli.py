"""``led validate``: exit codes, the failure table and the final JSON line."""
from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow.parquet as pq

from infra import events


def test_clean_window_exits_0_with_report(led, small_world, tmp_path):
    code, last, out, err = led("validate", "--events", small_world, "--date", "2026-01-11", "--window", "10",
                               "--report-dir", tmp_path / "run")
    assert code == 0, err
    assert last["success"] is True and last["failed_expectations"] == []
    assert Path(last["report_path"]).is_file() and last["report_path"].endswith("validation/index.html")
    assert "FAILED" not in out


def test_bad_data_exits_1_with_table_before_json(led, small_world, tmp_path):
    store = tmp_path / "events"
    shutil.copytree(small_world, store, ignore=shutil.ignore_patterns("truth"))
    day = events.partition_dir(store, "views", __import__("datetime").date(2026, 1, 8))
    table = pq.read_table(day / "part-0.parquet")
    pq.write_table(table.rename_columns(["uid", "item_id", "ts"]), day / "part-0.parquet")
    code, last, out, err = led("validate", "--events", store, "--date", "2026-01-11", "--window", "10",
                               "--report-dir", tmp_path / "run")
    assert code == 1, err
    assert last["success"] is False and last["failed_expectations"] == ["required_columns"]
    assert Path(last["report_path"]).is_file()
    lines = out.strip().splitlines()
    assert lines[0].startswith("FAILED") and lines[-1].startswith("{")
    row = next(line for line in lines if line.startswith("required_columns"))
    assert "views" in row and "user_id" in row and "2026-01-08" in row


def test_unusable_arguments_exit_2(led, small_world, tmp_path):
    cases = [
        ("--events", tmp_path / "missing", "--date", "2026-01-11"),
        ("--events", small_world, "--date", "11/01/2026"),
        ("--events", small_world, "--date", "2026-01-11", "--window", "0"),
        ("--events", small_world, "--date", "2031-01-01"),   # no partition at all in the window
        ("--events", tmp_path, "--date", "2026-01-11"),       # a folder that is not an event store
    ]
    for args in cases:
        code, last, out, err = led("validate", *args)
        assert code == 2, (args, err)
        assert err.strip().splitlines()[-1].startswith("led validate: error:") and "Traceback" not in err
        assert last is None


def test_help_documents_exit_codes(led):
    code, _, out, _ = led("validate", "--help")
    assert code == 0
    for text in ("Exit codes", "unusable arguments", "volume_min_active_users", "--report-dir", "--quarantine",
                 "--release", "near-duplicates"):
        assert text in out
