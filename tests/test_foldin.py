"""Fold-in of new items between retrains (docs/architecture.md, "Fold-in of new items").

On a churning synthetic world whose ground truth names every item's topic: the math against a real
Spark pre-training (W reproduces the embeddings of embedded items, a launched item lands among
its true topic, far above a random draw), then end to end on the local stack: `led run` for D,
`led foldin --date D+1` pushes a slot with the new items, `led serve` recommends them, the next
`led run` replaces the slot.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from infra import events
from models.export import ExportedModel, load_model
from models.foldin import fold_in, fold_in_embeddings, user_timelines
from models.led import initial_bias
from models.pretrain import Embeddings, PretrainConfig, pretrain_window
from tests.cli_runner import ROOT, led
from tests.http_client import post_recommend, wait_for_version

START = dt.date(2026, 1, 1)
TRAIN_DAYS = 6
CFG = PretrainConfig(dim=16, min_count=5)
# the end-to-end test's own model name and serving prefix: other tests share the local stack
OWN = {"LED_MLFLOW_MODEL_NAME": "led-foldin-e2e", "LED_S3_PREFIX": "foldin-e2e"}


@pytest.fixture(scope="module")
def churning_world(tmp_path_factory) -> Path:
    from data_sources.synthetic import WorldConfig, generate

    out = tmp_path_factory.mktemp("foldin") / "events"
    generate(out, WorldConfig(users=2000, items=400, days=8, seed=3, item_churn=0.05))
    return out


@pytest.fixture(scope="module")
def pretrained(spark, churning_world) -> Embeddings:
    return pretrain_window(spark, churning_world, START + dt.timedelta(days=TRAIN_DAYS), TRAIN_DAYS,
                           CFG)


def _topics(world: Path) -> dict[str, int]:
    truth = pq.read_table(world / "truth" / "items.parquet", columns=["item_id", "topic"])
    return dict(zip(truth.column("item_id").to_pylist(), truth.column("topic").to_pylist()))


def test_w_folds_the_training_rows_back_onto_their_embeddings(pretrained, churning_world):
    """``rownorm(m W)`` of an embedded item's own PPMI row (same formula, same marginals) is its E row:
    W and the marginals kept with the pre-training are the ones its SVD used."""
    emb = pretrained
    assert emb.can_fold_in and emb.W.shape == emb.E.shape
    np.testing.assert_allclose(emb.W.T.astype(np.float64) @ emb.W, np.eye(emb.dim), atol=1e-4)
    views = events.read_window(churning_world, "views", START + dt.timedelta(days=TRAIN_DAYS), TRAIN_DAYS)
    X = user_timelines(views, emb.item_ids.astype(str), CFG.max_timeline)
    C = (X.T @ X).tocsr()
    C.setdiag(0)
    C.eliminate_zeros()
    np.testing.assert_array_equal(np.asarray(C.sum(axis=1)).ravel(), emb.marginals)
    folded = fold_in_embeddings(C, emb, CFG.smoothing)
    cosine = np.sum(folded * emb.E, axis=1)
    assert np.median(cosine) > 0.99 and np.mean(cosine > 0.9) > 0.9, np.percentile(cosine, [5, 50])


def test_launched_item_neighbours_are_its_true_topic(pretrained, churning_world):
    emb = pretrained
    rng = np.random.default_rng(0)
    P = rng.normal(size=(emb.dim, emb.dim)).astype(np.float32)  # any trained P: V = E P
    live = ExportedModel(emb.item_ids, emb.E @ P, initial_bias(emb.counts), emb.counts, {})
    day = START + dt.timedelta(days=TRAIN_DAYS)
    views = events.read_window(churning_world, "views", day + dt.timedelta(days=1), 1)
    result = fold_in(live, emb, views, CFG, days_since=1, train_days=TRAIN_DAYS)
    topic = _topics(churning_world)
    launched = {i for i in result.items if i not in set(emb.item_ids)}
    assert len(result.items) >= 5 and launched == set(result.items), result.stats
    n = len(emb.item_ids)
    assert result.model.V.shape == (n + len(result.items), emb.dim) and np.isfinite(result.model.b).all()
    # e_n = V_n P^-1: cosine neighbours on E among the embedded items
    E_new = result.model.V[n:] @ np.linalg.inv(P)
    E_new /= np.linalg.norm(E_new, axis=1, keepdims=True)
    embedded_topic = np.array([topic[i] for i in emb.item_ids])
    share, chance = [], []
    for k, item in enumerate(result.items):
        nearest = np.argsort(-(emb.E @ E_new[k]))[:10]
        share.append(np.mean(embedded_topic[nearest] == topic[item]))
        chance.append(np.mean(embedded_topic == topic[item]))
    assert np.mean(share) >= 0.7 and np.mean(share) > 5 * np.mean(chance), (np.mean(share), np.mean(chance))
    # the biases sit on the trained scale: within the range of the live model's
    assert live.b.min() - 1 <= result.model.b[n:].min() and result.model.b[n:].max() <= live.b.max() + 1


def test_pretraining_without_w_refuses_fold_in(pretrained, tmp_path):
    import dataclasses

    from models.foldin import FoldinError

    old = dataclasses.replace(pretrained, W=None, marginals=None)
    old.save(tmp_path / "old")
    loaded = Embeddings.load(tmp_path / "old")
    assert not loaded.can_fold_in and loaded.E.shape == pretrained.E.shape  # loads fine for everything else
    with pytest.raises(FoldinError, match="no W"):
        fold_in_embeddings(pretrained_row_counts(pretrained), loaded, 0.75)


def pretrained_row_counts(emb: Embeddings):
    import scipy.sparse as sp

    return sp.csr_matrix(np.ones((1, len(emb.item_ids)), np.float32))


# --- end to end on the local stack ------------------------------------------------------------------
FAST = ["--param", "dim=16", "--param", "epochs=2", "--param", "num_negatives=100", "--param", "batch_size=256"]
D = START + dt.timedelta(days=7)  # the daily run reads [01-01, 01-08); the fold-in the views of 01-08


@pytest.mark.stack
@pytest.mark.slow
def test_foldin_pushes_new_items_served_then_replaced_by_the_next_run(local_stack, tmp_path):
    world, nxt_day = tmp_path / "events", (D + dt.timedelta(days=1)).isoformat()
    code, _, log = led("generate", "--out", world, "--days", 9, "--users", 1500, "--items", 400, "--seed", 5,
                       "--item-churn", 0.05)
    assert code == 0, log
    code, res, log = led("foldin", "--events", world, "--date", D.isoformat(), env=OWN)
    assert code == 2 and "no live model" in log, log[-2000:]

    code, daily, log = led("run", "--events", world, "--date", D.isoformat(), *FAST, env=OWN)
    assert code == 0 and daily["promoted"], log[-3000:]
    code, res, log = led("foldin", "--events", world, "--date", D.isoformat(), env=OWN)
    assert code == 0 and res["folded_in"] == 0 and "nothing to fold in" in log, log[-2000:]

    code, res, log = led("foldin", "--events", world, "--date", nxt_day, env=OWN)
    assert code == 0 and res["pushed"], log[-3000:]
    assert res["foldin_of"] == daily["pushed_version"] and res["folded_in"] > 0
    assert res["model_version"] != daily["pushed_version"] and res["ann_recall"] >= local_stack.min_ann_recall
    folded = load_model(local_stack.work_dir / "foldin" / nxt_day / "model")
    new_items = set(folded.card["foldin"]["items"])
    live_before = set(np.load(Path(daily["pushed_model_dir"]) / "item_ids.npy").astype(str))
    assert len(new_items) == res["folded_in"] and not new_items & live_before
    code, again, log = led("foldin", "--events", world, "--date", nxt_day, env=OWN)
    assert code == 0 and again["already_live"] and again["model_version"] == res["model_version"], log[-2000:]

    proc = subprocess.Popen([sys.executable, "-m", "cli.main", "serve", "--port", "0"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=os.environ | OWN)
    try:
        port = int(json.loads(proc.stdout.readline())["listening"].rsplit(":", 1)[1])
        wait_for_version(port, res["model_version"], timeout=60)
        # timelines whose exact top-20 holds a folded-in item: the service recommends it too
        asked = served = 0
        for timeline in folded.eval_timelines:
            ids, _ = folded.exact_topk(timeline, 20)
            wanted = set(ids) & new_items
            if not wanted:
                continue
            code, body = post_recommend(port, {"items": timeline, "k": 20})
            assert code == 200 and body["model_version"] == res["model_version"]
            asked += 1
            served += bool(wanted & set(body["ids"]))
            if asked == 30:
                break
        assert asked >= 5 and served / asked >= 0.9, (asked, served)

        code, nxt, log = led("run", "--events", world, "--date", nxt_day, *FAST, env=OWN)
        assert code == 0 and nxt["promoted"] and nxt["pushed_version"], log[-3000:]
        wait_for_version(port, nxt["pushed_version"], timeout=60)
    finally:
        proc.terminate()
        proc.wait(10)
