"""The Prefect REST API for the tests, through Prefect's own client.

Prefect's server answers 503 when its SQLite database is briefly locked (a flow run's heartbeat and a
`create_flow_run` at the same moment); Prefect's client retries 429/502/503 with backoff, a bare
urllib call does not: CI once failed on exactly that. So every test reaches the API through here.
"""
from __future__ import annotations

import time

from prefect.client.orchestration import SyncPrefectClient

TERMINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")


def api(settings, path: str, body: dict | None = None, method: str = "POST"):
    """JSON of `method path` on the Prefect API of `settings` (a POST sends `body`, default `{}`)."""
    with SyncPrefectClient(settings.prefect_api_url) as client:
        kwargs = {"json": body or {}} if method == "POST" else {}
        return client.request(method, path, **kwargs).json()


def deployment(settings, name: str = "daily") -> dict:
    return api(settings, "/deployments/filter", {"deployments": {"name": {"any_": [name]}}})[0]


def start_run(settings, dep: dict, params: dict) -> str:
    return api(settings, f"/deployments/{dep['id']}/create_flow_run", {"parameters": params})["id"]


def wait_run(settings, run_id: str, timeout: float = 900) -> dict:
    """The flow run once it is in a terminal state; fails the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = api(settings, f"/flow_runs/{run_id}", method="GET")
        if run["state"]["type"] in TERMINAL:
            return run
        time.sleep(2)
    raise AssertionError(f"flow run {run_id} still {run['state']['name']} after {timeout} s")
