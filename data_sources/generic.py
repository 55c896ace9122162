"""Generic importer: CSV or parquet with user, item, timestamp and event-type columns named by the caller."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from data_sources.replay import Interactions, parse_timestamps, require_columns, write_store
from infra import events
from infra.errors import UserError


def generic_interactions(path: Path, user_col: str, item_col: str, ts_col: str, ts_unit: str = "s",
                         event_col: str | None = None, view_values: Sequence[str] = ("view",),
                         click_values: Sequence[str] = ("click",), clicks_are_views: bool = True) -> Interactions:
    """Read a CSV or parquet log; without an event column every row is a view."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no such file: {path}")
    if path.stat().st_size == 0:
        raise UserError(f"file is empty: {path}")
    columns = [c for c in (user_col, item_col, ts_col, event_col) if c]
    try:
        if path.suffix in (".parquet", ".pq"):
            df = pd.read_parquet(path)
        else:
            df = pd.read_csv(path, dtype=str, sep=None, engine="python")
    except Exception as exc:  # noqa: BLE001 - any reader failure is a bad input file
        raise UserError(f"cannot read {path}: {str(exc).splitlines()[0]}") from None
    df = require_columns(df, columns, path)
    if df.empty:
        raise UserError(f"no rows in {path}")
    for col in (user_col, item_col):
        if df[col].isna().any():
            raise UserError(f"{path}: {int(df[col].isna().sum())} missing values in column {col!r}")
    ts = parse_timestamps(df[ts_col], ts_unit, str(path))
    if event_col:
        kind = df[event_col].astype(str)
        is_click = kind.isin(click_values).to_numpy()
        is_view = kind.isin(view_values).to_numpy() | (is_click & clicks_are_views)
        if not (is_view | is_click).any():
            raise UserError(f"{path}: no row has {event_col!r} in {list(view_values) + list(click_values)}")
    else:
        is_view, is_click = np.ones(len(df), bool), np.zeros(len(df), bool)
    return Interactions(df[user_col].astype(str).to_numpy(), df[item_col].astype(str).to_numpy(),
                        ts, is_view, is_click)


def import_generic(path: Path, out: Path, on_day=None, **columns) -> dict:
    """Import a generic log (see ``generic_interactions`` for the column options) into a new event store."""
    events.check_new_output(out)
    return write_store(generic_interactions(path, **columns), out, on_day)
