"""Blue/green push, crash safety, rollback and hot swap against a REAL moto S3 server over HTTP.

A module fixture starts ``moto_server`` on a free loopback port; every test
uses its own S3 prefix, so tests share the server but not state.
"""
from __future__ import annotations

import http.client
import json
import multiprocessing
import os
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from infra.settings import Settings
from infra.stack import free_port
from models.export import load_model
from serving.app import Limits, Poller, Service
from serving.publish import IndexRejected, publish_model
from serving.storage import (SLOT_ARTIFACTS, BlueGreenStore, ConcurrentPushError, StorageError,
                             VerificationError, rollback, status)
from serving.synthetic import make_synthetic_model
from tests.http_client import get as _get
from tests.http_client import post_recommend
from tests.http_client import wait_for_version as _wait_for_version
from tests.servers import start_moto, stop

ROOT = Path(__file__).resolve().parents[1]
LED = [sys.executable, "-m", "cli.main"]
UPLOADS = len(SLOT_ARTIFACTS) + 2  # arrays + card, index.ann, manifest.json


@pytest.fixture(scope="module")
def moto_url(tmp_path_factory):
    port = free_port()
    proc = start_moto(port, tmp_path_factory.mktemp("moto") / "moto.log")
    yield f"http://127.0.0.1:{port}"
    stop(proc)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {
        "v1": make_synthetic_model(root / "m1", items=1500, dim=16, seed=1, timelines=80,
                                   card={"model_version": "1"}),
        "v2": make_synthetic_model(root / "m2", items=1600, dim=16, seed=2, timelines=80,
                                   card={"model_version": "2"}, prefix="sku"),
    }


@pytest.fixture
def settings(moto_url, request, tmp_path) -> Settings:
    prefix = f"t/{request.node.name}-{time.time_ns()}"
    return Settings(s3_endpoint_url=moto_url, s3_bucket="led-test", s3_prefix=prefix, home=tmp_path / "home",
                    n_trees=10, search_k=2000, serve_poll_seconds=0.2)


def _env(settings: Settings, **extra: str) -> dict:
    return {**os.environ, "LED_S3_ENDPOINT_URL": settings.s3_endpoint_url, "LED_S3_BUCKET": settings.s3_bucket,
            "LED_S3_PREFIX": settings.s3_prefix, "LED_HOME": str(settings.home), "LED_N_TREES": "10",
            "LED_SEARCH_K": "2000", "LED_SERVE_POLL_SECONDS": "0.2", **extra}


def _assert_active_is_verified(store: BlueGreenStore, version: str | None) -> None:
    active = store.read_active()
    if version is None:
        assert active is None
        return
    assert active.model_version == version
    manifest = store.verify_slot(active.slot, active.manifest_sha256)  # raises if partial/corrupt
    assert manifest["model_version"] == version


# --- push / status / rollback ------------------------------------------------------------------------

def test_push_status_rollback_cycle(settings, models, led, monkeypatch):
    for key, value in _env(settings).items():
        if key.startswith("LED_"):
            monkeypatch.setenv(key, value)
    from infra.settings import get_settings

    get_settings.cache_clear()
    try:
        code, first, _, err = led("push", "--model", models["v1"])
        assert code == 0, err
        assert first["slot"] == "blue" and first["model_version"] == "1" and first["ann_recall"] >= 0.95
        code, second, _, _ = led("push", "--model", models["v2"])
        assert code == 0 and second["slot"] == "green" and second["previous_model_version"] == "1"
        code, st, _, _ = led("status")
        assert code == 0 and st["active_slot"] == "green" and st["active_model_version"] == "2"
        assert st["slots"]["blue"]["model_version"] == "1" and st["slots"]["green"]["model_version"] == "2"
        assert st["slots"]["green"]["manifest_matches_active"] is True
        code, back, _, _ = led("rollback")
        assert code == 0 and back == {"slot": "blue", "model_version": "1", "previous_slot": "green",
                                      "previous_model_version": "2"}
        assert led("status")[1]["active_model_version"] == "1"
        code, third, _, _ = led("push", "--model", models["v2"])  # writes the idle slot (green) again
        assert code == 0 and third["slot"] == "green" and third["previous_slot"] == "blue"
    finally:
        get_settings.cache_clear()


def test_manifest_records_objects_recall_and_index_params(settings, models):
    store = BlueGreenStore.from_settings(settings)
    result = publish_model(models["v1"], settings, store)
    manifest, sha = store.read_manifest(result["slot"])
    assert sha == result["manifest_sha256"] == store.read_active().manifest_sha256
    assert set(manifest["objects"]) == {*SLOT_ARTIFACTS, "index.ann"}
    assert manifest["ann_recall"] == result["ann_recall"] >= settings.min_ann_recall
    assert manifest["index"]["search_k"] == 2000 and manifest["ann_report"]["timeline_source"] == "eval_timelines.json"
    body = json.loads(store.s3.get_object(Bucket=settings.s3_bucket, Key=store.key("ACTIVE"))["Body"].read())
    assert body == {"slot": "blue", "model_version": "1", "manifest_sha256": sha}


def test_model_version_falls_back_to_content_hash(settings, tmp_path):
    folder = make_synthetic_model(tmp_path / "noversion", items=400, dim=8, timelines=30)
    again = make_synthetic_model(tmp_path / "same", items=400, dim=8, timelines=30)
    store = BlueGreenStore.from_settings(settings)
    first = publish_model(folder, settings, store)
    second = publish_model(again, settings, store)
    assert first["model_version"].startswith("sha-") and first["model_version"] == second["model_version"]


def test_rollback_refuses_without_a_verified_other_slot(settings, models):
    store = BlueGreenStore.from_settings(settings)
    with pytest.raises(StorageError, match="nothing to roll back"):
        rollback(store)
    publish_model(models["v1"], settings, store)
    with pytest.raises(StorageError, match="cannot roll back to green"):
        rollback(store)
    _assert_active_is_verified(store, "1")


def test_low_recall_index_is_refused_and_nothing_uploaded(settings, models):
    store = BlueGreenStore.from_settings(settings)
    strict = settings.with_overrides(n_trees=1, search_k=10, min_ann_recall=0.999)
    with pytest.raises(IndexRejected) as info:
        publish_model(models["v1"], strict, store)
    assert info.value.result["pushed"] is False and info.value.result["ann_recall"] < 0.999
    store.ensure_bucket()
    assert store.read_active() is None and store.read_manifest("blue") is None


def test_push_slot_itself_refuses_a_low_recall_manifest(settings, models, tmp_path):
    """The pipeline calls build_slot_files + push_slot directly: the floor holds there too."""
    from serving.publish import build_slot_files
    from serving.storage import RecallBelowFloor, push_slot

    slot = build_slot_files(models["v1"], tmp_path / "w", n_trees=1, search_k=10, min_recall=0.999)
    files, manifest = slot.files, slot.manifest
    assert slot.ann_recall < 0.999
    store = BlueGreenStore.from_settings(settings)
    with pytest.raises(RecallBelowFloor, match="refusing to push"):
        push_slot(store, files, manifest)
    with pytest.raises(RecallBelowFloor, match="no measured"):
        push_slot(store, files, {k: v for k, v in manifest.items() if k != "ann_report"})
    store.ensure_bucket()
    assert store.read_active() is None and store.read_manifest("blue") is None


def test_corrupted_idle_object_stops_the_flip(settings, models):
    store = BlueGreenStore.from_settings(settings)
    publish_model(models["v1"], settings, store)

    def corrupt(slot: str) -> None:
        store.s3.put_object(Bucket=settings.s3_bucket, Key=store.slot_key(slot, "V.npy"), Body=b"garbage")

    with pytest.raises(VerificationError, match="V.npy sha256"):
        publish_model(models["v2"], settings, store, before_verify=corrupt)
    _assert_active_is_verified(store, "1")
    with pytest.raises(StorageError, match="cannot roll back"):
        rollback(store)  # the corrupt green slot is never activated, not even by a rollback


def test_concurrent_pushes_cannot_both_win(settings, models):
    store = BlueGreenStore.from_settings(settings)
    store.ensure_bucket()
    winner = store.flip("blue", "a", "0" * 64, expected=None)
    with pytest.raises(ConcurrentPushError):
        store.flip("blue", "b", "1" * 64, expected=None)  # IfNoneMatch='*': ACTIVE already exists
    store.flip("green", "c", "2" * 64, expected=winner)
    with pytest.raises(ConcurrentPushError):
        store.flip("blue", "d", "3" * 64, expected=winner)  # stale ETag: someone flipped since
    assert store.read_active().model_version == "c"


# --- crash safety ---------------------------------------------------------------------------------

def _push_in_child(model_dir: str, settings: Settings, fault: str) -> None:
    os.environ["LED_PUSH_FAULT"] = fault
    publish_model(Path(model_dir), settings)


@pytest.mark.parametrize("first", [False, True], ids=["over-existing", "first-push"])
def test_push_killed_at_every_step_leaves_a_verified_active(settings, models, first):
    """Kill the pushing process after each object upload, before verify, before and after the flip."""
    store = BlueGreenStore.from_settings(settings)
    if not first:
        publish_model(models["v1"], settings, store)
    before = None if first else "1"
    ctx = multiprocessing.get_context("fork")
    faults = [f"upload:{n}" for n in range(1, UPLOADS + 1)] + ["before_verify", "before_flip", "after_flip"]
    for fault in faults:
        child = ctx.Process(target=_push_in_child, args=(str(models["v2"]), settings, fault))
        child.start()
        child.join(60)
        assert child.exitcode == 17, (fault, child.exitcode)
        expected = "2" if fault == "after_flip" else before
        _assert_active_is_verified(store, expected)


def test_cli_push_killed_before_flip_keeps_previous_model(settings, models):
    store = BlueGreenStore.from_settings(settings)
    publish_model(models["v1"], settings, store)
    out = subprocess.run([*LED, "push", "--model", str(models["v2"])], cwd=ROOT, capture_output=True, text=True,
                         env=_env(settings, LED_PUSH_FAULT="before_flip"), timeout=120)
    assert out.returncode == 17, out.stderr
    _assert_active_is_verified(store, "1")
    st = status(store)
    assert st["slots"]["green"]["model_version"] == "2"  # written and verified, never activated


def test_poller_never_loads_a_partial_slot_and_keeps_serving(settings, models, tmp_path):
    store = BlueGreenStore.from_settings(settings)
    publish_model(models["v1"], settings, store)
    service = Service(Limits())
    poller = Poller(service, store, tmp_path / "cache", 0.2)
    assert poller.poll_once() and service.model.model_version == "1"

    # A push dies after 2 uploads; then ACTIVE is (wrongly) pointed at the partial slot.
    ctx = multiprocessing.get_context("fork")
    child = ctx.Process(target=_push_in_child, args=(str(models["v2"]), settings, "upload:2"))
    child.start()
    child.join(60)
    assert not poller.poll_once()  # ACTIVE unchanged
    old = store.read_active()
    store.flip("green", "bogus", "f" * 64, old)
    assert not poller.poll_once()
    assert service.model.model_version == "1" and "refused slot green" in service.last_error
    metrics = service.handle("GET", "/metrics", b"")[2].decode()
    assert "led_model_load_failures_total 1" in metrics
    assert service.handle("GET", "/model", b"")[2].count(b"refused slot green") == 1
    assert service.handle("POST", "/recommend", b'{"items": ["item3"], "k": 5}')[0] == 200
    assert not poller.poll_once()  # the refused ACTIVE is not re-downloaded on every poll
    assert not any(p.name.startswith(".tmp-") for p in (tmp_path / "cache").iterdir())

    # A proper push afterwards is picked up.
    publish_model(models["v2"], settings, store)
    assert poller.poll_once() and service.model.model_version == "2" and service.last_error is None


# --- end to end: led serve follows pushes with zero failed requests ---------------------------------

def test_led_serve_follows_pushes_and_swaps_without_failed_requests(settings, models):
    store = BlueGreenStore.from_settings(settings)
    first = publish_model(models["v1"], settings, store)
    proc = subprocess.Popen([*LED, "serve", "--port", "0"], cwd=ROOT, env=_env(settings),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        port = int(json.loads(proc.stdout.readline())["listening"].rsplit(":", 1)[1])
        _wait_for_version(port, "1")

        # Answers equal exact scoring of the exported arrays, up to measured ANN misses.
        exported = load_model(models["v1"])
        recalls = []
        for timeline in exported.eval_timelines[:60]:
            ids, scores = exported.exact_topk(timeline, 100)
            code, body = post_recommend(port, {"items": timeline, "k": 100})
            assert code == 200 and body["model_version"] == "1" and body["slot"] == "blue"
            recalls.append(len(set(ids) & set(body["ids"])) / len(ids))
            exact = dict(zip(ids, scores))
            shared = [i for i in body["ids"] if i in exact]
            np.testing.assert_allclose([body["scores"][body["ids"].index(i)] for i in shared],
                                       [exact[i] for i in shared], rtol=1e-4, atol=1e-4)
        assert np.mean(recalls) >= 0.95 and abs(np.mean(recalls) - first["ann_recall"]) < 0.05

        # A client keeps querying while model 2 is pushed and swapped in.
        stop, seen, failures, count = threading.Event(), set(), [], [0]

        def client() -> None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            while not stop.is_set():
                try:
                    conn.request("POST", "/recommend", body=b'{"items": ["item5", "sku5"], "k": 10}')
                    resp = conn.getresponse()
                    body = json.loads(resp.read())
                    if resp.status != 200 or len(body["ids"]) != 10:
                        failures.append((resp.status, body))
                    seen.add(body.get("model_version"))
                    count[0] += 1
                except Exception as exc:  # noqa: BLE001 - any failure counts
                    failures.append(repr(exc))
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)

        threads = [threading.Thread(target=client) for _ in range(2)]
        for t in threads:
            t.start()
        time.sleep(0.5)
        publish_model(models["v2"], settings, store)
        _wait_for_version(port, "2")
        time.sleep(0.5)
        stop.set()
        for t in threads:
            t.join(10)
        assert failures == [] and seen == {"1", "2"} and count[0] > 50, (failures[:3], seen, count)
        model_info = json.loads(_get(port, "/model"))
        assert model_info["swaps"] == 1 and model_info["model"]["slot"] == "green"
        assert 'led_model_info{model_version="2",slot="green"} 1' in _get(port, "/metrics").decode()
    finally:
        proc.terminate()
        proc.wait(10)
