"""Shared fixtures: one Spark session, one synthetic world, the shared ML-100K.

Environment defaults for quiet, hermetic tests are set before any tool is
imported. Heavy imports (Spark, TensorFlow) happen inside fixtures so a test
session pays for each at most once.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
for key, value in {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "60",
    "SPARK_LOCAL_IP": "127.0.0.1",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "TF_CPP_MIN_LOG_LEVEL": "2",
    "TF_ENABLE_ONEDNN_OPTS": "0",
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}.items():
    os.environ.setdefault(key, value)
os.environ.pop("LED_CONFIG", None)


def ml100k_path() -> Path | None:
    """The shared ML-100K folder, or LED_ML100K; None when absent (tests then skip)."""
    candidates = [os.environ.get("LED_ML100K"), ROOT.parent / "shared" / "data" / "ml-100k"]
    for c in candidates:
        if c and Path(c).is_dir() and any(Path(c).glob("*")):
            return Path(c)
    return None


@pytest.fixture(scope="session")
def ml100k_dir() -> Path:
    path = ml100k_path()
    if path is None:
        pytest.skip("MovieLens-100K not found (set LED_ML100K or provide ../shared/data/ml-100k)")
    return path


@pytest.fixture(scope="session")
def spark():
    """One local Spark session for the whole test session."""
    from infra.settings import Settings
    from infra.spark import get_spark

    session = get_spark(Settings(spark_master="local[2]", spark_driver_memory="3g",
                                 spark_shuffle_partitions=4))
    yield session
    session.stop()


@pytest.fixture(scope="session")
def small_world(tmp_path_factory) -> Path:
    """A clean synthetic event store: 800 users, 300 items, 10 days from 2026-01-01."""
    from data_sources.synthetic import WorldConfig, generate

    out = tmp_path_factory.mktemp("world") / "events"
    generate(out, WorldConfig(users=800, items=300, days=10, seed=7))
    return out


@pytest.fixture
def led(capsys):
    """Run the ``led`` CLI in-process: returns (exit_code, last_json_or_None, stdout, stderr)."""
    from cli.main import main

    def run(*args: str):
        try:
            code = main([str(a) for a in args])
        except SystemExit as exc:  # argparse errors
            code = exc.code
        out, err = capsys.readouterr()
        lines = [line for line in out.strip().splitlines() if line.strip()]
        try:
            last = json.loads(lines[-1]) if lines else None
        except json.JSONDecodeError:
            last = None
        return code, last, out, err

    return run


STACK_ENV_KEYS = ("LED_HOME", "LED_MOTO_PORT", "LED_MLFLOW_PORT", "LED_PREFECT_PORT",
                  "LED_MLFLOW_TRACKING_URI", "LED_PREFECT_API_URL", "LED_S3_ENDPOINT_URL")


@pytest.fixture(scope="session")
def local_stack(tmp_path_factory):
    """The real local stack (moto S3, MLflow server, Prefect server) on free ports, once per session.

    Sets LED_* variables so every command in the test session points at it, and stops
    every process it started at the end. Yields the effective Settings.
    """
    from infra.settings import Settings, get_settings
    from infra.stack import LocalStack, free_port

    home = tmp_path_factory.mktemp("led-home")
    ports = {"LED_MOTO_PORT": free_port(), "LED_MLFLOW_PORT": free_port(), "LED_PREFECT_PORT": free_port()}
    env = {"LED_HOME": str(home), **{k: str(v) for k, v in ports.items()},
           "LED_MLFLOW_TRACKING_URI": f"http://127.0.0.1:{ports['LED_MLFLOW_PORT']}",
           "LED_PREFECT_API_URL": f"http://127.0.0.1:{ports['LED_PREFECT_PORT']}/api",
           "LED_S3_ENDPOINT_URL": f"http://127.0.0.1:{ports['LED_MOTO_PORT']}"}
    saved = {k: os.environ.get(k) for k in STACK_ENV_KEYS}
    os.environ.update(env)
    get_settings.cache_clear()
    settings = Settings()
    stack = LocalStack(settings)
    try:
        stack.up(timeout=180)
        yield settings
    finally:
        stack.down()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        get_settings.cache_clear()
