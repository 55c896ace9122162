"""Versioned Great Expectations suites of the validation gate.

Three kinds of suite, each run on a pandas DataFrame the runner prepares:

- ``led_<kind>_schema_v<N>``: required columns and their types. Run on a
  small sample of each distinct partition schema (a parquet column has one
  type, so a sample decides it for the whole partition).
- ``led_<kind>_rows_v<N>``: per-event checks over the window's events of one
  kind (views or clicks): non-null and well-formed ids, ``ts`` inside the
  partition's day and not in the future, at least one event in the window.
  The frame carries ``date``, ``day_start`` and ``next_day`` columns so the
  partition's day is checked with plain column-pair expectations.
- ``led_window_v<N>``: one row per (kind, day) of the window with statistics
  the runner computed (row count against the trailing 7-day median, duplicate
  rate, share of new items, orphan clicks) and, from v2, the traffic statistics
  of ``data_checks.traffic``: near-duplicates, top-user / top-item share and
  events per active user against the trailing days, PSI of the item and
  user-activity distributions against the trailing days, click-through ratio
  against the trailing days (v3: the item PSI compares the items the day
  has, an item gone from the day is catalog churn). A statistic is null when the check
  does not apply to that day (GX skips nulls), e.g. volume bounds when the
  trailing median of active users is below ``volume_min_active_users``.

Every expectation carries ``meta.check``: the stable name the CLI prints and
tests look for. Thresholds come from settings; the suite's structure is what
``SUITE_VERSION`` versions: bump it whenever an expectation is added, removed
or changes meaning (``tests/test_validation.py`` pins a fingerprint of the
structure, so a change without a bump fails the tests). Time-dependent values
(``now``) are suite parameters supplied at run time, so the suites stay static.
"""
from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # GX takes ~3 s to import: only the runner imports it, lazily
    import great_expectations as gx

    from infra.settings import Settings

SUITE_VERSION = 3  # v3: item PSI leaves out items absent from the day (catalog churn, not a shift)
KINDS = ("views", "clicks")
REQUIRED_COLUMNS = ("user_id", "item_id", "ts")
# A well-formed id: 1 to 128 characters, none of them whitespace or control
# characters. Deliberately permissive (numeric MovieLens ids, UUIDs, "u123" all
# pass); what it rejects is what breaks joins and logs: "", " 12", "a\tb".
ID_REGEX = r"^[^\s\x00-\x1f]{1,128}$"
# pandas type names GX compares with: arrow strings become Python ``str``
# values, a UTC timestamp column has the ``pd.Timestamp`` scalar type (a naive
# timestamp, numpy ``datetime64``, fails on purpose: its time zone is unknown).
COLUMN_TYPES = {"user_id": "str", "item_id": "str", "ts": "Timestamp"}

# Check names (``meta.check``), as printed and asserted on.
PARTITION_READABLE = "partition_readable"  # not a GX expectation: the parquet could not be read
REQUIRED_COLUMNS_CHECK = "required_columns"
COLUMN_TYPES_CHECK = "column_types"
IDS_NOT_NULL = "ids_not_null"
TS_NOT_NULL = "ts_not_null"
IDS_WELL_FORMED = "ids_well_formed"
TS_IN_PARTITION_DAY = "ts_in_partition_day"
TS_NOT_IN_FUTURE = "ts_not_in_future"
WINDOW_HAS_EVENTS = "window_has_events"
EVENTS_EVERY_DAY = "events_every_day"
VOLUME_NOT_BELOW = "volume_not_below_trailing_median"
VOLUME_NOT_ABOVE = "volume_not_above_trailing_median"
DUPLICATE_RATE = "duplicate_rate"
NEW_ITEM_SHARE = "new_item_share"
ORPHAN_CLICK_RATE = "orphan_click_rate"
# v2: traffic that is well-formed but wrong (data_checks/traffic.py)
NEAR_DUPLICATE_RATE = "near_duplicate_rate"
TOP_USER_SHARE = "top_user_share"
TOP_ITEM_SHARE = "top_item_share"
EVENTS_PER_USER = "events_per_active_user"
ITEM_DISTRIBUTION = "item_distribution_shift"
USER_ACTIVITY_DISTRIBUTION = "user_activity_shift"
CLICK_THROUGH = "click_through_ratio"
TRAFFIC_CHECKS = (NEAR_DUPLICATE_RATE, TOP_USER_SHARE, TOP_ITEM_SHARE, EVENTS_PER_USER, ITEM_DISTRIBUTION,
                  USER_ACTIVITY_DISTRIBUTION, CLICK_THROUGH)


def suite_name(part: str, kind: str | None = None) -> str:
    return f"led_{kind}_{part}_v{SUITE_VERSION}" if kind else f"led_{part}_v{SUITE_VERSION}"


def _meta(check: str, why: str) -> dict:
    return {"check": check, "notes": why}


def schema_suite(kind: str) -> "gx.ExpectationSuite":
    import great_expectations as gx
    import great_expectations.expectations as gxe

    exps = [gxe.ExpectColumnToExist(column=c, meta=_meta(REQUIRED_COLUMNS_CHECK, f"{kind} need column {c}"))
            for c in REQUIRED_COLUMNS]
    exps += [gxe.ExpectColumnValuesToBeOfType(column=c, type_=t,
                                              meta=_meta(COLUMN_TYPES_CHECK, f"{c} must be of type {t}"))
             for c, t in COLUMN_TYPES.items()]
    return gx.ExpectationSuite(name=suite_name("schema", kind), expectations=exps,
                               meta={"version": SUITE_VERSION, "kind": kind})


def rows_suite(kind: str) -> "gx.ExpectationSuite":
    import great_expectations as gx
    import great_expectations.expectations as gxe

    exps = [
        gxe.ExpectTableRowCountToBeBetween(
            min_value=1, meta=_meta(WINDOW_HAS_EVENTS, f"a window without {kind} cannot be trained on")),
        *[gxe.ExpectColumnValuesToNotBeNull(column=c, meta=_meta(IDS_NOT_NULL, f"every event needs a {c}"))
          for c in ("user_id", "item_id")],
        gxe.ExpectColumnValuesToNotBeNull(column="ts", meta=_meta(TS_NOT_NULL, "every event needs a time")),
        *[gxe.ExpectColumnValuesToMatchRegex(column=c, regex=ID_REGEX,
                                             meta=_meta(IDS_WELL_FORMED, f"{c}: 1-128 chars, no whitespace"))
          for c in ("user_id", "item_id")],
        # ts in [day_start, next_day): the partition holds exactly its UTC day.
        gxe.ExpectColumnPairValuesAToBeGreaterThanB(
            column_A="ts", column_B="day_start", or_equal=True, ignore_row_if="either_value_is_missing",
            meta=_meta(TS_IN_PARTITION_DAY, "ts before the partition's day")),
        gxe.ExpectColumnPairValuesAToBeGreaterThanB(
            column_A="next_day", column_B="ts", or_equal=False, ignore_row_if="either_value_is_missing",
            meta=_meta(TS_IN_PARTITION_DAY, "ts after the partition's day")),
        gxe.ExpectColumnValuesToBeBetween(
            column="ts", max_value={"$PARAMETER": "now"},
            meta=_meta(TS_NOT_IN_FUTURE, "events cannot happen after the validation runs")),
    ]
    return gx.ExpectationSuite(name=suite_name("rows", kind), expectations=exps,
                               meta={"version": SUITE_VERSION, "kind": kind})


def window_suite(settings: "Settings") -> "gx.ExpectationSuite":
    import great_expectations as gx

    s = settings
    gate = (f"applies when >= 3 trailing days exist and their median of daily active users is "
            f">= {s.volume_min_active_users}")
    exps = [
        _between("rows_when_expected", EVENTS_EVERY_DAY, f"at least one event per day; {gate}", min_value=1),
        _between("volume_ratio", VOLUME_NOT_BELOW, f"rows >= {s.volume_min_ratio} x trailing 7-day median; {gate}",
                 min_value=s.volume_min_ratio),
        _between("volume_ratio", VOLUME_NOT_ABOVE, f"rows <= {s.volume_max_ratio} x trailing 7-day median; {gate}",
                 max_value=s.volume_max_ratio),
        _between("duplicate_rate", DUPLICATE_RATE, "share of a day's rows whose (user_id, item_id, ts) is not unique",
                 max_value=s.max_duplicate_rate),
        _between("new_item_share", NEW_ITEM_SHARE,
                 f"share of a day's viewed items unseen in the 7 days before; {gate}", max_value=s.max_new_item_share),
        _between("orphan_click_rate", ORPHAN_CLICK_RATE, "share of a day's clicks on items never viewed in the window",
                 max_value=s.max_orphan_click_rate),
        *_traffic_expectations(s, gate),
    ]
    return gx.ExpectationSuite(name=suite_name("window"), expectations=exps,
                               meta={"version": SUITE_VERSION, "thresholds": thresholds(s)})


def _between(column: str, check: str, why: str, **bounds):
    """One per-day statistic of the window frame within its bounds, named ``check``."""
    import great_expectations.expectations as gxe

    return gxe.ExpectColumnValuesToBeBetween(column=column, **bounds, meta=_meta(check, why))


def _traffic_expectations(s: "Settings", gate: str) -> list:
    """The v2 checks on the statistics of data_checks.traffic (definitions there)."""
    top = f"top {s.concentration_top_fraction:.0%}"
    return [
        _between("near_duplicate_rate", NEAR_DUPLICATE_RATE,
                 f"share of a day's rows repeating the same (user, item) within {s.near_duplicate_seconds:g} s "
                 f"(exact copies excluded)", max_value=s.max_near_duplicate_rate),
        _between("top_user_share_increase", TOP_USER_SHARE,
                 f"share of the day's events from its {top} users, minus the trailing median; {gate}",
                 max_value=s.max_top_user_share_increase),
        _between("top_item_share_increase", TOP_ITEM_SHARE,
                 f"share of the day's events on its {top} items, minus the trailing median; {gate}",
                 max_value=s.max_top_item_share_increase),
        _between("events_per_user_ratio", EVENTS_PER_USER,
                 f"events per active user / trailing median; {gate}",
                 min_value=s.events_per_user_min_ratio, max_value=s.events_per_user_max_ratio),
        _between("item_psi", ITEM_DISTRIBUTION,
                 f"PSI of the day's items over trailing popularity buckets; {gate}", max_value=s.max_item_psi),
        _between("user_activity_psi", USER_ACTIVITY_DISTRIBUTION,
                 f"PSI of the share of the day's events by user-activity decile (top users excluded) "
                 f"against the trailing days' mean; {gate}",
                 max_value=s.max_user_activity_psi),
        _between("click_through_ratio", CLICK_THROUGH,
                 f"the day's clicks/views / trailing median (clicks rows); {gate}",
                 min_value=s.click_through_min_ratio, max_value=s.click_through_max_ratio),
    ]


TRAFFIC_THRESHOLDS = ("near_duplicate_seconds", "max_near_duplicate_rate", "concentration_top_fraction",
                      "max_top_user_share_increase", "max_top_item_share_increase", "events_per_user_min_ratio",
                      "events_per_user_max_ratio", "max_item_psi", "max_user_activity_psi",
                      "click_through_min_ratio", "click_through_max_ratio")


def thresholds(settings: "Settings") -> dict:
    names = ("max_duplicate_rate", "volume_min_ratio", "volume_max_ratio", "max_new_item_share",
             "max_orphan_click_rate", "volume_min_active_users", *TRAFFIC_THRESHOLDS)
    return {n: getattr(settings, n) for n in names}


def all_suites(settings: "Settings") -> list["gx.ExpectationSuite"]:
    return [*(f(k) for k in KINDS for f in (schema_suite, rows_suite)), window_suite(settings)]


def structure_fingerprint(settings: "Settings") -> str:
    """Hash of the suites' structure (expectation types, columns, check names), thresholds excluded."""
    shape = []
    for suite in all_suites(settings):
        for e in suite.expectations:
            kw = {k: v for k, v in e.configuration.kwargs.items()
                  if k in ("column", "column_A", "column_B", "type_", "regex", "or_equal")}
            shape.append([suite.name, e.expectation_type, e.meta["check"], sorted(kw.items())])
    return hashlib.sha256(json.dumps(shape, sort_keys=True, default=str).encode()).hexdigest()[:16]
