"""``led serve --workers 2`` under gunicorn: a SIGKILLed worker is replaced, one scrape covers every worker."""
from __future__ import annotations

import http.client
import json
import os
import re
import signal
import threading
import time

import pytest

from tests.servers import stop as stop_process
from tests.test_serving import _start_server, model_dir  # noqa: F401 - model_dir is a fixture


def _children(pid: int) -> set[int]:
    """The live (non-zombie) worker processes of a server."""
    from infra.stack import live_children

    return live_children(pid)


def _get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def _metric(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, re.M)
    assert match, (name, text[:2000])
    return float(match.group(1))


def _wait_all_ready(port: int, workers: int, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if _metric(_get(port, "/metrics")[1].decode(), "led_workers_ready") == workers:
                return
        except (OSError, AssertionError):
            pass
        time.sleep(0.1)
    raise AssertionError(f"{workers} workers never ready")


@pytest.fixture
def two_workers(model_dir, tmp_path):  # noqa: F811
    proc, port = _start_server(model_dir, tmp_path, "--workers", "2")
    try:
        _wait_all_ready(port, 2)
        yield proc, port
    finally:
        stop_process(proc)


def _worker_pids_seen(port: int, attempts: int = 60) -> set[int]:
    """Fresh connections are spread over the workers' SO_REUSEPORT sockets: collect who answers."""
    return {json.loads(_get(port, "/model")[1])["pid"] for _ in range(attempts)}


def test_one_scrape_counts_every_workers_requests(two_workers):
    proc, port = two_workers
    assert _worker_pids_seen(port) == _children(proc.pid)  # both workers take connections
    before = _metric(_get(port, "/metrics")[1].decode(), 'led_requests_total{code="200",endpoint="/recommend"}') \
        if "/recommend" in _get(port, "/metrics")[1].decode() else 0.0
    for i in range(200):  # one connection each, so both workers answer some
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("POST", "/recommend", body=json.dumps({"items": [f"item{i}"], "k": 3}))
        assert conn.getresponse().status == 200
        conn.close()
    text = _get(port, "/metrics")[1].decode()
    assert _metric(text, 'led_requests_total{code="200",endpoint="/recommend"}') == before + 200
    assert _metric(text, 'led_request_duration_seconds_count{endpoint="/recommend"}') == before + 200
    assert _metric(text, "led_workers_ready") == 2 and _metric(text, "led_model_loaded") == 1
    assert _metric(text, "led_model_stale") == 0


def test_sigkill_of_a_worker_under_load_is_replaced_within_2s(two_workers):
    proc, port = two_workers
    workers = _children(proc.pid)
    assert len(workers) == 2
    stop, lock = threading.Event(), threading.Lock()
    errors: list[tuple[float, str]] = []
    answered: list[float] = []
    bad_status: list[int] = []

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        while not stop.is_set():
            try:
                conn.request("POST", "/recommend", body=b'{"items": ["item5", "item9"], "k": 10}')
                resp = conn.getresponse()
                body = json.loads(resp.read())
                with lock:
                    answered.append(time.time())
                    if resp.status != 200 or len(body["ids"]) != 10:
                        bad_status.append(resp.status)
            except (OSError, http.client.HTTPException) as exc:
                with lock:
                    errors.append((time.time(), repr(exc)))
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.close()

    clients = [threading.Thread(target=client) for _ in range(6)]
    for t in clients:
        t.start()
    try:
        time.sleep(1.0)
        victim = sorted(workers)[0]
        killed_at = time.time()
        os.kill(victim, signal.SIGKILL)
        replaced_at = None
        while time.time() - killed_at < 10:
            now = _children(proc.pid)
            if victim not in now and len(now) == 2:
                try:
                    if _metric(_get(port, "/metrics")[1].decode(), "led_workers_ready") == 2:
                        replaced_at = time.time()
                        break
                except (OSError, AssertionError):
                    pass
            time.sleep(0.02)
        time.sleep(1.0)
    finally:
        stop.set()
        for t in clients:
            t.join(15)
    assert replaced_at is not None, "the killed worker was not replaced within 10 s"
    assert replaced_at - killed_at <= 2.0, f"replaced after {replaced_at - killed_at:.2f} s"
    assert bad_status == []
    # Only requests on connections to the dead worker may fail, all at the kill: the open one of each client,
    # and a reconnect the kernel had already queued on the dying worker's listening socket (seen once in CI:
    # 7 resets for 6 clients, all within 2 ms of the kill).
    assert len(errors) <= 2 * len(clients), errors
    assert all(t - killed_at < 0.5 for t, _ in errors), errors
    after = [t for t in answered if t > replaced_at]
    assert len(after) > 50, len(after)  # full service afterwards
    new_workers = _children(proc.pid)
    assert victim not in new_workers and len(new_workers) == 2
    assert _worker_pids_seen(port) == new_workers  # the replacement takes connections too
    stop_process(proc)
    log = [json.loads(line) for line in proc.stderr.read().splitlines() if line.startswith('{"ts"')]
    exits = [e for e in log if e["event"] == "worker_exited"]
    assert any(e["worker_pid"] == victim for e in exits), log[-10:]
    assert sum(e["event"] == "worker_ready" for e in log) >= 3  # two at start + the replacement
