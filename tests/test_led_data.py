"""Evaluation protocols: Mult-VAE held-out users and the daily temporal split (numpy only, fast)."""
from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa

from infra.events import to_table
from models.data import heldout_split, temporal_split


def events_table(rows):
    """rows: (user, item, day) -> table with the read_window ``date`` column."""
    base = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    users, items, days = zip(*rows)
    ts = [base + dt.timedelta(days=d, seconds=i) for i, d in enumerate(days)]
    t = to_table(list(users), list(items), pa.array(ts, pa.timestamp("us", tz="UTC")))
    return t.append_column("date", pa.array([(base + dt.timedelta(days=d)).date() for d in days], pa.date32()))


def test_temporal_split_targets_last_day_inputs_earlier():
    views = events_table([("a", "x", 0), ("a", "y", 1), ("a", "z", 2), ("b", "x", 0), ("b", "w", 2), ("c", "y", 2)])
    clicks = events_table([("a", "y", 1), ("a", "z", 2), ("a", "y", 2), ("b", "w", 2), ("c", "y", 2)])
    split = temporal_split(views, clicks, ["w", "x", "y", "z"])
    assert split.eval_date == dt.date(2026, 1, 3)
    # a: history x, y (day 0-1); last-day clicks z and y -> y already in inputs, so target {z}
    # b: history x; target w.  c: no earlier history -> not evaluated
    assert list(split.test.user_ids) == ["a", "b"]
    assert list(split.test.item_ids) == ["w", "x", "y", "z"]  # the window's items: the universe
    idx = {"w": 0, "x": 1, "y": 2, "z": 3}
    assert split.test.inputs.row(0).tolist() == [idx["x"], idx["y"]]
    assert split.test.targets.row(0).tolist() == [idx["z"]]
    assert split.test.targets.row(1).tolist() == [idx["w"]]
    # training never sees the evaluation day
    assert idx["z"] not in split.train.timelines.items and idx["w"] not in split.train.timelines.items


def test_gate_targets_are_filtered_by_neither_vocabulary():
    """Champion and challenger are scored on the same targets: every item clicked on the evaluation day.

    The challenger (trained on the window) knows x and y; the champion (older) knows x and z. User a
    clicks z on the last day, user b clicks y. Each model can hit only the target it knows: both get
    recall 0.5 and each one's miss counts, whichever vocabulary the split was built from.
    """
    from models.evaluation import evaluate_model
    from models.export import ExportedModel

    views = events_table([("a", "x", 0), ("a", "z", 1), ("b", "x", 0), ("b", "y", 1), ("c", "x", 0)])
    clicks = events_table([("a", "x", 0), ("a", "z", 1), ("b", "x", 0), ("b", "y", 1)])
    v = np.array([[1.0, 0.0], [1.0, 0.0]], np.float32)
    challenger = ExportedModel(np.array(["x", "y"]), v, np.zeros(2, np.float32), np.ones(2, np.int64))
    champion = ExportedModel(np.array(["z", "x"]), v, np.zeros(2, np.float32), np.ones(2, np.int64))
    for vocabulary in (["x", "y"], ["x", "z"]):  # the split's training vocabulary changes nothing
        test = temporal_split(views, clicks, vocabulary).test
        assert sorted(test.user_ids) == ["a", "b"] and set(test.item_ids) == {"x", "y", "z"}
        for model in (challenger, champion):
            out = evaluate_model(model, test)
            assert out["users"] == 2 and out["recall@20"] == 0.5


def test_heldout_split_keeps_test_users_out_of_training():
    rng = np.random.default_rng(0)
    rows = [(f"u{u}", f"i{i}", 0) for u in range(60) for i in rng.choice(40, 8, replace=False)]
    clicks = events_table(rows)
    split = heldout_split(clicks, clicks, seed=3)
    train, test, valid = set(split.train.user_ids), set(split.test.user_ids), set(split.valid.user_ids)
    assert not train & test and not train & valid and not test & valid
    assert len(test) == 12 and len(valid) == 6
    assert set(split.item_ids) == {i for u, i, _ in rows if u in train}
    for f, t in zip(split.test.inputs.rows(), split.test.targets.rows()):
        assert len(t) >= 1 and not set(f) & set(t)
    again = heldout_split(clicks, clicks, seed=3)
    assert list(again.test.user_ids) == list(split.test.user_ids)
