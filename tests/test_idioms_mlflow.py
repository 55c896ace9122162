"""MLflow's own views, read back through the client of the session's real MLflow server:
model-linked metrics, the logged training dataset, the gate decision as the version description,
the experiment kind (training-runs view) and the daily chart artifact."""
from __future__ import annotations

import uuid

import numpy as np
import pytest

from infra import registry
from models.data import EvalSet, Lists
from models.export import save_model
from models.gate import gate
from models.registration import TREND_METRICS, register_export

pytestmark = [pytest.mark.stack]


def tiny_export(folder, seed: int, run_date: str, popularity_ndcg: float):
    rng = np.random.default_rng(seed)
    items = np.array([f"i{k}" for k in range(40)])
    V, b = rng.normal(size=(40, 4)), rng.normal(size=40)
    card = {"d": 4, "loss": "bpr", "trainable_params": 16 + 40, "window": {"run_date": run_date, "days": 3},
            "hyper_parameters": {"seed": seed}, "metrics": {"ndcg@100": 0.2 + seed / 100, "recall@20": 0.3},
            "baselines": {"popularity": {"ndcg@100": popularity_ndcg}}}
    return save_model(folder, items, V, b, rng.integers(1, 50, size=40), card)


@pytest.fixture
def settings(local_stack):
    tag = uuid.uuid4().hex[:8]
    return local_stack.with_overrides(mlflow_model_name=f"idioms-{tag}", mlflow_experiment=f"idioms-{tag}")


def test_dataset_model_metrics_description_kind_and_chart(settings, tmp_path):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=settings.mlflow_tracking_uri, registry_uri=settings.mlflow_tracking_uri)
    infos = []
    for k, day in enumerate(("2026-03-01", "2026-03-02")):
        model_dir = tiny_export(tmp_path / day, k, day, popularity_ndcg=0.1 + k / 100)
        data = registry.DatasetRef(f"events [2026-02-2{k}, {day})", f"{k}" * 64, str(tmp_path))
        infos.append(register_export(settings, model_dir, day, dataset=data))

    run = client.get_run(infos[-1].run_id)
    (used,) = run.inputs.dataset_inputs
    assert used.dataset.name == "events [2026-02-21, 2026-03-02)"
    assert used.dataset.digest == "1" * 36  # MLflow keeps 36 characters of a digest
    assert str(tmp_path) in used.dataset.source
    assert [t.value for t in used.tags if t.key == "mlflow.data.context"] == ["training"]

    version = client.get_model_version(settings.mlflow_model_name, infos[-1].model_version)
    logged = client.get_logged_model(registry.version_model_id(version))
    linked = {m.key: m.value for m in logged.metrics}
    assert linked["ndcg_at_100"] == pytest.approx(0.21)
    assert linked["popularity_ndcg_at_100"] == pytest.approx(0.11) and linked["catalog_size"] == 40
    assert {m.dataset_digest for m in logged.metrics} == {"1" * 36}

    exp = client.get_experiment(infos[-1].experiment_id)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"

    # the chart of the second run covers both run dates; the first run's only its own
    assert [d for d, _ in registry.trend_rows(client, exp.experiment_id, TREND_METRICS)] == [
        "2026-03-01", "2026-03-02"]
    for info in infos:
        assert "plots/daily_metrics.png" in {a.path for a in client.list_artifacts(info.run_id, "plots")}

    users = EvalSet(np.array(["u1", "u2"]), Lists.from_lists([[1, 2], [3]]), Lists.from_lists([[5], [7, 9]]),
                    np.array([f"i{k}" for k in range(40)]), name="tiny")
    decision = gate(settings, infos[-1].model_version, users)
    version = client.get_model_version(settings.mlflow_model_name, infos[-1].model_version)
    assert version.description.startswith("promoted: " if decision.promoted else "rejected: ")
    assert decision.reasons[0] in version.description
    gate_metrics = {m.key for m in client.get_logged_model(registry.version_model_id(version)).metrics}
    assert "gate/ndcg_at_100" in gate_metrics
