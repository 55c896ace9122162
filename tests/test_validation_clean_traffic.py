"""No false alarm from the traffic checks on clean data, and where the line is drawn.

- 60 consecutive clean days of the churning world ``led simulate`` uses
  (flows/simulate.py's defaults: 3000 users, 800 items, seed 42, 1% item and
  user churn a day), through the whole gate in one run, every day checked;
  a few daily runs (default 14-day window) prove their per-day statistics
  are the same rows, so the claim is about the daily gate;
- a sale day at ~3x volume whose extra traffic comes from more of the usual
  users (three times the active share, same behaviour) passes; the same
  volume made by the usual users each browsing twice as much does not;
- the issue's examples: a partition ingested twice, 1 s apart, and a
  partition of views written into clicks.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

import pandas as pd
import pytest

from data_checks import suites
from data_checks.runner import validate_window
from data_sources.synthetic import SyntheticWorld, WorldConfig
from flows.simulate import SimulationConfig
from infra import events
from tests.test_validation import SETTINGS, _rewrite
from tests.test_validation_traffic import _concat, _shift

WARMUP, CLEAN_DAYS = 3, 60  # 3 days of history first, so each of the 60 has its trailing-day checks
TRAFFIC_COLUMNS = ("near_duplicate_rate", "top_user_share_increase", "top_item_share_increase",
                   "events_per_user_ratio", "item_psi", "user_activity_psi")


def simulate_world_config(days: int) -> WorldConfig:
    sim = SimulationConfig()
    return WorldConfig(users=sim.users, items=sim.items, days=days, seed=sim.seed, start=sim.start)


def write_world(store: Path, cfg: WorldConfig, changed: dict[int, dict] | None = None) -> None:
    """The world's days into ``store``; ``changed`` = {day index: WorldConfig fields for that day only}."""
    world = SyntheticWorld(cfg)
    changed = changed or {}
    world.cfg = dataclasses.replace(cfg, **changed.get(0, {}))
    for i, day in enumerate(world.days()):
        events.write_day(store, "views", day.date, day.views)
        events.write_day(store, "clicks", day.date, day.clicks)
        world.cfg = dataclasses.replace(cfg, **changed.get(i + 1, {}))  # the generator is lazy: next day's


@pytest.fixture(scope="session")
def simulate_world(tmp_path_factory) -> Path:
    store = tmp_path_factory.mktemp("simulate-world") / "events"
    write_world(store, simulate_world_config(WARMUP + CLEAN_DAYS))
    return store


def _end(cfg: WorldConfig) -> dt.date:
    return cfg.start + dt.timedelta(days=cfg.days)


@pytest.fixture(scope="module")
def sixty_days(simulate_world):
    """The whole gate over the 60 clean days in one run."""
    return validate_window(simulate_world, _end(simulate_world_config(WARMUP + CLEAN_DAYS)), CLEAN_DAYS,
                           settings=SETTINGS)


def test_sixty_clean_days_of_the_simulated_world_raise_no_alarm(sixty_days):
    result = sixty_days
    assert result.success, [(c.check, c.kind, c.days[:3], c.observed_value) for c in result.failed]
    days = pd.DataFrame(result.days)
    # every check really ran on every one of the 60 days, both kinds
    assert days.groupby("kind")["volume_checked"].sum().to_dict() == {"clicks": CLEAN_DAYS, "views": CLEAN_DAYS}
    for column in TRAFFIC_COLUMNS:
        assert days[column].notna().sum() == 2 * CLEAN_DAYS, column
    assert days["click_through_ratio"].notna().sum() == CLEAN_DAYS  # clicks rows only


@pytest.mark.parametrize("offset", [0, 29, 59])
def test_daily_runs_compute_the_same_statistics(simulate_world, sixty_days, offset):
    """A daily run (default 14-day window) sees its days exactly as the 60-day run does."""
    cfg = simulate_world_config(WARMUP + CLEAN_DAYS)
    first = cfg.start + dt.timedelta(days=WARMUP)
    run_date = first + dt.timedelta(days=offset + 1)
    daily = validate_window(simulate_world, run_date, settings=SETTINGS)
    assert daily.success
    whole = pd.DataFrame(sixty_days.days)
    day = (run_date - dt.timedelta(days=1)).isoformat()
    mine = pd.DataFrame(daily.days).set_index(["kind", "date"]).loc[:, list(TRAFFIC_COLUMNS)]
    theirs = whole.set_index(["kind", "date"]).loc[:, list(TRAFFIC_COLUMNS)]
    pd.testing.assert_frame_equal(mine.xs(day, level="date"), theirs.xs(day, level="date"))


# --- a sale day: where the line is drawn ----------------------------------------------------

SALE_WORLD_DAYS, SALE_DAY = 14, 10  # the sale is day index 10; days 11-13 follow it


def _sale(tmp_path: Path, **day_fields) -> tuple[Path, dt.date, dt.date]:
    cfg = simulate_world_config(SALE_WORLD_DAYS)
    store = tmp_path / "events"
    write_world(store, cfg, {SALE_DAY: day_fields})
    return store, cfg.start + dt.timedelta(days=SALE_DAY), _end(cfg)


def test_sale_day_at_three_times_the_usual_users_passes(tmp_path):
    store, sale, end = _sale(tmp_path, active_share=0.9)  # the world's 0.3, tripled
    result = validate_window(store, end, SALE_WORLD_DAYS, settings=SETTINGS)
    assert result.success, [(c.check, c.kind, c.days, c.observed_value) for c in result.failed]
    row = next(d for d in result.days if d["kind"] == "views" and d["date"] == sale.isoformat())
    assert 2.7 <= row["volume_ratio"] <= 3.3 and row["volume_checked"]


def test_sale_day_made_by_the_same_users_browsing_twice_as_much_fails(tmp_path):
    """~2x the volume, but from the usual number of users, each doing twice as much: a
    double-logging client looks exactly like that, so events per active user draws the line
    at 1.6x the trailing median (a sale brings more shoppers, not twice the clicks per shopper)."""
    store, sale, end = _sale(tmp_path, sessions_per_active_user=2.6)  # 1.3 x 2
    result = validate_window(store, end, SALE_WORLD_DAYS, settings=SETTINGS)
    assert suites.EVENTS_PER_USER in result.failed_checks
    assert set(result.failed_checks) <= set(suites.TRAFFIC_CHECKS)
    assert {d for c in result.failed for d in c.days} == {sale.isoformat()}


# --- the examples ------------------------------------------------------------------

def test_partition_ingested_twice_one_second_apart_fails(small_world, tmp_path):
    """The issue's report: exact duplicates are checked, a 2x day is inside the volume band."""
    from tests.test_validation import FAULT_DAY, RUN_DATE, WINDOW, _copy, _day

    store = _copy(small_world, tmp_path)
    t = _day(store)
    _rewrite(store, _concat(t, _shift(t, 1_000_000)))
    result = validate_window(store, RUN_DATE, WINDOW, settings=SETTINGS)
    assert suites.NEAR_DUPLICATE_RATE in result.failed_checks
    assert set(result.failed_checks) <= set(suites.TRAFFIC_CHECKS)  # v1 alone would have passed it
    assert {d for c in result.failed for d in c.days} == {FAULT_DAY.isoformat()}


def test_views_written_into_clicks_fails_the_click_through_ratio(small_world, tmp_path):
    from tests.test_validation import FAULT_DAY, RUN_DATE, WINDOW, _copy, _day

    store = _copy(small_world, tmp_path)
    _rewrite(store, _day(store, "views"), kind="clicks")
    result = validate_window(store, RUN_DATE, WINDOW, settings=SETTINGS)
    assert suites.CLICK_THROUGH in result.failed_checks
    assert set(result.failed_checks) <= set(suites.TRAFFIC_CHECKS)
    assert {(c.kind, tuple(c.days)) for c in result.failed} == {("clicks", (FAULT_DAY.isoformat(),))}
