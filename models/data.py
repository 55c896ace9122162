"""Training examples and evaluation splits for LED and its baselines.

Everything here is numpy/pyarrow only (no TensorFlow, no Spark), so the
baselines, the gate and the benchmarks share one definition of "the data".

Representation
--------------
Per-user item lists are stored as CSR (:class:`Lists`: ``indptr`` + ``items``,
item indices into a fixed catalog). A user's *timeline* holds every item the
user viewed or clicked (deduplicated, oldest first); the *clicks* hold the
clicked items. For single-feedback data sets (the Mult-VAE table: only the
positives are used) timeline and clicks are the same lists.

Training examples (:func:`epoch_examples`)
------------------------------------------
deepr's per-epoch random split, generalised to two kinds of feedback: each
epoch, every user's clicked items are shuffled and a share ``target_ratio``
(at least one) becomes the targets; the inputs are the timeline items that are
not targets. Removing the targets' views from the inputs matters: serving
never recommends what is already in the timeline, so the model must not learn
to predict its own inputs.

Evaluation protocols
--------------------
- :func:`heldout_split`, Mult-VAE strong generalisation (Liang et al. 2018):
  users are split into train / validation / test; validation and test users
  never train; each of their positives is split 80/20 into fold-in (the
  input, excluded from the ranking) and targets.
- :func:`temporal_split`, for the daily run: targets are the clicks on the last
  day of the window, inputs are each user's earlier timeline; training uses
  only the earlier days, so nothing from the evaluation day leaks into E, P or
  b.
"""
from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from infra import events
from infra.errors import UserError


# --------------------------------------------------------------------------- CSR lists
@dataclass
class Lists:
    """Variable-length item lists (one per user) in CSR form."""

    indptr: np.ndarray  # int64 (n+1,)
    items: np.ndarray  # int32 (nnz,)

    @classmethod
    def from_lists(cls, rows: Iterable[Sequence[int]]) -> "Lists":
        rows = [np.asarray(r, dtype=np.int32) for r in rows]
        lengths = np.array([len(r) for r in rows], dtype=np.int64)
        indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        items = np.concatenate(rows).astype(np.int32) if rows and indptr[-1] else np.zeros(0, np.int32)
        return cls(indptr, items)

    def __len__(self) -> int:
        return len(self.indptr) - 1

    def row(self, i: int) -> np.ndarray:
        return self.items[self.indptr[i]:self.indptr[i + 1]]

    def lengths(self) -> np.ndarray:
        return np.diff(self.indptr)

    def rows(self) -> list[np.ndarray]:
        return [self.row(i) for i in range(len(self))]

    def take(self, idx: Sequence[int]) -> "Lists":
        """The rows ``idx``, in that order."""
        idx = np.asarray(idx, dtype=np.int64)
        lengths = self.lengths()[idx]
        indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        positions = np.repeat(self.indptr[idx] - indptr[:-1], lengths) + np.arange(indptr[-1])
        return Lists(indptr, self.items[positions].astype(np.int32))

    def to_dense(self, n_items: int, dtype=np.float32) -> np.ndarray:
        """Binary user × item matrix (small catalogs and baselines only)."""
        out = np.zeros((len(self), n_items), dtype=dtype)
        rows = np.repeat(np.arange(len(self)), self.lengths())
        out[rows, self.items] = 1
        return out


@dataclass
class UserData:
    """Training users: timelines (inputs, views and clicks) and clicks (targets)."""

    user_ids: np.ndarray
    timelines: Lists
    clicks: Lists

    def __len__(self) -> int:
        return len(self.user_ids)


@dataclass
class EvalSet:
    """Evaluation users: inputs (fold-in, excluded from rankings) and targets, as positions in ``item_ids``.

    ``item_ids`` is the set's explicit item universe. For the daily gate it
    is every item of the window, not one model's vocabulary, so models with
    different vocabularies are judged on the same targets (a target a model
    cannot score is a miss for it; ``models.evaluation.evaluate_model`` maps
    positions to each model's own items). It travels as JSON in item ids
    (``models.evaluation.save_eval_set``).
    """

    user_ids: np.ndarray
    inputs: Lists
    targets: Lists
    item_ids: np.ndarray
    name: str = ""

    def __len__(self) -> int:
        return len(self.user_ids)

    def target_sets(self) -> list[set]:
        return [set(r.tolist()) for r in self.targets.rows()]

    def take(self, idx: Sequence[int]) -> "EvalSet":
        idx = np.asarray(idx, dtype=np.int64)
        return EvalSet(self.user_ids[idx], self.inputs.take(idx), self.targets.take(idx), self.item_ids, self.name)

    def head(self, n: int) -> "EvalSet":
        return self.take(range(min(n, len(self))))

    def timelines(self, limit: int | None = None) -> list[list[str]]:
        """The inputs as item ids (what a caller would send to serving)."""
        rows = self.inputs.rows()[:limit]
        return [[str(self.item_ids[i]) for i in row] for row in rows]


@dataclass
class HeldoutSplit:
    """Mult-VAE protocol: catalog, training users, validation and test users."""

    item_ids: np.ndarray
    train: UserData
    valid: EvalSet
    test: EvalSet
    train_counts: np.ndarray  # clicks per catalog item among training users
    info: dict = field(default_factory=dict)


@dataclass
class TemporalSplit:
    """Daily protocol: train on days before the last one, evaluate on the last day's clicks."""

    item_ids: np.ndarray
    train: UserData
    test: EvalSet
    eval_date: dt.date
    info: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- events → lists
def load_events(root: Path, days: Sequence[dt.date] | None = None) -> tuple[pa.Table, pa.Table]:
    """Views and clicks (user_id, item_id, ts, date) of the given days (default: every day)."""
    root = events.require_event_store(Path(root))
    if days is None:
        days = sorted(set(events.list_days(root, "views")) | set(events.list_days(root, "clicks")))
    if not days:
        raise UserError(f"the event store has no days: {root}")
    out = []
    for kind in events.KINDS:
        tables = []
        for day in days:
            t = events.read_day(root, kind, day)
            tables.append(t.append_column("date", pa.array([day] * t.num_rows, pa.date32())))
        out.append(pa.concat_tables(tables))
    return out[0], out[1]


def group_items(table: pa.Table, index: dict[str, int] | None = None,
                users: Sequence[str] | None = None) -> tuple[np.ndarray, list[np.ndarray]]:
    """Per user, the distinct item indices in time order (first occurrence); unknown items dropped.

    With ``index=None`` the raw item id strings are returned instead of indices.
    """
    if table.num_rows == 0:
        ids = np.asarray(users if users is not None else [], dtype=str)
        return ids, [np.zeros(0, np.int32) for _ in ids]
    table = table.sort_by([("user_id", "ascending"), ("ts", "ascending")])
    user = table.column("user_id").to_numpy(zero_copy_only=False).astype(str)
    item = table.column("item_id").to_numpy(zero_copy_only=False).astype(str)
    if index is not None:
        idx = np.fromiter((index.get(i, -1) for i in item), dtype=np.int64, count=len(item))
        known = idx >= 0
        user, item = user[known], idx[known].astype(np.int32)
    uniq, starts = np.unique(user, return_index=True)
    bounds = list(starts) + [len(user)]
    per_user = {}
    for u, s, e in zip(uniq, bounds[:-1], bounds[1:]):
        row = item[s:e]
        _, first = np.unique(row, return_index=True)
        per_user[u] = row[np.sort(first)]
    ids = np.asarray(users if users is not None else uniq, dtype=str)
    empty = np.zeros(0, np.int32) if index is not None else np.zeros(0, dtype=str)
    return ids, [per_user.get(u, empty) for u in ids]


def _merge_timeline(views: np.ndarray, clicks: np.ndarray, cap: int | None) -> np.ndarray:
    seq = np.concatenate([views, clicks])
    _, first = np.unique(seq, return_index=True)
    row = seq[np.sort(first)]
    return row[-cap:] if cap else row


# --------------------------------------------------------------------------- training examples
def epoch_examples(data: UserData, target_ratio: float, keep_prob: float,
                   rng: np.random.Generator) -> tuple[Lists, Lists]:
    """One epoch of (inputs, targets): random click targets, remaining timeline as inputs, masked.

    Per user with clicks, ``max(1, round(target_ratio · clicks))`` random clicks are the targets and
    the rest of the timeline the inputs; users left with no input are skipped. Masking drops each
    input with probability ``1 - keep_prob`` (no rescaling, as in deepr) but always keeps at least
    one input. Vectorised over all users (one sort, one membership test): it runs every epoch.
    """
    n_clicks = data.clicks.lengths()
    users = np.flatnonzero(n_clicks > 0)
    n_targets = np.maximum(1, np.rint(target_ratio * n_clicks[users]).astype(np.int64))
    # random targets: each user's clicks ordered by a random key, the first n_targets kept
    click_user = np.repeat(np.arange(len(data)), n_clicks)
    order = np.lexsort((rng.random(len(click_user)), click_user))
    rank = np.arange(len(order)) - np.repeat(data.clicks.indptr[:-1], n_clicks)
    chosen = order[rank < np.repeat(_per_user(n_targets, users, len(data)), n_clicks)]
    target_user, target_item = click_user[chosen], data.clicks.items[chosen].astype(np.int64)
    # inputs: the timeline minus the targets (one membership test on (user, item) codes)
    n_items = int(max(data.timelines.items.max(initial=0), data.clicks.items.max(initial=0))) + 1
    timeline_user = np.repeat(np.arange(len(data)), data.timelines.lengths())
    codes = timeline_user.astype(np.int64) * n_items + data.timelines.items
    is_input = ~np.isin(codes, target_user * n_items + target_item) & np.isin(timeline_user, users)
    input_user, input_item = timeline_user[is_input], data.timelines.items[is_input]
    if keep_prob < 1.0:
        input_user, input_item = _mask_inputs(input_user, input_item, keep_prob, rng)
    kept = np.unique(input_user)  # users with at least one input left
    target_mask = np.isin(target_user, kept)
    target_user, target_item = target_user[target_mask], target_item[target_mask]
    order = np.lexsort((target_item, target_user))  # each user's targets sorted
    inputs = _grouped(input_user, input_item, kept)
    targets = _grouped(target_user[order], target_item[order].astype(np.int32), kept)
    shuffle = rng.permutation(len(kept))
    return inputs.take(shuffle), targets.take(shuffle)


def _per_user(values: np.ndarray, users: np.ndarray, n: int) -> np.ndarray:
    out = np.zeros(n, dtype=values.dtype)
    out[users] = values
    return out


def _mask_inputs(user: np.ndarray, item: np.ndarray, keep_prob: float,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Each input kept with probability ``keep_prob``; a user who would lose them all keeps one."""
    keep = rng.random(len(user)) < keep_prob
    starts = np.flatnonzero(np.r_[True, user[1:] != user[:-1]]) if len(user) else np.zeros(0, np.int64)
    counts = np.diff(np.r_[starts, len(user)])
    kept_any = np.add.reduceat(keep, starts) > 0 if len(user) else np.zeros(0, bool)
    lost = np.flatnonzero(~kept_any)
    keep[starts[lost] + (rng.random(len(lost)) * counts[lost]).astype(np.int64)] = True
    return user[keep], item[keep]


def _grouped(user: np.ndarray, item: np.ndarray, users: np.ndarray) -> Lists:
    """Lists of ``item`` per user of ``users`` (both sorted by user; each listed user has >= 1 item)."""
    lengths = np.bincount(np.searchsorted(users, user), minlength=len(users))
    return Lists(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64), item.astype(np.int32))


def fold_in_split(positives: Sequence[np.ndarray], rng: np.random.Generator,
                  target_share: float = 0.2) -> tuple[Lists, Lists]:
    """Per user, a random ``1 - target_share`` of positives as fold-in, the rest as targets (>= 1 each)."""
    fold, target = [], []
    for row in positives:
        row = rng.permutation(np.asarray(row, dtype=np.int32))
        n_t = min(len(row) - 1, max(1, int(round(target_share * len(row)))))
        fold.append(np.sort(row[n_t:]))
        target.append(np.sort(row[:n_t]))
    return Lists.from_lists(fold), Lists.from_lists(target)


# --------------------------------------------------------------------------- protocols
def heldout_split(views: pa.Table, clicks: pa.Table, seed: int, *, test_share: float = 0.2,
                  valid_share: float = 0.1, min_positives: int = 5, target_share: float = 0.2,
                  with_views: bool = False, max_timeline: int | None = None) -> HeldoutSplit:
    """Mult-VAE strong generalisation on clicks (the positives).

    Users with at least ``min_positives`` distinct clicked items are shuffled by
    ``seed`` and split into train / validation / test. The catalog is the set
    of items clicked by training users (items never seen in training cannot be
    ranked by any model). Training timelines are the clicks, or views+clicks
    with ``with_views``; held-out users only ever use clicks (fold-in/targets).
    """
    user_ids, click_rows = group_items(clicks)
    keep = np.array([len(r) >= min_positives for r in click_rows], dtype=bool)
    user_ids = user_ids[keep]
    click_rows = [r for r, k in zip(click_rows, keep) if k]
    n = len(user_ids)
    n_test, n_valid = int(round(test_share * n)), int(round(valid_share * n))
    if n - n_test - n_valid < 2 or n_test < 1 or n_valid < 1:
        raise UserError(f"too few users with >= {min_positives} clicks for a held-out split: {n}")
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    test_u, valid_u, train_u = perm[:n_test], perm[n_test:n_test + n_valid], perm[n_test + n_valid:]

    catalog = np.unique(np.concatenate([click_rows[i] for i in train_u]))
    index = {item: i for i, item in enumerate(catalog)}

    def to_idx(row):
        return np.array([index[i] for i in row if i in index], dtype=np.int32)

    train_clicks = [to_idx(click_rows[i]) for i in train_u]
    if with_views:
        train_ids = user_ids[train_u]
        _, view_rows = group_items(views, index, users=train_ids)
        timelines = [_merge_timeline(v, c, max_timeline) for v, c in zip(view_rows, train_clicks)]
    else:
        timelines = train_clicks
    train = UserData(user_ids[train_u], Lists.from_lists(timelines), Lists.from_lists(train_clicks))
    counts = np.bincount(train.clicks.items, minlength=len(catalog)).astype(np.int64)

    def held(users: np.ndarray) -> EvalSet:
        rows = [to_idx(click_rows[i]) for i in users]
        users = np.array([u for u, r in zip(users, rows) if len(r) >= 2], dtype=np.int64)
        rows = [r for r in rows if len(r) >= 2]
        fold, target = fold_in_split(rows, rng, target_share)
        return EvalSet(user_ids[users], fold, target, catalog)

    valid, test = held(valid_u), held(test_u)
    info = {"users": n, "train_users": len(train), "valid_users": len(valid), "test_users": len(test),
            "items": len(catalog), "train_clicks": int(train.clicks.items.size), "seed": seed}
    return HeldoutSplit(catalog, train, valid, test, counts, info)


def build_user_data(views: pa.Table, clicks: pa.Table, index: dict[str, int],
                    max_timeline: int | None = None, users: Sequence[str] | None = None) -> UserData:
    """Timelines (views + clicks, known items, time order) and clicks per user."""
    if users is None:
        users = np.union1d(np.unique(views.column("user_id").to_numpy(zero_copy_only=False).astype(str)),
                           np.unique(clicks.column("user_id").to_numpy(zero_copy_only=False).astype(str)))
    ids, view_rows = group_items(views, index, users=users)
    _, click_rows = group_items(clicks, index, users=ids)
    timelines = [_merge_timeline(v, c, max_timeline) for v, c in zip(view_rows, click_rows)]
    return UserData(ids, Lists.from_lists(timelines), Lists.from_lists(click_rows))


def split_validation(data: UserData, item_ids: np.ndarray, share: float, max_users: int, seed: int,
                     min_clicks: int = 2) -> tuple[UserData, EvalSet]:
    """Hold some training users out for early stopping: their clicks split 80/20, timeline as fold-in.

    ``item_ids`` is the catalog ``data``'s positions refer to.
    """
    rng = np.random.default_rng(seed + 1)
    eligible = np.flatnonzero(data.clicks.lengths() >= min_clicks)
    n_valid = min(max_users, int(round(share * len(eligible))))
    chosen = np.sort(rng.permutation(eligible)[:n_valid])
    rest = np.setdiff1d(np.arange(len(data)), chosen)
    train = UserData(data.user_ids[rest], data.timelines.take(rest), data.clicks.take(rest))
    inputs, targets = [], []
    for u in chosen:
        clicks = rng.permutation(data.clicks.row(u))
        n_t = max(1, int(round(0.2 * len(clicks))))
        tgt = np.sort(clicks[:n_t])
        timeline = data.timelines.row(u)
        inputs.append(timeline[~np.isin(timeline, tgt)])
        targets.append(tgt)
    return train, EvalSet(data.user_ids[chosen], Lists.from_lists(inputs), Lists.from_lists(targets), item_ids,
                          "validation")


def evaluation_day(views: pa.Table, clicks: pa.Table) -> dt.date:
    """The temporal protocol's evaluation day: the last day with events (views or clicks) in the window.

    The one definition used by the vocabulary plan (``models.pipeline.plan_window``) and the split
    (:func:`temporal_split`), hence by ``led train``, the flow and the gate's eval set. Tables carry
    the ``date`` column of ``infra.events.read_window``; a window with events on fewer than 2 days has
    nothing to train on before its last day (``UserError``).
    """
    days = event_days(views, clicks)
    if len(days) < 2:
        raise UserError(f"the temporal protocol needs events on at least 2 days of the window, got {len(days)}")
    return days[-1]


def event_days(views: pa.Table, clicks: pa.Table) -> list[dt.date]:
    """The sorted distinct days with views or clicks."""
    dates = [t.column("date").combine_chunks().cast(pa.date32()) for t in (views, clicks) if t.num_rows]
    if not dates:
        return []
    return sorted(d.as_py() for d in pc.unique(pa.concat_arrays(dates)))


def window_items(views: pa.Table, clicks: pa.Table) -> np.ndarray:
    """Every item id viewed or clicked in the tables, sorted: the gate's item universe."""
    ids = [t.column("item_id").combine_chunks() for t in (views, clicks) if t.num_rows]
    if not ids:
        return np.zeros(0, dtype=str)
    return np.asarray(sorted(pc.unique(pa.concat_arrays(ids)).to_pylist()), dtype=str)


@dataclass(frozen=True)
class UserSample:
    """Which users a temporal split trains and evaluates on, when the tables hold only some users' events
    (the bounded samples of :func:`sample_users`; docs/architecture.md, "Fine-tuning on a bounded sample
    of users"). ``None`` = every user of the tables; ``universe``: the whole window's :func:`window_items`
    (the tables' own items are then only the sampled users')."""

    train_users: np.ndarray | None = None
    eval_users: np.ndarray | None = None
    universe: np.ndarray | None = None


def temporal_split(views: pa.Table, clicks: pa.Table, item_ids: Sequence[str],
                   max_timeline: int | None = None, sample: UserSample | None = None) -> TemporalSplit:
    """Train on the days before :func:`evaluation_day`; evaluate on that day's clicks.

    ``item_ids`` is the model's vocabulary: training timelines and clicks are
    positions in it. The test set's universe is every item of the window, so
    its targets are filtered by no model's vocabulary (a fair gate): users with
    earlier history and at least one clicked item not already in their
    inputs are evaluated (with ``sample``, only its users train and are evaluated).
    """
    eval_day = evaluation_day(views, clicks)
    early_v, early_c, last_c = split_last_day(views, clicks, eval_day)
    train_days = event_days(early_v, early_c)
    index = {str(item): i for i, item in enumerate(item_ids)}
    sample = sample or UserSample()
    train = build_user_data(early_v, early_c, index, max_timeline, users=sample.train_users)
    universe = window_items(views, clicks) if sample.universe is None else sample.universe
    if sample.eval_users is not None:
        last_c = last_c.filter(pc.is_in(last_c.column("user_id"), pa.array(sample.eval_users.tolist(), pa.string())))
    test = last_day_eval_set(early_v, early_c, last_c, universe, max_timeline,
                             name=f"clicks-{eval_day}")
    info = {"train_days": [str(train_days[0]), str(train_days[-1])], "eval_date": str(eval_day),
            "train_users": len(train), "eval_users": len(test), "items": len(index),
            "eval_items": len(test.item_ids),
            "eval_target_users_total": int(pc.count_distinct(last_c.column("user_id")).as_py())}
    return TemporalSplit(np.asarray(item_ids, dtype=str), train, test, eval_day, info)


def sample_users(users: Sequence[str], max_users: int, seed: int) -> np.ndarray:
    """At most ``max_users`` of ``users`` (all when ``max_users`` is 0 or not smaller), sorted.

    Chosen by a keyed hash of the id rather than a random draw, so a user stays in the
    sample from one day to the next (the daily models train on mostly the same people, and a
    rerun picks the same sample); docs/architecture.md, "Fine-tuning on a bounded sample of users".
    """
    users = np.unique(np.asarray(users, dtype=str))
    if not max_users or max_users >= len(users):
        return users
    key = seed.to_bytes(8, "little", signed=True)
    ranks = np.fromiter((int.from_bytes(hashlib.blake2b(u.encode(), digest_size=8, key=key).digest(), "little")
                         for u in users), dtype=np.uint64, count=len(users))
    return np.sort(users[np.argsort(ranks, kind="stable")[:max_users]])


def split_last_day(views: pa.Table, clicks: pa.Table, last: dt.date) -> tuple[pa.Table, pa.Table, pa.Table]:
    """(views before ``last``, clicks before ``last``, clicks on ``last``)."""
    day = pa.scalar(last, pa.date32())
    before = [t.filter(pc.less(t.column("date").cast(pa.date32()), day)) for t in (views, clicks)]
    on_last = clicks.filter(pc.equal(clicks.column("date").cast(pa.date32()), day))
    return before[0], before[1], on_last


def last_day_eval_set(early_views: pa.Table, early_clicks: pa.Table, last_clicks: pa.Table,
                      universe: np.ndarray, max_timeline: int | None, name: str) -> EvalSet:
    """Users who clicked on the evaluation day: inputs = their earlier timeline, targets = that day's
    clicks not already in it, both as positions in ``universe``."""
    index = {str(item): i for i, item in enumerate(universe)}
    target_users, target_rows = group_items(last_clicks, index)
    users = pa.array(target_users.tolist(), pa.string())
    history = build_user_data(early_views.filter(pc.is_in(early_views.column("user_id"), users)),
                              early_clicks.filter(pc.is_in(early_clicks.column("user_id"), users)),
                              index, max_timeline, users=target_users)
    ids, inputs, targets = [], [], []
    for u, row in enumerate(target_rows):
        timeline = history.timelines.row(u)
        row = row[~np.isin(row, timeline)]
        if len(timeline) and len(row):
            ids.append(target_users[u])
            inputs.append(timeline)
            targets.append(np.sort(row))
    return EvalSet(np.asarray(ids, dtype=str), Lists.from_lists(inputs), Lists.from_lists(targets),
                   np.asarray(universe, dtype=str), name)


# --------------------------------------------------------------------------- evaluation
def evaluate_scorer(score: Callable[[list[np.ndarray]], np.ndarray], eval_set: EvalSet, n_items: int,
                    batch_size: int = 1024, k: int = 100) -> dict[str, float]:
    """Score users in batches, exclude their inputs (fold-in) from the ranking, and compute
    Recall@20/50, NDCG@100 and coverage@20 with ``models.metrics``."""
    from models.metrics import evaluate_rankings
    from models.scoring import exclude_inputs, ranked

    rankings: list[np.ndarray] = []
    for start in range(0, len(eval_set), batch_size):
        rows = [eval_set.inputs.row(u) for u in range(start, min(start + batch_size, len(eval_set)))]
        rankings.extend(ranked(exclude_inputs(np.array(score(rows), dtype=np.float64, copy=True), rows), k))
    return evaluate_rankings(rankings, eval_set.target_sets(), n_items=n_items)
