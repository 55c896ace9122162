"""The default training schedule trains: on a synthetic world with a learnable signal, the daily
configuration (the settings' defaults, as the flow builds it) clearly beats its own initialisation.

The world's clicks depend on a per-item quality (``quality_std`` 1.5) that views do not reveal: E and the
initial biases come from views, so what the fine-tuning on clicks can learn is real and measurable. With the
pre-issue-16 schedule (batch 512, constant Adam 1e-3, patience 3 epochs) the best evaluation on this world was
step 0, the initialisation itself: this test failed.
"""
from __future__ import annotations

import datetime as dt

import pytest


@pytest.fixture(scope="module")
def clicky_world(tmp_path_factory):
    from data_sources.synthetic import WorldConfig, generate

    out = tmp_path_factory.mktemp("clicky") / "events"
    generate(out, WorldConfig(users=1200, items=400, days=8, seed=7, quality_std=1.5))
    return out


@pytest.fixture(scope="module")
def trained_window(spark, clicky_world, tmp_path_factory):
    """The daily flow's own stages (models.pipeline) on the settings' defaults: plan, pre-train, fine-tune."""
    from infra.settings import get_settings
    from models.export import load_model
    from models.led import LedConfig
    from models.pipeline import fine_tune_stage, plan_window, pretrain_stage
    from models.pretrain import PretrainConfig

    settings = get_settings().with_overrides(events_dir=clicky_world, window_days=8,
                                             work_dir=tmp_path_factory.mktemp("work"))
    plan = plan_window(settings, dt.date(2026, 1, 9))  # the world's 8 days are [2026-01-01, 2026-01-09)
    pretrained = pretrain_stage(settings, plan, PretrainConfig.from_settings(settings))
    trained = fine_tune_stage(settings, plan, pretrained, LedConfig.from_settings(settings))
    # two more training seeds on the same embeddings: one seed's gain moves by +-3% with its batches
    others = [fine_tune_stage(settings, plan, pretrained, LedConfig.from_settings(settings, seed=seed))
              for seed in (1, 2)]
    return trained, load_model(trained.model_dir).card, others


def _gains(trained) -> tuple[float, float]:
    """(validation, held-out day) NDCG@100 of the trained model over its initialisation's."""
    valid = load_model_card(trained)["validation"]  # users held out for early stopping
    side = trained.side_by_side()  # the last day's clicks, never trained on: what MLflow and the report show
    return (valid["trained"]["ndcg@100"] / valid["initialisation"]["ndcg@100"],
            side["trained"]["ndcg@100"] / side["initialisation"]["ndcg@100"])


def load_model_card(trained) -> dict:
    from models.export import load_model

    return load_model(trained.model_dir).card


def test_default_configuration_beats_its_initialisation(trained_window):
    trained, card, others = trained_window
    gains = [_gains(t) for t in (trained, *others)]
    # every seed beats its initialisation; on average by a clear margin. Measured over seeds 42, 1, 2 through
    # the flow's stages with pmi_smoothing 0.9 (the default): validation +2.6..+4.1% (mean +3.5%), held-out
    # day +2.5..+7.6% (mean +4.8%; init 0.3190 -> trained 0.3344). With 0.75 the held-out mean was +5.9%
    # from a weaker start (init 0.3112 -> 0.3296): the smoothing lifts both, the ratio between them less.
    assert all(v > 1.0 and h > 1.0 for v, h in gains), gains
    assert sum(v for v, _ in gains) / 3 >= 1.03 and sum(h for _, h in gains) / 3 >= 1.04, gains
    side = trained.side_by_side()
    assert side["trained"]["recall@20"] > side["initialisation"]["recall@20"]
    assert side["gain"]["ndcg@100"] == pytest.approx(side["trained"]["ndcg@100"] - side["initialisation"]["ndcg@100"])
    # no seed keeps its initialisation (the old schedule's failure: best evaluation at step 0), and the
    # history can be plotted against steps
    assert all(t.best_step > 0 for t in (trained, *others)), [t.best_step for t in (trained, *others)]
    history = card["history"]
    assert history[0]["step"] == 0 and history[0]["val_ndcg@100"] == card["validation"]["initialisation"]["ndcg@100"]
    assert [h["step"] for h in history] == sorted({h["step"] for h in history})


def test_a_bounded_sample_of_users_trains_and_leaves_the_eval_set_alone(spark, clicky_world, trained_window,
                                                                        tmp_path):
    """``max_train_users``: the stage reads and trains on a stable sample of the clicking users; the
    evaluation day's clicks (every clicker) are the same as without the bound."""
    from infra.settings import get_settings
    from models.evaluation import load_eval_set
    from models.export import load_model
    from models.led import LedConfig
    from models.pipeline import fine_tune_stage, plan_window, pretrain_stage
    from models.pretrain import PretrainConfig

    full, full_card, _ = trained_window
    settings = get_settings().with_overrides(events_dir=clicky_world, window_days=8, work_dir=tmp_path,
                                             max_train_users=300)
    plan = plan_window(settings, dt.date(2026, 1, 9))
    pretrained = pretrain_stage(settings, plan, PretrainConfig.from_settings(settings))
    sampled = fine_tune_stage(settings, plan, pretrained, LedConfig.from_settings(settings))
    window = load_model(sampled.model_dir).card["data_window"]
    # the unbounded run also trains users who only viewed (they bring no targets)
    assert 300 < window["clicking_users"] <= full_card["data_window"]["train_users"]
    assert window["sampled_train_users"] == window["train_users"] == 300
    a, b = load_eval_set(sampled.eval_set), load_eval_set(full.eval_set)
    assert list(a.user_ids) == list(b.user_ids) and a.target_sets() == b.target_sets()
    # a quarter of the users still learns most of what all of them teach (the model has no per-user
    # parameters); benchmarks/README.md has the curve at ML-20M size
    print("ndcg@100 sampled", sampled.metrics["ndcg@100"], "all", full.metrics["ndcg@100"],
          "popularity", sampled.popularity_metrics["ndcg@100"])
    assert sampled.metrics["ndcg@100"] > 1.5 * sampled.popularity_metrics["ndcg@100"]
    assert sampled.metrics["ndcg@100"] > 0.85 * full.metrics["ndcg@100"]


def test_the_user_sample_is_stable_and_bounded():
    from models.data import sample_users

    users = [f"u{i}" for i in range(5000)]
    picked = sample_users(users, 400, seed=3)
    assert len(picked) == 400 and list(picked) == sorted(picked)
    assert list(sample_users(users[::-1], 400, seed=3)) == list(picked)  # order of the input is irrelevant
    assert list(sample_users(users, 0, seed=3)) == sorted(users)  # 0 = everyone
    # new users arriving never push an existing user *into* the sample, and most of it stays
    grown = set(sample_users(users + [f"n{i}" for i in range(500)], 400, seed=3))
    assert grown & set(users) <= set(picked) and len(grown & set(picked)) > 300
    assert set(sample_users(users, 400, seed=4)) != set(picked)


def test_the_refit_reads_a_bounded_sample_of_the_whole_window(clicky_world, tmp_path):
    """The refit's plan trains up to the run date (no evaluation day after it): the sample is drawn from
    every clicker of the window and nobody is read only for evaluation."""
    from infra.settings import get_settings
    from models.led import LedConfig
    from models.pipeline import TrainingWindow, plan_window

    settings = get_settings().with_overrides(events_dir=clicky_world, window_days=8, work_dir=tmp_path,
                                             max_train_users=250)
    whole = plan_window(settings, dt.date(2026, 1, 9), whole_window=True)
    window = TrainingWindow.read(settings, whole, LedConfig.from_settings(settings))
    assert len(window.sample.train_users) == 250 and len(window.sample.eval_users) == 0
    assert set(window.clicks.column("user_id").to_pylist()) <= set(window.sample.train_users)
    assert window.clicks.column("date").to_pylist()[-1] == dt.date(2026, 1, 8)  # the evaluation day is in
