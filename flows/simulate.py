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
- an *S3 outage*: the day's run sees its S3 endpoint unreachable (a loopback port nobody
  listens on; only the push touches S3): the push fails, nothing is activated, serving keeps the
  old model and the next day pushes.
- an *MLflow outage*: the MLflow server is stopped before the run and restarted after it; the run
  fails at registration (the first stage that talks to MLflow), the operator reruns the day and the
  rerun completes from the cached pre-training and fine-tuning.
- a *worker kill*: one serving worker is SIGKILLed halfway through the day's queries; gunicorn
  replaces it and no query gets a 5xx.
- a *training kill*: the run is started as ``led run`` and SIGKILLed once fine-tuning steps are
  logged; the rerun completes and resumes pre-training from the cache.

Each day becomes one :class:`DayRecord` (docs/architecture.md, "The soak: months under churn"),
written as ``record.csv``/``record.json`` with plots, logged to MLflow and published as Prefect
artifacts; the pass criteria are judged from the records.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from data_sources.synthetic import SyntheticWorld, WorldConfig
from infra import events
from infra.settings import Settings
from models.metrics import beyond_noise
from serving.client import ServingClient

WEAK_MODEL = {"dim": 2, "epochs": 1}


FAULTS = ("bad_data", "s3_outage", "worker_kill", "bad_model", "kill_training", "mlflow_outage")
# what each kind of day must end as (the pass criteria compare against it)
EXPECTED = {"clean": "pushed", "bad_data": "validation-failed", "bad_model": "gate rejected",
            "s3_outage": "push failed", "mlflow_outage": "pushed on rerun", "kill_training": "pushed on rerun",
            "worker_kill": "pushed"}
PANEL_K = 20  # top-20 lists of the stability panel


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
    s3_outage_days: tuple[int, ...] = ()
    mlflow_outage_days: tuple[int, ...] = ()
    worker_kill_days: tuple[int, ...] = ()
    kill_training_days: tuple[int, ...] = ()
    queries_per_day: int = 200
    panel_users: int = 50
    quality_tolerance: float = 0.05  # clean days' NDCG@100 may fall at most this far under its 7-day median
    serve_workers: int = 2
    params: dict[str, Any] = field(default_factory=dict)

    def fault(self, day: int) -> str:
        """The fault injected on day index ``day`` ("clean" if none)."""
        found = [name for name in FAULTS if day in getattr(self, f"{name}_days")]
        if len(found) > 1:
            raise ValueError(f"day {day} has more than one fault: {found}")
        return found[0] if found else "clean"


def soak_plan(days: int, warmup: int) -> dict[str, tuple[int, ...]]:
    """The ``--soak`` preset: every fault once per cycle, spread evenly over the run days after two clean
    runs; about one cycle per 18 days (one at 14 days or fewer), the last days clean."""
    first = warmup + 1
    span = days - first
    cycles = max(1, span // 18)
    count = len(FAULTS) * cycles
    if span < count:
        raise ValueError(f"--soak needs at least {first + count} days with --warmup {warmup}")
    gap = span // count
    plan: dict[str, list[int]] = {name: [] for name in FAULTS}
    for n in range(count):
        plan[FAULTS[n % len(FAULTS)]].append(first + n * gap)
    return {f"{name}_days": tuple(v) for name, v in plan.items()}


@dataclass
class DayRecord:
    """One simulated day, as the record's row (docs/architecture.md, "The soak: months under churn")."""
    day: int
    date: str
    run_date: str | None = None
    fault: str = "clean"
    expected: str | None = None
    outcome: str = "warm-up"
    state: str | None = None
    attempts: int = 0
    gate: str | None = None
    gate_reasons: str = ""
    challenger_ndcg: float | None = None
    challenger_ndcg_se: float | None = None  # standard error of that mean over the eval day's users (the gate's)
    champion_ndcg: float | None = None
    popularity_ndcg: float | None = None
    finetune_gain: float | None = None
    median_7d_ndcg: float | None = None
    ndcg_vs_median: float | None = None
    catalog_size: int = 0
    items_launched: int = 0
    items_retired: int = 0
    next_day_scorable_share: float | None = None
    next_day_scorable_share_evaluated: float | None = None  # of the model the gate judged (before the refit)
    stability_top20: float | None = None
    serving_p50_ms: float | None = None
    serving_p99_ms: float | None = None
    serving_queries: int = 0
    serving_errors: int = 0
    serving_5xx: int = 0
    swap_seconds: float | None = None
    live_version: str | None = None
    pushed_version: str | None = None
    resumed_from_cache: bool | None = None
    partial_activation: bool = False
    worker_replaced: bool | None = None
    error: str | None = None


class ServingProcess:
    """One ``led serve`` subprocess (gunicorn workers) for the whole simulation, and a small client for it."""

    def __init__(self, settings: Settings, port: int, log_path: Path, workers: int = 2):
        self.url = f"http://{settings.serve_host}:{port}"
        self.client = ServingClient(self.url)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "ab")
        env = os.environ.copy() | {"LED_SERVE_POLL_SECONDS": "0.5"}
        self.proc = subprocess.Popen([sys.executable, "-m", "cli.main", "serve", "--port", str(port),
                                      "--workers", str(workers)],
                                     stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                     cwd=Path(__file__).resolve().parents[1])
        self._wait(lambda: self.get("/healthz")[0] == 200, 60, "the serving process did not start")

    def get(self, path: str) -> tuple[int, dict]:
        return self.client.status(path)

    def recommend(self, items: list[str], k: int = 10) -> tuple[int, dict]:
        """One query; a connection dropped by a dying worker is retried once (serving.client)."""
        return self.client.recommend(items, k)

    def workers(self) -> set[int]:
        """The live worker processes under the gunicorn master."""
        from infra.stack import live_children

        return live_children(self.proc.pid)

    def kill_worker(self) -> set[int]:
        """SIGKILL one worker; returns the workers before the kill."""
        before = self.workers()
        if before:
            os.kill(min(before), signal.SIGKILL)
        return before

    def wait_workers_replaced(self, before: set[int], timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            now = self.workers()
            if len(now) >= len(before) and now != before:
                return True
            time.sleep(0.2)
        return False

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
        self.client.close()


def drop_volume(table, keep: float, seed: int):
    """The bad-data fault: keep only a share of a day's rows (a broken ingestion)."""
    mask = np.random.default_rng(seed).random(table.num_rows) < keep
    return table.filter(mask)


@dataclass
class ServingDay:
    queries: int = 0
    errors: int = 0
    errors_5xx: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    worker_replaced: bool | None = None

    def p(self, q: float) -> float | None:
        return round(float(np.percentile(self.latencies_ms, q)), 2) if self.latencies_ms else None


def query_serving(serving: ServingProcess, views, n: int, seed: int, kill_worker: bool = False) -> ServingDay:
    """Recommend for ``n`` users' real timelines of the day (client-side latency measured); with
    ``kill_worker`` one worker is SIGKILLed halfway through."""
    frame = views.select(["user_id", "item_id"]).to_pandas()
    timelines = frame.groupby("user_id")["item_id"].agg(list)
    out = ServingDay()
    if timelines.empty:
        return out
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(timelines), size=min(n, len(timelines)), replace=False)
    before = None
    for q, i in enumerate(picks):
        if kill_worker and q == len(picks) // 2:
            before = serving.kill_worker()
        t0 = time.perf_counter()
        status, body = serving.recommend(timelines.iloc[int(i)][-20:], k=10)
        out.latencies_ms.append((time.perf_counter() - t0) * 1000)
        out.errors_5xx += status >= 500
        if status != 200 or not (0 < len(body.get("ids", [])) <= 10):
            out.errors += 1
    out.queries = len(picks)
    if before is not None:
        out.worker_replaced = serving.wait_workers_replaced(before)
    return out


class StabilityPanel:
    """A fixed, seeded panel of users with frozen timelines: day-over-day overlap of their top-20 lists
    from the live service measures how much the model's answers move, not the users'."""

    def __init__(self, views, size: int, seed: int):
        frame = views.select(["user_id", "item_id"]).to_pandas()
        timelines = frame.groupby("user_id")["item_id"].agg(list)
        picks = np.random.default_rng(seed).choice(len(timelines), size=min(size, len(timelines)), replace=False)
        self.timelines = [timelines.iloc[int(i)][-20:] for i in sorted(picks)]
        self.previous: list[set[str]] | None = None

    def overlap(self, serving: ServingProcess) -> float | None:
        """Mean Jaccard overlap of today's top-20 with yesterday's, per panel user (None on the first day)."""
        today = [set(serving.recommend(t, k=PANEL_K)[1].get("ids", [])) for t in self.timelines]
        prev, self.previous = self.previous, today
        if prev is None:
            return None
        return round(float(np.mean([len(a & b) / max(1, len(a | b)) for a, b in zip(prev, today)])), 4)


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


@dataclass
class Ops:
    """What the simulation needs besides the flow: the stack (to stop/start MLflow) and a way to run a day
    as ``led run`` in a subprocess (to kill it mid-training)."""
    settings: Settings
    stack: Any

    def mlflow_down(self) -> None:
        self.stack.down(("mlflow",))

    def mlflow_up(self) -> None:
        self.stack.up(("mlflow",), timeout=180)

    def run_and_kill_in_training(self, params: dict, log: Callable[[str], None]) -> bool:
        """Start the day as ``led run``; SIGKILL it once fine-tuning logs a step. True if it was killed."""
        args = [sys.executable, "-m", "cli.main", "run", "--events", params["events_dir"],
                "--date", params["run_date"]]
        for name, value in params.items():
            if name not in ("events_dir", "run_date"):
                args += ["--param", f"{name}={value}"]
        proc = subprocess.Popen(args, cwd=Path(__file__).resolve().parents[1], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
        killed = False
        for line in proc.stdout:
            if "] step " in line and "loss" in line:  # fine-tuning under way: pre-training is persisted
                os.killpg(proc.pid, signal.SIGKILL)
                killed = True
                break
        proc.stdout.close()
        proc.wait(60)
        log(f"[simulate] {params['run_date']}: training run {'killed' if killed else 'was NOT killed'} "
            f"(exit {proc.returncode})")
        return killed and proc.returncode == -signal.SIGKILL


def simulate(settings: Settings, cfg: SimulationConfig, run_daily: Callable[[dict], dict],
             serve_port: int, log: Callable[[str], None] = print, ops: Ops | None = None) -> dict:
    """Run the simulation; ``run_daily(params) -> summary`` runs one daily flow (flows.runner.run_daily);
    ``ops`` is needed for the MLflow-outage and training-kill faults."""
    root = settings.home / "simulation"
    shutil.rmtree(root, ignore_errors=True)
    reset_namespace(settings)
    store = root / "events"
    world = SyntheticWorld(WorldConfig(users=cfg.users, items=cfg.items, days=cfg.days, seed=cfg.seed,
                                       start=cfg.start))
    serving = ServingProcess(settings, serve_port, root / "serve.log", cfg.serve_workers)
    records: list[DayRecord] = []
    written: dict[str, tuple[int, int]] = {}  # date -> (views, clicks) the world produced
    live = Live()
    panel = None
    try:
        for i, day in enumerate(world.days()):
            rec = DayRecord(day=i, date=str(day.date), fault=cfg.fault(i),
                            catalog_size=int((world.item_died == -1).sum()),
                            items_launched=day.launched, items_retired=day.retired)
            if live.items is not None and records:  # the clicks of the day after the live model was trained
                records[-1].next_day_scorable_share = round(scorable_share(day.clicks, live.items), 4)
                if live.evaluated_items is not None:
                    records[-1].next_day_scorable_share_evaluated = round(
                        scorable_share(day.clicks, live.evaluated_items), 4)
            records.append(rec)
            written[str(day.date)] = (day.views.num_rows, day.clicks.num_rows)
            views = day.views
            if rec.fault == "bad_data":
                views = drop_volume(day.views, keep=0.1, seed=cfg.seed + i)
                log(f"[simulate] {day.date}: injected bad data (90% of views lost)")
            events.write_day(store, "views", day.date, views)
            events.write_day(store, "clicks", day.date, day.clicks)
            if i + 1 < cfg.warmup_days:
                continue
            rec.run_date = (day.date + dt.timedelta(days=1)).isoformat()
            rec.expected = EXPECTED[rec.fault]
            params = cfg.params | {"run_date": rec.run_date, "events_dir": str(store)}
            result = _run_day(settings, rec, params, run_daily, ops, log)
            _fill_run(rec, result)
            log(f"[simulate] {rec.run_date} [{rec.fault}]: {rec.outcome} ndcg@100={rec.challenger_ndcg}")
            if result.get("validation_failed"):
                events.write_day(store, "views", day.date, day.views)  # the operator re-ingests the day
            if result.get("pushed_slot"):
                live.version = str(result.get("pushed_version") or result["model_version"])
                serving.wait_for_version(live.version)
                rec.swap_seconds = _swap_seconds(settings, serving)
                live.items = _model_items(result.get("pushed_model_dir"))
                live.evaluated_items = _model_items(result.get("evaluated_model_dir"))
            if live.version is None:
                continue
            rec.partial_activation = _partial_activation(settings, serving, live.version)
            served = query_serving(serving, day.views, cfg.queries_per_day, cfg.seed + i,
                                   kill_worker=rec.fault == "worker_kill")
            rec.serving_queries, rec.serving_errors, rec.serving_5xx = served.queries, served.errors, served.errors_5xx
            rec.serving_p50_ms, rec.serving_p99_ms, rec.worker_replaced = served.p(50), served.p(99), served.worker_replaced
            panel = panel or StabilityPanel(day.views, cfg.panel_users, cfg.seed)
            rec.stability_top20 = panel.overlap(serving)
            rec.live_version = serving.live_version()
    finally:
        serving.stop()
    _trailing_medians(records)
    lost = _lost_days(store, written)
    criteria = pass_criteria(records, lost, cfg.quality_tolerance, settings.gate_noise_z)
    return {"records": records, "criteria": criteria, "lost_days": lost,
            "live_model_version": live.version, "event_store": str(store), "root": str(root)}


@dataclass
class Live:
    version: str | None = None
    items: set[str] | None = None
    evaluated_items: set[str] | None = None  # the live day's evaluated model (the refit ships instead)


def _run_day(settings: Settings, rec: DayRecord, params: dict, run_daily: Callable[[dict], dict],
             ops: Ops | None, log: Callable[[str], None]) -> dict:
    """The day's run with its fault injected; the operator's rerun where the fault calls for one."""
    if rec.fault == "bad_model":
        params = params | WEAK_MODEL
        log(f"[simulate] {rec.run_date}: training a deliberately weak model {WEAK_MODEL}")
    if rec.fault == "s3_outage":
        return _with_s3_unreachable(lambda: _attempt(rec, run_daily, params), log, rec.run_date)
    if rec.fault in ("mlflow_outage", "kill_training") and ops is None:
        raise ValueError(f"the {rec.fault} fault needs the stack (ops)")
    if rec.fault == "mlflow_outage":
        log(f"[simulate] {rec.run_date}: MLflow server stopped for the run")
        ops.mlflow_down()
        try:
            first = _attempt(rec, run_daily, params)
        finally:
            ops.mlflow_up()
        rec.error = first.get("error")
        if first.get("state") == "COMPLETED":
            return first  # nothing to rerun (the run never reached MLflow while it was down)
        log(f"[simulate] {rec.run_date}: MLflow is back; rerunning the day")
        return _rerun(rec, run_daily, params)
    if rec.fault == "kill_training":
        rec.attempts += 1
        if not ops.run_and_kill_in_training(params, log):
            rec.error = "the training run was not killed mid-training"
        return _rerun(rec, run_daily, params)
    return _attempt(rec, run_daily, params)


def _attempt(rec: DayRecord, run_daily: Callable[[dict], dict], params: dict) -> dict:
    rec.attempts += 1
    return run_daily(params)


def _rerun(rec: DayRecord, run_daily: Callable[[dict], dict], params: dict) -> dict:
    result = _attempt(rec, run_daily, params)
    rec.resumed_from_cache = _pretrain_cached(result.get("flow_run_id"))
    return result


def _with_s3_unreachable(run: Callable[[], dict], log: Callable[[str], None], run_date: str) -> dict:
    """Run with the flow's S3 endpoint on a loopback port nobody listens on (serving keeps the real S3)."""
    from infra.settings import get_settings
    from infra.stack import free_port

    saved = os.environ.get("LED_S3_ENDPOINT_URL")
    os.environ["LED_S3_ENDPOINT_URL"] = f"http://127.0.0.1:{free_port()}"
    get_settings.cache_clear()
    log(f"[simulate] {run_date}: S3 unreachable for the run ({os.environ['LED_S3_ENDPOINT_URL']})")
    try:
        return run()
    finally:
        if saved is None:
            os.environ.pop("LED_S3_ENDPOINT_URL")
        else:
            os.environ["LED_S3_ENDPOINT_URL"] = saved
        get_settings.cache_clear()


def _pretrain_cached(flow_run_id: str | None) -> bool | None:
    """Whether the flow run's pre-training task finished as ``Cached`` (asked of the Prefect API)."""
    if not flow_run_id:
        return None
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    # the window's pre-training is the first "pretrain" task run (a promoted run's refit has its own)
    pretrain = sorted((r for r in runs if r.name.startswith("pretrain") and r.state is not None),
                      key=lambda r: r.created)
    return bool(pretrain) and pretrain[0].state.name == "Cached"


def _fill_run(rec: DayRecord, result: dict) -> None:
    rec.state = result.get("state")
    rec.outcome = _outcome(result)
    rec.error = rec.error or result.get("error")
    if result.get("model_version") is not None:
        rec.gate = "promoted" if result.get("promoted") else "rejected"
        rec.gate_reasons = "; ".join(result.get("reasons") or [])
    rec.challenger_ndcg = result.get("ndcg@100")
    rec.challenger_ndcg_se = result.get("ndcg@100_se")
    rec.champion_ndcg = result.get("champion_ndcg@100")
    rec.popularity_ndcg = result.get("popularity_ndcg@100")
    if rec.challenger_ndcg is not None and result.get("initialisation_ndcg@100") is not None:
        rec.finetune_gain = round(rec.challenger_ndcg - result["initialisation_ndcg@100"], 6)
    rec.pushed_version = result.get("pushed_version") or (result.get("model_version") if result.get("pushed_slot")
                                                          else None)


def _outcome(result: dict) -> str:
    if result.get("state") != "COMPLETED":
        if result.get("validation_failed"):
            return "validation-failed"
        return "push failed" if _push_failed(result) else "failed"
    if result.get("pushed_slot"):
        return "pushed"
    if not result.get("promoted"):
        return "gate rejected"
    return "promoted, not pushed"


def _push_failed(result: dict) -> bool:
    """A failed run whose error is the S3 endpoint (the push is the only stage that talks to S3)."""
    error = result.get("error") or ""
    return any(word in error for word in ("EndpointConnectionError", "Could not connect to the endpoint URL"))


def _partial_activation(settings: Settings, serving: ServingProcess, expected: str) -> bool:
    """A partial activation: S3's active pointer names a slot that does not verify whole, or serving runs
    another version than the live one."""
    from serving.storage import BlueGreenStore

    store = BlueGreenStore.from_settings(settings)
    active = store.read_active()
    if active is None or active.model_version != expected or serving.live_version() != expected:
        return True
    try:
        store.verify_slot(active.slot, active.manifest_sha256)
    except Exception:  # noqa: BLE001 - any verification failure is a broken activation
        return True
    return False


def _swap_seconds(settings: Settings, serving: ServingProcess) -> float | None:
    """From the flip of S3's ACTIVE to the serving worker's load of the new model (both clocks: 1 s)."""
    from serving.storage import ACTIVE, BlueGreenStore

    store = BlueGreenStore.from_settings(settings)
    flipped = store.s3.head_object(Bucket=store.bucket, Key=store.key(ACTIVE))["LastModified"]
    loaded = (serving.get("/model")[1].get("model") or {}).get("loaded_at")
    if not loaded:
        return None
    loaded_at = dt.datetime.strptime(loaded, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.timezone.utc)
    return max(0.0, (loaded_at - flipped).total_seconds())


def _trailing_medians(records: list[DayRecord], window: int = 7, min_history: int = 3) -> None:
    """NDCG@100 against the median of the previous ``window`` days with a sane model (not bad-model)."""
    history: list[float] = []
    for rec in records:
        if rec.challenger_ndcg is None or rec.fault == "bad_model":
            continue
        if len(history) >= min_history:
            rec.median_7d_ndcg = round(float(np.median(history[-window:])), 6)
            rec.ndcg_vs_median = round(rec.challenger_ndcg / rec.median_7d_ndcg - 1, 4)
        history.append(rec.challenger_ndcg)


def _lost_days(store: Path, written: dict[str, tuple[int, int]]) -> list[str]:
    """Days whose stored views/clicks are not what the world produced (after any repair)."""
    lost = []
    for date, (views, clicks) in written.items():
        day = dt.date.fromisoformat(date)
        stored = (events.read_day(store, "views", day).num_rows, events.read_day(store, "clicks", day).num_rows)
        if stored != (views, clicks):
            lost.append(date)
    return lost


def pass_criteria(records: list[DayRecord], lost_days: list[str], tolerance: float = 0.05,
                  noise_z: float = 1.96) -> dict[str, dict]:
    """The soak's pass criteria (issue 12, part 4), each ``{"pass": bool, "detail": str}``.

    Quality: a day's NDCG@100 is a mean over that day's clickers (a few hundred on the embedded
    defaults), so a day under ``(1 - tolerance)`` x its 7-day median fails only when it is under by
    more than ``noise_z`` standard errors (``models.metrics.beyond_noise``, the gate's rule); the
    detail names the days under the band by noise too."""
    runs = [r for r in records if r.run_date]
    clean = [r for r in runs if r.fault in ("clean", "worker_kill")]
    faulty = [r for r in runs if r.fault not in ("clean", "worker_kill")]
    wrong = [f"{r.run_date} {r.fault}: {r.outcome} after {r.attempts} attempt(s), resumed from cache "
             f"{r.resumed_from_cache}" for r in faulty if not _as_expected(r)]
    unpushed = [f"{r.run_date}: {r.outcome}" for r in clean if r.outcome != "pushed"]
    killed = [r for r in runs if r.fault == "worker_kill"]
    checked = [r for r in clean + [r for r in faulty if r.fault != "bad_model"] if r.ndcg_vs_median is not None]
    under = [r for r in checked if r.ndcg_vs_median < -tolerance]
    low = [_under(r) for r in under if _beyond_noise(r, tolerance, noise_z)]
    noise = [_under(r) for r in under if not _beyond_noise(r, tolerance, noise_z)]
    partial = [r.run_date for r in runs if r.partial_activation]
    errors = sum(r.serving_5xx for r in runs)
    return {
        "every clean day pushed": _criterion(not unpushed, f"{len(clean) - len(unpushed)}/{len(clean)} pushed",
                                             unpushed),
        "every bad day rejected for the right reason": _criterion(not wrong, f"{len(faulty) - len(wrong)}/"
                                                                  f"{len(faulty)} as expected", wrong),
        "0 partial activations": _criterion(not partial, f"{len(partial)} partial", partial),
        "0 serving 5xx": _criterion(errors == 0 and all(r.worker_replaced for r in killed),
                                    f"{errors} 5xx in {sum(r.serving_queries for r in runs)} queries; "
                                    f"{len(killed)} worker kill(s), replaced: {[r.worker_replaced for r in killed]}"),
        "no day's data lost": _criterion(not lost_days, f"{len(records) - len(lost_days)}/{len(records)} days whole",
                                         lost_days),
        f"quality within {tolerance:.0%} of its 7-day median on clean days": _criterion(
            not low, f"{len(checked) - len(low)}/{len(checked)} days within, {len(noise)} of them under the band by "
            f"less than {noise_z:g} SE ({', '.join(noise) or 'none'})" if checked else
            "no day had 3 earlier days to compare with", low),
    }


def _under(rec: DayRecord) -> str:
    return f"{rec.run_date}: {rec.ndcg_vs_median:+.1%}"


def _beyond_noise(rec: DayRecord, tolerance: float, z: float) -> bool:
    bar = rec.median_7d_ndcg * (1 - tolerance)
    return beyond_noise(rec.challenger_ndcg, bar, rec.challenger_ndcg_se if rec.challenger_ndcg_se is not None
                        else float("nan"), z)


def _as_expected(rec: DayRecord) -> bool:
    """Did a fault day end as its fault calls for (and for what it must leave behind)?"""
    if rec.fault in ("mlflow_outage", "kill_training"):
        first_failed = rec.fault != "mlflow_outage" or rec.attempts == 2
        return (first_failed and rec.outcome == "pushed" and rec.resumed_from_cache is True
                and not (rec.fault == "kill_training" and rec.error))
    if rec.fault == "s3_outage":
        return rec.outcome == "push failed" and not rec.partial_activation
    return rec.outcome == rec.expected


def _criterion(ok: bool, summary: str, failures: list[str] = ()) -> dict:
    detail = summary + (f" (failing: {', '.join(failures[:10])})" if failures else "")
    return {"pass": bool(ok), "detail": detail}


# --------------------------------------------------------------------------- the record's outputs
def write_record(records: list[DayRecord], criteria: dict, folder: Path, tolerance: float = 0.05) -> dict[str, Path]:
    """``record.csv``, ``record.json`` (rows + criteria) and ``record.png`` (the plots over days)."""
    import csv

    folder.mkdir(parents=True, exist_ok=True)
    rows = [asdict(r) for r in records]
    paths = {"csv": folder / "record.csv", "json": folder / "record.json", "png": folder / "record.png"}
    with open(paths["csv"], "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    paths["json"].write_text(json.dumps({"days": rows, "criteria": criteria}, indent=1))
    plot_record(records, paths["png"], tolerance)
    return paths


def plot_record(records: list[DayRecord], path: Path, tolerance: float = 0.05) -> None:
    """Five panels over days, fault days marked (docs/architecture.md, "The soak: months under churn")."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    days = [r.day for r in records]

    def col(name: str) -> list[float]:
        return [np.nan if getattr(r, name) is None else float(getattr(r, name)) for r in records]

    fig, axes = plt.subplots(5, 1, figsize=(11, 16), sharex=True)
    ax = axes[0]
    for name, label in (("challenger_ndcg", "challenger"), ("champion_ndcg", "champion"),
                        ("popularity_ndcg", "popularity")):
        ax.plot(days, col(name), marker=".", label=label)
    median = np.array(col("median_7d_ndcg"))
    ax.fill_between(days, median * (1 - tolerance), median * (1 + tolerance), alpha=0.2,
                    label=f"trailing 7-day median ±{tolerance:.0%}")
    ax.set_ylabel("NDCG@100")
    axes[1].plot(days, col("next_day_scorable_share"), marker=".", label="live (the refit, freshest day)")
    axes[1].plot(days, col("next_day_scorable_share_evaluated"), marker=".", alpha=0.7,
                 label="the evaluated model (without the last day)")
    axes[1].set_ylabel("next-day clicks\nscorable")
    axes[1].legend(loc="lower left", fontsize=8)
    axes[2].plot(days, col("catalog_size"), label="catalog size")
    twin = axes[2].twinx()
    twin.bar(days, col("items_launched"), width=0.4, color="tab:green", alpha=0.5, label="launched")
    twin.bar([d + 0.4 for d in days], col("items_retired"), width=0.4, color="tab:red", alpha=0.5,
             label="retired")
    twin.set_ylabel("items / day")
    twin.legend(loc="lower right", fontsize=8)
    axes[2].set_ylabel("catalog size")
    axes[3].plot(days, col("stability_top20"), marker=".")
    axes[3].set_ylabel("top-20 overlap\nday over day")
    axes[4].plot(days, col("serving_p50_ms"), marker=".", label="p50 ms")
    axes[4].plot(days, col("serving_p99_ms"), marker=".", label="p99 ms")
    axes[4].set_yscale("log")
    axes[4].set_ylabel("serving latency (ms)")
    swap = axes[4].twinx()
    swap.plot(days, col("swap_seconds"), marker="x", linestyle="none", color="tab:purple", label="swap time s")
    swap.set_ylabel("swap time (s)")
    swap.legend(loc="upper right", fontsize=8)
    axes[4].set_xlabel("day")
    for rec in records:
        if rec.fault != "clean":
            for a in axes:
                a.axvline(rec.day, color="grey", alpha=0.3, linestyle="--")
            axes[0].annotate(rec.fault, (rec.day, 1.0), xycoords=("data", "axes fraction"), rotation=90,
                             fontsize=7, va="top")
    for a in (axes[0], axes[2], axes[4]):
        a.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


NUMERIC = ("challenger_ndcg", "challenger_ndcg_se", "champion_ndcg", "popularity_ndcg", "finetune_gain",
           "ndcg_vs_median", "catalog_size", "items_launched", "items_retired", "next_day_scorable_share",
           "next_day_scorable_share_evaluated", "stability_top20", "serving_p50_ms", "serving_p99_ms",
           "serving_errors", "serving_5xx", "swap_seconds")


def log_to_mlflow(settings: Settings, records: list[DayRecord], criteria: dict, paths: dict[str, Path]) -> str:
    """One ``simulation`` run in the simulation's experiment: per-day metrics (step = day) and the record."""
    from mlflow.entities import Metric

    from infra import registry

    client = registry.connect(settings)
    exp = client.get_experiment_by_name(settings.mlflow_experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(settings.mlflow_experiment)
    run = client.create_run(exp_id, run_name="simulation", tags={"led.kind": "simulation"})
    now = int(time.time() * 1000)
    metrics = [Metric(name, float(getattr(r, name)), now, r.day) for r in records for name in NUMERIC
               if getattr(r, name) is not None]
    for start in range(0, len(metrics), 900):  # MLflow's batch limit is 1000
        client.log_batch(run.info.run_id, metrics=metrics[start:start + 900])
    client.log_metric(run.info.run_id, "criteria_passed", sum(c["pass"] for c in criteria.values()))
    for path in paths.values():
        client.log_artifact(run.info.run_id, str(path), "simulation")
    client.set_terminated(run.info.run_id, "FINISHED" if all(c["pass"] for c in criteria.values()) else "FAILED")
    return run.info.run_id


def publish_artifacts(records: list[DayRecord], criteria: dict, paths: dict[str, Path]) -> None:
    """A Prefect table artifact (the record) and a markdown one (criteria and the plots' paths)."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    create_table_artifact(key="simulation-record", table=[asdict(r) for r in records],
                          description="led simulate: one row per day")
    lines = ["# led simulate", "", "| criterion | result | detail |", "|---|---|---|"]
    lines += [f"| {name} | {'PASS' if c['pass'] else 'FAIL'} | {c['detail']} |" for name, c in criteria.items()]
    lines += ["", f"Plots: `{paths['png']}`", f"Record: `{paths['csv']}`, `{paths['json']}`"]
    create_markdown_artifact(key="simulation-report", markdown="\n".join(lines),
                             description="led simulate: pass criteria and plots")


def _model_items(model_dir: str | None) -> set[str] | None:
    if not model_dir:
        return None
    return set(np.load(Path(model_dir) / "item_ids.npy", allow_pickle=False).astype(str).tolist())


def scorable_share(clicks, items: set[str]) -> float:
    """Share of a day's clicks on items the live model can score (it has a vector for them)."""
    ids = clicks.column("item_id").to_pylist()
    return sum(1 for i in ids if i in items) / max(1, len(ids))
