"""The daily Prefect flow against the real local stack (Prefect server, MLflow server, moto S3).

Flows run in subprocesses (`led run`, `led worker`, `led simulate`), as users run them: each
process configures Prefect from the settings before importing it.
"""
from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from infra import events
from infra.stack import free_port
from tests.cli_runner import led, stop_worker
from tests.prefect_api import api, deployment, start_run, wait_run

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--param", "dim=16", "--param", "epochs=2", "--param", "num_negatives=100", "--param", "batch_size=256"]
pytestmark = [pytest.mark.stack, pytest.mark.slow]


@pytest.fixture(scope="module")
def world(local_stack, tmp_path_factory):
    out = tmp_path_factory.mktemp("flows") / "events"
    code, res, log = led("generate", "--out", out, "--days", 8, "--users", 1500, "--items", 400, "--seed", 5)
    assert code == 0, log
    return out


def test_run_then_rerun_is_cached_and_replaces_cleanly(local_stack, world):
    code, first, log = led("run", "--events", world, "--date", "2026-01-08", *FAST)
    assert code == 0, log[-3000:]
    assert first["state"] == "COMPLETED" and first["promoted"] and first["pushed_slot"] in ("blue", "green")
    assert 0 < first["ndcg@100"] <= 1 and first["model_version"]
    assert first["serving_watch"].startswith("watch skipped: no serving endpoint")  # no LED_SERVING_URL here
    # the freshest day ships: the refit on the whole window is what is pushed, and it knows the items
    # the evaluated model could not (first seen on the evaluation day)
    assert first["refit_shipped"] and first["pushed_version"] == first["refit_version"] != first["model_version"]
    items = {k: set(np.load(Path(first[k]) / "item_ids.npy").astype(str)) for k in
             ("evaluated_model_dir", "pushed_model_dir")}
    day = dt.date(2026, 1, 7)  # the evaluation day of the window [01-01, 01-08)
    before = set(events.read_window(world, "views", day, 6).column("item_id").to_pylist())
    launched = set(events.read_day(world, "views", day).column("item_id").to_pylist()) - before
    assert launched and not launched & items["evaluated_model_dir"]
    assert launched & items["pushed_model_dir"], "no item first seen on the last day made it into the push"
    code, again, log = led("run", "--events", world, "--date", "2026-01-08", *FAST)
    assert code == 0 and again["state"] == "COMPLETED"
    assert "pretrain" in log and "Cached(type=COMPLETED)" in log
    assert again["ndcg@100"] == first["ndcg@100"]  # same inputs, same model
    assert again["model_version"] == first["model_version"]  # reused, not registered twice
    assert again["pushed_slot"] == first["pushed_slot"]  # already live: nothing pushed again
    assert again["seconds"]["pretrain"] < 5 and again["seconds"]["fine-tune"] < 5


def test_validation_failure_stops_before_training(local_stack, world, tmp_path):
    import shutil

    import pyarrow.parquet as pq

    bad = tmp_path / "events"
    shutil.copytree(world, bad)
    part = bad / "views" / "date=2026-01-07" / "part-0.parquet"
    table = pq.read_table(part)
    pq.write_table(table.slice(0, table.num_rows // 20), part)  # a 95% volume drop
    code, res, log = led("run", "--events", bad, "--date", "2026-01-08", *FAST)
    assert code == 1 and res["state"] == "FAILED" and res["validation_failed"], log[-2000:]
    assert "Task run 'pretrain" not in log and "Task run 'fine-tune" not in log


def test_kill_during_fine_tuning_then_rerun_skips_pretraining(local_stack, world):
    cmd = [sys.executable, "-m", "cli.main", "run", "--events", str(world), "--date", "2026-01-07",
           "--param", "dim=24", "--param", "epochs=30", "--param", "num_negatives=100"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    seen = []
    deadline = time.monotonic() + 600
    for line in proc.stdout:
        seen.append(line)
        if "] step " in line and "loss" in line:  # fine-tuning steps are under way: pre-training is persisted
            os.killpg(proc.pid, signal.SIGKILL)
            break
        assert time.monotonic() < deadline, "fine-tuning never started"
    proc.wait(30)
    assert proc.returncode == -signal.SIGKILL, "".join(seen)[-2000:]
    assert any("pretrain" in line and "Completed" in line for line in seen)

    code, res, log = led("run", "--events", world, "--date", "2026-01-07",
                         "--param", "dim=24", "--param", "epochs=2", "--param", "num_negatives=100")
    assert code == 0, log[-3000:]
    pre = [line for line in log.splitlines() if "Task run 'pretrain" in line and "Finished" in line]
    assert pre and "Cached" in pre[-1], pre
    assert res["seconds"]["pretrain"] < 5


def test_deployment_custom_run_through_worker(local_stack, world):
    code, res, log = led("deploy")
    assert code == 0 and res["deployment"] == "led-daily/daily", log[-2000:]
    worker = subprocess.Popen([sys.executable, "-m", "cli.main", "worker"], cwd=ROOT, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True,
                              env=os.environ.copy() | {"PREFECT_WORKER_QUERY_SECONDS": "2"})
    try:
        dep = deployment(local_stack)
        assert dep["schedules"][0]["schedule"]["cron"] == "0 3 * * *"
        schema = dep["parameter_openapi_schema"]
        assert set(schema["properties"]) == {"run_date", "data", "pretrain", "fine_tune", "index", "gate", "watch", "push"}
        assert schema["properties"]["run_date"]["format"] == "date"  # a date picker, no T/None toggle
        groups = schema["definitions"]
        assert {"dim", "min_count"} <= set(groups["PretrainParams"]["properties"])
        assert "enum" in groups["FineTuneParams"]["properties"]["loss"]
        params = {"run_date": "2026-01-08", "data": {"events_dir": str(world)}, "pretrain": {"dim": 12},
                  "fine_tune": {"epochs": 1, "num_negatives": 50, "loss": "ns"}}
        run_id = start_run(local_stack, dep, params)
        flow_run = wait_run(local_stack, run_id, timeout=600)
        assert flow_run["state"]["type"] == "COMPLETED", flow_run["state"]
        assert flow_run["name"] == "led-daily-2026-01-08"
        assert flow_run["parameters"]["fine_tune"]["loss"] == "ns"
        artifacts = api(local_stack, "/artifacts/filter", {"flow_runs": {"id": {"any_": [run_id]}}})
        keys = {a["key"] for a in artifacts}
        assert {"daily-report", "daily-metrics", "validation"} <= keys
        report = next(a for a in artifacts if a["key"] == "daily-report")["data"]
        assert "Gate:" in report and "MLflow run" in report

        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=local_stack.mlflow_tracking_uri)
        exp = client.get_experiment_by_name(local_stack.mlflow_experiment)
        # the evaluated model's run: registered before its whole-window refit's (if the gate promoted it)
        runs = client.search_runs([exp.experiment_id], filter_string="params.loss = 'ns'",
                                  order_by=["attributes.start_time ASC"])
        assert runs and runs[0].data.params["d"] == "12"
        # the validation Data Docs arrive whole: the index page, its sub-pages and the result JSON
        docs = [a.path for a in client.list_artifacts(runs[0].info.run_id, "reports/validation")]
        assert {"reports/validation/index.html", "reports/validation/result.json"} <= set(docs), docs
        assert any(a.is_dir for a in client.list_artifacts(runs[0].info.run_id, "reports/validation")), docs
    finally:
        stop_worker(worker)


def test_fourteen_day_simulation_with_faults(local_stack):
    code, res, log = led("simulate", "--days", 14, "--warmup", 3, "--users", 1500, "--items", 400,
                         "--bad-data-days", 6, "--bad-model-days", 9, "--queries", 50,
                         "--serve-port", free_port(), *FAST, timeout=3000)
    assert code == 0, log[-4000:]
    assert res["days"] == 14 and res["runs"] == 12 and len(res["ndcg@100"]) == 12
    outcome = {r["run_date"]: r["outcome"] for r in res["runs_detail"]}
    # bad data on day index 6 (2026-01-07) fails the next run, and only it: the day is then re-ingested
    assert [d for d, o in outcome.items() if o == "validation-failed"] == ["2026-01-08"], outcome
    # the weak model trained for 2026-01-11 (day index 9) is the one the gate refuses
    assert outcome["2026-01-11"].startswith("gate rejected"), outcome
    assert not any(o.startswith("failed") for o in outcome.values()), outcome
    assert res["serving_errors"] == 0 and res["serving_queries"] > 0 and res["failed_runs"] == 0
    assert res["pushes"] >= 1
