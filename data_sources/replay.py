"""Replay interaction logs into the event store (shared by the importers).

Events are replayed by timestamp into daily UTC partitions. The whole store is
written to a temporary folder and renamed into place, so a failed import
leaves nothing behind.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa

from infra import events
from infra.errors import UserError


@dataclass(frozen=True)
class Interactions:
    """Raw interactions with UTC timestamps; ``is_view``/``is_click`` flag each row."""

    user_id: np.ndarray
    item_id: np.ndarray
    ts: pd.Series  # datetime64[ns, UTC]
    is_view: np.ndarray
    is_click: np.ndarray


def require_columns(df: pd.DataFrame, columns: Sequence[str], source: Path) -> pd.DataFrame:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise UserError(f"{source}: missing column(s) {', '.join(missing)}; found {', '.join(map(str, df.columns))}")
    return df


def parse_timestamps(values: pd.Series, unit: str, source: str) -> pd.Series:
    """Timestamps from numbers (unit s/ms/us) or ISO strings; UserError naming bad values."""
    try:
        if unit == "iso":
            ts = pd.to_datetime(values, utc=True, errors="coerce", format="ISO8601")
        else:
            ts = pd.to_datetime(pd.to_numeric(values, errors="coerce"), unit=unit, utc=True, errors="coerce")
    except (ValueError, OverflowError) as exc:
        raise UserError(f"{source}: unparsable timestamps ({exc})") from None
    bad = ts.isna() & values.notna()
    if bad.any() or ts.isna().any():
        example = values[ts.isna()].head(3).tolist()
        raise UserError(f"{source}: {int(ts.isna().sum())} unparsable or missing timestamps, e.g. {example}")
    return ts


def write_store(inter: Interactions, out: Path,
                on_day: Callable[[dt.date, int, int], None] | None = None) -> dict:
    """Replay interactions into daily partitions of a new event store at ``out``."""
    naive_utc = pd.DatetimeIndex(inter.ts).tz_convert("UTC").tz_localize(None).to_numpy()
    order = np.argsort(naive_utc, kind="stable")
    ts = naive_utc[order]
    user, item = inter.user_id[order], inter.item_id[order]
    is_view, is_click = inter.is_view[order], inter.is_click[order]
    day = ts.astype("datetime64[D]")
    boundaries = np.flatnonzero(np.diff(day.astype(np.int64))) + 1
    starts, ends = np.r_[0, boundaries], np.r_[boundaries, len(ts)]
    totals = {"views": 0, "clicks": 0, "days": 0}
    with events.staging_dir(out) as tmp:
        for s, e in zip(starts, ends):
            date = dt.date.fromisoformat(str(day[s]))
            rows = slice(s, e)
            for kind, mask in (("views", is_view[rows]), ("clicks", is_click[rows])):
                table = events.to_table(user[rows][mask], item[rows][mask],
                                        pa.array(ts[rows][mask], pa.timestamp("ns")))
                events.write_day(tmp, kind, date, table)
                totals[kind] += table.num_rows
            totals["days"] += 1
            if on_day:
                on_day(date, totals["days"], len(starts))
    first, last = (str(day[0]), str(day[-1])) if len(day) else (None, None)
    return totals | {"users": int(len(np.unique(user))), "items": int(len(np.unique(item))),
                     "start": first, "end": last}
