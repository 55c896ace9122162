"""Loading the window's partitions and the per-day statistics the window suite checks.

Pure pyarrow/pandas, no Great Expectations: the runner turns these into
DataFrames and GX decides pass/fail. Every statistic is computed per (kind,
day) so a failure names the day, and with cost linear in the window's events
(arrow group-bys, no Python loop over rows).

Definitions (also in the suites' notes and ``led validate --help``):

- trailing days of day d: the ``TRAILING_DAYS`` days before d that are on or
  after the store's first day of that kind and whose partition is missing
  (counted as 0 events) or readable with a valid schema;
- a day's volume checks (volume ratio, at least one event, new-item share)
  apply only when it has >= ``MIN_HISTORY_DAYS`` trailing days and their
  median of daily active users is >= ``volume_min_active_users``: with fewer
  users a day's volume is dominated by a handful of people and no ratio bound
  separates a real burst from a broken load;
- volume ratio = rows / median(trailing rows);
- duplicate rate = share of the day's rows whose (user_id, item_id, ts) occurs
  more than once that day (every copy counts);
- new-item share = share of the day's distinct viewed items not viewed on any
  of its trailing days (a bounded look-back keeps the daily cost constant);
- orphan click rate = share of the day's clicks whose item has no view
  anywhere in the window;
- the traffic statistics of ``data_checks.traffic`` (near-duplicates,
  concentration, distribution shift, click-through ratio): same applicability
  as the volume checks, except the near-duplicate rate, which (like the
  duplicate rate) is a property of the day's own events and always applies.

A quarantined day (``infra.events.quarantined_days``) is neither read nor
checked, and is not a trailing day of any other day: its bad data must not
shift the medians the next days are compared with.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from data_checks import traffic
from infra import events

TRAILING_DAYS = 7
MIN_HISTORY_DAYS = 3
CANONICAL = pa.schema([pa.field("user_id", pa.string()), pa.field("item_id", pa.string()),
                       pa.field("ts", pa.timestamp("us", tz="UTC"))])

OK, MISSING, INVALID, BEFORE_STORE, QUARANTINED = "ok", "missing", "invalid", "before_store", "quarantined"


@dataclass
class Partition:
    """One day of one kind as found on disk."""

    kind: str
    day: dt.date
    in_window: bool
    raw: pa.Table | None = None       # as read, before any check (None: missing or unreadable)
    table: pa.Table | None = None     # canonical schema, set once the schema is known to be valid
    read_error: str | None = None
    status: str = MISSING

    @property
    def rows(self) -> int | None:
        if self.status == MISSING:
            return 0
        return self.raw.num_rows if self.raw is not None and self.status != QUARANTINED else None

    @property
    def usable(self) -> bool:
        """Valid and non-empty: its events can feed the traffic statistics."""
        return self.status == OK and self.table.num_rows > 0

    @cached_property
    def item_counts(self) -> tuple[pa.Array, np.ndarray]:
        """Distinct items and their events (one arrow pass, shared by every per-item statistic)."""
        vc = pc.value_counts(self.table.column("item_id").drop_null())
        return vc.field("values"), vc.field("counts").to_numpy()

    @cached_property
    def user_counts(self) -> np.ndarray:
        return pc.value_counts(self.table.column("user_id").drop_null()).field("counts").to_numpy()

    @cached_property
    def active_users(self) -> int | None:
        """Distinct users of the day (0 when missing, None when the schema is invalid)."""
        if self.status == MISSING:
            return 0
        if self.status != OK:
            return None
        return len(self.user_counts)


def read_partition(root: Path, kind: str, day: dt.date, in_window: bool) -> Partition:
    part = Partition(kind, day, in_window)
    folder = events.partition_dir(root, kind, day)
    files = sorted(folder.glob("*.parquet")) if folder.is_dir() else []
    if not files:
        return part
    try:
        part.raw = pa.concat_tables([pq.read_table(f) for f in files], promote_options="permissive")
        part.status = INVALID  # until the schema suite says otherwise
    except (pa.ArrowException, OSError) as exc:
        part.read_error, part.status = f"{type(exc).__name__}: {str(exc).splitlines()[0]}", INVALID
    return part


def canonicalize(part: Partition) -> bool:
    """Cast a partition whose schema passed to the store's schema; False if the values do not fit."""
    try:
        cols = part.raw.select(list(CANONICAL.names))
        part.table = cols.cast(CANONICAL, safe=False)
        part.status = OK
        return True
    except (pa.ArrowException, KeyError) as exc:
        part.read_error = f"cannot cast to the store schema: {str(exc).splitlines()[0]}"
        return False


def load_kind(root: Path, kind: str, run_date: dt.date, window_days: int,
              quarantined: set[dt.date] = frozenset()) -> list[Partition]:
    """Partitions of the window plus the TRAILING_DAYS before it (history for volume and new items)."""
    days = events.window_dates(run_date, window_days + TRAILING_DAYS)
    first_window_day = days[TRAILING_DAYS]
    return [Partition(kind, d, d >= first_window_day, status=QUARANTINED) if d in quarantined
            else read_partition(root, kind, d, d >= first_window_day) for d in days]


def with_day_columns(part: Partition) -> pa.Table:
    """The partition's events plus date, day_start and next_day (for the ts-in-day check)."""
    t, n = part.table, part.table.num_rows
    start = pd.Timestamp(part.day, tz="UTC").value // 1000
    ts_type = pa.timestamp("us", tz="UTC")
    return (t.append_column("date", pa.array([part.day.isoformat()] * n, pa.string()))
             .append_column("day_start", pa.array(np.full(n, start), ts_type))
             .append_column("next_day", pa.array(np.full(n, start + 86_400_000_000), ts_type)))


def _new_item_shares(views: list[Partition]) -> dict[dt.date, float]:
    """Per valid views day: share of its distinct items unseen in its trailing days."""
    frames = []
    for p in views:
        if p.status == OK and p.table.num_rows:
            items = p.item_counts[0]
            frames.append(pd.DataFrame({"day": p.day.toordinal(), "item": items.to_numpy(zero_copy_only=False)}))
    if not frames:
        return {}
    pairs = pd.concat(frames, ignore_index=True).sort_values(["item", "day"], kind="stable")
    previous = pairs.groupby("item", sort=False)["day"].shift(1)
    pairs["new"] = previous.isna() | (pairs["day"] - previous > TRAILING_DAYS)
    share = pairs.groupby("day")["new"].mean()
    return {dt.date.fromordinal(int(d)): round(float(v), 6) for d, v in share.items()}


def _orphan_rates(clicks: list[Partition], views: list[Partition]) -> dict[dt.date, float]:
    viewed = [p.item_counts[0] for p in views if p.in_window and p.status == OK]
    seen = pc.unique(pa.chunked_array(viewed, pa.string())) if viewed else pa.array([], pa.string())
    out = {}
    for p in clicks:
        if p.in_window and p.status == OK and p.table.num_rows:
            orphan = pc.invert(pc.is_in(p.table.column("item_id"), value_set=seen))
            out[p.day] = round(float(pc.sum(orphan).as_py() or 0) / p.table.num_rows, 6)
    return out


def day_summary(parts: dict[str, list[Partition]], settings) -> pd.DataFrame:
    """One row per (kind, window day): the statistics the window suite checks (null = not applicable)."""
    new_items = _new_item_shares(parts["views"])
    orphans = _orphan_rates(parts["clicks"], parts["views"])
    views_by_day = {p.day: p for p in parts["views"]}
    rows = []
    for kind, plist in parts.items():
        present = [p.day for p in plist if p.status != MISSING]
        store_start = min(present) if present else None
        by_day = {p.day: p for p in plist}
        profiles = _Profiles(plist, settings.concentration_top_fraction)
        for p in plist:
            if not p.in_window:
                continue
            repeats = traffic.repeated_rows(p.table, settings.near_duplicate_seconds) if p.usable else None
            row, history = _summary_row(kind, p, by_day, store_start, settings.volume_min_active_users,
                                        new_items.get(p.day), orphans.get(p.day), repeats)
            row |= _traffic_row(kind, p, history, row["volume_checked"], profiles, views_by_day, repeats, settings)
            rows.append(row)
    return pd.DataFrame(rows)


class _Profiles:
    """Each usable partition's ``traffic.DayProfile``, computed on first use (history days are
    shared by up to TRAILING_DAYS window days), items coded in one vocabulary per kind."""

    def __init__(self, plist: list[Partition], fraction: float):
        self.fraction, self._done = fraction, {}
        self.usable = {p.day: p for p in plist if p.usable}
        values = [p.item_counts[0] for p in self.usable.values()]
        vocabulary = pc.unique(pa.chunked_array(values, pa.string())) if values else pa.array([], pa.string())
        # sorted: ties in popularity then break by id, so a day's buckets do not depend on the window
        self.vocabulary = vocabulary.take(pc.sort_indices(vocabulary))

    def __getitem__(self, day: dt.date) -> traffic.DayProfile:
        if day not in self._done:
            p = self.usable[day]
            items, counts = p.item_counts
            codes = pc.index_in(items, value_set=self.vocabulary).to_numpy()
            self._done[day] = traffic.day_profile(p.user_counts, codes, counts, len(self.vocabulary),
                                                  self.fraction)
        return self._done[day]


def _summary_row(kind, p, by_day, store_start, min_users, new_share, orphan_rate, repeats) -> tuple[dict, list]:
    before_store = store_start is None or p.day < store_start
    history = [] if before_store else [
        h for h in (by_day.get(p.day - dt.timedelta(days=k)) for k in range(1, TRAILING_DAYS + 1))
        if h is not None and h.day >= store_start and h.status in (OK, MISSING)
    ]
    med_rows = float(np.median([h.rows for h in history])) if history else None
    med_users = float(np.median([h.active_users for h in history])) if history else None
    enforced = (len(history) >= MIN_HISTORY_DAYS and med_users >= min_users and med_rows > 0
                and p.status != QUARANTINED)
    rows = p.rows
    dup = None if repeats is None else round(repeats[0] / p.table.num_rows, 6)
    return {
        "kind": kind,
        "date": p.day.isoformat(),
        "partition": BEFORE_STORE if before_store and p.status != QUARANTINED else p.status,
        "rows": rows,
        "active_users": p.active_users,
        "history_days": len(history),
        "trailing_median_rows": med_rows,
        "trailing_median_users": med_users,
        "volume_checked": bool(enforced),
        "rows_when_expected": rows if enforced else None,
        "volume_ratio": round(rows / med_rows, 4) if enforced and rows is not None else None,
        "duplicate_rate": dup,
        "new_item_share": new_share if enforced and kind == "views" else None,
        "orphan_click_rate": orphan_rate if kind == "clicks" else None,
    }, history


def _traffic_row(kind, p, history, enforced, profiles: _Profiles, views_by_day, repeats, s) -> dict:
    """The ``data_checks.traffic`` statistics of one (kind, day); None where they do not apply."""
    out = dict.fromkeys(("near_duplicate_rate", "top_user_share_increase", "top_item_share_increase",
                         "events_per_user_ratio", "item_psi", "user_activity_psi", "click_through_ratio"))
    if not p.usable:
        return out
    out["near_duplicate_rate"] = round(repeats[1] / p.table.num_rows, 6)
    past = [profiles[h.day] for h in history if h.usable]
    if not enforced or len(past) < MIN_HISTORY_DAYS:
        return out
    day = profiles[p.day]

    def median(values) -> float:
        return float(np.median(list(values)))

    psi_items = traffic.item_psi(day.items, np.sum([q.items for q in past], axis=0), day.top_items)
    per_user = median(q.events_per_user for q in past)
    out |= {
        "top_user_share_increase": round(day.top_user_share - median(q.top_user_share for q in past), 6),
        "top_item_share_increase": round(day.top_item_share - median(q.top_item_share for q in past), 6),
        "events_per_user_ratio": round(day.events_per_user / per_user, 4) if per_user > 0 else None,
        "item_psi": None if psi_items is None else round(psi_items, 6),
        "user_activity_psi": round(traffic.psi(day.activity, np.mean([q.activity for q in past], axis=0)), 6),
    }
    if kind == "clicks":
        out["click_through_ratio"] = _click_through_ratio(p, [h for h in history if h.usable], views_by_day)
    return out


def _click_through_ratio(clicks: Partition, past: list[Partition], views_by_day: dict) -> float | None:
    """The day's clicks / views over the trailing median of the same (days whose views are usable)."""
    def ctr(c: Partition) -> float | None:
        v = views_by_day.get(c.day)
        return c.table.num_rows / v.table.num_rows if v is not None and v.usable else None

    today = ctr(clicks)
    trailing = [r for r in (ctr(h) for h in past) if r is not None]
    if today is None or len(trailing) < MIN_HISTORY_DAYS:
        return None
    return round(today / float(np.median(trailing)), 4)
