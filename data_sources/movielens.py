"""MovieLens importer: ML-100K (``u.data`` or RecBole ``ml-100k.inter``), ML-1M
(``ratings.dat``), ML-20M/25M/latest (``ratings.csv``).

Every rating is a view; a rating >= ``click_threshold`` is also a click (same
timestamp), replayed by timestamp into daily partitions.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from data_sources.replay import Interactions, require_columns, write_store
from infra import events
from infra.errors import UserError

MOVIELENS_FILES = ("ml-100k.inter", "u.data", "ratings.dat", "ratings.csv")


def find_movielens_file(path: Path) -> Path:
    path = Path(path)
    if path.is_file():
        return path
    if not path.exists():
        raise UserError(f"no such file or folder: {path}")
    for name in MOVIELENS_FILES:
        if (path / name).is_file():
            return path / name
    raise UserError(f"no MovieLens ratings file in {path} (looked for {', '.join(MOVIELENS_FILES)})")


def read_movielens(path: Path) -> pd.DataFrame:
    """Ratings as a DataFrame with columns user_id, item_id, rating, timestamp (unix seconds)."""
    file = find_movielens_file(path)
    names = ["user_id", "item_id", "rating", "timestamp"]
    dtypes = {"user_id": str, "item_id": str, "rating": float, "timestamp": float}
    if file.stat().st_size == 0:
        raise UserError(f"file is empty: {file}")
    try:
        if file.name == "ratings.dat":
            df = pd.read_csv(file, sep="::", engine="python", names=names, dtype=dtypes)
        elif file.name.endswith(".inter"):
            df = pd.read_csv(file, sep="\t", dtype=str)
            df.columns = [c.split(":")[0] for c in df.columns]
            df = require_columns(df, names, file).astype(dtypes)
        elif file.suffix == ".csv":
            df = pd.read_csv(file, dtype=str).rename(columns={"userId": "user_id", "movieId": "item_id"})
            df = require_columns(df, names, file).astype(dtypes)
        else:  # u.data: tab-separated, no header
            df = pd.read_csv(file, sep="\t", names=names, dtype=dtypes)
    except (ValueError, pd.errors.ParserError) as exc:
        raise UserError(f"cannot parse {file}: {str(exc).splitlines()[0]}") from None
    if df.empty:
        raise UserError(f"no ratings in {file}")
    if df[names].isna().any().any():
        bad = int(df[names].isna().any(axis=1).sum())
        raise UserError(f"{bad} rows with missing values in {file}")
    return df[names]


def movielens_interactions(path: Path, click_threshold: float = 4.0) -> Interactions:
    df = read_movielens(path)
    return Interactions(
        user_id=df["user_id"].to_numpy(str),
        item_id=df["item_id"].to_numpy(str),
        ts=pd.to_datetime(df["timestamp"].to_numpy(np.int64), unit="s", utc=True),
        is_view=np.ones(len(df), bool),
        is_click=(df["rating"] >= click_threshold).to_numpy(),
    )


def import_movielens(path: Path, out: Path, click_threshold: float = 4.0, on_day=None) -> dict:
    """Import a MovieLens ratings file (or a folder holding one) into a new event store."""
    events.check_new_output(out)
    return write_store(movielens_interactions(path, click_threshold), out, on_day)
