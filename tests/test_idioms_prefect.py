"""Prefect's own mechanisms on the real local stack: alert automation, deployment concurrency, timeouts.

`led deploy` with LED_NOTIFY_WEBHOOK_URL pointing at a receiver on 127.0.0.1 (records every call);
one `led worker` executes the deployment's runs in subprocesses, as in production.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from infra.stack import free_port
from tests.cli_runner import generated_world, led, stop_worker
from tests.prefect_api import api, deployment, start_run, wait_run

ROOT = Path(__file__).resolve().parents[1]
FAST = {"pretrain": {"dim": 16}, "fine_tune": {"epochs": 2, "num_negatives": 100, "batch_size": 256}}
pytestmark = [pytest.mark.stack, pytest.mark.slow]


class Receiver:
    """A webhook receiver on 127.0.0.1 that records the JSON body of every POST."""

    def __init__(self):
        self.calls: list[dict] = []
        calls = self.calls

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                calls.append(json.loads(body or b"{}"))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def world(local_stack, tmp_path_factory):
    return generated_world(tmp_path_factory.mktemp("idioms"), seed=11)


@pytest.fixture(scope="module")
def deployed(local_stack, world):
    """(deployment, receiver): deployed with alerts, one worker running; both stopped at the end."""
    receiver = Receiver()
    worker = None
    try:
        code, res, log = led("deploy", env={"LED_NOTIFY_WEBHOOK_URL": receiver.url})
        assert code == 0 and len(res["automations"]) == 2, log[-2000:]
        worker = subprocess.Popen([sys.executable, "-m", "cli.main", "worker"], cwd=ROOT,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                                  env=os.environ.copy() | {"PREFECT_WORKER_QUERY_SECONDS": "2"})
        dep = deployment(local_stack)
        yield dep, receiver
    finally:
        if worker is not None:
            stop_worker(worker)
        receiver.stop()


def state_names(settings, run_id: str) -> list[str]:
    states = api(settings, f"/flow_run_states/?flow_run_id={run_id}", method="GET")
    return [s["name"] for s in sorted(states, key=lambda s: s["timestamp"])]


def test_failed_run_reaches_the_webhook(local_stack, deployed, world):
    dep, receiver = deployed
    automations = api(local_stack, "/automations/filter", {})
    names = {a["name"] for a in automations}
    assert {"led-daily: run failed or crashed", "led-daily: run late"} <= names
    # no events before the window: the run fails in its first stage
    run_id = start_run(local_stack, dep, {"run_date": "2025-01-01", "data": {"events_dir": str(world)}})
    run = wait_run(local_stack, run_id, timeout=300)
    assert run["state"]["type"] == "FAILED", run["state"]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not any(run["name"] in c.get("body", "") for c in receiver.calls):
        time.sleep(1)
    hits = [c for c in receiver.calls if run["name"] in c.get("body", "")]
    assert hits, receiver.calls
    assert "Failed" in hits[0]["body"] and "Failed" in hits[0]["subject"], hits[0]


def test_overlapping_runs_are_serialised_and_champion_ends_consistent(local_stack, deployed, world):
    from mlflow import MlflowClient

    from serving.storage import BlueGreenStore

    dep, _ = deployed
    assert dep["global_concurrency_limit"]["limit"] == 1
    assert dep["concurrency_options"]["collision_strategy"] == "ENQUEUE"
    # the first run pre-trains on Spark (a flow parameter): its stage lines must reach the run's logs
    ids = [start_run(local_stack, dep, {"run_date": day, "data": {"events_dir": str(world)}, **FAST,
                                        "pretrain": {**FAST.get("pretrain", {}), "pretrain_engine": engine}})
           for day, engine in (("2026-01-07", "spark"), ("2026-01-08", "local"))]
    runs = [wait_run(local_stack, i) for i in ids]
    assert [r["state"]["type"] for r in runs] == ["COMPLETED", "COMPLETED"], [r["state"] for r in runs]
    first, second = sorted(runs, key=lambda r: r["start_time"])
    assert second["start_time"] >= first["end_time"], (first["end_time"], second["start_time"])
    waited = [r for r in runs if "AwaitingConcurrencySlot" in state_names(local_stack, r["id"])]
    assert waited, [state_names(local_stack, r["id"]) for r in runs]

    # Spark's stage progress reached the flow run's logs (the `led` logger), one line per stage
    on_spark = ids[0]  # whichever of the two the concurrency slot let in first
    logs = api(local_stack, "/logs/filter", {"logs": {"flow_run_id": {"any_": [on_spark]}}, "limit": 200})
    stages = [log["message"] for log in logs if log["message"].startswith("spark stage ")]
    assert stages and all(re.search(r" in \d+\.\d s$", m) for m in stages), [log["message"] for log in logs]

    uri = local_stack.mlflow_tracking_uri  # both URIs: an earlier test may have moved the global registry URI
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    model = client.get_registered_model(local_stack.mlflow_model_name)
    champion = model.aliases["champion"]
    assert client.get_model_version(model.name, champion).tags["gate.decision"] == "promoted"
    assert model.aliases.get("previous_champion") != champion
    active = BlueGreenStore.from_settings(local_stack).read_active()
    assert active is not None and str(active.model_version) == str(champion)


def test_stage_timeout_fails_the_run(local_stack, world):
    # Spark's pre-training takes seconds (the local engine may finish inside the second)
    code, res, log = led("run", "--events", world, "--date", "2026-01-06", "--param", "dim=13",
                         "--param", "pretrain_engine=spark", env={"LED_PRETRAIN_TIMEOUT_SECONDS": "1"})
    assert code == 1 and res["state"] == "FAILED", log[-3000:]
    assert "exceeded timeout of 1.0 second(s)" in log, log[-3000:]
    assert "Task run 'fine-tune" not in log
