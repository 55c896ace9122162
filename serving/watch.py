"""The post-swap health watch: after a push, judge the live serving processes and roll back a regression.

docs/architecture.md, "Automatic rollback". A model can pass every offline check (verified slot,
sanity checks, ANN recall) and still be broken for serving: ids permuted against their vectors
(meaningless scores), ids in another format (every request falls back to popularity), a slot that
makes workers fail. So after ``push_slot`` flips ACTIVE, :func:`watch_push`:

1. waits until every worker at ``serving_url`` serves the pushed version (``led_model_info`` on
   ``/metrics``: one scrape covers every worker, and the old version's gauge stays 1 until the last
   worker has moved); a serving process that never swaps within ``rollback_swap_timeout_seconds``
   is a regression (``/model``'s ``last_error`` says why);
2. runs the **quality canary**: a fixed probe set (timelines and their held-out targets from the
   pushed model's eval set, drawn by seed) sent to ``POST /recommend``; its NDCG@100 is compared
   with the previous model's on the same probes, computed offline from the previous slot's verified
   files through the same ``Recommender`` (ANN index included) the server would use, so nothing has
   to be measured before the swap and the comparison is like for like;
3. for ``rollback_watch_seconds`` samples ``/metrics`` deltas since the swap: 5xx share of
   ``/recommend``, p99 latency (from the histogram, as Prometheus' ``histogram_quantile``), share
   of popularity fallbacks (ratios judged once ``rollback_min_requests`` were answered; the canary's
   requests count);
4. on a threshold breach flips ACTIVE back to the previous slot (``serving.storage.rollback``: the
   same sha256 verification, conditional on ACTIVE still naming the pushed slot) and waits for the
   serving processes to serve the previous version again.

No serving endpoint (``serving_url`` empty or unreachable), or one following another store, makes
the watch "skipped", never a failure: a machine without serving still runs the pipeline. Marking the
registry and raising the run's event are the caller's (``tasks/watch.py``): this module knows HTTP,
the slots and the thresholds, not MLflow or Prefect.
"""
from __future__ import annotations

import math
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from models.metrics import ndcg_at_k
from serving.client import RECOMMEND, ServingClient
from serving.storage import BlueGreenStore, Push, StorageError, rollback

CANARY_K = 100  # NDCG@100, the gate's metric
MAX_SCRAPE_FAILURES = 3  # consecutive failed scrapes during the watch: serving stopped answering

Probe = tuple[list[str], list[str]]  # (timeline item ids, held-out target ids)


class ServingRegression(Exception):
    """The pushed model regressed in serving; ``report`` says how and what the watch did about it."""

    def __init__(self, report: "WatchReport"):
        super().__init__(report.summary())
        self.report = report


# --- thresholds and the decision --------------------------------------------------------------------

@dataclass(frozen=True)
class Thresholds:
    max_error_rate: float
    max_p99_ms: float
    max_fallback_share: float
    max_ndcg_drop: float
    min_requests: int

    @classmethod
    def from_settings(cls, settings) -> "Thresholds":
        return cls(settings.rollback_max_error_rate, settings.rollback_max_p99_ms,
                   settings.rollback_max_fallback_share, settings.rollback_max_ndcg_drop,
                   settings.rollback_min_requests)


@dataclass(frozen=True)
class Health:
    """``/recommend`` traffic between two scrapes."""

    requests: int
    errors: int  # 5xx answers
    fallbacks: int
    p99_ms: float | None

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    @property
    def fallback_share(self) -> float:
        answered = self.requests - self.errors
        return self.fallbacks / answered if answered > 0 else 0.0

    def as_dict(self) -> dict:
        return {**asdict(self), "error_rate": round(self.error_rate, 5),
                "fallback_share": round(self.fallback_share, 5)}


@dataclass(frozen=True)
class Canary:
    """Live NDCG@100 of the pushed model on the probes, and the previous model's on the same probes."""

    probes: int
    ndcg: float
    previous_ndcg: float | None
    answered_by_other_version: int = 0

    @property
    def drop(self) -> float | None:
        """Relative drop against the previous model (negative: the new one is better)."""
        if self.previous_ndcg is None or self.previous_ndcg <= 0:
            return None
        return (self.previous_ndcg - self.ndcg) / self.previous_ndcg

    def as_dict(self) -> dict:
        drop = self.drop
        return {**asdict(self), "drop": None if drop is None else round(drop, 5)}


def regressions(health: Health | None, canary: Canary | None, limits: Thresholds) -> list[str]:
    """Every threshold the figures breach, as a sentence each (empty: healthy so far)."""
    found = []
    if canary is not None and canary.drop is not None and canary.drop > limits.max_ndcg_drop:
        found.append(f"quality canary: NDCG@{CANARY_K} {canary.ndcg:.4f} vs the previous model's "
                     f"{canary.previous_ndcg:.4f} on {canary.probes} probes, a {canary.drop:.0%} drop "
                     f"(max {limits.max_ndcg_drop:.0%})")
    if health is None or health.requests < limits.min_requests:
        return found
    if health.error_rate > limits.max_error_rate:
        found.append(f"error rate {health.error_rate:.2%} of {health.requests} /recommend requests answered 5xx "
                     f"(max {limits.max_error_rate:.2%})")
    if health.p99_ms is not None and health.p99_ms > limits.max_p99_ms:
        found.append(f"p99 latency {health.p99_ms:.1f} ms (max {limits.max_p99_ms:g} ms)")
    if health.fallback_share > limits.max_fallback_share:
        found.append(f"{health.fallback_share:.0%} of answers were popularity fallbacks "
                     f"(max {limits.max_fallback_share:.0%})")
    return found


# --- reading the serving processes ------------------------------------------------------------------

@dataclass(frozen=True)
class Scrape:
    """The ``/metrics`` figures the watch needs, summed over every worker."""

    requests: dict[str, float]  # /recommend requests by status code
    buckets: tuple[tuple[float, float], ...]  # (upper bound s, cumulative count) of /recommend latency
    fallbacks: float
    versions: dict[str, float]  # led_model_info per model_version (1: some live worker serves it)

    @property
    def total(self) -> float:
        return sum(self.requests.values())

    def serves_only(self, version: str) -> bool:
        return self.versions.get(version) == 1 and all(v == 0 for k, v in self.versions.items() if k != version)


def served_model(client: ServingClient) -> dict:
    """``GET /model`` (one worker's view)."""
    return client.get_json("/model")


def scrape(client: ServingClient) -> Scrape:
    from prometheus_client.parser import text_string_to_metric_families

    requests: dict[str, float] = {}
    buckets: dict[float, float] = {}
    fallbacks = 0.0
    versions: dict[str, float] = {}
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            labels = sample.labels
            if sample.name == "led_requests_total" and labels.get("endpoint") == RECOMMEND:
                requests[labels["code"]] = requests.get(labels["code"], 0.0) + sample.value
            elif sample.name == "led_request_duration_seconds_bucket" and labels.get("endpoint") == RECOMMEND:
                bound = float(labels["le"])
                buckets[bound] = buckets.get(bound, 0.0) + sample.value
            elif sample.name == "led_popularity_fallbacks_total":
                fallbacks += sample.value
            elif sample.name == "led_model_info":
                version = labels["model_version"]
                versions[version] = max(versions.get(version, 0.0), sample.value)
    return Scrape(requests, tuple(sorted(buckets.items())), fallbacks, versions)


def quantile_ms(buckets: Sequence[tuple[float, float]], q: float) -> float | None:
    """The q-quantile of a cumulative histogram, interpolated within its bucket (Prometheus'
    ``histogram_quantile``: past the last finite bound it answers that bound)."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower * 1e3
            inside = count - below
            share = (rank - below) / inside if inside > 0 else 1.0
            return (lower + (bound - lower) * share) * 1e3
        lower, below = bound, count
    return lower * 1e3


def health_between(before: Scrape, after: Scrape) -> Health:
    """Traffic between two scrapes; a restarted server (counters back near zero) counts from zero."""
    if after.total < before.total:
        before = Scrape({}, (), 0.0, {})
    requests = {code: n - before.requests.get(code, 0.0) for code, n in after.requests.items()}
    old = dict(before.buckets)
    buckets = [(bound, n - old.get(bound, 0.0)) for bound, n in after.buckets]
    return Health(requests=int(sum(requests.values())),
                  errors=int(sum(n for code, n in requests.items() if code.startswith("5"))),
                  fallbacks=int(after.fallbacks - before.fallbacks), p99_ms=quantile_ms(buckets, 0.99))


def live_answers(client: ServingClient, probes: Sequence[Probe], version: str, k: int = CANARY_K
                 ) -> tuple[list[list[str]], int]:
    """Each probe's ids from ``POST /recommend`` (an error answer counts as an empty ranking), and how
    many answers came from another version than ``version``."""
    answers, other = [], 0
    for items, _ in probes:
        status, body = client.recommend(items, k)
        if status != 200:  # the 5xx shows in the error rate too
            answers.append([])
            continue
        other += str(body.get("model_version")) != version
        answers.append([str(i) for i in body.get("ids", [])])
    return answers, other


def mean_ndcg(answers: Sequence[Sequence[str]], probes: Sequence[Probe], k: int = CANARY_K) -> float:
    scores = [ndcg_at_k(list(ranked), set(targets), k) for ranked, (_, targets) in zip(answers, probes)]
    return float(sum(scores) / len(scores)) if scores else 0.0


def slot_ndcg(store: BlueGreenStore, slot: str, probes: Sequence[Probe], k: int = CANARY_K) -> float:
    """NDCG@k of a slot's model on the probes, answered offline exactly as a worker would: the slot is
    downloaded and verified, then loaded by ``serving.app.load_slot_dir`` (its ANN index included)."""
    from serving.app import load_slot_dir

    scratch = Path(tempfile.mkdtemp(prefix="led-canary-"))
    try:
        manifest = store.download_slot(slot, scratch / slot)
        model = load_slot_dir(scratch / slot, slot, manifest["manifest_sha256"])
        answers = [model.recommender.recommend(items, k).ids for items, _ in probes]
        model.recommender.index.unload()
        return mean_ndcg(answers, probes, k)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


# --- the watch ---------------------------------------------------------------------------------------

SKIPPED, HEALTHY, ROLLED_BACK, REGRESSED = "skipped", "healthy", "rolled_back", "regressed"


@dataclass
class WatchReport:
    """What the watch saw and did. ``status``: skipped | healthy | rolled_back | regressed (a regression
    it could not roll back)."""

    status: str
    reasons: list[str]
    model_version: str | None = None
    previous_version: str | None = None
    serving_url: str | None = None
    health: dict | None = None
    canary: dict | None = None
    rollback: dict | None = None
    serving_restored: bool | None = None
    seconds: float = 0.0
    samples: int = 0
    thresholds: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def regressed(self) -> bool:
        return self.status in (ROLLED_BACK, REGRESSED)

    def summary(self) -> str:
        head = {SKIPPED: "watch skipped", HEALTHY: f"version {self.model_version} healthy in serving",
                ROLLED_BACK: f"version {self.model_version} rolled back to {self.previous_version}",
                REGRESSED: f"version {self.model_version} regressed in serving and was NOT rolled back"}[self.status]
        said = self.reasons + self.notes
        return f"{head}: {'; '.join(said)}" if said else head

    def as_dict(self) -> dict:
        return {**asdict(self), "summary": self.summary()}


class _Watch:
    def __init__(self, settings, store: BlueGreenStore, pushed: Push, probes: Sequence[Probe],
                 clock: Callable[[], float], sleep: Callable[[float], None]):
        self.settings, self.store, self.pushed, self.probes = settings, store, pushed, list(probes)
        self.url = settings.serving_url.rstrip("/")
        self.client = ServingClient(self.url)
        self.limits = Thresholds.from_settings(settings)
        self.clock, self.sleep = clock, sleep
        self.version = str(pushed.model_version)
        self.previous = pushed.previous_model_version
        self.started = clock()
        self.scrape_error = ""
        self.report = WatchReport(HEALTHY, [], self.version, self.previous, self.url,
                                  thresholds=asdict(self.limits))

    def run(self) -> WatchReport:
        try:
            served = (served_model(self.client).get("model") or {}).get("model_version")
        except (OSError, ValueError) as exc:
            return self._finish(SKIPPED, [f"no serving endpoint: {self.url} unreachable ({exc})"])
        if served not in (self.version, self.previous):
            return self._finish(SKIPPED, [f"serving at {self.url} serves version {served}, neither the pushed "
                                          f"{self.version} nor the previous {self.previous}: it does not follow "
                                          f"{self.store.url}"])
        previous_ndcg = self._previous_ndcg()
        if not self._wait_until_serving(self.version):
            return self._roll_back([f"serving did not swap to version {self.version} within "
                                    f"{self.settings.rollback_swap_timeout_seconds:g} s ({self._last_error()})"])
        live_since = self.clock()
        baseline = self._scrape()
        if baseline is None:
            return self._roll_back([f"serving at {self.url} stopped answering /metrics ({self.scrape_error})"])
        canary = self._canary(previous_ndcg)
        health = None
        while True:
            after = self._scrape()
            if after is None:
                return self._roll_back([f"serving at {self.url} stopped answering /metrics ({self.scrape_error})"])
            health = health_between(baseline, after)
            self.report.samples += 1
            self.report.health = health.as_dict() if health else None
            found = regressions(health, canary, self.limits)
            if found:
                return self._roll_back(found)
            if self.clock() - live_since >= self.settings.rollback_watch_seconds:
                return self._finish(HEALTHY, self._healthy_reasons(health, canary))
            self.sleep(self.settings.rollback_sample_seconds)

    # --- steps ------------------------------------------------------------------------------------
    def _scrape(self) -> Scrape | None:
        """A scrape, retried a few times one sample apart (a worker restarting); None when serving is gone."""
        for attempt in range(MAX_SCRAPE_FAILURES):
            try:
                return scrape(self.client)
            except (OSError, ValueError) as exc:
                self.scrape_error = str(exc)
                if attempt + 1 < MAX_SCRAPE_FAILURES:
                    self.sleep(self.settings.rollback_sample_seconds)
        return None

    def _previous_ndcg(self) -> float | None:
        slot = self.pushed.previous_slot
        if slot is None or not self.probes:
            return None
        try:
            return slot_ndcg(self.store, slot, self.probes)
        except Exception as exc:  # an unreadable previous slot only loses the comparison, the rollback says more
            self.report.notes.append(f"no canary comparison: previous slot {slot} unreadable ({exc})")
            return None

    def _canary(self, previous_ndcg: float | None) -> Canary | None:
        if not self.probes:
            return None
        answers, other = live_answers(self.client, self.probes, self.version)
        canary = Canary(len(self.probes), mean_ndcg(answers, self.probes), previous_ndcg, other)
        self.report.canary = canary.as_dict()
        return canary

    def _wait_until_serving(self, version: str) -> bool:
        deadline = self.clock() + self.settings.rollback_swap_timeout_seconds
        while True:
            try:
                if scrape(self.client).serves_only(version):
                    return True
            except (OSError, ValueError):
                pass  # a worker restarting: keep waiting until the deadline
            if self.clock() >= deadline:
                return False
            self.sleep(min(self.settings.rollback_sample_seconds, 0.5))

    def _last_error(self) -> str:
        try:
            return f"serving says: {served_model(self.client).get('last_error') or 'no error reported'}"
        except (OSError, ValueError) as exc:
            return f"serving unreachable: {exc}"

    def _roll_back(self, reasons: list[str]) -> WatchReport:
        if self.pushed.previous_slot is None:
            return self._finish(REGRESSED, reasons + ["no previous slot to roll back to (first push)"])
        try:
            self.report.rollback = rollback(self.store, expect_slot=self.pushed.slot)
        except StorageError as exc:
            return self._finish(REGRESSED, reasons + [f"rollback refused: {exc}"])
        except Exception as exc:  # S3 unreachable: still a regression to report, not a crash of the watch
            return self._finish(REGRESSED, reasons + [f"rollback failed: {type(exc).__name__}: {exc}"])
        restored = str(self.report.rollback["model_version"])
        self.report.previous_version = restored
        self.report.serving_restored = self._wait_until_serving(restored)
        return self._finish(ROLLED_BACK, reasons)

    def _healthy_reasons(self, health: Health | None, canary: Canary | None) -> list[str]:
        out = []
        if canary is not None:
            versus = "" if canary.previous_ndcg is None else f" (previous model {canary.previous_ndcg:.4f})"
            out.append(f"canary NDCG@{CANARY_K} {canary.ndcg:.4f}{versus} on {canary.probes} probes")
        else:
            out.append("no canary: the pushed model has no eval set")
        if health is not None:
            p99 = "-" if health.p99_ms is None else f"{health.p99_ms:.1f} ms"
            out.append(f"{health.requests} /recommend requests: error rate {health.error_rate:.2%}, p99 {p99}, "
                       f"fallbacks {health.fallback_share:.0%}")
        return out

    def _finish(self, status: str, reasons: list[str]) -> WatchReport:
        self.report.status, self.report.reasons = status, reasons
        self.report.seconds = round(self.clock() - self.started, 3)
        return self.report


def watch_push(settings, store: BlueGreenStore, pushed: Push | None, probes: Sequence[Probe],
               clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep
               ) -> WatchReport:
    """Watch the serving processes after ``pushed`` (``push_slot``'s result); roll back a regression.

    Returns the report (``status`` rolled_back / regressed on a regression: the caller marks the
    registry and fails the run); "skipped" when there is nothing to watch."""
    if settings.rollback_watch_seconds <= 0:
        return WatchReport(SKIPPED, ["off: rollback_watch_seconds = 0"])
    if pushed is None or pushed.already_live:
        return WatchReport(SKIPPED, ["nothing was swapped by this run"])
    if not settings.serving_url:
        return WatchReport(SKIPPED, ["no serving endpoint: serving_url is not set"],
                           str(pushed.model_version), pushed.previous_model_version)
    return _Watch(settings, store, pushed, probes, clock, sleep).run()
