"""Prefect wiring from settings: API URL, result storage under the work dir, health check.

Call ``configure_prefect(settings)`` before importing ``prefect`` in a process:
Prefect reads its settings from the environment when it is first imported.
"""
from __future__ import annotations

import os
import urllib.request

from infra.errors import UserError
from infra.settings import Settings


def prefect_env(settings: Settings) -> dict[str, str]:
    """The environment a process running LED flows (CLI, worker) needs."""
    return {
        "PREFECT_API_URL": settings.prefect_api_url,
        "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(settings.work_dir / "prefect-results"),
        "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "false",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": os.environ.get("PREFECT_LOGGING_LEVEL", "INFO"),
        "SPARK_LOCAL_IP": os.environ.get("SPARK_LOCAL_IP", "127.0.0.1"),
        "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"),
        "TF_ENABLE_ONEDNN_OPTS": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "0"),
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    }


def check_prefect_api(url: str, timeout: float = 5.0) -> None:
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/health", timeout=timeout) as resp:
            if resp.status == 200:
                return
    except Exception:  # noqa: BLE001 - any failure is "unreachable"
        pass
    raise UserError(f"Prefect API unreachable at {url}: start it with `led stack up` or set LED_PREFECT_API_URL")


def configure_prefect(settings: Settings, check: bool = True) -> None:
    os.environ.update(prefect_env(settings))
    (settings.work_dir / "prefect-results").mkdir(parents=True, exist_ok=True)
    if check:
        check_prefect_api(settings.prefect_api_url)
