"""Judging a scoring model on an :class:`models.data.EvalSet` (docs/architecture.md, "Evaluation").

One evaluation for every LED-shaped model (anything with ``item_ids``, ``V``,
``b``, ``counts``: a :class:`models.led.TrainedModel` or an exported model):
the eval set's positions are mapped to the model's own items, unknown inputs
are dropped, targets the model cannot score stay in the denominator (misses),
and the ranking is :mod:`models.scoring`'s. The gate, ``led train``, the
daily fine-tune stage and the benchmarks all call :func:`evaluate_model`.

An eval set travels as JSON in item ids::

    {"name": ..., "item_ids": [universe], "inputs": [[ids]], "targets": [[ids]]}

(``item_ids`` optional on input: the universe is then every id the file names).
"""
from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import numpy as np

from infra.atomic import atomic_write_text
from infra.errors import UserError
from models import scoring
from models.data import EvalSet, Lists
from models.metrics import evaluate_rankings, per_user_metrics, summarise

POPULARITY = "popularity"


def _positions_in(model_ids: np.ndarray, universe: np.ndarray) -> np.ndarray:
    """For each universe item its position in the model (-1 when the model does not know it)."""
    own = {str(item): i for i, item in enumerate(model_ids)}
    return np.fromiter((own.get(str(item), -1) for item in universe), dtype=np.int64, count=len(universe))


def evaluate_model(model: Any, eval_set: EvalSet, k: int = 100) -> dict[str, float]:
    """Recall@20/50, NDCG@100 and coverage@20 of ``model``'s exact top-k on ``eval_set``."""
    metrics, _ = evaluate_model_per_user(model, eval_set, k)
    return metrics


def evaluate_model_per_user(model: Any, eval_set: EvalSet, k: int = 100) -> tuple[dict[str, float], np.ndarray]:
    """:func:`evaluate_model`'s metrics and each user's NDCG@100 (the users with targets, in eval-set
    order: two models' arrays on one eval set pair up user by user)."""
    V = np.asarray(model.V)
    b = np.asarray(model.b)
    counts = np.asarray(model.counts)
    same = len(model.item_ids) == len(eval_set.item_ids) and np.array_equal(
        np.asarray(model.item_ids, dtype=str), eval_set.item_ids)
    if same:
        rows = eval_set.inputs.rows()
        targets = eval_set.target_sets()
    else:
        remap = _positions_in(np.asarray(model.item_ids, dtype=str), eval_set.item_ids)
        rows = [r[r >= 0] for r in (remap[row] for row in eval_set.inputs.rows())]
        # a target the model cannot score becomes a position past its catalog: never ranked, still counted
        targets = [set(np.where(remap[row] >= 0, remap[row], len(V) + row).tolist())
                   for row in eval_set.targets.rows()]
    per_user = per_user_metrics(scoring.top_k(V, b, counts, rows, k), targets)
    return summarise(per_user, n_items=len(V)), per_user["ndcg@100"]


def evaluate_popularity(counts_by_id: dict[str, float], eval_set: EvalSet, k: int = 100) -> dict[str, float]:
    """The same metrics for a popularity ranking (context for every model's figures)."""
    universe = eval_set.item_ids
    counts = np.array([float(counts_by_id.get(str(i), 0.0)) for i in universe])
    order = np.argsort(-counts, kind="stable")
    rankings = []
    for row in eval_set.inputs.rows():
        seen = set(row.tolist())
        rankings.append([i for i in order[:k + len(seen)] if i not in seen][:k])
    return evaluate_rankings(rankings, eval_set.target_sets(), n_items=len(universe))


# --------------------------------------------------------------------------- JSON
def eval_set_json(eval_set: EvalSet) -> dict[str, Any]:
    ids = eval_set.item_ids
    return {"name": eval_set.name, "item_ids": [str(i) for i in ids],
            "users": [str(u) for u in eval_set.user_ids],
            "inputs": [[str(ids[i]) for i in row] for row in eval_set.inputs.rows()],
            "targets": [[str(ids[i]) for i in row] for row in eval_set.targets.rows()]}


def save_eval_set(path: Path, eval_set: EvalSet) -> Path:
    """Write an eval set atomically as JSON in item ids."""
    return atomic_write_text(Path(path), json.dumps(eval_set_json(eval_set)))


def eval_set_from_json(data: dict[str, Any], name: str = "") -> EvalSet:
    """Inverse of :func:`eval_set_json`; targets that are also inputs are dropped (inputs are excluded)."""
    inputs = [[str(i) for i in row] for row in data["inputs"]]
    targets = [[str(i) for i in row] for row in data["targets"]]
    if len(inputs) != len(targets):
        raise ValueError(f"{len(inputs)} inputs but {len(targets)} targets")
    universe = data.get("item_ids") or sorted({i for row in inputs + targets for i in row})
    universe = np.asarray([str(i) for i in universe], dtype=str)
    index = {item: i for i, item in enumerate(universe)}
    missing = {i for row in inputs + targets for i in row} - index.keys()
    if missing:
        raise ValueError(f"{len(missing)} item(s) outside item_ids, e.g. {sorted(missing)[:3]}")
    in_rows = [[index[i] for i in dict.fromkeys(row)] for row in inputs]
    tg_rows = [sorted({index[i] for i in row} - set(x)) for row, x in zip(targets, in_rows)]
    users = data.get("users") or [str(u) for u in range(len(inputs))]
    return EvalSet(np.asarray(users, dtype=str), Lists.from_lists(in_rows), Lists.from_lists(tg_rows), universe,
                   str(data.get("name") or name))


def load_eval_set(path: Path) -> EvalSet:
    """Read an eval-set JSON; ``UserError`` naming the problem."""
    path = Path(path)
    try:
        return eval_set_from_json(json.loads(path.read_text()), name=path.name)
    except FileNotFoundError:
        raise UserError(f"eval set not found: {path}") from None
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise UserError(f'not an eval set ({{"inputs": [[ids]], "targets": [[ids]]}}): {path}: {exc}') from None


def fingerprint(eval_set: EvalSet) -> str:
    """Short content hash: the gate records which set it judged on."""
    import hashlib

    blob = json.dumps(eval_set_json(eval_set), separators=(",", ":"), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def sample_eval_set(eval_set: EvalSet, max_users: int | None, seed: int = 0) -> EvalSet:
    """At most ``max_users`` of its users, the stable sample of ``models.data.sample_users`` (order kept)."""
    from models.data import sample_users

    if not max_users or len(eval_set) <= max_users:
        return eval_set
    keep = np.flatnonzero(np.isin(eval_set.user_ids, sample_users(eval_set.user_ids, max_users, seed)))
    return eval_set.take(keep)


# --------------------------------------------------------------------------- from the event store
def eval_set_for_day(events_dir: Path, target_day: str | dt.date, window_days: int,
                     max_users: int | None = 2000, seed: int = 0) -> EvalSet:
    """Users who clicked on ``target_day``: inputs = their views and clicks in the ``window_days``
    before it, targets = that day's clicks (the daily run's temporal protocol, over every item).

    Pick a ``target_day`` neither model trained on so the comparison is fair to both.
    """
    from infra import events
    from models.data import last_day_eval_set, split_last_day, window_items

    day = events.parse_date(target_day)
    events.require_event_store(Path(events_dir))
    if events.read_day(events_dir, "clicks", day).num_rows == 0:
        raise UserError(f"no clicks on {day} in {events_dir}: cannot build an eval set")
    end = day + dt.timedelta(days=1)
    views, clicks = (events.read_window(events_dir, kind, end, window_days + 1) for kind in ("views", "clicks"))
    early_v, early_c, last_c = split_last_day(views, clicks, day)
    eval_set = last_day_eval_set(early_v, early_c, last_c, window_items(views, clicks), None, name="")
    if not len(eval_set):
        raise UserError(f"no user clicking on {day} has history in the {window_days} days before")
    eval_set = sample_eval_set(eval_set, max_users, seed)
    eval_set.name = f"clicks-{day}-w{window_days}"
    return eval_set
