"""A tiny HTTP client for the serving tests (one connection per call, bounded timeout)."""
from __future__ import annotations

import http.client
import json


def post_recommend(port: int, data: dict) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", "/recommend", body=json.dumps(data))
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()
