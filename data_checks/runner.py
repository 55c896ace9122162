"""The validation gate: ``validate_window`` checks the window [D-W, D) of an event store.

Plain function, no Prefect, so the daily flow's task and ``led validate`` call
the same code. Steps:

1. read every partition of the window (plus 7 days of history) with pyarrow;
   an unreadable parquet file is a ``partition_readable`` failure; a
   quarantined day (``infra.events.quarantined_days``) is not read, checked or
   used as history, and is listed in the result (``quarantined``);
2. schema suite per kind, once per distinct partition schema, on a small
   sample (a parquet column has a single type); partitions that fail are left
   out of the row checks, so one bad day does not hide the others' results;
3. rows suite per kind over all the window's valid events at once (a few GX
   runs per window instead of one per day keeps the fixed GX cost ~1 s);
4. window suite per kind over the per-day statistics of ``data_checks.stats``
   (structural) and ``data_checks.traffic`` (well-formed but wrong traffic).

Great Expectations runs on pandas: a day's partition fits in memory on one
machine, the checks are vectorised, and a Spark session would cost ~10 s to
start before checking anything (see benchmarks/README.md). An ephemeral GX
context is built per call (a few ms), so results of earlier calls never leak
into this report; Data Docs are written to ``REPORT_DIR/validation/`` through
a staging folder renamed into place.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from data_checks import stats, suites
from infra import events
from infra.atomic import atomic_dir
from infra.errors import UserError

SCHEMA_SAMPLE_ROWS = 1000
MAX_EXAMPLES = 5
REPORT_SUBDIR = "validation"


@dataclass
class CheckResult:
    """One expectation's outcome (GX result, flattened to JSON-ready values)."""

    check: str                  # stable name, see data_checks.suites
    expectation: str            # GX expectation type
    suite: str
    kind: str | None            # views / clicks / None (window-level)
    column: str | None
    success: bool
    unexpected_count: int | None = None
    element_count: int | None = None
    observed_value: Any = None
    days: list[str] = field(default_factory=list)
    examples: list[Any] = field(default_factory=list)
    notes: str = ""
    error: str | None = None


@dataclass
class ValidationResult:
    success: bool
    run_date: str
    window: list[str]           # [first day, last day] validated
    checks: list[CheckResult]
    days: list[dict]            # per (kind, day) statistics (the window suite's input)
    suite_version: int = suites.SUITE_VERSION
    quarantined: dict[str, str] = field(default_factory=dict)  # window days left out: date -> reason
    report_path: str | None = None
    seconds: float | None = None

    @property
    def failed(self) -> list[CheckResult]:
        return [c for c in self.checks if not c.success]

    @property
    def failed_checks(self) -> list[str]:
        return sorted({c.check for c in self.failed})

    def failed_days(self) -> list[str]:
        """Days named by a failed check (what ``led validate --quarantine`` would set aside)."""
        return sorted({d for c in self.failed for d in c.days})

    def failure_table(self, width: int = 60) -> str:
        """Failed checks as a fixed-width table, one line each (CLI output, flow artifacts)."""
        header = ("check", "kind", "column", "days", "unexpected", "examples")
        rows = []
        for c in self.failed:
            days = ",".join(c.days[:3]) + ("..." if len(c.days) > 3 else "")
            example = c.error or "; ".join(_short(e) for e in c.examples[:3]) \
                or f"observed {c.observed_value}: {c.notes}"
            rows.append((c.check, c.kind or "-", c.column or "-", days or "-",
                         "-" if c.unexpected_count is None else str(c.unexpected_count), example[:width]))
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        lines = [f"FAILED {len(rows)} of {len(self.checks)} checks (window {self.window[0]} to {self.window[1]}):",
                 "  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip(),
                 "  ".join("-" * w for w in widths)]
        lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["failed"] = [asdict(c) for c in self.failed]
        out["failed_checks"] = self.failed_checks
        return out


def validate_window(events_dir: str | Path, run_date: str | dt.date, window_days: int | None = None,
                    settings=None, report_dir: str | Path | None = None, *,
                    now: dt.datetime | None = None) -> ValidationResult:
    """Validate the days [run_date - window_days, run_date) of the event store ``events_dir``.

    Raises ``UserError`` when the arguments cannot be validated at all (no
    store, bad date or window, no partition of either kind in the window).
    Data problems never raise: they are failed checks in the result.
    """
    from infra.settings import get_settings

    started = time.monotonic()
    settings = settings or get_settings()
    window_days = settings.window_days if window_days is None else int(window_days)
    root = events.require_event_store(Path(events_dir))
    day = events.parse_date(run_date)
    dates = events.window_dates(day, window_days)
    now = pd.Timestamp(now or dt.datetime.now(dt.timezone.utc))
    now = now.tz_localize("UTC") if now.tzinfo is None else now.tz_convert("UTC")

    quarantined = events.quarantined_days(root)
    parts = {kind: stats.load_kind(root, kind, day, window_days, set(quarantined)) for kind in suites.KINDS}
    _require_data(root, parts, dates)

    gate = _GxGate(settings)
    checks: list[CheckResult] = []
    for kind in suites.KINDS:
        window_parts = [p for p in parts[kind] if p.in_window]
        checks += _schema_checks(gate, kind, window_parts)
        for p in parts[kind]:
            if not p.in_window and p.raw is not None:
                _accept_history(p)
        checks += _row_checks(gate, kind, window_parts, now)
    summary = stats.day_summary(parts, settings)
    for kind in suites.KINDS:  # one run per kind, so every failure names its kind
        checks += gate.run(suites.suite_name("window"), summary[summary["kind"] == kind].reset_index(drop=True),
                           kind=kind, index_columns=["date"])

    result = ValidationResult(
        success=all(c.success for c in checks), run_date=day.isoformat(),
        window=[dates[0].isoformat(), dates[-1].isoformat()], checks=checks,
        days=[{k: _jsonable(v) for k, v in row.items()} for row in summary.to_dict("records")],
        quarantined={d.isoformat(): why for d, why in sorted(quarantined.items()) if d in dates},
    )
    if report_dir is not None:
        result.report_path = str(_write_report(gate, result, Path(report_dir)))
    result.seconds = round(time.monotonic() - started, 3)
    return result


def quarantine_reasons(result: ValidationResult) -> dict[dt.date, str]:
    """For each day named by a failed check: the checks, as the reason recorded in the quarantine list."""
    reasons: dict[str, set[str]] = {}
    for c in result.failed:
        for d in c.days:
            reasons.setdefault(d, set()).add(f"{c.check} ({c.kind})" if c.kind else c.check)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%MZ")
    return {dt.date.fromisoformat(d): f"{', '.join(sorted(r))}; led validate --date {result.run_date} at {stamp}"
            for d, r in reasons.items()}


# --- steps ----------------------------------------------------------------------


def _require_data(root: Path, parts: dict, dates: list[dt.date]) -> None:
    if any(p.in_window and p.status != stats.MISSING for plist in parts.values() for p in plist):
        return
    span = events.list_days(root, "views") or events.list_days(root, "clicks")
    have = f"it has days {span[0]} to {span[-1]}" if span else "it has no day partitions"
    raise UserError(f"no views or clicks partition in the window {dates[0]} to {dates[-1]} of {root} ({have})")


def _schema_checks(gate: "_GxGate", kind: str, window_parts: list) -> list[CheckResult]:
    """Run the schema suite once per distinct schema; failing partitions are excluded from row checks."""
    out = []
    groups: dict[str, list] = {}
    for p in window_parts:
        if p.read_error:
            out.append(CheckResult(check=suites.PARTITION_READABLE, expectation="read_parquet",
                                   suite=suites.suite_name("schema", kind), kind=kind, column=None,
                                   success=False, days=[p.day.isoformat()], error=p.read_error,
                                   notes="the partition's parquet files could not be read"))
        elif p.raw is not None:
            groups.setdefault(str(p.raw.schema), []).append(p)
    for group in groups.values():
        sample = group[0].raw.slice(0, SCHEMA_SAMPLE_ROWS).to_pandas()
        results = gate.run(suites.suite_name("schema", kind), sample, kind=kind)
        missing = {r.column for r in results if r.check == suites.REQUIRED_COLUMNS_CHECK and not r.success}
        # the type of a missing column is not a second failure: GX would report an exception for it
        results = [r for r in results if not (r.check == suites.COLUMN_TYPES_CHECK and r.column in missing)]
        day_names = [p.day.isoformat() for p in group]
        for r in results:
            r.days = day_names if not r.success else []
            r.unexpected_count = len(group) if not r.success else 0  # partitions, not rows
        out += results
        if all(r.success for r in results):
            for p in group:
                if not stats.canonicalize(p):
                    out.append(CheckResult(check=suites.COLUMN_TYPES_CHECK, expectation="cast_to_store_schema",
                                           suite=suites.suite_name("schema", kind), kind=kind, column=None,
                                           success=False, days=[p.day.isoformat()], error=p.read_error))
    return out


def _accept_history(p) -> None:
    """History days are not validated again; they feed statistics when their schema is usable."""
    cols = set(p.raw.column_names)
    if set(stats.CANONICAL.names) <= cols:
        stats.canonicalize(p)


def _row_checks(gate: "_GxGate", kind: str, window_parts: list, now: pd.Timestamp) -> list[CheckResult]:
    tables = [stats.with_day_columns(p) for p in window_parts if p.status == stats.OK]
    if tables:
        frame = _ids_as_categories(pa.concat_tables(tables)).to_pandas()
    else:
        frame = pd.DataFrame({c: pd.Series(dtype="object") for c in ("user_id", "item_id", "date")}
                             | {c: pd.Series(dtype="datetime64[us, UTC]") for c in ("ts", "day_start", "next_day")})
    return gate.run(suites.suite_name("rows", kind), frame, kind=kind, index_columns=["date"],
                    parameters={"now": now})


def _ids_as_categories(t: pa.Table) -> pa.Table:
    """Dictionary-encode the ids: pandas then holds them as categoricals, and GX's string and null
    checks work on each distinct id once instead of on every row (~1.5x faster on 1M events;
    ids repeat a lot). Types were already checked by the schema suite on plain strings."""
    for name in ("user_id", "item_id"):
        i = t.schema.get_field_index(name)
        t = t.set_column(i, name, t.column(i).dictionary_encode())
    return t


# --- Great Expectations -----------------------------------------------------------------


class _GxGate:
    """An ephemeral GX context holding the suites, one validation definition and checkpoint each."""

    SITE = "led_validation"

    def __init__(self, settings):
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        logging.getLogger("great_expectations").setLevel(logging.ERROR)
        self.gx = gx
        self.ctx = gx.get_context(mode="ephemeral")
        self.ctx.variables.progress_bars = ProgressBarsConfig(globally=False)  # no tqdm per run
        self.source = self.ctx.data_sources.add_pandas("led_events")
        self.suites = {s.name: self.ctx.suites.add(s) for s in suites.all_suites(settings)}
        self._checkpoints: dict[tuple, Any] = {}

    def _checkpoint(self, suite_name: str, index_columns: list[str]):
        key = (suite_name, tuple(index_columns))
        if key not in self._checkpoints:
            gx = self.gx
            batch = self.source.add_dataframe_asset(suite_name).add_batch_definition_whole_dataframe("frame")
            vd = self.ctx.validation_definitions.add(
                gx.ValidationDefinition(name=f"{suite_name}_vd", data=batch, suite=self.suites[suite_name]))
            fmt = {"result_format": "SUMMARY", "partial_unexpected_count": MAX_EXAMPLES}
            if index_columns:
                fmt["unexpected_index_column_names"] = index_columns
            self._checkpoints[key] = self.ctx.checkpoints.add(gx.Checkpoint(
                name=f"{suite_name}_checkpoint", validation_definitions=[vd], actions=[], result_format=fmt))
        return self._checkpoints[key]

    def run(self, suite_name: str, frame: pd.DataFrame, kind: str | None = None,
            index_columns: list[str] | None = None, parameters: dict | None = None) -> list[CheckResult]:
        cp = self._checkpoint(suite_name, index_columns or [])
        res = cp.run(batch_parameters={"dataframe": frame}, expectation_parameters=parameters or {})
        out = []
        for vr in res.run_results.values():
            for r in vr.results:
                check = _to_check(r, suite_name, kind, index_columns or [])
                if "date" in (index_columns or []) and (check.unexpected_count or 0) > MAX_EXAMPLES:
                    check.days = self._all_failing_days(suite_name, r.expectation_config, frame, parameters)
                out.append(check)
        return out

    def _all_failing_days(self, suite_name: str, config, frame: pd.DataFrame, parameters) -> list[str]:
        """Every day with an unexpected row (the summary only lists the days of its few examples).

        Only runs for failed expectations with more unexpected rows than examples, so a clean
        window never pays for it; COMPLETE lists every unexpected row's index columns."""
        batch = self.source.get_asset(suite_name).get_batch_definition("frame") \
            .get_batch(batch_parameters={"dataframe": frame})
        r = batch.validate(config.to_domain_obj(), expectation_parameters=parameters or {},
                           result_format={"result_format": "COMPLETE", "unexpected_index_column_names": ["date"],
                                          "return_unexpected_index_query": False})
        return sorted({e["date"] for e in (r.result or {}).get("unexpected_index_list") or []
                       if isinstance(e, dict) and "date" in e})

    def build_docs(self, folder: Path) -> Path:
        self.ctx.add_data_docs_site(site_name=self.SITE, site_config={
            "class_name": "SiteBuilder",
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": f"{folder}/"},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        })
        self.ctx.build_data_docs(site_names=[self.SITE])
        return folder / "index.html"


def _to_check(r, suite_name: str, kind: str | None, index_columns: list[str]) -> CheckResult:
    cfg = r.expectation_config
    kw = cfg.kwargs
    column = kw.get("column") or (",".join(kw["column_list"]) if "column_list" in kw else None) \
        or (f"{kw['column_A']},{kw['column_B']}" if "column_A" in kw else None)
    res = r.result or {}
    indexed = res.get("partial_unexpected_index_list") or []
    examples = [_jsonable(e) for e in (indexed or res.get("partial_unexpected_list") or [])][:MAX_EXAMPLES]
    days = sorted({e["date"] for e in indexed if isinstance(e, dict) and "date" in e})
    error = None
    if r.exception_info and r.exception_info.get("raised_exception"):
        error = r.exception_info.get("exception_message")
    return CheckResult(
        check=(cfg.meta or {}).get("check", cfg.type), expectation=cfg.type, suite=suite_name,
        kind=kind or (examples[0].get("kind") if examples and isinstance(examples[0], dict) else None),
        column=column, success=bool(r.success), unexpected_count=_int(res.get("unexpected_count")),
        element_count=_int(res.get("element_count")), observed_value=_jsonable(res.get("observed_value")),
        days=days, examples=examples, notes=(cfg.meta or {}).get("notes", ""), error=error,
    )


# --- report -----------------------------------------------------------------------


def _write_report(gate: _GxGate, result: ValidationResult, report_dir: Path) -> Path:
    """Data Docs + result.json into REPORT_DIR/validation/, via a staging folder renamed into place."""
    report_dir.mkdir(parents=True, exist_ok=True)
    final = report_dir / REPORT_SUBDIR
    with atomic_dir(final) as staging:
        index = gate.build_docs(staging)
        result.report_path = str(final.resolve() / index.name)
        (staging / "result.json").write_text(json.dumps(result.to_dict(), indent=2, default=str))
    return final.resolve() / index.name


def _short(example: Any) -> str:
    if isinstance(example, dict):
        return " ".join(f"{k}={v}" for k, v in example.items())
    return str(example)


def _int(v) -> int | None:
    return None if v is None else int(v)


def _jsonable(v: Any) -> Any:
    """Timestamps, numpy scalars, tuples and NaN from GX results as plain JSON values."""
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, (pd.Timestamp, dt.datetime, dt.date)):
        return v.isoformat()
    if hasattr(v, "item") and not isinstance(v, (str, bytes)):
        try:
            v = v.item()
        except (ValueError, AttributeError):
            return str(v)
    if isinstance(v, float) and math.isnan(v):
        return None
    if v is pd.NaT:
        return None
    return v
