"""Business rules in /recommend: ``exclude`` and ``candidates`` against exact scoring of the exported arrays."""
from __future__ import annotations

import json
import numpy as np
import pytest

from models.export import load_model
from serving.app import Limits, LoadedModel, Service
from serving.index import Recommender, build_and_measure, load_index
from serving.synthetic import make_synthetic_model


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = make_synthetic_model(tmp_path_factory.mktemp("rules") / "model", items=3000, dim=32, seed=7,
                                  timelines=120)
    return load_model(folder)


@pytest.fixture(scope="module")
def ann(exported, tmp_path_factory) -> Recommender:
    built = build_and_measure(exported, tmp_path_factory.mktemp("ix"), n_trees=30, search_k=2000, min_recall=0.9)
    return Recommender(exported.item_ids, exported.V, exported.b, exported.counts,
                       load_index(built.path, built.params), built.params)


def exact_filtered(model, timeline, k, exclude=(), candidates=None) -> tuple[list[str], np.ndarray]:
    """Reference: q = mean(V_x), score = q.V + b over every item, inputs + exclude removed, candidates only."""
    ids = [str(i) for i in model.item_ids]
    pos = {item: i for i, item in enumerate(ids)}
    x = [pos[i] for i in timeline if i in pos]
    scores = model.V[x].mean(axis=0) @ model.V.T + model.b
    allowed = np.zeros(len(ids), bool) if candidates is not None else np.ones(len(ids), bool)
    if candidates is not None:
        allowed[[pos[c] for c in candidates if c in pos]] = True
    allowed[x] = False
    allowed[[pos[e] for e in exclude if e in pos]] = False
    order = [i for i in np.argsort(-scores, kind="stable") if allowed[i]][:k]
    return [ids[i] for i in order], scores[order]


def test_exclude_is_never_returned_and_k_still_holds(exported, ann):
    recalls = []
    for timeline in exported.eval_timelines[:40]:
        blocked = exact_filtered(exported, timeline, 30)[0][:15]  # the 15 best items are out of stock
        got = ann.recommend(timeline, 10, exclude=blocked)
        want, want_scores = exact_filtered(exported, timeline, 10, exclude=blocked)
        assert len(got.ids) == 10 and not set(got.ids) & (set(blocked) | set(timeline))
        assert got.scores == sorted(got.scores, reverse=True)
        recalls.append(len(set(got.ids) & set(want)) / 10)
        shared = [i for i in got.ids if i in want]
        np.testing.assert_allclose([got.scores[got.ids.index(i)] for i in shared],
                                   [want_scores[want.index(i)] for i in shared], rtol=1e-5, atol=1e-5)
    assert np.mean(recalls) >= 0.9, np.mean(recalls)


def test_exclude_removing_most_ann_candidates_falls_back_to_exact(exported, ann):
    for timeline in exported.eval_timelines[:20]:
        blocked = exact_filtered(exported, timeline, 2000)[0]  # far more than Annoy would return
        got = ann.recommend(timeline, 10, exclude=blocked)
        want, want_scores = exact_filtered(exported, timeline, 10, exclude=blocked)
        assert got.ids == want and len(got.ids) == 10
        np.testing.assert_allclose(got.scores, want_scores, rtol=1e-5, atol=1e-5)


def test_candidates_restrict_the_answer_exactly(exported, ann):
    rng = np.random.default_rng(0)
    ids = [str(i) for i in exported.item_ids]
    for timeline in exported.eval_timelines[:20]:
        pool = [ids[i] for i in rng.choice(len(ids), size=300, replace=False)] + ["not-in-catalog"]
        got = ann.recommend(timeline, 10, candidates=pool, exclude=pool[:3])
        want, want_scores = exact_filtered(exported, timeline, 10, exclude=pool[:3], candidates=pool)
        assert got.ids == want and set(got.ids) <= set(pool[3:]) - set(timeline)
        np.testing.assert_allclose(got.scores, want_scores, rtol=1e-5, atol=1e-5)
    # Fewer candidates than k: all of them (inputs removed), best first.
    timeline = exported.eval_timelines[0]
    few = [timeline[0], ids[5], ids[17], ids[2900]]
    got = ann.recommend(timeline, 10, candidates=few)
    assert got.ids == exact_filtered(exported, timeline, 10, candidates=few)[0]
    assert timeline[0] not in got.ids and len(got.ids) == len(set(few) - set(timeline))
    assert ann.recommend(timeline, 10, candidates=[]).ids == []


def test_popularity_fallback_honours_the_rules(exported, ann):
    by_pop = [str(exported.item_ids[i]) for i in np.argsort(-exported.counts, kind="stable")]
    got = ann.recommend(["unknown"], 5, exclude=by_pop[:2])
    assert got.fallback and got.ids == by_pop[2:7]
    pool = by_pop[10:40:3]
    got = ann.recommend([], 3, candidates=pool)
    assert got.fallback and got.ids == pool[:3]


def test_service_rules_and_their_limits(tmp_path):
    folder = make_synthetic_model(tmp_path / "small", items=200, dim=8, timelines=0)
    model = load_model(folder)
    svc = Service(Limits(max_exclude=5, max_candidates=20))
    svc.swap(LoadedModel(Recommender(model.item_ids, model.V, model.b, model.counts), "v", "local", "s", folder))

    def post(data) -> tuple[int, dict]:
        code, _, payload = svc.handle("POST", "/recommend", json.dumps(data).encode())
        return code, json.loads(payload)

    code, body = post({"items": ["item1"], "k": 4, "exclude": ["item2", 3], "candidates": [f"item{i}" for i in
                                                                                        range(10)]})
    assert code == 200 and len(body["ids"]) == 4 and set(body["ids"]) <= {f"item{i}" for i in range(10)}
    assert not {"item1", "item2", "item3"} & set(body["ids"])
    assert post({"items": [], "exclude": [f"i{i}" for i in range(6)]})[0] == 413
    assert post({"items": [], "candidates": [f"i{i}" for i in range(21)]})[0] == 413
    for bad in ({"exclude": "item1"}, {"exclude": [1.5]}, {"candidates": {"a": 1}}, {"candidates": [None]}):
        code, body = post({"items": ["item1"], **bad})
        assert code == 400 and "error" in body, bad
    assert post({"items": ["item1"], "candidates": None})[0] == 200  # null = no restriction
