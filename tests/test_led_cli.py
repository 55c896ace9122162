"""``led train`` and ``led bench quality`` end to end on the small synthetic world (Spark + TF)."""
from __future__ import annotations

import json

import pytest


@pytest.mark.slow  # Spark pre-training: ~1-2 minutes on the shared 2-core box
def test_train_exports_a_model_evaluated_on_the_last_day_then_register_gates_it(
        spark, small_world, led, tmp_path, local_stack, monkeypatch):
    """``led train --out DIR`` then ``led register --model DIR`` composes: the export carries its eval set."""
    from models.evaluation import load_eval_set
    from models.export import load_model

    out = tmp_path / "model"
    code, last, _, err = led("train", "--events", small_world, "--date", "2026-01-11", "--window", "10",
                             "--out", out, "--dim", "16", "--epochs", "3", "--num-negatives", "50",
                             "--batch-size", "64")
    assert code == 0, err
    model = load_model(out)
    d, n = model.dim, len(model.item_ids)
    assert last["trainable_params"] == d * d + n == model.card["trainable_params"]
    for key in ("recall@20", "recall@50", "ndcg@100"):
        assert 0 < last[key] <= 1
    assert last["ndcg@100"] > last["popularity_ndcg@100"]
    # the fine-tuning's gain over its own initialisation, on the same held-out clicks
    assert last["gain_ndcg@100"] == pytest.approx(last["ndcg@100"] - last["initialisation_ndcg@100"])
    assert "initialisation" in err and "gain" in err
    assert model.card["data_window"]["eval_date"] == "2026-01-10"
    assert model.card["data_window"]["train_days"] == ["2026-01-01", "2026-01-09"]
    assert model.eval_timelines and len(model.eval_timelines) <= 2000
    assert "] step 0/" in err and "loss" in err  # progress per evaluation of the step budget
    eval_set = load_eval_set(last["eval_set"])
    assert len(eval_set) == last["eval_users"] and set(model.item_ids) <= set(eval_set.item_ids)

    monkeypatch.setenv("LED_MLFLOW_MODEL_NAME", "led-train-register")
    from infra.settings import get_settings
    get_settings.cache_clear()
    try:
        code, reg, _, err = led("register", "--model", out)
    finally:
        get_settings.cache_clear()
    assert code == 0, err
    assert reg["promoted"] is True and reg["version"] == "1"
    # the gate scored the registered arrays on the export's own eval set: the training figure again
    assert reg["challenger_metrics"]["ndcg_at_100"] == pytest.approx(last["ndcg@100"], abs=1e-6)


def test_train_rejects_bad_input(led, tmp_path):
    code, _, _, err = led("train", "--events", tmp_path / "missing", "--date", "2026-01-11", "--out", tmp_path / "m")
    assert code == 2 and "event store not found" in err


@pytest.mark.slow
def test_bench_quality_table(spark, small_world, led, tmp_path):
    code, last, out, err = led("bench", "quality", "--events", small_world, "--seeds", "1",
                               "--models", "popularity,ease,svd_average,led_project", "--dim", "16",
                               "--epochs", "3", "--num-negatives", "50", "--batch-size", "64",
                               "--json-out", tmp_path / "q.json")
    assert code == 0, err
    assert set(last["models"]) == {"popularity", "ease", "svd_average", "led_project"}
    for row in last["models"].values():
        assert set(row) >= {"recall@20", "recall@50", "ndcg@100", "train_seconds", "infer_ms_per_user"}
    assert "NDCG@100" in out
    assert last["models"]["ease"]["ndcg@100"] > last["models"]["popularity"]["ndcg@100"]
    assert json.loads((tmp_path / "q.json").read_text())["config"]["led"]["dim"] == 16


def test_bench_rejects_unknown_model(led, small_world):
    code, _, _, err = led("bench", "quality", "--events", small_world, "--models", "ease,magic")
    assert code == 2 and "magic" in err
