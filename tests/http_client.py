"""A tiny HTTP client for the serving tests (one connection per call, bounded timeout)."""
from __future__ import annotations

import http.client
import json
import time
import urllib.request


def post_recommend(port: int, data: dict) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", "/recommend", body=json.dumps(data))
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def get(port: int, path: str) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
        return resp.read()


def wait_for_version(port: int, version: str, timeout: float = 30) -> None:
    """Until the service on ``port`` says (``GET /model``) it serves ``version``; AssertionError after ``timeout``."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            model = json.loads(get(port, "/model")).get("model")
            if model and model["model_version"] == version:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"the service did not load model {version}: {get(port, '/model')!r}")
