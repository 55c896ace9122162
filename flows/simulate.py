"""A months-long life of the product, compressed: a synthetic world with churn, day by day.

Each simulated day: the world's events are appended to the event store, the
daily flow runs for the next date (through the real Prefect API, MLflow server
and S3), and one ``led serve`` process, kept running for the whole simulation,
is queried with that day's real timelines. Faults can be injected:

- a *bad-data day*: 90% of the day's views vanish (a broken ingestion); the
  validation gate must stop that run before training and serving must be
  untouched. The partition is then repaired (re-ingested), as an operator would.
- a *bad-model day*: the run is made with deliberately weak parameters
  (d = 2, one epoch); the gate must keep the champion.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from data_sources.synthetic import SyntheticWorld, WorldConfig
from infra import events
from infra.settings import Settings

WEAK_MODEL = {"dim": 2, "epochs": 1}


@dataclass
class SimulationConfig:
    days: int = 14
    warmup_days: int = 3
    users: int = 3000
    items: int = 800
    seed: int = 42
    start: dt.date = dt.date(2026, 1, 1)
    bad_data_days: tuple[int, ...] = ()
    bad_model_days: tuple[int, ...] = ()
    queries_per_day: int = 200
    params: dict[str, Any] = field(default_factory=dict)


class ServingProcess:
    """One ``led serve`` subprocess for the whole simulation, and a small client for it."""

    def __init__(self, settings: Settings, port: int, log_path: Path):
        self.url = f"http://{settings.serve_host}:{port}"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "ab")
        env = os.environ.copy() | {"LED_SERVE_POLL_SECONDS": "0.5"}
        self.proc = subprocess.Popen([sys.executable, "-m", "cli.main", "serve", "--port", str(port)],
                                     stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                     cwd=Path(__file__).resolve().parents[1])
        self._wait(lambda: self.get("/healthz")[0] == 200, 60, "the serving process did not start")

    def get(self, path: str) -> tuple[int, dict]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=5) as resp:
                return resp.status, json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as exc:
            return exc.code, {}
        except (OSError, ValueError):
            return 0, {}

    def recommend(self, items: list[str], k: int = 10) -> tuple[int, dict]:
        req = urllib.request.Request(self.url + "/recommend", json.dumps({"items": items, "k": k}).encode(),
                                     {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, {}
        except (OSError, ValueError):
            return 0, {}

    def live_version(self) -> str | None:
        model = self.get("/model")[1].get("model") or {}
        return str(model["model_version"]) if "model_version" in model else None

    def wait_for_version(self, version: str, timeout: float = 60.0) -> None:
        self._wait(lambda: self.live_version() == str(version), timeout,
                   f"serving did not switch to model version {version}")

    def _wait(self, ok: Callable[[], bool], timeout: float, message: str) -> None:
        deadline = time.monotonic() + timeout
        while not ok():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(message)
            time.sleep(0.2)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._log.close()


def drop_volume(table, keep: float, seed: int):
    """The bad-data fault: keep only a share of a day's rows (a broken ingestion)."""
    mask = np.random.default_rng(seed).random(table.num_rows) < keep
    return table.filter(mask)


def query_serving(serving: ServingProcess, views, n: int, seed: int) -> tuple[int, int]:
    """Recommend for ``n`` users' real timelines of the day; returns (queries, errors)."""
    frame = views.select(["user_id", "item_id"]).to_pandas()
    timelines = frame.groupby("user_id")["item_id"].agg(list)
    if timelines.empty:
        return 0, 0
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(timelines), size=min(n, len(timelines)), replace=False)
    errors = 0
    for i in picks:
        status, body = serving.recommend(timelines.iloc[int(i)][-20:], k=10)
        if status != 200 or not (0 < len(body.get("ids", [])) <= 10):
            errors += 1
    return len(picks), errors


SUFFIX = "-simulation"


def simulation_overrides(settings: Settings) -> dict[str, str]:
    """Environment giving a simulation its own experiment, registered model and S3 prefix."""
    return {"LED_MLFLOW_EXPERIMENT": settings.mlflow_experiment + SUFFIX,
            "LED_MLFLOW_MODEL_NAME": settings.mlflow_model_name + SUFFIX,
            "LED_S3_PREFIX": settings.s3_prefix + SUFFIX}


def reset_namespace(settings: Settings) -> None:
    """A new simulation starts from nothing: no registered model, no serving slots (its own namespace only)."""
    from mlflow.exceptions import MlflowException

    from infra import registry
    from serving.storage import make_client

    assert settings.mlflow_model_name.endswith(SUFFIX) and settings.s3_prefix.endswith(SUFFIX)
    try:
        registry.connect(settings).delete_registered_model(settings.mlflow_model_name)
    except MlflowException:
        pass  # nothing registered yet
    s3 = make_client(settings)
    try:
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=settings.s3_bucket,
                                                             Prefix=settings.s3_prefix + "/")
        for page in pages:
            keys = [{"Key": obj["Key"]} for obj in page.get("Contents", [])]
            if keys:
                s3.delete_objects(Bucket=settings.s3_bucket, Delete={"Objects": keys})
    except s3.exceptions.NoSuchBucket:
        pass


def simulate(settings: Settings, cfg: SimulationConfig, run_daily: Callable[[dict], dict],
             serve_port: int, log: Callable[[str], None] = print) -> dict:
    """Run the simulation; ``run_daily(params) -> summary`` runs one daily flow (flows.runner.run_daily)."""
    root = settings.home / "simulation"
    shutil.rmtree(root, ignore_errors=True)
    reset_namespace(settings)
    store = root / "events"
    world = SyntheticWorld(WorldConfig(users=cfg.users, items=cfg.items, days=cfg.days, seed=cfg.seed,
                                       start=cfg.start))
    serving = ServingProcess(settings, serve_port, root / "serve.log")
    totals = {"days": cfg.days, "runs": 0, "pushes": 0, "gate_rejections": 0, "validation_failures": 0,
              "failed_runs": 0, "serving_queries": 0, "serving_errors": 0}
    ndcg: list[float | None] = []
    runs = []
    live_version, live_items, evaluated_items = None, None, None
    coverage: list[dict] = []
    try:
        for i, day in enumerate(world.days()):
            if live_items is not None:  # the clicks of the day after the live model was trained
                coverage.append({"date": str(day.date), "live": scorable_share(day.clicks, live_items),
                                 "evaluated_model": scorable_share(day.clicks, evaluated_items)})
            views = day.views
            if i in cfg.bad_data_days:
                views = drop_volume(day.views, keep=0.1, seed=cfg.seed + i)
                log(f"[simulate] {day.date}: injected bad data (90% of views lost)")
            events.write_day(store, "views", day.date, views)
            events.write_day(store, "clicks", day.date, day.clicks)
            if i + 1 < cfg.warmup_days:
                continue
            run_date = (day.date + dt.timedelta(days=1)).isoformat()
            params = cfg.params | {"run_date": run_date, "events_dir": str(store)}
            if i in cfg.bad_model_days:
                params |= WEAK_MODEL
                log(f"[simulate] {run_date}: training a deliberately weak model {WEAK_MODEL}")
            result = run_daily(params)
            totals["runs"] += 1
            outcome = _account(result, totals)
            ndcg.append(result.get("ndcg@100"))
            runs.append({"run_date": run_date, "outcome": outcome} |
                        {k: result.get(k) for k in ("model_version", "pushed_slot", "pushed_version",
                                                    "refit_shipped", "ndcg@100", "champion_ndcg@100",
                                                    "initialisation_ndcg@100", "popularity_ndcg@100")})
            log(f"[simulate] {run_date}: {outcome} ndcg@100={result.get('ndcg@100')}")
            if result.get("validation_failed"):
                events.write_day(store, "views", day.date, day.views)  # the operator re-ingests the day
            if result.get("pushed_slot"):
                live_version = result.get("pushed_version") or result["model_version"]
                serving.wait_for_version(live_version)
                live_items = _model_items(result.get("pushed_model_dir"))
                # what would serve without the whole-window refit (the model the gate judged)
                evaluated_items = _model_items(result.get("evaluated_model_dir"))
            if live_version is not None:
                q, e = query_serving(serving, day.views, cfg.queries_per_day, cfg.seed + i)
                totals["serving_queries"] += q
                totals["serving_errors"] += e
            if live_version is not None and serving.live_version() != str(live_version):
                totals["serving_errors"] += 1  # serving must keep the live champion across failed runs
    finally:
        serving.stop()
    return totals | {"ndcg@100": ndcg, "live_model_version": live_version, "event_store": str(store),
                     "runs_detail": runs, "next_day_scorable_share": coverage,
                     "mean_next_day_scorable_share": _mean_shares(coverage)}


def _mean_shares(coverage: list[dict]) -> dict[str, float] | None:
    if not coverage:
        return None
    return {key: float(np.mean([c[key] for c in coverage])) for key in ("live", "evaluated_model")}


def scorable_share(clicks, items: set[str]) -> float:
    """Share of a day's clicks on items the live model can score (it has a vector for them)."""
    ids = clicks.column("item_id").to_pylist()
    return sum(1 for i in ids if i in items) / max(1, len(ids))


def _model_items(model_dir: str | None) -> set[str] | None:
    if not model_dir:
        return None
    return set(np.load(Path(model_dir) / "item_ids.npy", allow_pickle=False).astype(str).tolist())


def _account(result: dict, totals: dict) -> str:
    if result.get("state") != "COMPLETED":
        if result.get("validation_failed"):
            totals["validation_failures"] += 1
            return "validation-failed"
        totals["failed_runs"] += 1
        return f"failed: {result.get('error')}"
    if result.get("pushed_slot"):
        totals["pushes"] += 1
        return f"pushed v{result.get('pushed_version') or result['model_version']} to {result['pushed_slot']}"
    if not result.get("promoted"):
        totals["gate_rejections"] += 1
        return f"gate rejected v{result['model_version']}"
    return "promoted, not pushed"

