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
from tests.cli_runner import generated_world, led, stop_worker
from tests.prefect_api import api, deployment, start_run, wait_run

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--param", "dim=16", "--param", "epochs=2", "--param", "num_negatives=100", "--param", "batch_size=256"]
pytestmark = [pytest.mark.stack, pytest.mark.slow]


@pytest.fixture(scope="module")
def world(local_stack, tmp_path_factory):
    return generated_world(tmp_path_factory.mktemp("flows"), seed=5)


def test_run_then_rerun_is_cached_and_replaces_cleanly(local_stack, world):
    code, first, log = led("run", "--events", world, "--date", "2026-01-08", *FAST)
    assert code == 0, log[-3000:]
    assert first["state"] == "COMPLETED" and first["promoted"] and first["pushed_slot"] in ("blue", "green")
    assert 0 < first["ndcg@100"] <= 1 and first["model_version"]
    assert first["gain_ndcg@100"] == pytest.approx(first["ndcg@100"] - first["initialisation_ndcg@100"])
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

    # the operator's way out: quarantine the day, and the next run trains without it and says so
    code, res, log = led("validate", "--events", bad, "--date", "2026-01-08", "--quarantine",
                         "--report-dir", tmp_path / "report")
    assert code == 0 and res["newly_quarantined"] == ["2026-01-07"], log[-2000:]
    code, res, log = led("run", "--events", bad, "--date", "2026-01-08", *FAST, "--param", "push=false")
    assert code == 0 and res["state"] == "COMPLETED", log[-3000:]
    artifacts = api(local_stack, "/artifacts/filter", {"flow_runs": {"id": {"any_": [res["flow_run_id"]]}}})
    report = next(a for a in artifacts if a["key"] == "daily-report")["data"]
    assert "Quarantined, not trained on" in report and "2026-01-07" in report, report


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
    assert pre and "Cached" in pre[0], pre  # the evaluated model's; a promoted model's refit pre-trains anew
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
        # the fine-tuning's gain, side by side with its initialisation and popularity on the same clicks
        for row in ("popularity", "initialisation", "trained", "gain"):
            assert f"| {row} | " in report, report

        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=local_stack.mlflow_tracking_uri)
        exp = client.get_experiment_by_name(local_stack.mlflow_experiment)
        # the evaluated model's run: registered before its whole-window refit's (if the gate promoted it)
        runs = client.search_runs([exp.experiment_id], filter_string="params.loss = 'ns'",
                                  order_by=["attributes.start_time ASC"])
        assert runs and runs[0].data.params["d"] == "12"
        logged = runs[0].data.metrics
        for name in ("initialisation_ndcg_at_100", "popularity_ndcg_at_100", "gain_ndcg_at_100",
                     "initialisation_recall_at_20", "gain_recall_at_20"):
            assert name in logged, sorted(logged)
        assert logged["gain_ndcg_at_100"] == pytest.approx(logged["ndcg_at_100"] - logged["initialisation_ndcg_at_100"],
                                                           abs=1e-6)
        # the validation Data Docs arrive whole: the index page, its sub-pages and the result JSON
        docs = [a.path for a in client.list_artifacts(runs[0].info.run_id, "reports/validation")]
        assert {"reports/validation/index.html", "reports/validation/result.json"} <= set(docs), docs
        assert any(a.is_dir for a in client.list_artifacts(runs[0].info.run_id, "reports/validation")), docs
    finally:
        stop_worker(worker)


RECORD_COLUMNS = {"day", "date", "run_date", "fault", "expected", "outcome", "state", "attempts", "gate",
                  "gate_reasons", "challenger_ndcg", "challenger_ndcg_se", "champion_ndcg", "popularity_ndcg",
                  "finetune_gain", "median_7d_ndcg", "ndcg_vs_median", "catalog_size", "items_launched",
                  "items_retired", "next_day_scorable_share", "next_day_scorable_share_evaluated", "stability_top20", "serving_p50_ms", "serving_p99_ms",
                  "serving_queries", "serving_errors", "serving_5xx", "swap_seconds", "live_version",
                  "pushed_version", "resumed_from_cache", "partial_activation", "worker_replaced", "error"}


def test_short_soak_every_fault_once(local_stack, tmp_path):
    """The soak in small (docs/architecture.md, "The soak: months under churn"): 12 days, each fault once.

    This world's held-out day is a few hundred users, so its NDCG@100 moves far more than the defaults'
    from day to day (a 600-user check: popularity's own NDCG 0.19-0.24, clean challengers 0.29-0.37, a
    clean challenger 2.4% under its champion): the gate and the quality criterion get tolerances sized to
    that noise; the weak model, the outages and the kills are judged as in the 60-day soak."""
    import csv

    out = tmp_path / "record"
    code, res, log = led("simulate", "--days", 12, "--warmup", 3, "--users", 1500, "--items", 400, "--soak",
                         "--queries", 50, "--panel", 20, "--out", out, "--serve-port", free_port(),
                         "--quality-tolerance", 0.25, *FAST, "--param", "gate_tolerance=0.1", timeout=3000)
    assert res is not None, log[-4000:]
    failed = {k: c["detail"] for k, c in res["criteria"].items() if not c["pass"]}
    assert code == 0 and res["passed"] and not failed, (failed, res["outcomes"], log[-4000:])
    assert set(res["criteria"]) == {"every clean day pushed", "every bad day rejected for the right reason",
                                    "0 partial activations", "0 serving 5xx", "no day's data lost",
                                    "quality within 25% of its 7-day median on clean days"}
    assert "PASS  0 serving 5xx" in log
    assert res["criteria"]["quality within 25% of its 7-day median on clean days"]["detail"].startswith("4/4")
    outcome = res["outcomes"]
    assert res["runs"] == 10 and len(outcome) == 10
    # day index i's data feeds the run for the next date: the soak preset puts the faults on indexes 4..9
    assert outcome["2026-01-06"] == "bad_data: validation-failed", outcome
    assert outcome["2026-01-07"] == "s3_outage: push failed", outcome
    assert outcome["2026-01-09"] == "bad_model: gate rejected", outcome
    for date in ("2026-01-08", "2026-01-10", "2026-01-11", "2026-01-12"):  # worker kill, reruns, clean
        assert outcome[date].endswith(": pushed"), outcome

    with open(out / "record.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert set(rows[0]) == RECORD_COLUMNS and len(rows) == 12
    by_fault = {r["fault"]: r for r in rows}
    s3 = by_fault["s3_outage"]
    assert s3["state"] == "FAILED" and s3["pushed_version"] == "" and s3["partial_activation"] == "False"
    assert "Could not connect to the endpoint URL" in s3["error"]
    assert s3["live_version"] == rows[4]["live_version"]  # serving kept the old model
    for fault in ("mlflow_outage", "kill_training"):  # the rerun resumed from the cached pre-training
        assert by_fault[fault]["resumed_from_cache"] == "True" and by_fault[fault]["attempts"] == "2"
    assert by_fault["worker_kill"]["worker_replaced"] == "True" and by_fault["worker_kill"]["serving_5xx"] == "0"
    assert by_fault["bad_model"]["gate"] == "rejected" and by_fault["bad_model"]["gate_reasons"]
    served = [r for r in rows if r["serving_queries"] not in ("", "0")]
    assert served and all(float(r["serving_p99_ms"]) >= float(r["serving_p50_ms"]) > 0 for r in served)
    assert all(0 <= float(r["stability_top20"]) <= 1 for r in served[1:])
    assert all(int(r["catalog_size"]) > 0 for r in rows) and any(int(r["items_launched"]) for r in rows)
    shares = [float(r["next_day_scorable_share"]) for r in rows if r["next_day_scorable_share"]]
    assert shares and all(0 < s <= 1 for s in shares)
    # the refit that ships knows the evaluation day's items: it never scores fewer next-day clicks
    paired = [(float(r["next_day_scorable_share"]), float(r["next_day_scorable_share_evaluated"])) for r in rows
              if r["next_day_scorable_share"] and r["next_day_scorable_share_evaluated"]]
    assert paired and all(live >= evaluated for live, evaluated in paired), paired
    assert any(r["ndcg_vs_median"] for r in rows) and all(r["finetune_gain"] for r in rows if r["challenger_ndcg"])
    assert (out / "record.png").stat().st_size > 10_000 and (out / "record.json").is_file()

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=local_stack.mlflow_tracking_uri)
    exp = client.get_experiment_by_name(local_stack.mlflow_experiment + "-simulation")
    run = client.get_run(res["mlflow_run_id"])
    assert run.info.experiment_id == exp.experiment_id and run.info.run_name == "simulation"
    steps = client.get_metric_history(run.info.run_id, "challenger_ndcg")
    assert len(steps) == sum(1 for r in rows if r["challenger_ndcg"]) and min(m.step for m in steps) == 2
    assert {a.path for a in client.list_artifacts(run.info.run_id, "simulation")} >= {
        "simulation/record.csv", "simulation/record.png"}
    artifacts = {a["key"]: a for a in api(local_stack, "/artifacts/filter",
                                           {"artifacts": {"key": {"any_": ["simulation-record",
                                                                           "simulation-report"]}}})}
    assert set(artifacts) == {"simulation-record", "simulation-report"}
    assert "record.png" in artifacts["simulation-report"]["data"]
