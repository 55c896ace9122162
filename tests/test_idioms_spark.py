"""Spark stage progress reaches the logs: one line per finished stage with its elapsed time."""
from __future__ import annotations

import logging
import re

import pytest

from infra.spark import stage_progress


class Records(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def _recorded(name: str) -> tuple[logging.Logger, Records]:
    log = logging.getLogger(name)
    log.setLevel(logging.INFO)
    records = Records()
    log.addHandler(records)
    return log, records


def test_stage_progress_logs_each_finished_stage(spark):
    log, records = _recorded("led.spark.test")
    df = spark.range(0, 200_000, numPartitions=4)
    with stage_progress(log):
        counted = df.groupBy((df.id % 7).alias("k")).count().collect()  # a shuffle: two stages at least
    assert len(counted) == 7
    stages = [line for line in records.lines if line.startswith("spark stage ")]
    assert len(stages) >= 2, records.lines
    assert all(re.search(r"\d+ tasks.* in \d+\.\d s$", line) for line in stages), stages
    ids = [int(line.split()[2]) for line in stages]
    assert len(ids) == len(set(ids))  # each stage once


def test_stage_progress_logs_only_the_blocks_own_stages(spark):
    """A session outlives a block (the flow reuses it day after day): a second block must not log the
    first block's stages again (they once came back as "... in 0.0 s" every day)."""
    log, records = _recorded("led.spark.test.blocks")
    df = spark.range(0, 100_000, numPartitions=4)
    with stage_progress(log):
        df.groupBy((df.id % 5).alias("k")).count().collect()
    first = {int(line.split()[2]) for line in records.lines}
    records.lines.clear()
    with stage_progress(log):
        df.groupBy((df.id % 3).alias("k")).count().collect()
    second = [int(line.split()[2]) for line in records.lines]
    assert first and second, (first, second)
    assert not first & set(second), (first, second)


def test_stage_progress_cancels_jobs_when_the_block_raises(spark):
    """A stage timeout (or Ctrl-C) inside the block must not leave the JVM computing: the running job
    is cancelled, its caller gets the cancellation, and the session stays usable."""
    import threading
    import time

    errors: list[Exception] = []

    def slow_job():
        try:
            spark.sparkContext.parallelize(range(2), 2).map(lambda x: time.sleep(30) or x).collect()
        except Exception as exc:  # noqa: BLE001 - what the cancelled job raised
            errors.append(exc)

    job = threading.Thread(target=slow_job, daemon=True)
    tracker = spark.sparkContext.statusTracker()
    with pytest.raises(KeyboardInterrupt):
        with stage_progress():
            job.start()
            deadline = time.monotonic() + 30
            while not tracker.getActiveJobsIds() and time.monotonic() < deadline:
                time.sleep(0.1)
            assert tracker.getActiveJobsIds(), "the slow job never started"
            raise KeyboardInterrupt  # what a timeout or Ctrl-C looks like from inside the block
    job.join(20)  # far less than the 30 s the job would take
    assert not job.is_alive() and errors and "cancel" in str(errors[0]).lower(), errors
    assert spark.range(10).count() == 10  # the session is still usable


def test_spark_ui_switched_on_from_settings(tmp_path):
    """In its own process (the session's Spark has the UI off): LED_SPARK_UI_ENABLED starts the UI on
    LED_SPARK_UI_PORT, on 127.0.0.1."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from infra.stack import free_port

    port = free_port()
    probe = ("import urllib.request; from infra.spark import get_spark; s = get_spark(); "
             "ui = s.sparkContext.uiWebUrl; "
             f"code = urllib.request.urlopen('http://127.0.0.1:{port}/jobs/', timeout=30).status; "
             "s.stop(); print(ui, code)")
    env = os.environ.copy() | {"LED_SPARK_UI_ENABLED": "true", "LED_SPARK_UI_PORT": str(port),
                               "LED_SPARK_MASTER": "local[1]", "LED_SPARK_DRIVER_MEMORY": "1g",
                               "LED_HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=180, env=env,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr[-2000:]
    url, status = done.stdout.split()[-2:]
    assert status == "200" and url.endswith(f":{port}"), done.stdout
    assert "127.0.0.1" in url or "localhost" in url, url
