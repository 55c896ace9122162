"""The gate against traffic that is well-formed but wrong (issue 14).

Every fault below keeps the schema, the ids, the timestamps' day and the
volume band intact, so the structural checks cannot see it; each is built to
move exactly one of the traffic statistics of ``data_checks.traffic``. Like
``test_validation.py`` each is ONE rewritten partition (day 2026-01-08) of a
copy of the clean ``small_world``, validated by the whole gate.
"""
from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from data_checks import suites
from data_checks.runner import validate_window
from infra import events
from tests.test_validation import FAULT_DAY, RUN_DATE, SETTINGS, WINDOW, _copy, _day, _replace, _rewrite


def _rng(salt: int) -> np.random.Generator:
    return np.random.default_rng(1000 + salt)


def _concat(*tables: pa.Table) -> pa.Table:
    return pa.concat_tables([t.cast(events.SCHEMA) for t in tables]).sort_by("ts")


def _shift(t: pa.Table, micros) -> pa.Table:
    """ts + micros (scalar or per-row array), kept inside the partition's day."""
    ts = t.column("ts").cast(pa.int64()).to_numpy() + np.asarray(micros, np.int64)
    day_start = (FAULT_DAY - dt.date(1970, 1, 1)).days * 86_400_000_000
    ts = np.clip(ts, day_start, day_start + 86_400_000_000 - 1)
    return _replace(t, "ts", pa.array(ts, pa.timestamp("us", tz="UTC")))


# --- the faults -----------------------------------------------------------------------

def client_retries(s):
    """15% of the day's views sent again 1-3 s later (a client retrying without idempotency keys)."""
    t = _day(s)
    again = t.take(pa.array(np.flatnonzero(_rng(1).random(t.num_rows) < 0.15)))
    again = _shift(again, _rng(2).integers(1_000_000, 3_000_000, again.num_rows))
    _rewrite(s, _concat(t, again))


def bot_user(s):
    """One account adds 12% more views, replaying the day's own traffic (a scraper logged in)."""
    t = _day(s)
    bot = t.take(pa.array(np.flatnonzero(_rng(3).random(t.num_rows) < 0.12)))
    bot = _replace(bot, "user_id", pa.array(["bot-1"] * bot.num_rows, pa.string()))
    _rewrite(s, _concat(t, bot))


def stuck_item(s):
    """A fifth of the day's views re-pointed to one mid-popular item (a stuck recommendation slot)."""
    t = _day(s)
    counts = pc.value_counts(t.column("item_id")).to_pylist()
    ranked = sorted(counts, key=lambda c: (-c["counts"], c["values"]))
    item = ranked[len(ranked) // 10]["values"]
    stuck = _rng(4).random(t.num_rows) < 0.2
    _rewrite(s, _replace(t, "item_id", pc.if_else(pa.array(stuck), pa.scalar(item), t.column("item_id"))))


def items_mis_joined(s):
    """Item ids mapped through the wrong lookup table: a permutation of the day's own item ids."""
    t = _day(s)
    ids = pc.unique(t.column("item_id")).to_numpy(zero_copy_only=False)
    mapping = dict(zip(ids, _rng(5).permutation(ids)))
    _rewrite(s, _replace(t, "item_id", pa.array([mapping[i] for i in t.column("item_id").to_pylist()])))


def bot_farm(s):
    """150 fresh accounts with 3 views each, replaying the day's own items (a farm of fake users:
    each too small for the top-user share, but the day's users no longer spread their activity
    like its real users do)."""
    t = _day(s)
    rows = _rng(6).choice(t.num_rows, 450, replace=False)
    farm = _replace(t.take(pa.array(rows)), "user_id", pa.array([f"farm-{k % 150}" for k in range(450)]))
    _rewrite(s, _concat(t, farm))


def double_logging(s):
    """A second collector replays the whole day 5 minutes late (views and clicks): 2x per user."""
    for kind in ("views", "clicks"):
        t = _day(s, kind)
        _rewrite(s, _concat(t, _shift(t, 300_000_000)), kind=kind)


def clicks_lost_for_a_segment(s):
    """Click tracking broken for half the users (one client platform): views intact."""
    t = _day(s, "clicks")
    users = pc.unique(t.column("user_id")).to_numpy(zero_copy_only=False)
    lost = pa.array(users[_rng(7).random(len(users)) < 0.5])
    _rewrite(s, t.filter(pc.invert(pc.is_in(t.column("user_id"), value_set=lost))), kind="clicks")


# fault -> (check, kinds it fails on)
FAULTS = {
    client_retries: (suites.NEAR_DUPLICATE_RATE, {"views"}),
    bot_user: (suites.TOP_USER_SHARE, {"views"}),
    stuck_item: (suites.TOP_ITEM_SHARE, {"views"}),
    items_mis_joined: (suites.ITEM_DISTRIBUTION, {"views"}),
    bot_farm: (suites.USER_ACTIVITY_DISTRIBUTION, {"views"}),
    double_logging: (suites.EVENTS_PER_USER, {"views", "clicks"}),
    clicks_lost_for_a_segment: (suites.CLICK_THROUGH, {"clicks"}),
}


def _failures(result) -> set[tuple[str, str, tuple]]:
    return {(c.check, c.kind, tuple(c.days)) for c in result.failed}


@pytest.mark.parametrize("fault", list(FAULTS), ids=lambda f: f.__name__)
def test_traffic_fault_fails_only_its_check(fault, small_world, tmp_path):
    store = _copy(small_world, tmp_path)
    fault(store)
    result = validate_window(store, RUN_DATE, WINDOW, settings=SETTINGS)
    check, kinds = FAULTS[fault]
    assert _failures(result) == {(check, kind, (FAULT_DAY.isoformat(),)) for kind in kinds}, \
        [(c.check, c.kind, c.days, c.observed_value, c.examples) for c in result.failed]


def test_every_traffic_check_has_a_fault():
    assert {check for check, _ in FAULTS.values()} == set(suites.TRAFFIC_CHECKS)


def test_exact_copies_are_not_near_duplicates(small_world, tmp_path):
    """A partition ingested twice verbatim is the exact-duplicate check's (gap 0), never the near-duplicate
    check's (0 < gap <= near_duplicate_seconds): the two rates are measured apart."""
    from tests.test_validation import duplicated_day

    store = _copy(small_world, tmp_path)
    duplicated_day(store)
    failed = {c.check for c in validate_window(store, RUN_DATE, WINDOW, settings=SETTINGS).failed}
    assert suites.DUPLICATE_RATE in failed and suites.NEAR_DUPLICATE_RATE not in failed, failed


def test_a_day_without_any_user_id_fails_cleanly(small_world, tmp_path):
    """The traffic statistics must not crash on what the row checks already reject."""
    store = _copy(small_world, tmp_path)
    t = _day(store)
    _rewrite(store, _replace(t, "user_id", pa.nulls(t.num_rows, pa.string())))
    result = validate_window(store, RUN_DATE, WINDOW, settings=SETTINGS)
    assert suites.IDS_NOT_NULL in result.failed_checks
    assert {d for c in result.failed for d in c.days} == {FAULT_DAY.isoformat()}


def test_retired_top_items_are_catalog_churn_not_a_distribution_shift():
    """At ML-20M size (20k items, 1% retired a day) a clean window failed the item PSI after top items
    retired (0.73 against 0.3): the day's top items are left out, so the reference's top bucket held only
    the retired ones, absent from the day. An item the reference expects but the day lacks is left out."""
    import math

    import numpy as np

    from data_checks import traffic

    rng = np.random.default_rng(0)
    share = 1.0 / np.arange(1, 20_001) ** 0.9
    share /= share.sum()
    reference = rng.multinomial(7 * 300_000, share).astype(float)
    retired = share.copy()
    retired[[0, 5, 12]] = 0.0  # three of the most popular items are gone today
    day = rng.multinomial(300_000, retired / retired.sum()).astype(float)
    top = np.argsort(-day)[:math.ceil(0.01 * np.count_nonzero(day))]  # as data_checks.stats passes them
    assert traffic.item_psi(day, reference, top) < 0.05
    # a mis-joined partition (the same items, popularity scrambled) still fails
    scrambled = rng.multinomial(300_000, rng.permutation(share)).astype(float)
    top = np.argsort(-scrambled)[:math.ceil(0.01 * np.count_nonzero(scrambled))]
    assert traffic.item_psi(scrambled, reference, top) > 0.3
