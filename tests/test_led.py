"""LED Project: parameters, gradients, losses, determinism, export round trip, data splits."""
from __future__ import annotations

import types

import numpy as np
import pytest

from models.data import EvalSet, Lists, UserData, epoch_examples, evaluate_scorer, fold_in_split


def clustered_problem(n_items=120, d=12, users=300, topics=6, seed=0):
    """Users who click within one topic; E separates topics (a learnable tiny world)."""
    rng = np.random.default_rng(seed)
    topic = rng.integers(0, topics, n_items)
    rows = []
    for _ in range(users):
        pool = np.flatnonzero(topic == rng.integers(0, topics))
        rows.append(np.sort(rng.choice(pool, size=min(len(pool), 8), replace=False)))
    E = rng.normal(size=(n_items, d)).astype(np.float32)
    E[:, :topics] += 3 * np.eye(topics)[topic]
    E /= np.linalg.norm(E, axis=1, keepdims=True)
    counts = np.bincount(np.concatenate(rows), minlength=n_items)
    emb = types.SimpleNamespace(item_ids=np.array([f"i{i}" for i in range(n_items)]), E=E, counts=counts)
    n_train = int(0.8 * users)
    lists = Lists.from_lists(rows[:n_train])
    train = UserData(np.arange(n_train).astype(str), lists, lists)
    fold, target = fold_in_split(rows[n_train:], rng)
    valid = EvalSet(np.arange(users - n_train).astype(str), fold, target, emb.item_ids)
    return emb, train, valid


@pytest.fixture(scope="module")
def tf():
    from models.led import import_tf

    return import_tf()


def test_project_trains_exactly_P_and_b(tf):
    from models.led import LedModel

    emb, _, _ = clustered_problem()
    model = LedModel(emb.E, emb.counts, "project", init_scale=2.0)
    d, n = emb.E.shape[1], emb.E.shape[0]
    assert model.trainable_params == d * d + n
    assert [v.name.split(":")[0] for v in model.trainable] == ["P", "b"]
    # ablations train more (E) or less (no P)
    assert LedModel(emb.E, emb.counts, "train_e").trainable_params == n * d + d * d + n
    assert LedModel(emb.E, emb.counts, "no_projection").trainable_params == n * d + n


def test_gradients_reach_only_P_and_b(tf):
    from models.led import LedModel, bpr_loss

    emb, train, _ = clustered_problem()
    model = LedModel(emb.E, emb.counts, "project", init_scale=2.0)
    inputs = tf.ragged.constant([[0, 1, 2], [3]], dtype=tf.int32, row_splits_dtype=tf.int64)
    targets = tf.ragged.constant([[5], [6, 7]], dtype=tf.int32, row_splits_dtype=tf.int64)
    negatives = tf.constant([8, 9, 10], tf.int32)
    with tf.GradientTape() as tape:
        loss = bpr_loss(model, model.hidden(inputs), targets, negatives)
    # every variable the loss touched is P or b: E is a constant, outside any gradient
    assert sorted(v.name.split(":")[0] for v in tape.watched_variables()) == ["P", "b"]
    grads = tape.gradient(loss, model.trainable)
    assert all(float(tf.reduce_sum(tf.abs(tf.convert_to_tensor(g)))) > 0 for g in grads)
    # and the optimizer's list never contains E: a training step leaves E untouched
    from models.led import LedConfig, fine_tune

    cfg = LedConfig(dim=emb.E.shape[1], num_negatives=20, batch_size=32, epochs=1, init_scale=2.0)
    trained = fine_tune(emb, train, None, cfg, progress=None)
    # the exported V is the ORIGINAL E times the trained P: E did not move
    np.testing.assert_allclose(trained.V, emb.E @ trained.P, rtol=1e-5, atol=1e-5)
    assert not np.allclose(trained.P, 2.0 * np.eye(emb.E.shape[1]))


@pytest.mark.parametrize("loss", ["bpr", "ns", "css", "multi"])
def test_each_loss_decreases_and_beats_untrained(tf, loss):
    from models.led import LedConfig, fine_tune, svd_average

    emb, train, valid = clustered_problem()
    cfg = LedConfig(dim=emb.E.shape[1], loss=loss, num_negatives=40, batch_size=32, epochs=6,
                    learning_rate=1e-2, init_scale=2.0, patience=6, keep_prob=0.8)
    model = fine_tune(emb, train, valid, cfg, progress=None)
    losses = [h["loss"] for h in model.history if "loss" in h]
    assert len(losses) >= 2 and losses[-1] < losses[0]
    untrained = svd_average(emb, with_bias=True).evaluate(valid)["ndcg@100"]
    assert model.evaluate(valid)["ndcg@100"] > untrained


def test_training_is_deterministic_under_a_seed(tf):
    from models.led import LedConfig, fine_tune

    emb, train, valid = clustered_problem()
    cfg = LedConfig(dim=emb.E.shape[1], num_negatives=30, batch_size=64, epochs=2, negative_sampling="popularity")
    a = fine_tune(emb, train, valid, cfg, progress=None)
    b = fine_tune(emb, train, valid, cfg, progress=None)
    np.testing.assert_array_equal(a.V, b.V)
    np.testing.assert_array_equal(a.b, b.b)


def test_early_stopping_stops_early_and_keeps_the_best_evaluation(tf):
    from models.led import LedConfig, fine_tune

    emb, train, valid = clustered_problem()
    # a constant, far too high rate: validation NDCG peaks early, then the budget is cut short
    cfg = LedConfig(dim=emb.E.shape[1], num_negatives=30, batch_size=32, max_steps=400, eval_every=4,
                    patience=3, learning_rate=0.2, lr_schedule="constant", init_scale=2.0)
    model = fine_tune(emb, train, valid, cfg, progress=None)
    assert model.schedule["max_steps"] == 400 and model.schedule["eval_every"] == 4
    steps = [h["step"] for h in model.history]
    assert steps == list(range(0, model.steps + 1, 4))  # step 0 (the initialisation), then every 4 steps
    assert model.steps < 400  # it stopped early ...
    assert model.steps - model.best_step == 3 * 4  # ... exactly `patience` evaluations after the best one
    scores = [h["val_ndcg@100"] for h in model.history]
    best = scores[steps.index(model.best_step)]
    assert best == max(scores) and all(s < best for s in scores[steps.index(model.best_step) + 1:])
    # the returned weights are the best evaluation's, not the last step's
    assert model.evaluate(valid)["ndcg@100"] == pytest.approx(best)
    assert model.valid_metrics["ndcg@100"] == pytest.approx(best)


def test_history_counts_steps_and_starts_at_the_initialisation(tf):
    from models.led import LedConfig, fine_tune, initialisation

    emb, train, valid = clustered_problem()
    cfg = LedConfig(dim=emb.E.shape[1], num_negatives=30, batch_size=32, max_steps=30, eval_every=10,
                    init_scale=2.0)
    model = fine_tune(emb, train, valid, cfg, progress=None)
    assert [h["step"] for h in model.history] == [0, 10, 20, 30] and model.steps == 30
    assert [h["epoch"] for h in model.history] == [0, 2, 3, 4]  # 240 users / 32 = 8 steps per epoch
    init = initialisation(emb, cfg).evaluate(valid)
    assert model.initial_valid == {"ndcg@100": init["ndcg@100"], "recall@20": init["recall@20"]}
    assert model.history[0]["val_ndcg@100"] == init["ndcg@100"]
    assert model.valid_metrics["ndcg@100"] == max(h["val_ndcg@100"] for h in model.history)
    card = model.model_card()
    assert card["validation"] == {"initialisation": model.initial_valid, "trained": model.valid_metrics}
    assert card["best_step"] == model.best_step and card["schedule"]["batch_size"] == 32


def test_export_round_trip_matches_tf_topk(tf, tmp_path):
    from models.export import load_model
    from models.led import LedConfig, LedModel, fine_tune

    emb, train, valid = clustered_problem()
    cfg = LedConfig(dim=emb.E.shape[1], num_negatives=30, batch_size=32, epochs=2, init_scale=2.0)
    trained = fine_tune(emb, train, valid, cfg, progress=None)
    folder = trained.export(tmp_path / "model", metrics={"ndcg@100": 0.5}, eval_set=valid)
    exported = load_model(folder)
    assert exported.card["trainable_params"] == emb.E.shape[1] ** 2 + len(emb.item_ids)
    assert exported.card["loss"] == "bpr" and exported.card["d"] == emb.E.shape[1]
    assert len(exported.eval_timelines) == len(valid)

    # the TF model with the trained P, b gives the same ranking as the exported arrays
    tf_model = LedModel(emb.E, emb.counts, "project")
    tf_model.P.assign(trained.P)
    tf_model.b.assign(trained.b)
    logits = tf_model.logits(tf.RaggedTensor.from_row_splits(valid.inputs.items, valid.inputs.indptr)).numpy()
    for u in range(10):
        inputs = valid.inputs.row(u)
        ids, _ = exported.exact_topk([emb.item_ids[i] for i in inputs], k=10)
        row = logits[u].copy()
        row[inputs] = -np.inf
        assert ids == [emb.item_ids[i] for i in np.argsort(-row, kind="stable")[:10]]


def test_config_from_settings_and_validation():
    from infra.settings import Settings
    from models.led import LedConfig

    cfg = LedConfig.from_settings(Settings(loss="css", dim=64), epochs=3, batch_size=None)
    assert (cfg.loss, cfg.dim, cfg.epochs, cfg.batch_size) == ("css", 64, 3, 0)
    # one place for the defaults: LedConfig's are the settings'
    assert LedConfig.from_settings(Settings()) == LedConfig()
    for bad in ({"loss": "hinge"}, {"lr_schedule": "step"}, {"max_steps": 0}, {"batch_size": -1},
                {"warmup_share": 1.0}):
        with pytest.raises(ValueError):
            LedConfig(**bad)


def test_schedule_is_derived_from_the_training_users():
    from models.led import LedConfig, resolve_schedule

    cfg = LedConfig()
    small, large = resolve_schedule(cfg, 656), resolve_schedule(cfg, 110_000)  # ML-100K, ML-20M-size window
    assert (small.batch_size, small.steps_per_epoch) == (64, 11)
    assert (large.batch_size, large.steps_per_epoch) == (512, 215)
    assert small.max_steps == large.max_steps == cfg.max_steps
    assert small.eval_every == -(-cfg.max_steps // 40) and small.warmup_steps == round(cfg.warmup_share * cfg.max_steps)
    # the epoch cap bounds the budget; an explicit batch size and eval period win
    tiny = resolve_schedule(LedConfig(epochs=2, batch_size=100, eval_every=3), 1000)
    assert (tiny.batch_size, tiny.max_steps, tiny.eval_every) == (100, 20, 3)


# ------------------------------------------------------------------ data and evaluation (numpy only)
def test_epoch_examples_split_clicks_and_drop_targets_from_inputs():
    timelines = Lists.from_lists([[0, 1, 2, 3, 4, 5, 6, 7, 8, 9], [1, 2], [3]])
    clicks = Lists.from_lists([[2, 4, 6, 8, 9], [2], [3]])
    data = UserData(np.array(["a", "b", "c"]), timelines, clicks)
    inputs, targets = epoch_examples(data, 0.4, 1.0, np.random.default_rng(0))
    # user c has one click and nothing else: no example; b: target 2, input 1
    assert len(inputs) == 2
    for inp, tgt in zip(inputs.rows(), targets.rows()):
        assert not set(inp) & set(tgt)
        assert len(tgt) in (1, 2)
    masked, _ = epoch_examples(data, 0.4, 0.3, np.random.default_rng(0))
    assert all(len(r) >= 1 for r in masked.rows()) and masked.items.size < inputs.items.size


def test_evaluate_scorer_matches_hand_computed_metrics():
    # 5 items; user 0 fold-in [0], targets {1, 4}; scores rank 0 > 1 > 2 > 3 > 4
    ev = EvalSet(np.array(["u"]), Lists.from_lists([[0]]), Lists.from_lists([[1, 4]]), np.arange(5).astype(str))
    out = evaluate_scorer(lambda rows: np.array([[5.0, 4.0, 3.0, 2.0, 1.0]]), ev, 5)
    # ranking after excluding 0: 1, 2, 3, 4 -> hits at ranks 1 and 4
    dcg = 1 / np.log2(2) + 1 / np.log2(5)
    idcg = 1 / np.log2(2) + 1 / np.log2(3)
    assert out["ndcg@100"] == pytest.approx(dcg / idcg)
    assert out["recall@20"] == 1.0 and out["recall@50"] == 1.0
    assert out["coverage@20"] == pytest.approx(4 / 5)


def test_fold_in_split_is_80_20_and_disjoint():
    rows = [np.arange(10), np.arange(20, 25)]
    fold, target = fold_in_split(rows, np.random.default_rng(1))
    assert [len(r) for r in target.rows()] == [2, 1]
    for f, t, r in zip(fold.rows(), target.rows(), rows):
        assert set(f) | set(t) == set(r) and not set(f) & set(t)


@pytest.mark.parametrize("variant", ["train_e", "no_projection"])
def test_ablations_train_E(tf, variant):
    from models.led import LedConfig, fine_tune

    emb, train, valid = clustered_problem()
    cfg = LedConfig(dim=emb.E.shape[1], num_negatives=30, batch_size=64, epochs=1, variant=variant,
                    learning_rate=1e-2)
    # no validation set: the last step's weights come back (with one, an epoch that does not beat the
    # initialisation would return the initialisation itself)
    model = fine_tune(emb, train, None, cfg, progress=None)
    n, d = emb.E.shape
    if variant == "no_projection":
        assert model.P is None and model.trainable_params == n * d + n
        assert not np.allclose(model.V, emb.E)  # V is the trained E itself
    else:
        assert model.trainable_params == n * d + d * d + n
        assert not np.allclose(model.V, emb.E @ model.P, atol=1e-4)  # E moved
