"""Fold-in of new items between retrains (docs/architecture.md, "Fold-in of new items").

Pre-training factorises the PPMI matrix of the embedded items, ``M ≈ U Σ Wᵀ``,
and keeps ``E = rownorm(U Σ)``. Since ``M W = U Σ``, an item launched after the
training gets its coordinates from its PPMI row ``m`` against the embedded
items without a new decomposition (the standard fold-in of a truncated SVD):

    e_new = rownorm(m W),   V_new = e_new P

``m`` is scored with the pre-training's own formula and marginals
(``models.pmi.ppmi_values`` with the stored ``r'_j`` and ``log Σ_k r'_k^α``):
the co-occurrence counts ``c_nj`` come from the timelines of the views since
the pre-training's last day (capped like pre-training's, ``models.pmi.capped_timelines``)
and ``r_n = Σ_j c_nj`` over the embedded items, the same "marginals over kept
items" convention. An item qualifies with ``r_n >= min_count`` and at least
one positive PMI entry. ``P`` comes from the live export (``V = E P``, least
squares over the embedded rows).

Bias. A new item has seen ``days_since`` days of views, the embedded ones the
``train_days`` of the training window, so its count is put on the window's
scale (``views · train_days / days_since``: the same daily rate means the same
popularity tomorrow) and goes through ``models.led.initial_bias`` with the
live counts. Fine-tuning moves the biases away from that initialisation, and
not by one constant (popular items gain relative to the tail, or lose), so the
new item gets the median offset ``b_i − initial_i`` of the ``COMPARABLE``
embedded items nearest to it in count: its bias sits where the trained biases
of items that popular sit.

A fold-in always starts from the trained model: the live export restricted to
the embedded items (an earlier fold-in's items are dropped and folded in again
with the longer stretch of views). Pure numpy/pyarrow: no Prefect, Spark or
TensorFlow.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

from models.export import ExportedModel
from models.led import initial_bias
from models.pmi import capped_timelines, log_normaliser, ppmi_values
from models.pretrain import Embeddings, PretrainConfig, row_normalise
from models.refit import projection_from_export, shared_rows

FOLDIN_OF_TAG = "foldin_of"  # on a fold-in's registered version: the trained version it enlarges
COMPARABLE = 50  # embedded items, nearest in count, whose trained bias offset a new item takes
EVAL_TIMELINES = 2000  # recent timelines kept with the enlarged export for the index's ANN-recall check


class FoldinError(ValueError):
    """The inputs cannot be folded in (pre-training without W, no embedded item in the live model...)."""


@dataclass
class FoldinResult:
    model: ExportedModel           # the live trained items plus the folded-in ones (export format)
    base: ExportedModel            # the trained model it enlarges (the sanity checks' reference)
    items: list[str]               # folded-in item ids, in the order appended
    stats: dict[str, Any] = field(default_factory=dict)


def trained_base(live: ExportedModel, emb: Embeddings) -> ExportedModel:
    """The live model restricted to its embedded items (drops what an earlier fold-in added)."""
    rows, _ = shared_rows(live.item_ids, emb.item_ids)
    if len(rows) == 0:
        raise FoldinError("the live model shares no item with its pre-training embeddings")
    card = {k: v for k, v in live.card.items() if k != "foldin"}
    return ExportedModel(live.item_ids[rows], live.V[rows], live.b[rows], live.counts[rows], card)


def user_timelines(views: pa.Table, item_ids: np.ndarray, max_timeline: int) -> sp.csr_matrix:
    """Users × items 0/1 matrix of the capped timelines (most recent ``max_timeline`` distinct items)."""
    user = pc.dictionary_encode(views.column("user_id")).combine_chunks().indices.to_numpy()
    item = pc.fill_null(pc.index_in(views.column("item_id"), value_set=pa.array(item_ids, pa.string())), -1)
    item = item.to_numpy().astype(np.int64)
    key = views.column("ts").cast(pa.int64()).to_numpy()
    known = item >= 0
    length, flat, _ = capped_timelines(user[known], item[known].astype(np.int32), key[known], max_timeline)
    indptr = np.r_[0, np.cumsum(length, dtype=np.int64)]
    return sp.csr_matrix((np.ones(len(flat), np.float32), flat, indptr), shape=(len(length), len(item_ids)))


def cooccurrence_with_embedded(views: pa.Table, embedded: np.ndarray, max_timeline: int
                               ) -> tuple[np.ndarray, sp.csr_matrix, np.ndarray, sp.csr_matrix]:
    """(new item ids, their co-occurrence counts with the embedded items (K × I), their view counts,
    the timelines matrix over embedded + new items)."""
    seen = np.unique(views.column("item_id").to_numpy(zero_copy_only=False).astype(str))
    new = np.setdiff1d(seen, embedded)
    catalog = np.concatenate([embedded.astype(str), new])
    X = user_timelines(views, catalog, max_timeline)
    n = len(embedded)
    C = (X[:, n:].T @ X[:, :n]).tocsr()
    C.data = np.rint(C.data)
    tally = pc.value_counts(views.column("item_id"))
    views_of = dict(zip(tally.field("values").to_pylist(), tally.field("counts").to_pylist()))
    return new, C, np.array([views_of.get(i, 0) for i in new], np.int64), X


def fold_in_embeddings(C: sp.csr_matrix, emb: Embeddings, smoothing: float) -> np.ndarray:
    """``rownorm(m W)`` for every row of co-occurrence counts ``C`` (K × I embedded items)."""
    if not emb.can_fold_in:
        raise FoldinError("the pre-training output has no W/marginals (written before fold-in existed): "
                          "retrain (`led run`) before folding in")
    r = np.asarray(C.sum(axis=1)).ravel()
    rows = np.repeat(np.arange(C.shape[0]), np.diff(C.indptr))
    log_r = np.log(np.where(r > 0, r, 1.0))
    values = ppmi_values(C.data, log_r[rows], np.log(emb.marginals[C.indices]),
                         log_normaliser(emb.marginals, smoothing), smoothing)
    M = sp.csr_matrix((values, C.indices, C.indptr), shape=C.shape)
    return row_normalise(M @ emb.W.astype(np.float64))


def fold_in_bias(base: ExportedModel, window_counts: np.ndarray) -> np.ndarray:
    """Initial bias of the new items on the live counts' scale plus the trained offset of the
    ``COMPARABLE`` embedded items nearest in count (module docstring)."""
    init = initial_bias(np.concatenate([base.counts, window_counts]))
    offset = base.b.astype(np.float64) - init[:len(base.counts)]
    order = np.argsort(base.counts, kind="stable")
    sorted_counts, sorted_offset = base.counts[order], offset[order]
    half = COMPARABLE // 2
    out = np.empty(len(window_counts), np.float32)
    for k, count in enumerate(window_counts):
        at = int(np.searchsorted(sorted_counts, count))
        lo = max(0, min(at - half, len(order) - COMPARABLE))
        out[k] = init[len(base.counts) + k] + np.median(sorted_offset[lo:lo + COMPARABLE])
    return out


def recent_timelines(X: sp.csr_matrix, catalog: np.ndarray, limit: int, seed: int) -> list[list[str]]:
    """Up to ``limit`` timelines (2+ items) of the recent views, for the index's ANN-recall check."""
    users = np.flatnonzero(np.diff(X.indptr) >= 2)
    if len(users) > limit:
        users = np.sort(np.random.default_rng(seed).choice(users, limit, replace=False))
    return [catalog[X.indices[X.indptr[u]:X.indptr[u + 1]]].tolist() for u in users]


def fold_in(live: ExportedModel, emb: Embeddings, views: pa.Table, cfg: PretrainConfig,
            days_since: int, train_days: int) -> FoldinResult:
    """The live model enlarged with the new items of ``views`` (the days since its pre-training);
    ``cfg``: the pre-training's knobs (min_count, smoothing, max_timeline, seed), the same rules."""
    if days_since < 1 or train_days < 1:
        raise FoldinError(f"days_since={days_since} and train_days={train_days} must be >= 1")
    base = trained_base(live, emb)
    new, C, views_of, X = cooccurrence_with_embedded(views, emb.item_ids.astype(str), cfg.max_timeline)
    r = np.asarray(C.sum(axis=1)).ravel()
    enough = r >= cfg.min_count
    E_new = fold_in_embeddings(C[enough], emb, cfg.smoothing)
    placed = np.any(E_new != 0, axis=1)  # a row whose PMI is all clipped has no direction
    ids, E_new = new[enough][placed], E_new[placed]
    base_rows, emb_rows = shared_rows(base.item_ids, emb.item_ids)
    P = projection_from_export(emb.E[emb_rows], base.V[base_rows])
    window_counts = np.rint(views_of[enough][placed] * train_days / days_since).astype(np.int64)
    stats = {"new_items_seen": int(len(new)), "below_min_count": int((~enough).sum()),
             "no_positive_pmi": int((~placed).sum()), "folded_in": int(len(ids)),
             "base_items": int(len(base.item_ids)), "removed_earlier_foldins": int(len(live.item_ids) - len(base.item_ids)),
             "timelines": int(X.shape[0])}
    catalog = np.concatenate([emb.item_ids.astype(str), new])
    model = ExportedModel(
        np.concatenate([base.item_ids, ids]), np.vstack([base.V, E_new @ P]).astype(np.float32),
        np.concatenate([base.b, fold_in_bias(base, window_counts)]).astype(np.float32),
        np.concatenate([base.counts, window_counts]), dict(base.card),
        recent_timelines(X, catalog, EVAL_TIMELINES, cfg.seed))
    return FoldinResult(model, base, ids.tolist(), stats)


def foldin_card(base_card: dict, result: FoldinResult, source_version: str, views_start: dt.date,
                views_end: dt.date, cfg: PretrainConfig) -> dict:
    """The enlarged model's card: the trained model's, plus what was folded in, from what, when."""
    return {k: v for k, v in base_card.items() if k not in ("foldin", "model_version")} | {
        "items": len(result.model.item_ids),
        "foldin": {"source_model_version": str(source_version), "items": result.items,
                   "views_start": views_start.isoformat(), "views_end": views_end.isoformat(),
                   "min_count": cfg.min_count, **result.stats}}
