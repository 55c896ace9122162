"""A synthetic world of users and items with latent tastes, day by day.

The model, deliberately simple and fully vectorised:

- ``topics`` latent topics. Each item has a main topic and a taste factor
  ``phi_i`` (a Dirichlet draw concentrated on its main topic), a Zipf-like
  popularity weight and a quality offset.
- Each user has a mixture of tastes ``theta_u`` (a sparse Dirichlet draw).
- A day: a share of the alive users is active; each active user has one or
  more sessions of several views. A session picks a topic from the user's
  mixture and views items of that topic by popularity (a few views explore the
  whole catalog). Clicks are a subset of views, more likely when the affinity
  ``theta_u . phi_i`` and the item's quality are high.
- Churn: every day a share of the catalog is retired and as many new items are
  launched; users join and leave.

Memory is bounded by one day of events plus O(users + items) state, so the
world scales to ML-20M size and beyond. Deterministic by seed. The ground
truth (``phi``, ``theta``, popularity, quality, lifetimes) is written under
``truth/`` so quality can later be measured against it.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from infra import events

DAY_US = 86_400 * 1_000_000


@dataclass(frozen=True)
class WorldConfig:
    """Knobs of the synthetic world (the embedded defaults are a small week)."""

    users: int = 5_000
    items: int = 2_000
    days: int = 7
    start: dt.date = dt.date(2026, 1, 1)
    seed: int = 42
    topics: int = 20
    taste_concentration: float = 0.1  # Dirichlet alpha of user tastes: small = few favourite topics
    zipf_exponent: float = 1.0
    active_share: float = 0.3
    sessions_per_active_user: float = 1.3
    views_per_session: float = 5.0
    explore_share: float = 0.1
    item_churn: float = 0.01
    user_churn: float = 0.01
    click_bias: float = -3.5
    click_affinity: float = 8.0
    quality_std: float = 0.5

    def __post_init__(self) -> None:
        if self.users < 1 or self.items < 2 or self.days < 1 or self.topics < 1:
            raise ValueError("users >= 1, items >= 2, days >= 1 and topics >= 1 are required")
        for name in ("active_share", "explore_share", "item_churn", "user_churn"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be within [0, 1]")
        if self.sessions_per_active_user < 1 or self.views_per_session < 1:
            raise ValueError("sessions_per_active_user and views_per_session must be >= 1")


@dataclass
class Day:
    date: dt.date
    views: pa.Table
    clicks: pa.Table
    launched: int
    retired: int
    joined: int
    left: int


class _Ids:
    """String ids ``{prefix}{n}`` as an arrow array that grows without rebuilding."""

    def __init__(self, prefix: str):
        self.prefix, self.chunks, self.size = prefix, [], 0

    def grow(self, n: int) -> None:
        if n > 0:
            self.chunks.append(pa.array([f"{self.prefix}{k}" for k in range(self.size, self.size + n)]))
            self.size += n

    def take(self, idx: np.ndarray) -> pa.Array:
        return pa.chunked_array(self.chunks, pa.string()).take(pa.array(idx)).combine_chunks()


class SyntheticWorld:
    """The world's state; ``days()`` yields one ``Day`` of events at a time."""

    def __init__(self, config: WorldConfig):
        self.cfg = config
        self.rng = np.random.default_rng(config.seed)
        k = config.topics
        self.item_topic = np.empty(0, np.int32)
        self.item_phi = np.empty((0, k), np.float32)
        self.item_pop = np.empty(0, np.float64)
        self.item_quality = np.empty(0, np.float32)
        self.item_born = np.empty(0, np.int32)
        self.item_died = np.empty(0, np.int32)  # -1 = alive
        self.user_theta = np.empty((0, k), np.float32)
        self.user_born = np.empty(0, np.int32)
        self.user_died = np.empty(0, np.int32)
        self.item_ids, self.user_ids = _Ids("i"), _Ids("u")
        self._launch_items(config.items, day=0)
        self._join_users(config.users, day=0)

    # --- population dynamics ------------------------------------------------
    def _launch_items(self, n: int, day: int) -> None:
        c, rng = self.cfg, self.rng
        topic = rng.integers(0, c.topics, n).astype(np.int32)
        alpha = np.full(c.topics, 0.05)
        phi = rng.dirichlet(alpha, n)
        phi = 0.2 * phi + 0.8 * np.eye(c.topics)[topic]  # concentrated on the main topic
        rank = rng.integers(1, max(c.items, 2) + 1, n)  # a new item lands anywhere in the popularity curve
        self.item_topic = np.concatenate([self.item_topic, topic])
        self.item_phi = np.concatenate([self.item_phi, phi.astype(np.float32)])
        self.item_pop = np.concatenate([self.item_pop, rank.astype(np.float64) ** -c.zipf_exponent])
        self.item_quality = np.concatenate(
            [self.item_quality, rng.normal(0, c.quality_std, n).astype(np.float32)]
        )
        self.item_born = np.concatenate([self.item_born, np.full(n, day, np.int32)])
        self.item_died = np.concatenate([self.item_died, np.full(n, -1, np.int32)])
        self.item_ids.grow(n)

    def _join_users(self, n: int, day: int) -> None:
        theta = self.rng.dirichlet(np.full(self.cfg.topics, self.cfg.taste_concentration), n).astype(np.float32)
        self.user_theta = np.concatenate([self.user_theta, theta])
        self.user_born = np.concatenate([self.user_born, np.full(n, day, np.int32)])
        self.user_died = np.concatenate([self.user_died, np.full(n, -1, np.int32)])
        self.user_ids.grow(n)

    def _churn(self, day: int) -> tuple[int, int, int, int]:
        c, rng = self.cfg, self.rng
        alive_items = np.flatnonzero(self.item_died < 0)
        n_items = rng.binomial(len(alive_items), c.item_churn) if day > 0 else 0
        n_items = min(n_items, len(alive_items) - 2)
        if n_items > 0:
            self.item_died[rng.choice(alive_items, n_items, replace=False)] = day
            self._launch_items(n_items, day)
        alive_users = np.flatnonzero(self.user_died < 0)
        n_left = rng.binomial(len(alive_users), c.user_churn) if day > 0 else 0
        n_joined = rng.binomial(c.users, c.user_churn) if day > 0 else 0
        if n_left > 0:
            self.user_died[rng.choice(alive_users, n_left, replace=False)] = day
        if n_joined > 0:
            self._join_users(n_joined, day)
        return max(n_items, 0), max(n_items, 0), n_joined, n_left

    # --- one day of events ----------------------------------------------------
    def _sample_items(self, topic: np.ndarray, alive: np.ndarray) -> np.ndarray:
        """Items for views of the given topics (popularity-weighted within the topic)."""
        rng, out = self.rng, np.empty(len(topic), np.int64)
        explore = rng.random(len(topic)) < self.cfg.explore_share
        groups = [(explore, alive)]
        alive_topic = self.item_topic[alive]
        for t in range(self.cfg.topics):
            pool = alive[alive_topic == t]
            groups.append(((topic == t) & ~explore, pool if len(pool) else alive))
        for mask, pool in groups:
            n = int(mask.sum())
            if n:
                cdf = np.cumsum(self.item_pop[pool])
                pick = np.searchsorted(cdf, rng.random(n) * cdf[-1], side="right")
                out[mask] = pool[np.minimum(pick, len(pool) - 1)]
        return out

    def _day(self, day: int) -> Day:
        c, rng = self.cfg, self.rng
        launched, retired, joined, left = self._churn(day)
        date = c.start + dt.timedelta(days=day)
        users = np.flatnonzero(self.user_died < 0)
        active = users[rng.random(len(users)) < c.active_share]
        n_sessions = 1 + rng.poisson(c.sessions_per_active_user - 1, len(active))
        s_user = np.repeat(active, n_sessions)
        cum = np.cumsum(self.user_theta[s_user], axis=1)
        s_topic = (cum < rng.random((len(s_user), 1)) * cum[:, -1:]).sum(axis=1).astype(np.int32)
        s_topic = np.minimum(s_topic, c.topics - 1)
        s_len = 1 + rng.poisson(c.views_per_session - 1, len(s_user))
        s_start = rng.integers(0, DAY_US - 3_600_000_000, len(s_user))

        v_user = np.repeat(s_user, s_len)
        v_item = self._sample_items(np.repeat(s_topic, s_len), np.flatnonzero(self.item_died < 0))
        gaps = rng.exponential(90e6, len(v_user)).astype(np.int64) + 1_000_000
        csum, starts = np.cumsum(gaps), np.cumsum(s_len) - s_len
        offset = csum - np.repeat((csum - gaps)[starts], s_len)  # time since the session began
        day_us = (date - dt.date(1970, 1, 1)).days * DAY_US
        v_ts = day_us + np.minimum(np.repeat(s_start, s_len) + offset, DAY_US - 60_000_000)

        affinity = np.einsum("ij,ij->i", self.user_theta[v_user], self.item_phi[v_item])
        logit = c.click_bias + c.click_affinity * affinity + self.item_quality[v_item]
        clicked = rng.random(len(v_user)) < 1.0 / (1.0 + np.exp(-logit))
        c_ts = v_ts[clicked] + rng.integers(1_000_000, 30_000_000, int(clicked.sum()))
        c_ts = np.minimum(c_ts, day_us + DAY_US - 1)

        return Day(
            date=date,
            views=self._table(v_user, v_item, v_ts),
            clicks=self._table(v_user[clicked], v_item[clicked], c_ts),
            launched=launched, retired=retired, joined=joined, left=left,
        )

    def _table(self, user: np.ndarray, item: np.ndarray, ts_us: np.ndarray) -> pa.Table:
        order = np.argsort(ts_us, kind="stable")
        return pa.table(
            {
                "user_id": self.user_ids.take(user[order]),
                "item_id": self.item_ids.take(item[order]),
                "ts": pa.array(ts_us[order], pa.timestamp("us", tz="UTC")),
            },
            schema=events.SCHEMA,
        )

    def days(self) -> Iterator[Day]:
        for day in range(self.cfg.days):
            yield self._day(day)

    # --- ground truth -----------------------------------------------------------
    def write_truth(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        start = self.cfg.start

        def dates(days: np.ndarray) -> pa.Array:
            return pa.array([None if d < 0 else start + dt.timedelta(days=int(d)) for d in days], pa.date32())

        k = self.cfg.topics
        pq.write_table(pa.table({
            "item_id": self.item_ids.take(np.arange(self.item_ids.size)),
            "topic": self.item_topic,
            "popularity": self.item_pop,
            "quality": self.item_quality,
            "launched": dates(self.item_born),
            "retired": dates(self.item_died),
            "phi": pa.FixedSizeListArray.from_arrays(pa.array(self.item_phi.ravel()), k),
        }), folder / "items.parquet")
        pq.write_table(pa.table({
            "user_id": self.user_ids.take(np.arange(self.user_ids.size)),
            "joined": dates(self.user_born),
            "left": dates(self.user_died),
            "theta": pa.FixedSizeListArray.from_arrays(pa.array(self.user_theta.ravel()), k),
        }), folder / "users.parquet")
        cfg = dataclasses.asdict(self.cfg) | {"start": self.cfg.start.isoformat()}
        (folder / "world.json").write_text(json.dumps(cfg, indent=2))


def generate(out: Path, config: WorldConfig,
             on_day: Callable[[Day], None] | None = None) -> dict:
    """Write a synthetic world's events (and its truth) to a new event store ``out``."""
    totals = {"views": 0, "clicks": 0, "days": 0, "launched": 0, "retired": 0}
    users, items = set(), set()
    events.check_new_output(out)
    with events.staging_dir(out) as tmp:
        world = SyntheticWorld(config)
        for day in world.days():
            events.write_day(tmp, "views", day.date, day.views)
            events.write_day(tmp, "clicks", day.date, day.clicks)
            totals["views"] += day.views.num_rows
            totals["clicks"] += day.clicks.num_rows
            totals["days"] += 1
            totals["launched"] += day.launched
            totals["retired"] += day.retired
            users.update(day.views.column("user_id").unique().to_pylist())
            items.update(day.views.column("item_id").unique().to_pylist())
            if on_day:
                on_day(day)
        world.write_truth(tmp / "truth")
    return totals | {"users": len(users), "items": len(items),
                     "start": config.start.isoformat(),
                     "end": (config.start + dt.timedelta(days=config.days - 1)).isoformat()}
