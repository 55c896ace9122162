"""Storage outages: a server (re)started while S3 is unreachable serves its verified cache, flagged stale.

Real moto S3 servers over HTTP; "S3 down" is a stopped moto (or a loopback port nobody listens on).
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from infra.settings import Settings
from infra.stack import free_port
from serving.app import Limits, Poller, Service
from serving.publish import publish_model
from serving.storage import LAST_ACTIVE, BlueGreenStore
from tests.servers import start_moto, stop
from tests.test_bluegreen import _env, models, moto_url, settings  # noqa: F401 - fixtures

ROOT = Path(__file__).resolve().parents[1]
LED = [sys.executable, "-m", "cli.main"]


def _down(settings: Settings) -> Settings:
    """The same settings with S3 at a loopback port nobody listens on."""
    return settings.with_overrides(s3_endpoint_url=f"http://127.0.0.1:{free_port()}")


def _cached_poller(settings, cache: Path) -> Service:
    """A poller that reached S3 once: the cache holds the verified ACTIVE slot."""
    service = Service(Limits())
    assert Poller(service, BlueGreenStore.from_settings(settings), cache, 0.2).poll_once()
    return service


def test_start_with_store_down_serves_the_verified_cache_as_stale_then_confirms(settings, models, tmp_path):
    publish_model(models["v1"], settings, BlueGreenStore.from_settings(settings))
    cache = tmp_path / "cache"
    _cached_poller(settings, cache)
    assert (cache / LAST_ACTIVE).is_file()

    service = Service(Limits())
    Poller(service, BlueGreenStore.from_settings(_down(settings)), cache, 0.2).start_up()
    assert service.model.model_version == "1" and service.stale
    code, _, body = service.handle("GET", "/readyz", b"")
    assert code == 200 and json.loads(body)["stale"] is True and "store unreachable" in json.loads(body)["stale_reason"]
    assert json.loads(service.handle("GET", "/model", b"")[2])["stale"] is True
    assert "led_model_stale 1.0" in service.handle("GET", "/metrics", b"")[2].decode()
    assert service.handle("POST", "/recommend", b'{"items": ["item3"], "k": 5}')[0] == 200

    # The store is back and ACTIVE still names the cached slot: confirmed, no longer stale, nothing re-downloaded.
    back = Poller(service, BlueGreenStore.from_settings(settings), cache, 0.2)
    assert not back.poll_once()
    assert not service.stale and service.model.model_version == "1"
    assert "led_model_stale 0.0" in service.handle("GET", "/metrics", b"")[2].decode()


def test_tampered_or_missing_cache_stays_unready_and_says_why(settings, models, tmp_path):
    down = BlueGreenStore.from_settings(_down(settings))
    empty = Service(Limits())
    Poller(empty, down, tmp_path / "empty", 0.2).start_up()
    code, _, body = empty.handle("GET", "/readyz", b"")
    reason = json.loads(body)["reason"]
    assert code == 503 and "polling ACTIVE failed" in reason and "no verified model in the local cache" in reason
    assert empty.handle("POST", "/recommend", b'{"items": []}')[0] == 503

    publish_model(models["v1"], settings, BlueGreenStore.from_settings(settings))
    cache = tmp_path / "cache"
    _cached_poller(settings, cache)
    slot_dir = next(p for p in cache.iterdir() if p.is_dir() and not p.name.startswith("."))
    V = np.load(slot_dir / "V.npy")
    V[0, 0] += 1.0  # a flipped value: still a valid .npy, not the verified bytes
    np.save(slot_dir / "V.npy", V)
    tampered = Service(Limits())
    Poller(tampered, down, cache, 0.2).start_up()
    code, _, body = tampered.handle("GET", "/readyz", b"")
    assert code == 503 and "cached slot refused" in json.loads(body)["reason"] and "V.npy" in json.loads(body)["reason"]


# --- end to end: led serve restarted while S3 is stopped ------------------------------------------

def _serve(settings: Settings) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([*LED, "serve", "--port", "0", "--workers", "2"], cwd=ROOT, env=_env(settings),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert line, proc.stderr.read()
    return proc, int(json.loads(line)["listening"].rsplit(":", 1)[1])


def _json_get(port: int, path: str) -> tuple[int, dict | str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
            body = resp.read().decode()
            return resp.status, json.loads(body) if path != "/metrics" else body
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _until(check, timeout: float = 30.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            got = check()
            if got:
                return got
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def _all_workers(port: int, predicate) -> bool:
    """Fresh connections reach either worker (SO_REUSEPORT): ask several times."""
    return all(predicate(_json_get(port, "/model")[1]) for _ in range(12))


def test_led_serve_restarted_with_s3_stopped_serves_cache_then_follows_a_new_push(models, tmp_path):
    s3_port = free_port()
    settings = Settings(s3_endpoint_url=f"http://127.0.0.1:{s3_port}", s3_bucket="led-outage", s3_prefix="t",
                        home=tmp_path / "home", n_trees=10, search_k=2000, serve_poll_seconds=0.2)
    moto = start_moto(s3_port, tmp_path / "moto.log")
    try:
        publish_model(models["v1"], settings, BlueGreenStore.from_settings(settings))
        server, port = _serve(settings)
        try:
            _until(lambda: _all_workers(port, lambda m: (m["model"] or {}).get("model_version") == "1"))
        finally:
            stop(server)
    finally:
        stop(moto)

    # S3 is down: the restarted server serves the cached model and says it is stale.
    server, port = _serve(settings)
    try:
        _until(lambda: _all_workers(port, lambda m: m["ready"]))
        model = _json_get(port, "/model")[1]
        assert model["model"]["model_version"] == "1" and model["stale"] is True
        assert "store unreachable" in model["stale_reason"]
        code, ready = _json_get(port, "/readyz")
        assert code == 200 and ready["stale"] is True
        metrics = _json_get(port, "/metrics")[1]
        assert "led_model_stale 1.0" in metrics and "led_workers_ready 2.0" in metrics
        assert float(re.search(r"^led_poll_errors_total (\S+)$", metrics, re.M).group(1)) >= 2  # both workers tried
        code, body = _json_get_post(port, {"items": ["item3"], "k": 5})
        assert code == 200 and body["model_version"] == "1" and len(body["ids"]) == 5

        # S3 comes back (empty: moto keeps no state) and a new model is pushed: every worker follows it.
        moto = start_moto(s3_port, tmp_path / "moto.log")
        try:
            publish_model(models["v2"], settings, BlueGreenStore.from_settings(settings))
            _until(lambda: _all_workers(port, lambda m: (m["model"] or {}).get("model_version") == "2"
                                        and m["stale"] is False))
            assert "led_model_stale 0.0" in _json_get(port, "/metrics")[1]
            assert _json_get(port, "/readyz")[1]["stale"] is False
        finally:
            stop(moto)
    finally:
        stop(server)
    events = [json.loads(line)["event"] for line in server.stderr.read().splitlines() if line.startswith('{"ts"')]
    assert "poll_failed" in events and "model_swap" in events


def _json_get_post(port: int, data: dict) -> tuple[int, dict]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/recommend", data=json.dumps(data).encode(), method="POST")
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.status, json.loads(resp.read())


@pytest.fixture(autouse=True)
def _aws_test_credentials(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", os.environ.get("AWS_ACCESS_KEY_ID", "testing"))
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", os.environ.get("AWS_SECRET_ACCESS_KEY", "testing"))


def test_one_json_log_line_per_poll_failure_refused_slot_and_swap(settings, models, tmp_path, capsys):
    store = BlueGreenStore.from_settings(settings)
    publish_model(models["v1"], settings, store)
    service = Service(Limits())
    poller = Poller(service, store, tmp_path / "cache", 0.2)
    assert poller.poll_once()
    store.flip("green", "bogus", "f" * 64, store.read_active())  # ACTIVE names a slot that does not verify
    assert not poller.poll_once() and not poller.poll_once()  # refused once, not retried
    Poller(service, BlueGreenStore.from_settings(_down(settings)), tmp_path / "cache", 0.2).poll_once()
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith('{"ts"')]
    events = [line["event"] for line in lines]
    assert events == ["model_loaded", "slot_refused", "poll_failed"], events
    refused, failed = lines[1], lines[2]
    assert refused["slot"] == "green" and refused["model_version"] == "bogus" and refused["serving"] == "1"
    assert "polling" not in failed["error"] and failed["serving"] == "1" and failed["pid"] == os.getpid()
