"""Prometheus metrics of the serving process, through ``prometheus_client``.

One ``/metrics`` scrape covers every worker: ``led serve`` sets
``PROMETHEUS_MULTIPROC_DIR`` (a fresh directory per run) before any worker
starts, so each worker writes its values to mmapped files there and the scrape
aggregates them (``MultiProcessCollector``). Counters and histograms are summed
over all workers, dead ones included (a request a dead worker answered was
answered). Gauges use a "live" mode, so a dead worker's gauge stops counting
once the process manager reports it (``mark_worker_dead``):

- ``led_model_info{model_version,slot}``: max over live workers, so during a
  swap both versions show 1 until every worker has moved;
- ``led_model_stale``: max (1 when any worker serves a cached model it could not
  confirm against ACTIVE);
- ``led_model_loaded``: min (1 only when every live worker has a model);
- ``led_workers_ready``: sum (live workers that have a model).

Without the environment variable (tests, one in-process ``Service``) each
``Metrics`` has its own registry, so several instances never collide.

``prometheus_client`` is imported lazily: the multiprocess switch is read when
that library is first imported, which must happen after ``led serve`` has set
the directory.
"""
from __future__ import annotations

import os
import threading

LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


def mark_worker_dead(pid: int) -> None:
    """Called by the process manager when a worker exits: its live gauges stop counting."""
    if multiprocess_dir():
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)


class Metrics:
    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

        disable_created_metrics()  # *_created series add nothing a scraper needs here
        self.registry = CollectorRegistry(auto_describe=True)
        reg = self.registry
        self.requests = Counter("led_requests", "HTTP requests by endpoint and status code.",
                                ("endpoint", "code"), registry=reg)
        self.latency = Histogram("led_request_duration_seconds", "Request handling time (parse, score, serialise).",
                                 ("endpoint",), buckets=LATENCY_BUCKETS, registry=reg)
        self.model_info = Gauge("led_model_info", "The model being served (1), per version and slot.",
                                ("model_version", "slot"), multiprocess_mode="livemax", registry=reg)
        self.loaded = Gauge("led_model_loaded", "1 once every live worker has a model.",
                            multiprocess_mode="livemin", registry=reg)
        self.ready = Gauge("led_workers_ready", "Live workers with a model.", multiprocess_mode="livesum",
                           registry=reg)
        self.stale = Gauge("led_model_stale", "1 when a worker serves a cached model not confirmed against ACTIVE "
                           "(store unreachable).", multiprocess_mode="livemax", registry=reg)
        self.swaps = Counter("led_model_swaps", "Models swapped in after the first load.", registry=reg)
        self.load_failures = Counter("led_model_load_failures", "Slots that failed to download, verify or load.",
                                     registry=reg)
        self.poll_errors = Counter("led_poll_errors", "Failed polls of ACTIVE (store unreachable).", registry=reg)
        self.unknown_items = Counter("led_unknown_items", "Request items not in the served catalog.", registry=reg)
        self.fallbacks = Counter("led_popularity_fallbacks", "Requests answered by popularity.", registry=reg)
        self.loaded.set(0)
        self.ready.set(0)
        self.stale.set(0)
        self._children: dict[tuple[str, int], tuple] = {}  # labels() lookups cost more than the increments
        self._lock = threading.Lock()
        self._model_labels: tuple[str, str] | None = None

    def observe(self, endpoint: str, status: int, seconds: float) -> None:
        key = (endpoint, status)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (self.requests.labels(endpoint, str(status)),
                                              self.latency.labels(endpoint))
        children[0].inc()
        children[1].observe(seconds)

    def count_recommendation(self, unknown: int, fallback: bool) -> None:
        if unknown:
            self.unknown_items.inc(unknown)
        if fallback:
            self.fallbacks.inc()

    def model_loaded(self, model_version: str, slot: str, swapped: bool, stale: bool = False) -> None:
        with self._lock:
            if self._model_labels is not None and self._model_labels != (model_version, slot):
                self.model_info.labels(*self._model_labels).set(0)
            self._model_labels = (model_version, slot)
            self.model_info.labels(model_version, slot).set(1)
        self.loaded.set(1)
        self.ready.set(1)
        self.stale.set(int(stale))
        if swapped:
            self.swaps.inc()

    def set_stale(self, stale: bool) -> None:
        self.stale.set(int(stale))

    def load_failed(self) -> None:
        self.load_failures.inc()

    def poll_failed(self) -> None:
        self.poll_errors.inc()

    def render(self) -> bytes:
        from prometheus_client import CollectorRegistry, generate_latest

        path = multiprocess_dir()
        if path is None:
            return generate_latest(self.registry)
        from prometheus_client.multiprocess import MultiProcessCollector

        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=path)
        return generate_latest(registry)
