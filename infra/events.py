"""The event store: views and clicks as parquet datasets partitioned by day.

Layout (Hive-style, readable by pandas/pyarrow and by Spark)::

    EVENTS/views/date=YYYY-MM-DD/part-0.parquet
    EVENTS/clicks/date=YYYY-MM-DD/part-0.parquet

Columns: ``user_id`` (string), ``item_id`` (string), ``ts`` (timestamp[us, UTC]).
Every write goes to a temporary folder first and is renamed into place, so a
reader never sees a half-written day or store.

A day can be *quarantined* (``led validate --quarantine``): it is listed in
``EVENTS/quarantine.json`` with the reason, stays on disk for repair, and every
window reader skips it (both kinds) until it is released.
"""
from __future__ import annotations

import datetime as dt
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from infra.atomic import atomic_dir
from infra.errors import UserError

KINDS = ("views", "clicks")
QUARANTINE_FILE = "quarantine.json"
SCHEMA = pa.schema(
    [
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("ts", pa.timestamp("us", tz="UTC"), nullable=False),
    ]
)


def parse_date(value: str | dt.date) -> dt.date:
    if isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(str(value))
    except ValueError:
        raise UserError(f"not a date (expected YYYY-MM-DD): {value!r}") from None


def window_dates(run_date: str | dt.date, window_days: int) -> list[dt.date]:
    """The days of the window [D-W, D), oldest first."""
    end = parse_date(run_date)
    if window_days < 1:
        raise UserError(f"window must be at least 1 day, got {window_days}")
    return [end - dt.timedelta(days=k) for k in range(window_days, 0, -1)]


def partition_dir(root: Path, kind: str, day: dt.date) -> Path:
    return Path(root) / kind / f"date={day.isoformat()}"


def list_days(root: Path, kind: str = "views") -> list[dt.date]:
    """Days present in the store for one kind, sorted."""
    base = Path(root) / kind
    if not base.is_dir():
        return []
    days = []
    for p in base.iterdir():
        if p.is_dir() and p.name.startswith("date="):
            try:
                days.append(dt.date.fromisoformat(p.name[5:]))
            except ValueError:
                continue
    return sorted(days)


def is_event_store(root: Path) -> bool:
    return any((Path(root) / kind).is_dir() for kind in KINDS)


def require_event_store(root: Path) -> Path:
    root = Path(root)
    if not root.exists():
        raise UserError(f"event store not found: {root}")
    if not is_event_store(root):
        raise UserError(f"not an event store (no views/ or clicks/ folder): {root}")
    return root


def to_table(user_id, item_id, ts) -> pa.Table:
    """Build a table in the store's schema from array-likes (ts: datetime64 or arrow timestamps)."""
    ts_arr = pa.array(ts) if not isinstance(ts, (pa.Array, pa.ChunkedArray)) else ts
    if pa.types.is_timestamp(ts_arr.type) and ts_arr.type.tz is None:
        ts_arr = pc.assume_timezone(ts_arr, "UTC")
    return pa.table(
        {
            "user_id": pa.array(user_id, pa.string()) if not isinstance(user_id, (pa.Array, pa.ChunkedArray)) else user_id.cast(pa.string()),
            "item_id": pa.array(item_id, pa.string()) if not isinstance(item_id, (pa.Array, pa.ChunkedArray)) else item_id.cast(pa.string()),
            "ts": ts_arr.cast(pa.timestamp("us", tz="UTC")),
        },
        schema=SCHEMA,
    )


def write_day(root: Path, kind: str, day: dt.date, table: pa.Table) -> Path:
    """Write (or replace) one day's partition atomically."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    final = partition_dir(root, kind, day)
    with atomic_dir(final) as tmp:
        pq.write_table(table.select(SCHEMA.names), tmp / "part-0.parquet", compression="snappy")
    return final


def read_day(root: Path, kind: str, day: dt.date, users: pa.Array | None = None,
             columns: list[str] | None = None) -> pa.Table:
    """One day's events (only ``users``' rows, only ``columns`` when given); an empty table when the day
    is missing. The user filter is applied batch by batch while scanning, so a day's other users are
    never held in memory (docs/architecture.md, "Fine-tuning on a bounded sample of users")."""
    path = partition_dir(root, kind, day)
    files = sorted(path.glob("*.parquet")) if path.is_dir() else []
    schema = SCHEMA if columns is None else pa.schema([SCHEMA.field(c) for c in columns])
    if not files:
        return schema.empty_table()
    if users is None:
        return pa.concat_tables([pq.read_table(f, columns=columns) for f in files])
    import pyarrow.dataset as ds

    wanted = ds.field("user_id").isin(users)
    return ds.dataset(files, format="parquet").to_table(columns=schema.names, filter=wanted)


def quarantined_days(root: Path) -> dict[dt.date, str]:
    """Days excluded from every window (date -> reason); empty when nothing is quarantined."""
    path = Path(root) / QUARANTINE_FILE
    if not path.is_file():
        return {}
    try:
        listed = json.loads(path.read_text())
        return {dt.date.fromisoformat(d): str(why) for d, why in listed.items()}
    except (ValueError, AttributeError):
        raise UserError(f"unreadable quarantine list {path}: expected {{\"YYYY-MM-DD\": \"reason\"}}") from None


def update_quarantine(root: Path, add: dict[dt.date, str] | None = None,
                      release: list[dt.date] | tuple = ()) -> dict[dt.date, str]:
    """Quarantine ``add`` (date -> reason) and release ``release``; written atomically, returns the list."""
    days = quarantined_days(root) | (add or {})
    for day in release:
        days.pop(day, None)
    path = Path(root) / QUARANTINE_FILE
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps({d.isoformat(): days[d] for d in sorted(days)}, indent=2))
    os.replace(tmp, path)
    return days


def read_window(root: Path, kind: str, run_date: str | dt.date, window_days: int,
                users: pa.Array | None = None) -> pa.Table:
    """Events of [D-W, D) with a ``date`` column (date32) added, oldest day first; quarantined days skipped.

    ``users``: only these users' events (filtered while scanning, see :func:`read_day`)."""
    tables = []
    for day in _window_days(root, run_date, window_days):
        t = read_day(root, kind, day, users)
        tables.append(t.append_column("date", pa.array([day] * t.num_rows, pa.date32())))
    return pa.concat_tables(tables) if tables else SCHEMA.append(pa.field("date", pa.date32())).empty_table()


def window_rows(root: Path, kind: str, run_date: str | dt.date, window_days: int) -> int:
    """Events of [D-W, D) (quarantined days skipped), counted from the parquet footers: no data is read."""
    return sum(pq.ParquetFile(f).metadata.num_rows for day in _window_days(root, run_date, window_days)
               for f in sorted(partition_dir(root, kind, day).glob("*.parquet")))


def window_distinct(root: Path, kind: str, run_date: str | dt.date, window_days: int,
                    column: str = "user_id") -> pa.Array:
    """The distinct values of ``column`` in the ``kind`` events of [D-W, D), sorted; reads that column only."""
    days = [pc.unique(read_day(root, kind, day, columns=[column]).column(column).combine_chunks())
            for day in _window_days(root, run_date, window_days)]
    if not days:
        return pa.array([], SCHEMA.field(column).type)
    return pc.unique(pa.concat_arrays(days)).sort()


def _window_days(root: Path, run_date: str | dt.date, window_days: int) -> list[dt.date]:
    quarantined = quarantined_days(root)
    return [day for day in window_dates(run_date, window_days) if day not in quarantined]


def require_window(root: Path, kind: str, run_date: str | dt.date, window_days: int) -> pa.Table:
    """``read_window`` that refuses an empty window with a ``UserError`` naming it."""
    root = require_event_store(root)
    table = read_window(root, kind, run_date, window_days)
    if table.num_rows == 0:
        days = window_dates(run_date, window_days)
        raise UserError(f"no {kind} in the window [{days[0]}, {parse_date(run_date)}) of {root}")
    return table


def check_new_output(final: Path) -> Path:
    """Refuse an output folder that already holds other data (checked before any work starts)."""
    final = Path(final).resolve()
    if final.exists() and (not final.is_dir() or any(final.iterdir())):
        raise UserError(f"output folder is not empty: {final} (choose a new folder or remove it)")
    return final


@contextmanager
def staging_dir(final: Path, *, allow_existing_store: bool = False) -> Iterator[Path]:
    """A temporary sibling of ``final`` that is renamed into place on success.

    Refuses an output folder that already holds other data (unless it is an
    event store and ``allow_existing_store`` is set, in which case the caller
    writes day partitions straight into it).
    """
    final = Path(final).resolve()
    if allow_existing_store and is_event_store(final):
        yield final
        return
    check_new_output(final)
    with atomic_dir(final) as tmp:
        yield tmp


def window_fingerprint(root: Path, start: dt.date, end: dt.date) -> str:
    """Hash of the partition files of [start, end): names, sizes and modification times.

    New or replaced data changes it, so cached stages keyed on it recompute.
    """
    import hashlib

    h = hashlib.sha256()
    day = start
    while day < end:
        for kind in KINDS:
            folder = partition_dir(root, kind, day)
            for f in sorted(folder.glob("*.parquet")) if folder.is_dir() else []:
                st = f.stat()
                h.update(f"{kind}/{day}/{f.name}:{st.st_size}:{st.st_mtime_ns};".encode())
        day += dt.timedelta(days=1)
    return h.hexdigest()[:20]
