"""Automatic rollback after a swap (docs/architecture.md, "Automatic rollback").

End to end on the real local stack (moto S3, MLflow server, Prefect server) and a real ``led serve``
(two workers): a healthy push passes the watch; a push that passes every offline check (verified
slot, finite arrays, ANN recall) but whose item ids are permuted against their vectors is caught by
the quality canary, ACTIVE goes back, serving follows, MLflow and the Prefect event say so.
The first tests are the pure decision figures, no server.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from serving.watch import Canary, Health, Scrape, Thresholds, health_between, quantile_ms, regressions
from tests.servers import stop
from tests.test_serving_outage import _serve, _until

LIMITS = Thresholds(max_error_rate=0.01, max_p99_ms=250, max_fallback_share=0.5, max_ndcg_drop=0.2,
                    min_requests=50)


# --- the decision, from figures -------------------------------------------------------------------

def test_p99_is_interpolated_within_its_bucket_like_histogram_quantile():
    buckets = [(0.001, 50.0), (0.01, 90.0), (0.1, 100.0), (float("inf"), 100.0)]
    assert quantile_ms(buckets, 0.5) == pytest.approx(1.0)
    assert quantile_ms(buckets, 0.99) == pytest.approx(10 + 90 * 0.9)  # 9 of the bucket's 10 requests
    assert quantile_ms([(0.1, 0.0), (float("inf"), 10.0)], 0.99) == pytest.approx(100.0)  # past the last bound
    assert quantile_ms([(float("inf"), 0.0)], 0.99) is None


def test_health_deltas_and_every_threshold_both_ways():
    before = Scrape({"200": 1000.0}, ((0.01, 1000.0), (1.0, 1000.0), (float("inf"), 1000.0)), 10.0, {})
    after = Scrape({"200": 1090.0, "500": 10.0}, ((0.01, 1095.0), (1.0, 1100.0), (float("inf"), 1100.0)), 70.0, {})
    health = health_between(before, after)
    assert (health.requests, health.errors, health.fallbacks) == (100, 10, 60)
    assert health.error_rate == pytest.approx(0.1) and health.fallback_share == pytest.approx(60 / 90)
    found = regressions(health, None, LIMITS)
    assert len(found) == 3 and "error rate" in found[0] and "p99" in found[1] and "fallbacks" in found[2]

    healthy = Health(requests=100, errors=0, fallbacks=5, p99_ms=3.0)
    assert regressions(healthy, Canary(50, 0.40, 0.42), LIMITS) == []
    assert regressions(Health(10, 10, 0, 900.0), None, LIMITS) == []  # too few requests to judge ratios
    drop = regressions(healthy, Canary(50, 0.05, 0.42), LIMITS)
    assert len(drop) == 1 and "quality canary" in drop[0] and "88% drop" in drop[0]
    assert regressions(healthy, Canary(50, 0.05, None), LIMITS) == []  # nothing to compare with (first push)
    # a restarted server's counters start again near zero: counted from zero, not negative
    assert health_between(after, before).requests == 1000


def test_no_serving_endpoint_skips_the_watch_and_says_why():
    from infra.settings import Settings
    from infra.stack import free_port
    from serving.storage import Push
    from serving.watch import watch_push

    pushed = Push("green", "2", "s3://test", previous_slot="blue", previous_model_version="1")
    base = Settings(rollback_watch_seconds=5)
    nowhere = base.with_overrides(serving_url=f"http://127.0.0.1:{free_port()}")
    cases = [(base, "serving_url is not set"), (nowhere, "unreachable"),
             (nowhere.with_overrides(rollback_watch_seconds=0), "off")]
    for settings, why in cases:
        report = watch_push(settings, None, pushed, [])
        assert report.status == "skipped" and not report.regressed and why in report.summary(), report.summary()
    live = Push("green", "2", "s3://test", already_live=True)
    assert "nothing was swapped" in watch_push(nowhere, None, live, []).summary()


# --- end to end -------------------------------------------------------------------------------------

def _export(folder: Path, V, b, counts, ids, probes, own_ids: dict | None = None) -> Path:
    """An export whose eval set holds the probes; its ANN-recall timelines are the probes' inputs, in
    its own ids when ``own_ids`` renames them (the export is consistent, the traffic's ids are not)."""
    from models.export import EVAL_SET, save_model

    eval_set = {"name": "probes", "inputs": [p[0] for p in probes], "targets": [p[1] for p in probes]}
    timelines = [[(own_ids or {}).get(i, i) for i in p[0]] for p in probes]
    return save_model(folder, ids, V, b, counts, {"loss": "synthetic"}, timelines,
                      files={EVAL_SET: json.dumps(eval_set)})


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> dict[str, Path]:
    """good-1, good-2 (the same model, slightly perturbed), broken-3 (good-1 with its ids permuted: a
    valid, finite, perfectly indexable model whose scores mean nothing) and renamed-4 (good-1 with its
    ids in another format than the traffic's: every request falls back to popularity)."""
    from serving.synthetic import synthetic_arrays, synthetic_timelines

    root = tmp_path_factory.mktemp("exports")
    V, b, counts, labels = synthetic_arrays(1200, 16, seed=3)
    ids = [f"item{i}" for i in range(len(V))]
    timelines = [t for t in synthetic_timelines(labels, ids, 120, seed=4) if len(t) >= 6]
    probes = [(t[: len(t) // 2], t[len(t) // 2:]) for t in timelines]
    noise = np.random.default_rng(5).normal(scale=0.01, size=V.shape).astype(np.float32)
    permuted = list(np.asarray(ids)[np.random.default_rng(6).permutation(len(ids))])
    return {"good-1": _export(root / "good-1", V, b, counts, ids, probes),
            "good-2": _export(root / "good-2", V + noise, b, counts, ids, probes),
            "broken-3": _export(root / "broken-3", V, b, counts, permuted, probes),
            "renamed-4": _export(root / "renamed-4", V, b, counts, [f"sku{i}" for i in range(len(V))], probes,
                                 {f"item{i}": f"sku{i}" for i in range(len(V))})}


@pytest.fixture(scope="module")
def world(local_stack, exports, tmp_path_factory):
    """The exports registered (versions 1-4 of a model of its own), good-1 pushed and champion,
    and ``led serve`` (2 workers) following the store."""
    from models.registration import register_export

    tag = f"rollback-{time.time_ns()}"
    settings = local_stack.with_overrides(
        s3_prefix=tag, mlflow_model_name=tag, home=tmp_path_factory.mktemp("serve-home"), n_trees=10,
        search_k=2000, serve_poll_seconds=0.2, rollback_watch_seconds=3, rollback_sample_seconds=0.5,
        rollback_swap_timeout_seconds=30, rollback_probe_users=60, rollback_min_requests=20)
    versions = {name: register_export(settings, folder, "2026-01-10").model_version
                for name, folder in exports.items()}
    assert list(versions.values()) == ["1", "2", "3", "4"]
    _push(settings, exports["good-1"], "1")
    server, port = _serve(settings)
    try:
        settings = settings.with_overrides(serving_url=f"http://127.0.0.1:{port}")
        _until(lambda: _serves(settings, "1"))
        yield settings
    finally:
        stop(server)


def _push(settings, folder: Path, version: str):
    """What the flow does: index as the registry's version, push, move champion (the gate's part)."""
    from infra import registry
    from serving.publish import build_slot_files
    from serving.storage import BlueGreenStore, push_slot

    slot = build_slot_files(folder, folder.parent / f"{folder.name}-index", settings.n_trees, settings.search_k,
                            settings.min_ann_recall, settings.seed, model_version=version)
    assert slot.ann_recall >= settings.min_ann_recall  # the offline checks pass
    pushed = push_slot(BlueGreenStore.from_settings(settings), slot.files, slot.manifest)
    client = registry.connect(settings)
    registry.move_champion(client, settings.mlflow_model_name, version,
                           registry.champion_version(client, settings.mlflow_model_name))
    return pushed, slot


def _serves(settings, version: str) -> bool:
    from serving.client import ServingClient
    from serving.watch import scrape

    return scrape(ServingClient(settings.serving_url)).serves_only(version)


def _watch(settings, pushed, slot):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from tasks.watch import watch_serving

    with temporary_settings({PREFECT_API_URL: settings.prefect_api_url}):
        return watch_serving.fn(settings, pushed, slot)


def _champion(settings) -> str:
    from infra import registry

    return registry.champion_version(registry.connect(settings), settings.mlflow_model_name)


@pytest.mark.stack
@pytest.mark.slow
def test_a_healthy_push_passes_the_watch(world, exports):
    from serving.storage import BlueGreenStore

    pushed, slot = _push(world, exports["good-2"], "2")
    report = _watch(world, pushed, slot)
    assert report["status"] == "healthy", report["summary"]
    assert report["canary"]["probes"] >= 40 and report["canary"]["previous_ndcg"] > 0.2
    assert abs(report["canary"]["drop"]) < 0.05 and report["canary"]["answered_by_other_version"] == 0
    assert report["health"]["requests"] >= report["canary"]["probes"] and report["health"]["errors"] == 0
    assert report["samples"] >= 2 and report["seconds"] >= world.rollback_watch_seconds
    assert BlueGreenStore.from_settings(world).read_active().model_version == "2"
    assert _serves(world, "2") and _champion(world) == "2"


@pytest.mark.stack
@pytest.mark.slow
def test_a_push_broken_for_serving_is_rolled_back_marked_and_announced(world, exports):
    from prefect import flow
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from infra import registry
    from serving.storage import BlueGreenStore
    from tasks.watch import ROLLED_BACK_EVENT, model_resource, watch_serving
    from tests.prefect_api import api

    store = BlueGreenStore.from_settings(world)
    before = store.read_active()
    pushed, slot = _push(world, exports["broken-3"], "3")
    assert store.read_active().model_version == "3" and _champion(world) == "3"

    @flow(name="rollback-test")
    def push_then_watch():  # the daily flow's last stages, as a real flow run on the Prefect server
        return watch_serving(world, pushed, slot)

    with temporary_settings({PREFECT_API_URL: world.prefect_api_url}):
        state = push_then_watch(return_state=True)
    # The run failed, and says why.
    assert state.is_failed() and "rolled back to" in state.message and "quality canary" in state.message, state

    # ACTIVE is back on the previous slot, and every worker serves the previous version again.
    active = store.read_active()
    assert (active.slot, active.model_version) == (before.slot, before.model_version)
    assert _serves(world, before.model_version)

    # MLflow: the version carries why, the champion alias is back.
    client = registry.connect(world)
    mv = client.get_model_version(world.mlflow_model_name, "3")
    assert "quality canary" in mv.tags[registry.ROLLED_BACK_TAG]
    assert mv.tags[registry.RESTORED_TAG] == before.model_version and mv.description.startswith("ROLLED BACK")
    assert _champion(world) == before.model_version

    # The Prefect event an automation can match, read back from the API.
    resource = model_resource(world, "3")["prefect.resource.id"]
    query = {"filter": {"event": {"name": [ROLLED_BACK_EVENT]}, "resource": {"id": [resource]}}, "limit": 5}
    events = _until(lambda: api(world, "/events/filter", query)["events"], timeout=30)
    payload, related = events[0]["payload"], {r["prefect.resource.role"]: r for r in events[0]["related"]}
    assert payload["status"] == "rolled_back" and payload["serving_restored"] is True
    assert payload["canary"]["ndcg"] < 0.5 * payload["canary"]["previous_ndcg"]
    assert related["restored-version"]["led.model.version"] == before.model_version
    run_id = related["flow-run"]["prefect.resource.id"].removeprefix("prefect.flow-run.")
    assert run_id == str(state.state_details.flow_run_id)
    artifacts = api(world, "/artifacts/filter", {"flow_runs": {"id": {"any_": [run_id]}}})
    assert "rolled back" in next(a for a in artifacts if a["key"] == "rollback-watch")["data"]


@pytest.mark.stack
@pytest.mark.slow
def test_a_push_that_makes_serving_fall_back_is_rolled_back(world, exports):
    from serving.storage import BlueGreenStore
    from serving.watch import ServingRegression

    before = BlueGreenStore.from_settings(world).read_active()
    pushed, slot = _push(world, exports["renamed-4"], "4")
    with pytest.raises(ServingRegression) as raised:
        _watch(world, pushed, slot)
    report = raised.value.report
    assert report.status == "rolled_back" and report.health["fallback_share"] == 1.0, report.summary()
    assert any("popularity fallbacks" in reason for reason in report.reasons), report.reasons
    assert BlueGreenStore.from_settings(world).read_active().model_version == before.model_version
    assert report.serving_restored and _champion(world) == before.model_version


@pytest.mark.stack
@pytest.mark.slow
def test_a_slot_serving_refuses_is_rolled_back_when_no_worker_swaps(world):
    from serving.storage import BlueGreenStore, Push, other_slot
    from serving.watch import watch_push

    store = BlueGreenStore.from_settings(world)
    before = store.read_active()
    idle = other_slot(before.slot)
    store.flip(idle, "5", "f" * 64, before)  # ACTIVE names a manifest the idle slot does not have
    pushed = Push(idle, "5", store.url, previous_slot=before.slot, previous_model_version=before.model_version)
    report = watch_push(world.with_overrides(rollback_swap_timeout_seconds=3), store, pushed, [])
    assert report.status == "rolled_back", report.summary()
    assert "did not swap to version 5" in report.reasons[0] and "refused slot" in report.reasons[0]
    assert store.read_active().model_version == before.model_version and report.serving_restored
