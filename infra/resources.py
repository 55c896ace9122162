"""Peak memory of a block of work: this process and its children (the Spark JVM, TensorFlow's threads
are in-process), sampled by a background thread. The daily flow records it per stage, so the scale
benchmark can show where memory goes (benchmarks/README.md, "The cost curve")."""
from __future__ import annotations

import threading

import psutil

SAMPLE_SECONDS = 0.2


def tree_rss_bytes(proc: psutil.Process | None = None) -> int:
    """Resident memory of ``proc`` (default: this process) plus its live descendants (pages shared
    between them are counted in each: an upper bound)."""
    proc = proc or psutil.Process()
    total = 0
    for p in (proc, *proc.children(recursive=True)):
        try:
            total += p.memory_info().rss
        except psutil.Error:  # exited between the listing and the read
            continue
    return total


class PeakRss:
    """``with PeakRss() as peak: ...`` then ``peak.mb``: the largest sampled tree RSS during the block."""

    def __init__(self, interval: float = SAMPLE_SECONDS):
        self.interval, self.peak = interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True, name="peak-rss")

    @property
    def mb(self) -> int:
        return round(self.peak / 2**20)

    def _sample(self) -> None:
        proc = psutil.Process()
        while True:
            self.peak = max(self.peak, tree_rss_bytes(proc))
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> "PeakRss":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, tree_rss_bytes())
