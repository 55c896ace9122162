"""Prometheus text exposition for the serving process, without a client library.

Hand-written because serving may import numpy, annoy and boto3 only, and the
format is a few lines. Counters and the latency histogram are updated under one
lock (a handful of integer increments: cheap next to a request).
"""
from __future__ import annotations

import bisect
import threading
import time

LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


def _label(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.started = time.time()
        self.requests: dict[tuple[str, int], int] = {}
        self.bucket_counts: dict[str, list[int]] = {}
        self.latency_sum: dict[str, float] = {}
        self.unknown_items = 0
        self.fallbacks = 0
        self.swaps = 0
        self.load_failures = 0
        self.poll_errors = 0
        self.model_labels: tuple[str, str] | None = None

    def observe(self, endpoint: str, status: int, seconds: float) -> None:
        with self._lock:
            key = (endpoint, status)
            self.requests[key] = self.requests.get(key, 0) + 1
            counts = self.bucket_counts.get(endpoint)
            if counts is None:
                counts = self.bucket_counts[endpoint] = [0] * (len(LATENCY_BUCKETS) + 1)
                self.latency_sum[endpoint] = 0.0
            counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
            self.latency_sum[endpoint] += seconds

    def count_recommendation(self, unknown: int, fallback: bool) -> None:
        with self._lock:
            self.unknown_items += unknown
            self.fallbacks += int(fallback)

    def model_loaded(self, model_version: str, slot: str, swapped: bool) -> None:
        with self._lock:
            self.model_labels = (model_version, slot)
            self.swaps += int(swapped)

    def load_failed(self) -> None:
        with self._lock:
            self.load_failures += 1

    def poll_failed(self) -> None:
        with self._lock:
            self.poll_errors += 1

    def render(self) -> str:
        with self._lock:
            lines = [
                "# HELP led_requests_total HTTP requests by endpoint and status code.",
                "# TYPE led_requests_total counter",
            ]
            for (endpoint, status), n in sorted(self.requests.items()):
                lines.append(f'led_requests_total{{endpoint="{_label(endpoint)}",code="{status}"}} {n}')
            lines += ["# HELP led_request_duration_seconds Request handling time (parse, score, serialise).",
                      "# TYPE led_request_duration_seconds histogram"]
            for endpoint, counts in sorted(self.bucket_counts.items()):
                cumulative = 0
                ep = _label(endpoint)
                for bound, n in zip((*LATENCY_BUCKETS, float("inf")), counts):
                    cumulative += n
                    le = "+Inf" if bound == float("inf") else repr(bound)
                    lines.append(f'led_request_duration_seconds_bucket{{endpoint="{ep}",le="{le}"}} {cumulative}')
                lines.append(f'led_request_duration_seconds_sum{{endpoint="{ep}"}} {self.latency_sum[endpoint]:.6f}')
                lines.append(f'led_request_duration_seconds_count{{endpoint="{ep}"}} {cumulative}')
            lines += [
                "# HELP led_model_info The model being served (value 1).",
                "# TYPE led_model_info gauge",
            ]
            if self.model_labels:
                version, slot = map(_label, self.model_labels)
                lines.append(f'led_model_info{{model_version="{version}",slot="{slot}"}} 1')
            for name, kind, help_, value in (
                ("led_model_loaded", "gauge", "1 once a model is loaded.", int(self.model_labels is not None)),
                ("led_model_swaps_total", "counter", "Models swapped in after the first load.", self.swaps),
                ("led_model_load_failures_total", "counter", "Slots that failed to download, verify or load.",
                 self.load_failures),
                ("led_poll_errors_total", "counter", "Failed polls of ACTIVE (store unreachable).",
                 self.poll_errors),
                ("led_unknown_items_total", "counter", "Request items not in the served catalog.",
                 self.unknown_items),
                ("led_popularity_fallbacks_total", "counter", "Requests answered by popularity.",
                 self.fallbacks),
                ("led_uptime_seconds", "gauge", "Seconds since the process started.",
                 round(time.time() - self.started, 3)),
            ):
                lines += [f"# HELP {name} {help_}", f"# TYPE {name} {kind}", f"{name} {value}"]
            return "\n".join(lines) + "\n"
