"""Item-item co-occurrence and PMI from views, as Spark jobs over item row blocks.

Definitions (docs/architecture.md, "Pre-training"; Levy, Goldberg & Dagan 2015 for the smoothing):

- A user's timeline is the *set* of items they viewed in the window. Timelines
  longer than ``max_timeline`` distinct items keep the most recently viewed
  ``max_timeline`` items (a seeded random subset when there are no timestamps);
  the number of capped users is reported. This bounds the co-occurrence work,
  which is quadratic in the timeline length, by ``users · max_timeline²``.
- ``c_ij`` = number of users whose timeline holds both i and j; ``c_ii = 0``.
- ``r_i = Σ_j c_ij``. Items with ``r_i < min_count`` are dropped (rows and
  columns), then the marginals are recomputed on what is left (``r'``); items
  left with ``r'_i = 0`` are dropped too (they have no kept partner).
- ``PMI_ij = max(0, log c_ij − log r'_i − α log r'_j + log Σ_k r'_k^α)``, i.e.
  ``log P(i, j) / (P(i) P_α(j))`` with the context distribution raised to
  ``α`` (``pmi_smoothing``; 0.9 by default: word2vec's 0.75 measured worse on
  ML-100K) (the normaliser ``T = Σ c`` cancels). deepr's movielens example
  normalises ``P_α`` by ``Σ_ij c_ij^α`` instead; we use the textbook ``Σ_k r_k^α``.
  Rows are "items", columns "contexts"; with α < 1 the matrix is not symmetric.

How it is distributed: items get a dense index (sorted ids, a broadcast
join); the index range is cut into ``B`` contiguous row blocks. One shuffle
brings each user's raw views to one partition, where numpy dedupes, caps and
routes the timelines (``mapInArrow``). Each capped timeline is sent to every
block it touches, so block b computes its rows of the co-occurrence matrix
exactly, ``C_b = X[:, b]ᵀ X`` over the users it received (a local scipy sparse
product), with no reduce over partial sums: the second shuffle carries
``Σ_u L_u · min(B, L_u)`` item indices, never item pairs. Because C is
symmetric, the same block also yields its rows of PMIᵀ, which the randomized
SVD needs for products with Aᵀ.

Memory model (U users, L̄ mean capped timeline length, T = max_timeline, I
items, B blocks, nnz = non-zeros of C):
- driver: item ids and counts, marginals and masks, O(I) (~ 50·I bytes).
- shuffles: the raw views (user id, item index, time: ~30 bytes a view), then
  the timelines ``4 · U · L̄ · min(B, L̄)`` bytes.
- one routing task: its share of the views as numpy arrays (~40 bytes a view).
- one block task: its users' timelines plus ``C_b`` (12 bytes per non-zero)
  and the transient product, bounded by ``Σ_u L_u²/B`` multiply-adds.
- cached: C blocks while PMI is built (12 · nnz), then PMI and PMIᵀ
  (2 · 8 · nnz, float32 values + int32 indices). In memory only: a block that
  does not fit is dropped and recomputed on its next use. Spilling to disk
  (MEMORY_AND_DISK) avoids the recompute but ran a 6 GB driver out of heap at
  4x ML-20M (twice, in two sessions), so it is not used.

Passes over C: one for the row sums ``r``; ``r'`` needs only the blocks that
hold the dropped items (C is symmetric, so their columns are their rows); one
each for PMI and PMIᵀ.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from infra.settings import default
from models.rsvd import BlockSparse, even_offsets

log = logging.getLogger(__name__)


@dataclass
class PMIResult:
    matrix: BlockSparse | sp.csr_matrix  # PPMI over the kept items (Spark row blocks, or one CSR locally)
    item_ids: np.ndarray         # kept item ids, sorted
    counts: np.ndarray           # int64 views per kept item
    frobenius_sq: float          # ‖PPMI‖²_F, exact
    sizes: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    marginals: np.ndarray | None = None  # float64 r'_i over kept items: what a folded-in row is scored against


# --- Spark side: timelines -------------------------------------------------------

def item_counts(views):
    """Sorted item ids and their view counts (one small collect, O(I))."""
    from pyspark.sql import functions as F

    pdf = views.groupBy("item_id").agg(F.count(F.lit(1)).alias("n")).toPandas()
    order = np.argsort(pdf["item_id"].to_numpy().astype(str), kind="stable")
    ids = pdf["item_id"].to_numpy().astype(str)[order]
    return ids, pdf["n"].to_numpy().astype(np.int64)[order]


def indexed_views(spark, views, item_ids: np.ndarray, seed: int):
    """DataFrame (user_id, idx, key): item index by broadcast join; key orders a user's items.

    key is the view time (later = more recent = kept first by the cap); without
    timestamps it is a seeded hash of (user, item), i.e. a random but
    reproducible order.
    """
    import pandas as pd
    from pyspark.sql import functions as F

    index = spark.createDataFrame(pd.DataFrame({"item_id": item_ids, "idx": np.arange(len(item_ids), dtype=np.int32)}))
    joined = views.join(F.broadcast(index), "item_id")
    key = F.unix_micros(F.col("ts")) if "ts" in views.columns else F.xxhash64("user_id", "idx", F.lit(seed))
    return joined.select("user_id", "idx", key.alias("key"))


def capped_timelines(user: np.ndarray, item: np.ndarray, key: np.ndarray, max_timeline: int):
    """Per-user distinct items, most recent (largest key) first, capped at max_timeline.

    Returns (lengths per user after the cap, concatenated items, distinct items per user before the cap).
    """
    n_items = int(item.max()) + 1 if len(item) else 1
    pair = user.astype(np.int64) * n_items + item
    order = np.lexsort((-key, pair))  # by pair, newest view first
    pair, key = pair[order], key[order]
    first = np.r_[True, pair[1:] != pair[:-1]]
    pair, key = pair[first], key[first]
    user, item = pair // n_items, (pair % n_items).astype(np.int32)
    order = np.lexsort((-key, user))  # by user, newest item first
    user, item = user[order], item[order]
    starts = np.flatnonzero(np.r_[True, user[1:] != user[:-1]])
    distinct = np.diff(np.r_[starts, len(user)])
    rank = np.arange(len(user)) - np.repeat(starts, distinct)
    kept = rank < max_timeline
    return np.minimum(distinct, max_timeline), item[kept], distinct


def _route_to_blocks(offsets: np.ndarray, max_timeline: int, stats_acc):
    """mapInArrow function over users' views: dedupe, cap, then route each timeline to its blocks.

    Output rows (block, payload): payload is int32 [n_users, lengths..., items...]
    holding every timeline that touches the block. Statistics go to an accumulator.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    n_blocks = len(offsets) - 1

    def route(batches):
        batches = [b for b in batches if b.num_rows]
        if not batches:
            return
        table = pa.Table.from_batches(batches)
        user = pc.dictionary_encode(table.column("user_id")).combine_chunks().indices.to_numpy()
        length, flat, distinct = capped_timelines(
            user, table.column("idx").to_numpy().astype(np.int32), table.column("key").to_numpy(), max_timeline)
        del table, user
        stats_acc.add(np.array([len(length), distinct.sum(), np.sum(distinct > max_timeline),
                                np.sum(length.astype(np.int64) ** 2)], dtype=np.int64))
        length = length.astype(np.int32)
        owner = np.repeat(np.arange(len(length)), length)
        # touches[u, b]: user u's timeline holds an item of block b (users × blocks booleans).
        touches = np.zeros((len(length), n_blocks), dtype=bool, order="F")  # columns contiguous
        touches[owner, np.searchsorted(offsets, flat, side="right") - 1] = True
        out_blocks, out_payloads = [], []
        for b in np.flatnonzero(touches.any(axis=0)):
            users = touches[:, b]
            out_blocks.append(int(b))
            head = np.array([users.sum()], dtype=np.int32)
            out_payloads.append(np.concatenate([head, length[users], flat[users[owner]]]).tobytes())
        yield pa.RecordBatch.from_arrays(
            [pa.array(out_blocks, pa.int32()), pa.array(out_payloads, pa.binary())],
            names=["block", "payload"])

    return route


def _cooccurrence_block(offsets: np.ndarray, n_items: int):
    """mapPartitions function: rows of C for one block from the timelines routed to it."""

    def compute(part):
        lengths, flats, block = [], [], None
        for b, payload in part:
            block = b
            arr = np.frombuffer(payload, dtype=np.int32)
            n = int(arr[0])
            lengths.append(arr[1:1 + n])
            flats.append(arr[1 + n:])
        if block is None:
            return
        lo, hi = int(offsets[block]), int(offsets[block + 1])
        length = np.concatenate(lengths)
        flat = np.concatenate(flats)
        indptr = np.concatenate([[0], np.cumsum(length, dtype=np.int64)])
        x = sp.csr_matrix((np.ones(len(flat), dtype=np.int32), flat, indptr), shape=(len(length), n_items))
        xb = x[:, lo:hi].T.tocsr()
        c = (xb @ x).tocsr()
        # Zero diagonal: entry (r, lo + r).
        rows = np.repeat(np.arange(c.shape[0]), np.diff(c.indptr))
        c.data[c.indices == rows + lo] = 0
        c.eliminate_zeros()
        yield block, c

    return compute


def cooccurrence_blocks(spark, views_idx, offsets: np.ndarray, n_items: int, max_timeline: int, stats_acc):
    """Cached RDD of (block, C_b CSR int32 (rows of block b) × I).

    One shuffle of the raw (user, item, key) rows brings each user's views to one
    partition, then a second, much smaller one sends the capped timelines to blocks.
    """
    from pyspark.sql.types import BinaryType, IntegerType, StructField, StructType

    n_blocks = len(offsets) - 1
    schema = StructType([StructField("block", IntegerType()), StructField("payload", BinaryType())])
    partitions = int(spark.conf.get("spark.sql.shuffle.partitions"))
    routed = views_idx.repartition(partitions, "user_id").mapInArrow(
        _route_to_blocks(offsets, max_timeline, stats_acc), schema)
    return (
        routed.rdd.map(lambda row: (int(row[0]), bytes(row[1])))
        .partitionBy(n_blocks, lambda b: b)
        .mapPartitions(_cooccurrence_block(offsets, n_items), preservesPartitioning=True)
        .cache()
    )


class _ArrayAccumulator:
    """AccumulatorParam for fixed-size int64 numpy arrays (timeline statistics)."""

    def zero(self, value):
        return np.zeros_like(value)

    def addInPlace(self, a, b):
        a += b
        return a


# --- PMI ------------------------------------------------------------------------

def log_normaliser(marginals: np.ndarray, alpha: float) -> float:
    """``log Σ_k r'_k^α``, the smoothed context distribution's normaliser."""
    return float(np.log(np.sum(np.asarray(marginals, dtype=np.float64) ** alpha)))


def ppmi_values(counts: np.ndarray, log_r_row: np.ndarray, log_r_col: np.ndarray, log_z: float, alpha: float,
                transpose: bool = False) -> np.ndarray:
    """``max(0, log c_ij − log r'_i − α log r'_j + log Σ_k r'_k^α)`` per non-zero (float32); ``transpose``:
    the entries of PPMIᵀ (the α on the row side). The one PMI formula: the Spark blocks and the
    fold-in of new items (models/foldin.py) both score through it."""
    row_w, col_w = (alpha, 1.0) if transpose else (1.0, alpha)
    val = np.log(np.asarray(counts, dtype=np.float64)) - row_w * log_r_row - col_w * log_r_col + log_z
    return np.maximum(val, 0).astype(np.float32)


def kept_items(r: np.ndarray, sums_over, min_count: int, min_items: int) -> tuple[np.ndarray, np.ndarray]:
    """(mask of kept items, their marginals r' as float64): items with ``r_i >= min_count``, then
    ``r'`` = row sums over the kept columns (``sums_over(mask)``), minus items left with ``r' = 0``."""
    keep = r >= min_count
    r_kept = sums_over(keep) * keep
    keep &= r_kept > 0
    if keep.sum() < max(min_items, 2):
        raise ValueError(f"only {int(keep.sum())} items have at least min_count={min_count} co-occurrences, "
                         f"{max(min_items, 2)} are needed")
    return keep, r_kept[keep].astype(np.float64)


def _row_sums(blocks, offsets: np.ndarray, n_items: int) -> tuple[np.ndarray, int]:
    """(Σ_j c_ij for every item, total nnz)."""
    def sums(kv):
        b, c = kv
        return b, np.asarray(c.sum(axis=1, dtype=np.int64)).ravel(), c.nnz

    out = np.zeros(n_items, dtype=np.int64)
    nnz = 0
    for b, s, block_nnz in blocks.map(sums).collect():
        out[offsets[b]:offsets[b + 1]] = s
        nnz += block_nnz
    return out, nnz


def _sums_over_kept(sc, blocks, offsets: np.ndarray, r: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """``Σ_{j kept} c_ij`` for every item without a pass over all of C: C is symmetric, so the dropped
    items' columns are their rows, ``r − Σ_{d dropped} C[d, :]``, read from the blocks that hold them
    (block b is partition b)."""
    dropped = np.flatnonzero(~keep)
    if len(dropped) == 0:
        return r.copy()
    partitions = np.unique(np.searchsorted(offsets, dropped, side="right") - 1).tolist()
    dropped_bc = sc.broadcast(dropped)

    def dropped_rows(kv_iter):
        for b, c in kv_iter:
            lo, hi = offsets[b], offsets[b + 1]
            local = dropped_bc.value[(dropped_bc.value >= lo) & (dropped_bc.value < hi)] - lo
            yield np.asarray(c[local].sum(axis=0, dtype=np.int64)).ravel()

    return r - np.sum(sc.runJob(blocks, dropped_rows, partitions), axis=0, dtype=np.int64)


def _pmi_blocks(c_blocks, offsets, kept_offsets, keep_bc, log_r_bc, log_z: float, alpha: float,
                transpose: bool):
    """Rows of PPMI (or of PPMIᵀ) over kept items, from the cached C blocks."""

    def build(kv):
        b, c = kv
        keep = keep_bc.value
        lo, hi = int(offsets[b]), int(offsets[b + 1])
        c = c[np.flatnonzero(keep[lo:hi])][:, np.flatnonzero(keep)].tocsr()
        log_r = log_r_bc.value  # over kept items, in kept order
        rows = int(kept_offsets[b]) + np.repeat(np.arange(c.shape[0]), np.diff(c.indptr))
        val = ppmi_values(c.data, log_r[rows], log_r[c.indices], log_z, alpha, transpose)
        c = sp.csr_matrix((val, c.indices, c.indptr), shape=c.shape)
        c.eliminate_zeros()
        return b, c

    return c_blocks.map(build)


def build_pmi(spark, views, min_count: int = default("min_count"), smoothing: float = default("pmi_smoothing"),
              max_timeline: int = default("max_timeline"), seed: int = default("seed"),
              n_blocks: int | None = None, min_items: int = 2) -> PMIResult:
    """Distributed PPMI of the item co-occurrence of ``views`` (user_id, item_id[, ts])."""
    import time

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    all_ids, all_counts = item_counts(views)
    n_items = len(all_ids)
    timings["item_index"] = time.perf_counter() - t0
    if n_items < max(min_items, 1):
        raise ValueError(f"only {n_items} distinct items in the views, {max(min_items, 1)} are needed")

    t0 = time.perf_counter()
    sc = spark.sparkContext
    if n_blocks is None:
        n_blocks = max(int(spark.conf.get("spark.sql.shuffle.partitions")), math.ceil(n_items / 2500))
    offsets = even_offsets(n_items, n_blocks)
    stats_acc = sc.accumulator(np.zeros(4, dtype=np.int64), _ArrayAccumulator())
    c_blocks = cooccurrence_blocks(spark, indexed_views(spark, views, all_ids, seed), offsets, n_items,
                                   max_timeline, stats_acc)
    r, nnz = _row_sums(c_blocks, offsets, n_items)
    n_users, pairs, capped, work = (int(v) for v in stats_acc.value)
    if capped:
        log.warning("capped %d of %d timelines to their %d most recent items", capped, n_users, max_timeline)
    timings["cooccurrence"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    try:
        keep, r_kept = kept_items(r, lambda mask: _sums_over_kept(sc, c_blocks, offsets, r, mask),
                                  min_count, min_items)
    except ValueError:
        c_blocks.unpersist()
        raise
    log_r = np.log(r_kept)
    log_z = log_normaliser(r_kept, smoothing)
    keep_bc, log_r_bc = sc.broadcast(keep), sc.broadcast(log_r)
    kept_offsets = np.concatenate([[0], np.cumsum([keep[offsets[b]:offsets[b + 1]].sum() for b in range(len(offsets) - 1)])])
    rows, cols = (_pmi_blocks(c_blocks, offsets, kept_offsets, keep_bc, log_r_bc, log_z, smoothing, transposed)
                  .cache() for transposed in (False, True))
    pmi_nnz, frobenius_sq = rows.map(
        lambda kv: (kv[1].nnz, float(np.square(kv[1].data, dtype=np.float64).sum()))
    ).reduce(lambda x, y: (x[0] + y[0], x[1] + y[1]))
    cols.count()  # materialise before C is dropped
    c_blocks.unpersist()
    timings["pmi"] = time.perf_counter() - t0

    sizes = {
        "users": n_users, "items_in_input": n_items, "items": int(keep.sum()),
        "dropped_items": int(n_items - keep.sum()), "views": int(all_counts.sum()),
        "user_item_pairs": pairs, "capped_users": capped,
        "max_timeline": max_timeline, "cooccurrence_work": work,
        "cooccurrence_nnz": nnz, "pmi_nnz": pmi_nnz, "blocks": len(offsets) - 1,
    }
    matrix = BlockSparse(rows, cols, kept_offsets.astype(np.int64), kept_offsets.astype(np.int64))
    return PMIResult(matrix, all_ids[keep], all_counts[keep], float(frobenius_sq), sizes, timings, marginals=r_kept)


# --- local engine ---------------------------------------------------------------

def build_pmi_local(views, min_count: int = default("min_count"), smoothing: float = default("pmi_smoothing"),
                    max_timeline: int = default("max_timeline"), min_items: int = 2) -> PMIResult:
    """The same PPMI in one process from a pyarrow table of views (user_id, item_id, ts): the local
    pre-training engine for windows small enough that Spark's job overheads dominate (settings
    ``pretrain_engine``, ``pretrain_local_max_views``; docs/architecture.md, "Pre-training").
    The timelines, the item selection and the PMI formula are the Spark engine's functions; ``matrix``
    is a scipy CSR instead of Spark row blocks."""
    import time

    import pyarrow.compute as pc

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    items = pc.dictionary_encode(views.column("item_id")).combine_chunks()
    ids = np.asarray(items.dictionary.to_pylist(), dtype=str)
    order = np.argsort(ids, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    item = rank[items.indices.to_numpy()].astype(np.int32)
    all_ids, all_counts = ids[order], np.bincount(item, minlength=len(ids)).astype(np.int64)
    n_items = len(all_ids)
    timings["item_index"] = time.perf_counter() - t0
    if n_items < max(min_items, 1):
        raise ValueError(f"only {n_items} distinct items in the views, {max(min_items, 1)} are needed")

    t0 = time.perf_counter()
    user = pc.dictionary_encode(views.column("user_id")).combine_chunks().indices.to_numpy()
    key = views.column("ts").cast("int64").to_numpy()
    length, flat, distinct = capped_timelines(user, item, key, max_timeline)
    indptr = np.concatenate([[0], np.cumsum(length, dtype=np.int64)])
    x = sp.csr_matrix((np.ones(len(flat), dtype=np.int32), flat, indptr), shape=(len(length), n_items))
    c = (x.T @ x).tocsr()
    c.setdiag(0)
    c.eliminate_zeros()
    r = np.asarray(c.sum(axis=1)).ravel().astype(np.int64)
    timings["cooccurrence"] = time.perf_counter() - t0
    capped = int(np.sum(distinct > max_timeline))
    if capped:
        log.warning("capped %d of %d timelines to their %d most recent items", capped, len(length), max_timeline)

    t0 = time.perf_counter()
    keep, r_kept = kept_items(r, lambda mask: c @ mask.astype(np.int64), min_count, min_items)
    kept = np.flatnonzero(keep)
    ck = c[kept][:, kept].tocsr()
    log_r = np.log(r_kept)
    rows = np.repeat(np.arange(ck.shape[0]), np.diff(ck.indptr))
    val = ppmi_values(ck.data, log_r[rows], log_r[ck.indices], log_normaliser(r_kept, smoothing), smoothing)
    matrix = sp.csr_matrix((val, ck.indices, ck.indptr), shape=ck.shape)
    matrix.eliminate_zeros()
    timings["pmi"] = time.perf_counter() - t0

    sizes = {
        "users": int(len(length)), "items_in_input": n_items, "items": int(keep.sum()),
        "dropped_items": int(n_items - keep.sum()), "views": int(all_counts.sum()),
        "user_item_pairs": int(distinct.sum()), "capped_users": capped,
        "max_timeline": max_timeline, "cooccurrence_work": int(np.sum(length.astype(np.int64) ** 2)),
        "cooccurrence_nnz": int(c.nnz), "pmi_nnz": int(matrix.nnz), "blocks": 1,
    }
    frobenius_sq = float(np.square(matrix.data, dtype=np.float64).sum())
    return PMIResult(matrix, all_ids[keep], all_counts[keep], frobenius_sq, sizes, timings, marginals=r_kept)
