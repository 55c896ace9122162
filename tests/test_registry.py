"""MLflow registration, the champion/challenger gate and ``led compare`` against a REAL MLflow server.

The MLflow server is the session's local stack (``tests/conftest.py``:
``local_stack``, the same ``mlflow server`` as ``led stack up``: SQLite
backend, artifacts proxied by the server); each test uses its own registered
model name.

The models are real computations on the ``small_world`` event store (numpy
only): a popularity model, a random-embedding model (clearly worse) and an
SVD-average model (PMI of view co-occurrences, truncated SVD, mean of the
timeline's item vectors), all exported with ``models/export.py``. The gate's
eval set is the clicks of the world's last day, a day none of them trained on.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from infra import registry
from infra.errors import UserError
from infra.settings import Settings, get_settings
from infra.stack import free_port, stop_group
from models.evaluation import eval_set_for_day, evaluate_model, load_eval_set, save_eval_set
from models.export import load_model, save_model
from models.gate import gate
from models.registration import register_export

TRAIN_END = "2026-01-10"  # small_world spans 2026-01-01 .. 2026-01-10; the last day is held out
WINDOW = 9
MLFLOW_BIN = Path(sys.executable).with_name("mlflow")


# --------------------------------------------------------------------------- real models on small_world
def view_statistics(events_dir: Path) -> dict:
    """Vocabulary, view counts and the item-item co-occurrence matrix of the training window."""
    import scipy.sparse as sp

    from infra import events

    views = events.read_window(events_dir, "views", TRAIN_END, WINDOW).to_pandas()
    items = np.array(sorted(views["item_id"].unique()))
    index = {item: k for k, item in enumerate(items)}
    users = views["user_id"].astype("category").cat.codes.to_numpy()
    X = sp.csr_matrix((np.ones(len(users)), (users, views["item_id"].map(index).to_numpy())),
                      shape=(users.max() + 1, len(items)))
    X.data[:] = 1.0
    C = (X.T @ X).toarray()
    np.fill_diagonal(C, 0)
    return {"items": items, "counts": np.asarray(X.sum(axis=0)).ravel().astype(np.int64), "cooc": C}


def svd_embeddings(cooc: np.ndarray, d: int) -> np.ndarray:
    """Rows of the truncated SVD of the positive PMI matrix (smoothing 0.75), L2-normalised."""
    total = cooc.sum()
    context = cooc.sum(axis=0) ** 0.75
    with np.errstate(divide="ignore", invalid="ignore"):
        pmi = np.log(cooc * total / np.outer(cooc.sum(axis=1), context / context.sum() * total))
    pmi = np.maximum(np.nan_to_num(pmi, nan=0.0, neginf=0.0, posinf=0.0), 0.0)
    U, S, _ = np.linalg.svd(pmi)
    E = U[:, :d] * np.sqrt(S[:d])
    return E / (np.linalg.norm(E, axis=1, keepdims=True) + 1e-12)


def export(folder: Path, stats: dict, V: np.ndarray, b: np.ndarray, loss: str, **card) -> Path:
    card = {"d": V.shape[1], "loss": loss, "trainable_params": V.shape[1] ** 2 + len(b),
            "window": {"run_date": TRAIN_END, "days": WINDOW}, "hyper_parameters": {"seed": 7}} | card
    return save_model(folder, stats["items"], V, b, stats["counts"], card)


@pytest.fixture(scope="module")
def world_models(small_world, tmp_path_factory) -> dict:
    """Three exported models of increasing quality + the gate's eval set + a validation set."""
    root = tmp_path_factory.mktemp("registry_models")
    t0 = time.perf_counter()
    stats = view_statistics(small_world)
    t1 = time.perf_counter()
    E = svd_embeddings(stats["cooc"], 32)
    t2 = time.perf_counter()
    n = len(stats["items"])
    log_pop = np.log(stats["counts"] / stats["counts"].sum())
    rng = np.random.default_rng(3)
    models = {
        "popularity": export(root / "popularity", stats, np.zeros((n, 4)), log_pop, "popularity"),
        "random": export(root / "random", stats, rng.normal(size=(n, 8)), np.zeros(n), "random"),
        "svd": export(root / "svd", stats, E, np.zeros(n), "svd-average"),
    }
    eval_set = eval_set_for_day(small_world, TRAIN_END, WINDOW)  # clicks of the held-out last day
    validation = eval_set_for_day(small_world, "2026-01-09", WINDOW - 1)
    timings = {"cooccurrence": t1 - t0, "svd": t2 - t1}
    return {"dirs": models, "eval_set": eval_set, "validation": validation, "timings": timings, "root": root}


# --------------------------------------------------------------------------- the MLflow server
@pytest.fixture(scope="module")
def mlflow_server(local_stack):
    """The session's MLflow server (proxied artifacts under the stack's ``mlflow/artifacts``)."""
    return {"url": local_stack.mlflow_tracking_uri, "root": local_stack.stack_dir / "mlflow"}


def stored_path(server, artifact_uri: str) -> Path:
    """Where the server keeps an artifact URI on disk (proxied ``mlflow-artifacts:`` or plain ``file:``)."""
    if artifact_uri.startswith("file://"):
        return Path(artifact_uri.removeprefix("file://"))
    relative = artifact_uri.split(":", 1)[1].lstrip("/")
    if artifact_uri.startswith("mlflow-artifacts://"):  # mlflow-artifacts://host:port/path
        relative = relative.split("/", 1)[1]
    return server["root"] / "artifacts" / relative


def server_settings(server, tmp_path, model_name: str) -> Settings:
    return Settings(mlflow_tracking_uri=server["url"], mlflow_experiment="led-test",
                    mlflow_model_name=model_name, home=tmp_path)


def log_model(settings: Settings, world: dict, kind: str, run_date: str, **extra) -> registry.RunInfo:
    """Log one 'training' of ``kind`` with real validation metrics and stage timings."""
    model_dir = world["dirs"][kind]
    validation = {registry.metric_name(k): v
                  for k, v in evaluate_model(load_model(model_dir), world["validation"]).items()}
    history = [{"epoch": e, "loss": 1.0 / e, "val_ndcg@100": validation["ndcg_at_100"] * e / 3} for e in (1, 2, 3)]
    return register_export(
        settings, model_dir, run_date, params={"negatives": 0, "lr": 0.0, "steps": 0, "seed": 7},
        metrics={"recall@20": validation["recall_at_20"], "recall@50": validation["recall_at_50"],
                 "ndcg@100": validation["ndcg_at_100"], "coverage@20": validation["coverage_at_20"]},
        history=history, timings=world["timings"], **extra)


@pytest.fixture(scope="module")
def scenario(mlflow_server, world_models, tmp_path_factory):
    """Three daily trainings on one registered model: popularity, then worse (random), then better (SVD)."""
    settings = server_settings(mlflow_server, tmp_path_factory.mktemp("home"), "led-test-model")
    report = tmp_path_factory.mktemp("report")
    (report / "index.html").write_text("<html>validation ok</html>")
    steps = {}
    for day, kind in (("2026-01-10", "popularity"), ("2026-01-11", "random"), ("2026-01-12", "svd")):
        info = log_model(settings, world_models, kind, day, artifacts=[report])
        steps[kind] = (info, gate(settings, info.model_version, world_models["eval_set"]))
    return {"settings": settings, "steps": steps, **world_models}


# --------------------------------------------------------------------------- tests
def test_first_model_becomes_champion_then_worse_stays_challenger_then_better_wins(scenario):
    from mlflow import MlflowClient

    steps, settings = scenario["steps"], scenario["settings"]
    first, worse, better = steps["popularity"], steps["random"], steps["svd"]
    assert [s[0].model_version for s in (first, worse, better)] == ["1", "2", "3"]
    assert first[1].promoted and first[1].champion_version is None
    assert "first model" in first[1].reasons[0]

    assert not worse[1].promoted and worse[1].champion_version == "1"
    assert worse[1].challenger_metrics["ndcg_at_100"] < worse[1].champion_metrics["ndcg_at_100"]
    assert any(r.startswith("NDCG@100") and " < champion" in r for r in worse[1].reasons)

    assert better[1].promoted and better[1].champion_version == "1"
    assert better[1].challenger_metrics["ndcg_at_100"] > better[1].champion_metrics["ndcg_at_100"]
    # the same eval set was used on both sides: the champion's score did not change between gates
    assert better[1].champion_metrics == worse[1].champion_metrics == first[1].challenger_metrics

    client = MlflowClient(settings.mlflow_tracking_uri)
    aliases = client.get_registered_model(settings.mlflow_model_name).aliases
    assert aliases == {"champion": "3", "challenger": "3", "previous_champion": "1"}
    rejected = client.get_model_version(settings.mlflow_model_name, "2")
    assert rejected.tags["gate.decision"] == "rejected" and "NDCG@100" in rejected.tags["gate.reasons"]
    run_tags = client.get_run(worse[0].run_id).data.tags
    assert run_tags["gate.decision"] == "rejected" and run_tags["gate.champion_version"] == "1"


def test_run_logs_params_metrics_history_and_artifacts(scenario):
    from mlflow import MlflowClient

    info = scenario["steps"]["svd"][0]
    client = MlflowClient(scenario["settings"].mlflow_tracking_uri)
    run = client.get_run(info.run_id)
    params, metrics = run.data.params, run.data.metrics
    n_items = len(load_model(scenario["dirs"]["svd"]).item_ids)
    assert params["d"] == "32" and params["loss"] == "svd-average" and params["vocabulary_size"] == str(n_items)
    assert params["window.days"] == str(WINDOW) and params["run_date"] == "2026-01-12"
    assert params["negatives"] == "0" and params["hyper_parameters.seed"] == "7"
    assert len(params["git_commit"].split("-")[0]) == 40
    for name in ("recall_at_20", "recall_at_50", "ndcg_at_100", "coverage_at_20",
                 "seconds/cooccurrence", "seconds/svd", "gate/ndcg_at_100", "gate/champion_ndcg_at_100"):
        assert name in metrics, name
    assert [m.step for m in client.get_metric_history(info.run_id, "history/loss")] == [1, 2, 3]
    top = {a.path for a in client.list_artifacts(info.run_id)}
    assert {"exported", "plots", "reports"} <= top
    assert {a.path for a in client.list_artifacts(info.run_id, "plots")} == {
        "plots/history.json", "plots/training_curve.png", "plots/daily_metrics.png"}
    exported = {a.path.split("/")[-1] for a in client.list_artifacts(info.run_id, "exported")}
    assert {"V.npy", "b.npy", "item_ids.npy", "counts.npy", "model_card.json"} <= exported
    png = Path(client.download_artifacts(info.run_id, "plots/training_curve.png", str(scenario["root"])))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_champion_through_pyfunc_matches_exported_topk(scenario):
    import mlflow
    import pandas as pd

    registry.connect(scenario["settings"])
    served = mlflow.pyfunc.load_model(f"models:/{scenario['settings'].mlflow_model_name}@champion")
    exported = load_model(scenario["dirs"]["svd"])
    timelines = scenario["eval_set"].timelines(25) + [["no-such-item"], []]
    out = served.predict(pd.DataFrame({"items": timelines}), params={"k": 10})
    for timeline, ids, scores in zip(timelines, out["item_ids"], out["scores"]):
        want_ids, want_scores = exported.exact_topk(timeline, 10)
        assert list(ids) == want_ids
        np.testing.assert_allclose(scores, want_scores, rtol=1e-6)


def test_led_compare_shows_versions_aliases_and_gate(scenario, led, monkeypatch):
    settings = scenario["settings"]
    monkeypatch.setenv("LED_MLFLOW_TRACKING_URI", settings.mlflow_tracking_uri)
    monkeypatch.setenv("LED_MLFLOW_MODEL_NAME", settings.mlflow_model_name)
    get_settings.cache_clear()
    try:
        code, last, out, err = led("compare", "--last", "2", "--format", "json")
        assert code == 0, err
        assert last["champion"] == "3" and [v["version"] for v in last["versions"]] == ["3", "2"]
        v3, v2 = last["versions"]
        assert v3["aliases"] == ["challenger", "champion"] and v3["gate"] == "promoted"
        assert v2["aliases"] == [] and v2["gate"] == "rejected" and "NDCG@100" in v2["gate_reasons"]
        assert v2["run_date"] == "2026-01-11" and v3["delta_vs_champion"]["ndcg_at_100"] == 0
        assert v2["delta_vs_champion"]["ndcg_at_100"] == pytest.approx(
            v2["metrics"]["ndcg_at_100"] - v3["metrics"]["ndcg_at_100"])
        code, last, out, err = led("compare")
        assert code == 0 and last["versions"] == ["3", "2", "1"]
        assert "champion" in out and "previous_champion" in out and "rejected" in out
    finally:
        get_settings.cache_clear()


def test_led_register_cli_logs_and_gates(mlflow_server, world_models, led, monkeypatch, tmp_path):
    monkeypatch.setenv("LED_MLFLOW_TRACKING_URI", mlflow_server["url"])
    monkeypatch.setenv("LED_MLFLOW_MODEL_NAME", "led-cli-model")
    get_settings.cache_clear()
    eval_file = save_eval_set(tmp_path / "eval.json", world_models["eval_set"])
    try:
        code, last, out, err = led("register", "--model", world_models["dirs"]["svd"], "--run-date", "2026-01-10",
                                   "--eval-set", eval_file)
        assert code == 0, err
        assert last["version"] == "1" and last["promoted"] is True
        code, last, out, err = led("register", "--model", world_models["dirs"]["svd"], "--eval-set",
                                   tmp_path / "missing.json")
        assert code == 2 and "eval set not found" in err
    finally:
        get_settings.cache_clear()


def test_corrupted_or_missing_champion_artifact_refuses_promotion(mlflow_server, world_models, tmp_path):
    from mlflow import MlflowClient

    settings = server_settings(mlflow_server, tmp_path, "led-corrupt-model")
    first = log_model(settings, world_models, "popularity", "2026-01-10")
    assert gate(settings, first.model_version, world_models["eval_set"]).promoted
    client = MlflowClient(settings.mlflow_tracking_uri)
    source = client.get_model_version(settings.mlflow_model_name, first.model_version).source
    stored = stored_path(mlflow_server, client.get_logged_model(source.split("/")[-1]).artifact_location)
    (v_file,) = stored.rglob("V.npy")
    v_file.write_bytes(b"\x93NUMPY garbage")  # truncated / corrupted array

    second = log_model(settings, world_models, "svd", "2026-01-11")
    decision = gate(settings, second.model_version, world_models["eval_set"])
    assert not decision.promoted
    assert "champion (version 1)" in decision.reasons[0] and "unreadable" in decision.reasons[0]
    assert client.get_model_version_by_alias(settings.mlflow_model_name, "champion").version == "1"
    assert client.get_model_version(settings.mlflow_model_name, "2").tags["gate.decision"] == "rejected"

    for path in sorted(stored.rglob("*"), reverse=True):  # the champion's artifacts vanish entirely
        path.unlink() if path.is_file() else path.rmdir()
    decision = gate(settings, second.model_version, world_models["eval_set"])
    assert not decision.promoted and "champion (version 1)" in decision.reasons[0]
    assert "cannot be downloaded" in decision.reasons[0] or "missing" in decision.reasons[0]

    registry.promote(settings, second.model_version, "champion v1 artifacts lost; v2 checked by hand")
    assert client.get_model_version_by_alias(settings.mlflow_model_name, "champion").version == "2"


def test_unreachable_tracking_server_fails_fast_with_one_message(led, monkeypatch, tmp_path, world_models):
    dead = f"http://127.0.0.1:{free_port()}"
    settings = Settings(mlflow_tracking_uri=dead, home=tmp_path)
    start = time.monotonic()
    with pytest.raises(UserError, match="unreachable") as exc:
        register_export(settings, world_models["dirs"]["svd"], "2026-01-10")
    assert time.monotonic() - start < 20 and dead in str(exc.value)
    monkeypatch.setenv("LED_MLFLOW_TRACKING_URI", dead)
    get_settings.cache_clear()
    try:
        code, last, out, err = led("compare")
    finally:
        get_settings.cache_clear()
    assert code == 2 and len(err.strip().splitlines()) == 1 and "unreachable" in err and "Traceback" not in err


def test_sqlite_backend_sanity_checks_and_ann_recall_hook(world_models, tmp_path):
    """SQLite tracking URI: first model champion; NaN arrays, vocabulary jump and low ANN recall are refused."""
    import mlflow

    settings = Settings(mlflow_tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", mlflow_model_name="led-sqlite",
                        home=tmp_path)
    eval_set = world_models["eval_set"]
    first = register_export(settings, world_models["dirs"]["svd"], "2026-01-10")
    assert gate(settings, first.model_version, eval_set).promoted
    assert (tmp_path / "mlartifacts").is_dir()  # artifacts live beside the database

    nan_dir = tmp_path / "nan_model"
    svd = load_model(world_models["dirs"]["svd"])
    save_model(nan_dir, svd.item_ids, svd.V, svd.b, svd.counts, svd.card)
    V = np.load(nan_dir / "V.npy")
    V[0, 0] = np.nan
    np.save(nan_dir / "V.npy", V)  # bypasses save_model's own check, as a buggy exporter would
    bad = register_export(settings, nan_dir, "2026-01-11")
    decision = gate(settings, bad.model_version, eval_set)
    assert not decision.promoted and any("NaN" in r for r in decision.reasons)

    small = tmp_path / "small_vocab"
    keep = slice(0, len(svd.item_ids) // 3)
    save_model(small, svd.item_ids[keep], svd.V[keep], svd.b[keep], svd.counts[keep], svd.card)
    decision = gate(settings, register_export(settings, small, "2026-01-12").model_version,
                             eval_set)
    assert not decision.promoted and any(r.startswith("vocabulary") and "outside" in r for r in decision.reasons)

    low_ann = tmp_path / "low_ann"
    save_model(low_ann, svd.item_ids, svd.V, svd.b, svd.counts, svd.card | {"metrics": {"ann_recall": 0.5}})
    decision = gate(settings, register_export(settings, low_ann, "2026-01-13").model_version,
                             eval_set)
    assert not decision.promoted and any(r.startswith("ANN recall 0.5000 <") for r in decision.reasons)
    assert mlflow.MlflowClient(settings.mlflow_tracking_uri).get_model_version_by_alias(
        "led-sqlite", "champion").version in (1, "1")  # SQLite store: int; REST: str


def test_eval_set_format_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"inputs": [["a"]]}))
    with pytest.raises(UserError, match="not an eval set"):
        load_eval_set(bad)
    bad.write_text(json.dumps({"inputs": [["a"]], "targets": []}))
    with pytest.raises(UserError, match="1 inputs but 0 targets"):
        load_eval_set(bad)
    with pytest.raises(UserError, match="unsupported MLflow tracking URI"):
        registry.connect(Settings(mlflow_tracking_uri="file:///tmp/mlruns", home=tmp_path))
    settings = Settings(mlflow_tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", home=tmp_path)
    with pytest.raises(UserError, match="not an exported model folder"):
        register_export(settings, tmp_path / "no-model", "2026-01-10")
    assert not (tmp_path / "mlflow.db").exists()  # refused before touching the tracking store


@pytest.mark.slow
def test_mlflow_models_serve_answers_http(scenario, tmp_path):
    """``mlflow models serve`` on models:/NAME@champion answers POST /invocations with the exact top-k."""
    settings = scenario["settings"]
    port = free_port()
    # --env-manager local execs `uvicorn` from PATH: the venv's bin must come first (as when it is activated)
    env = os.environ | {"MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri,
                        "MLFLOW_REGISTRY_URI": settings.mlflow_tracking_uri,
                        "PATH": f"{MLFLOW_BIN.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen(
        [str(MLFLOW_BIN), "models", "serve", "-m", f"models:/{settings.mlflow_model_name}@champion",
         "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-2000:]
            try:
                if requests.get(url + "/ping", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline, "mlflow models serve did not answer /ping within 120 s"
            time.sleep(0.5)
        timeline = scenario["eval_set"].timelines(1)[0]
        r = requests.post(url + "/invocations", timeout=30,
                          json={"dataframe_records": [{"items": timeline}], "params": {"k": 5}})
        assert r.status_code == 200, r.text
        (prediction,) = r.json()["predictions"]
        want_ids, want_scores = load_model(scenario["dirs"]["svd"]).exact_topk(timeline, 5)
        assert prediction["item_ids"] == want_ids
        np.testing.assert_allclose(prediction["scores"], want_scores, rtol=1e-6)
    finally:
        stop_group(proc)
        log.close()


def test_led_card_figures_become_metrics_and_run_date(tmp_path):
    """The LED exporter's card (nested pre-training block) yields the SVD explained variance and timings."""
    card = {"d": 32, "train_seconds": 3.5, "history": [{"epoch": 1, "loss": 0.2}],
            "data_window": {"run_date": "2026-01-11", "window_days": 10},
            "pretrain": {"explained_variance": 0.41, "timings": {"pmi": 1.5, "rsvd": 2.0}, "sizes": {"items": 324}}}
    metrics, timings = registry.card_figures(card)
    assert metrics == {"svd_explained_variance": 0.41}
    assert timings == {"train": 3.5, "pretrain.pmi": 1.5, "pretrain.rsvd": 2.0}
    assert registry.card_run_date(card) == "2026-01-11"
    params = registry.card_params(card)
    assert params["pretrain.sizes.items"] == "324" and "history" not in params
    png = registry.training_curve_png([{"epoch": e, "loss": 1 / e, "val_ndcg@100": e / 10, "examples": 900}
                                       for e in (1, 2, 3)], tmp_path / "curve.png")
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_a_refit_ships_only_when_sane_else_the_evaluated_model_stays_champion(mlflow_server, world_models,
                                                                             tmp_path):
    """``ship_refit`` (docs/architecture.md, "Shipping the freshest day"): a refit with non-finite arrays or
    an index below the recall floor is refused and the promoted evaluated version stays champion; a
    sane one becomes champion (previous_champion untouched)."""
    import shutil

    from mlflow import MlflowClient

    from models.gate import ship_refit

    settings = server_settings(mlflow_server, tmp_path, "led-refit-model")
    broken_dir = tmp_path / "broken"
    shutil.copytree(world_models["dirs"]["svd"], broken_dir)
    V = np.load(broken_dir / "V.npy")
    V[0, 0] = np.nan
    np.save(broken_dir / "V.npy", V)
    world = dict(world_models, dirs={**world_models["dirs"], "broken": broken_dir})
    evaluated = log_model(settings, world, "svd", "2026-01-10")
    assert gate(settings, evaluated.model_version, world_models["eval_set"]).promoted
    client = MlflowClient(settings.mlflow_tracking_uri)
    champion = lambda: client.get_model_version_by_alias(settings.mlflow_model_name, "champion").version  # noqa: E731

    nan_refit = log_model(settings, world, "broken", "2026-01-10")
    decision = ship_refit(settings, nan_refit.model_version, evaluated.model_version, ann_recall=0.99)
    assert not decision.promoted and any("non-finite" in r or "nan" in r.lower() for r in decision.reasons), \
        decision.reasons
    assert champion() == evaluated.model_version

    sane_refit = log_model(settings, world, "popularity", "2026-01-10")
    decision = ship_refit(settings, sane_refit.model_version, evaluated.model_version,
                          ann_recall=settings.min_ann_recall - 0.01)
    assert not decision.promoted and any("ANN recall" in r for r in decision.reasons), decision.reasons
    assert champion() == evaluated.model_version

    decision = ship_refit(settings, sane_refit.model_version, evaluated.model_version, ann_recall=0.99)
    assert decision.promoted, decision.reasons
    assert champion() == sane_refit.model_version
    assert client.get_model_version(settings.mlflow_model_name, sane_refit.model_version).tags["gate.decision"] \
        == "promoted"
