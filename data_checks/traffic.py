"""Statistics for traffic that is well-formed but wrong (every row passes the schema).

Each is computed per (kind, day) from the day's events and its trailing days,
vectorised (numpy / arrow, no Python loop over rows); the window suite then
checks the resulting columns with GX (``data_checks.suites``). Definitions:

- near-duplicate rate: share of the day's rows that repeat the same (user,
  item) more than 0 and at most ``near_duplicate_seconds`` after the pair's
  previous event that day (re-ingestion with shifted times, client retries).
  Exact copies (same ts) are the duplicate check's, not counted here;
- top share: share of the day's events from its top ``concentration_top_fraction``
  of users (items) by events; the check is the increase in points over the
  trailing days' median top share (bots, crawlers, a stuck client);
- events per active user ratio: the day's rows / distinct users, over the
  trailing median of the same;
- item PSI: population stability index of the day's events over popularity
  buckets of the pooled trailing days (``PSI_BUCKETS`` buckets of equal
  trailing traffic, items ranked by trailing events). Items unseen in the
  trailing days are left out (the new-item and orphan-click checks own them).
  Buckets rather than raw item ids: over K items a PSI of raw ids has a noise
  floor of ~K / events, so one threshold would not fit 300 items and 20k items;
- user-activity PSI: PSI of the share of the day's events from each decile of
  its users (least active first) against the trailing days' mean shares: the
  shape of the activity distribution (its level is the events-per-user check);
- click-through ratio: the day's clicks / views over the trailing median of
  the same (views written into clicks, clicks lost).

PSI = sum_b (p_b - q_b) ln(p_b / q_b), shares smoothed by ``PSI_EPSILON``;
the usual reading: < 0.1 stable, 0.1-0.25 moderate, > 0.25 a different population.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

PSI_BUCKETS = 10
ACTIVITY_DECILES = 10
PSI_EPSILON = 1e-4


def id_counts(table: pa.Table, column: str) -> pd.Series:
    """Events per distinct id (index: id), largest first."""
    vc = pc.value_counts(table.column(column).drop_null())
    counts = pd.Series(vc.field("counts").to_numpy(), index=vc.field("values").to_numpy(zero_copy_only=False))
    return counts.sort_values(ascending=False, kind="stable")


def near_duplicate_rows(table: pa.Table, seconds: float) -> int:
    """Rows following the previous event of the same (user, item) by (0, seconds]."""
    valid = pc.and_(pc.and_(pc.is_valid(table.column("user_id")), pc.is_valid(table.column("item_id"))),
                    pc.is_valid(table.column("ts")))
    table = table.filter(valid)  # rows with nulls fail ids_not_null / ts_not_null, not this check
    if table.num_rows < 2:
        return 0
    users = table.column("user_id").dictionary_encode().combine_chunks().indices.to_numpy()
    items = table.column("item_id").dictionary_encode().combine_chunks().indices.to_numpy()
    ts = table.column("ts").cast(pa.int64()).to_numpy()
    pair = users.astype(np.int64) * (int(items.max()) + 1) + items
    order = np.lexsort((ts, pair))
    pair, ts = pair[order], ts[order]
    gap = np.diff(ts)
    same = pair[1:] == pair[:-1]
    return int(np.count_nonzero(same & (gap > 0) & (gap <= seconds * 1_000_000)))


def top_share(counts: pd.Series, fraction: float) -> float:
    """Share of the events from the top ``fraction`` of the ids (counts sorted desc).

    Fractional: the top 1% of 250 users is the top 2 users plus half of the 3rd.
    A quantile, so it does not move when the day has more or fewer ids of the
    same kind (a sale day, a lost segment), unlike the share of a fixed top-k."""
    total = int(counts.sum())
    if total == 0:
        return 0.0
    k = max(1.0, fraction * len(counts))
    whole = int(k)
    top = float(counts.iloc[:whole].sum())
    if whole < len(counts):
        top += (k - whole) * float(counts.iloc[whole])
    return top / total


def top_ids(counts: pd.Series, fraction: float) -> pd.Index:
    """The ids ``top_share`` counts (whole ids, rounded up)."""
    return counts.index[:math.ceil(max(1.0, fraction * len(counts)))]


def psi(p: np.ndarray, q: np.ndarray) -> float:
    """Population stability index of the distribution p against the reference q (counts or shares)."""
    p = np.asarray(p, float)
    q = np.asarray(q, float)
    if p.sum() == 0 or q.sum() == 0:
        return 0.0
    p = p / p.sum() + PSI_EPSILON
    q = q / q.sum() + PSI_EPSILON
    return float(np.sum((p - q) * np.log(p / q)))


def item_psi(day: pd.Series, reference: pd.Series, exclude: pd.Index) -> float | None:
    """PSI of the day's item counts over equal-traffic popularity buckets of the reference counts.

    ``exclude`` (the day's top items) is left out of both sides: a surge on a few
    items is the concentration check's; this one looks at the rest of the catalog."""
    reference = reference[(reference > 0) & ~reference.index.isin(exclude)]
    day = day[~day.index.isin(exclude)]
    reference = reference.sort_values(ascending=False, kind="stable")
    if reference.empty:
        return None
    before = (reference.cumsum() - reference) / reference.sum()  # traffic share of the more popular items
    bucket = pd.Series(np.minimum((before.to_numpy() * PSI_BUCKETS).astype(int), PSI_BUCKETS - 1),
                       index=reference.index)
    seen = day[day.index.isin(bucket.index)]
    if seen.empty:
        return None
    p = np.bincount(bucket[seen.index].to_numpy(), weights=seen.to_numpy(), minlength=PSI_BUCKETS)
    q = np.bincount(bucket.to_numpy(), weights=reference.to_numpy(), minlength=PSI_BUCKETS)
    return psi(p, q)


def activity_deciles(user_counts: pd.Series) -> np.ndarray:
    """Share of the day's events from each decile of its users, least active first (the Lorenz
    curve in ACTIVITY_DECILES steps, users interpolated).

    Scale-free: it is the shape of the activity distribution, not its level (events per
    active user is its own check), so a uniform change of every user's activity (a
    double-logging client) fails one check, not two; and continuous in the counts, unlike
    histogram bins of small integer counts (clicks: ~2 per user), whose edges flip users
    between bins from one day to the next."""
    if user_counts.empty:
        return np.full(ACTIVITY_DECILES, 1.0 / ACTIVITY_DECILES)
    counts = np.sort(user_counts.to_numpy().astype(float))
    cumulative = np.concatenate([[0.0], np.cumsum(counts)]) / counts.sum()
    at = np.interp(np.linspace(0, len(counts), ACTIVITY_DECILES + 1), np.arange(len(counts) + 1), cumulative)
    return np.diff(at)
