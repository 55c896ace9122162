"""The local stack: real moto, MLflow and Prefect servers started and stopped by `led stack`."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import psutil
import pytest

from infra.stack import free_port

LED = [sys.executable, "-m", "cli.main"]
pytestmark = pytest.mark.stack


def _led(env: dict, *args: str) -> tuple[int, dict | None, str]:
    proc = subprocess.run([*LED, *args], env=env, capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).resolve().parents[1])
    lines = proc.stdout.strip().splitlines()
    return proc.returncode, (json.loads(lines[-1]) if lines else None), proc.stderr


@pytest.fixture
def stack_env(tmp_path):
    ports = {"moto": free_port(), "mlflow": free_port(), "prefect": free_port()}
    env = os.environ.copy() | {"LED_HOME": str(tmp_path / "home"),
                               **{f"LED_{k.upper()}_PORT": str(v) for k, v in ports.items()}}
    for key in ("LED_MLFLOW_TRACKING_URI", "LED_PREFECT_API_URL", "LED_S3_ENDPOINT_URL"):
        env.pop(key, None)
    yield env, ports
    _led(env, "stack", "down")


@pytest.mark.slow
def test_stack_up_serves_s3_mlflow_prefect_and_down_leaves_nothing(stack_env):
    import boto3
    import mlflow

    env, ports = stack_env
    code, up, err = _led(env, "stack", "up")
    assert code == 0, err
    assert all(up[name]["healthy"] for name in ("moto", "mlflow", "prefect"))
    pids = [up[name]["pid"] for name in ("moto", "mlflow", "prefect")]
    children = [c.pid for pid in pids for c in psutil.Process(pid).children(recursive=True)]

    s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{ports['moto']}", region_name="us-east-1")
    s3.create_bucket(Bucket="led-test")
    s3.put_object(Bucket="led-test", Key="hello.txt", Body=b"world")
    assert s3.get_object(Bucket="led-test", Key="hello.txt")["Body"].read() == b"world"

    client = mlflow.MlflowClient(tracking_uri=f"http://127.0.0.1:{ports['mlflow']}")
    exp = client.create_experiment("stack-test")
    run = client.create_run(exp)
    client.log_metric(run.info.run_id, "ndcg_at_100", 0.42)
    client.set_terminated(run.info.run_id)
    assert client.get_run(run.info.run_id).data.metrics["ndcg_at_100"] == 0.42

    with urllib.request.urlopen(f"http://127.0.0.1:{ports['prefect']}/api/health", timeout=5) as resp:
        assert resp.read().strip() == b"true"

    code, again, _ = _led(env, "stack", "up")  # idempotent
    assert code == 0 and again["started"] == [] and again["mlflow"]["pid"] == up["mlflow"]["pid"]

    code, down, _ = _led(env, "stack", "down")
    assert code == 0 and sorted(down["stopped"]) == ["mlflow", "moto", "prefect"]
    assert not [p for p in pids + children if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]
    for port in ports.values():
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", port)) != 0
    code, status, _ = _led(env, "stack", "status")
    assert code == 0 and not any(s["running"] for s in status.values())


def test_stack_up_reports_a_taken_port(stack_env):
    env, ports = stack_env
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", ports["moto"]))
        squatter.listen()
        code, _, err = _led(env, "stack", "up", "--only", "moto")
    assert code == 2 and f"port {ports['moto']}" in err and "LED_MOTO_PORT" in err
    assert len(err.strip().splitlines()) == 1
