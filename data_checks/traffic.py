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
  trailing traffic, items ranked by trailing events, ties by id). Left out:
  items unseen in the trailing days (the new-item and orphan-click checks own
  them) and the day's top items (the concentration check owns them).
  Buckets rather than raw item ids: over K items a PSI of raw ids has a noise
  floor of ~K / events, so one threshold would not fit 300 items and 20k items;
- user-activity PSI: PSI of the share of the day's events from each decile of
  its users (least active first; its top users left out, they are the
  concentration check's) against the trailing days' mean shares: the shape of
  the activity distribution (its level is the events-per-user check);
- click-through ratio: the day's clicks / views over the trailing median of
  the same (views written into clicks, clicks lost).

PSI = sum_b (p_b - q_b) ln(p_b / q_b), shares smoothed by ``PSI_EPSILON``.
Over population shares the usual reading is < 0.1 stable, > 0.25 a different
population; over decile shares of events (user activity) values are much
smaller. The thresholds are set from clean days (benchmarks/README.md).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

PSI_BUCKETS = 10
ACTIVITY_DECILES = 10
PSI_EPSILON = 1e-4
GONE_EXPECTED = 5.0  # an item absent from a day where the reference expects >= 5 events is gone (P(0) < 1%)


def repeated_rows(table: pa.Table, seconds: float) -> tuple[int, int]:
    """(exact, near) repeats of the day's events, from one sort by (user, item, ts).

    exact: rows whose (user, item, ts) occurs more than once (every copy counts);
    near: rows following the previous event of the same (user, item) by (0, seconds].
    Null ids and times are kept (as their own code), so nulls group as they would in a
    group-by; a null time is never near anything."""
    if table.num_rows < 2:
        return 0, 0

    def codes(name: str) -> np.ndarray:
        encoded = table.column(name).dictionary_encode().combine_chunks().indices
        return pc.fill_null(encoded, -1).to_numpy().astype(np.int64) + 1

    users, items = codes("user_id"), codes("item_id")
    ts = pc.fill_null(table.column("ts").cast(pa.int64()), np.iinfo(np.int64).min).to_numpy()
    pair = users * (int(items.max()) + 1) + items
    order = np.lexsort((ts, pair))
    pair, ts = pair[order], ts[order]
    same = pair[1:] == pair[:-1]
    gap = np.diff(ts)  # wraps for a null (min int64) time: harmless, only gaps in (0, seconds] count
    copy = same & (gap == 0)
    exact = np.count_nonzero(np.concatenate([[False], copy]) | np.concatenate([copy, [False]]))
    near = np.count_nonzero(same & (gap > 0) & (gap <= seconds * 1_000_000))
    return int(exact), int(near)


def top_count(n_ids: int, fraction: float) -> float:
    """How many ids the top ``fraction`` is (fractional, at least one)."""
    return max(1.0, fraction * n_ids)


def top_share(counts: np.ndarray, fraction: float) -> float:
    """Share of the events from the top ``fraction`` of the ids (``counts`` sorted largest first).

    Fractional: the top 1% of 250 users is the top 2 users plus half of the 3rd.
    A quantile, so it does not move when the day has more or fewer ids of the
    same kind (a sale day, a lost segment), unlike the share of a fixed top-k."""
    total = float(counts.sum())
    if total == 0:
        return 0.0
    k = top_count(len(counts), fraction)
    whole = int(k)
    top = float(counts[:whole].sum())
    if whole < len(counts):
        top += (k - whole) * float(counts[whole])
    return top / total


@dataclass
class DayProfile:
    """What the traffic checks need of one (kind, day), computed once per partition."""

    rows: int
    users: int
    top_user_share: float
    top_item_share: float
    activity: np.ndarray        # activity_deciles of the users outside the top ones
    items: np.ndarray           # events per item of the kind's vocabulary (dense)
    top_items: np.ndarray       # vocabulary indices of the items top_item_share counts

    @property
    def events_per_user(self) -> float:
        return self.rows / self.users if self.users else 0.0  # every user id null: ids_not_null fails it


def day_profile(user_counts: np.ndarray, item_codes: np.ndarray, item_counts: np.ndarray, vocabulary_size: int,
                fraction: float) -> DayProfile:
    """Profile of a day from its events per user and per item (``item_codes`` index the kind's vocabulary)."""
    users = np.sort(user_counts)[::-1]
    order = np.argsort(-item_counts, kind="stable")
    top_users = math.ceil(top_count(len(users), fraction))
    return DayProfile(
        rows=int(users.sum()), users=len(users),
        top_user_share=top_share(users, fraction), top_item_share=top_share(item_counts[order], fraction),
        activity=activity_deciles(users[top_users:]),  # the top users are the concentration check's
        items=np.bincount(item_codes, weights=item_counts, minlength=vocabulary_size),
        top_items=item_codes[order[:math.ceil(top_count(len(order), fraction))]])


def psi(p: np.ndarray, q: np.ndarray) -> float:
    """Population stability index of the distribution p against the reference q (counts or shares)."""
    p = np.asarray(p, float)
    q = np.asarray(q, float)
    if p.sum() == 0 or q.sum() == 0:
        return 0.0
    p = p / p.sum() + PSI_EPSILON
    q = q / q.sum() + PSI_EPSILON
    return float(np.sum((p - q) * np.log(p / q)))


def item_psi(day: np.ndarray, reference: np.ndarray, exclude: np.ndarray) -> float | None:
    """PSI of the day's item counts over equal-traffic popularity buckets of the reference counts.

    Both are dense over the same vocabulary. ``exclude`` (the day's top items) is left out of
    both sides: a surge on a few items is the concentration check's; this one looks at the
    rest of the catalog. Items gone from the day although the reference expects at least
    ``GONE_EXPECTED`` events of them (retired, out of stock) are left out too: that is catalog
    churn, not a shifted distribution. Without this an ML-20M-size clean window (20k items, 1%
    retired a day) failed after top items retired (PSI 0.73 against 0.3): with the day's top items left out,
    the reference's top bucket held only the retired ones."""
    expected = reference * (day.sum() / max(reference.sum(), 1e-12))
    keep = (reference > 0) & ~((day == 0) & (expected >= GONE_EXPECTED))
    keep[exclude] = False
    reference, day = reference[keep], day[keep]
    if reference.size == 0 or day.sum() == 0:
        return None
    order = np.argsort(-reference, kind="stable")
    ranked = reference[order]
    before = (np.cumsum(ranked) - ranked) / ranked.sum()  # traffic share of the more popular items
    bucket = np.empty(len(order), int)
    bucket[order] = np.minimum((before * PSI_BUCKETS).astype(int), PSI_BUCKETS - 1)
    return psi(np.bincount(bucket, weights=day, minlength=PSI_BUCKETS),
               np.bincount(bucket, weights=reference, minlength=PSI_BUCKETS))


def activity_deciles(user_counts: np.ndarray) -> np.ndarray:
    """Share of the day's events from each decile of its users, least active first (the Lorenz
    curve in ACTIVITY_DECILES steps, users interpolated).

    Scale-free: it is the shape of the activity distribution, not its level (events per
    active user is its own check), so a uniform change of every user's activity (a
    double-logging client) fails one check, not two; and continuous in the counts, unlike
    histogram bins of small integer counts (clicks: ~2 per user), whose edges flip users
    between bins from one day to the next."""
    if len(user_counts) == 0:
        return np.full(ACTIVITY_DECILES, 1.0 / ACTIVITY_DECILES)
    counts = np.sort(np.asarray(user_counts, float))
    cumulative = np.concatenate([[0.0], np.cumsum(counts)]) / counts.sum()
    at = np.interp(np.linspace(0, len(counts), ACTIVITY_DECILES + 1), np.arange(len(counts) + 1), cumulative)
    return np.diff(at)
