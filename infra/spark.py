"""The Spark session, built from settings (master, driver memory, shuffle partitions, UI).

Works with ``local[*]`` here and with any master elsewhere. Quiet by default:
a log4j2 file sends only errors to stderr and the console progress bar is off;
instead :func:`stage_progress` logs one line per finished Spark stage (with
its elapsed time) on the ``led.spark`` logger, which the flow's logs include
(``PREFECT_LOGGING_EXTRA_LOGGERS=led``). ``spark_ui_enabled`` turns the Spark
web UI on (``spark_ui_port``).
"""
from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import tempfile
import threading
import time
from pathlib import Path

from infra.settings import Settings, get_settings

_LOG4J = """rootLogger.level = error
rootLogger.appenderRef.stderr.ref = console
appender.console.type = Console
appender.console.name = console
appender.console.target = SYSTEM_ERR
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = %d{HH:mm:ss} %p %c{1}: %m%n
"""


def _log4j_file() -> Path:
    path = Path(tempfile.gettempdir()) / "led-log4j2.properties"
    if not path.exists() or path.read_text() != _LOG4J:
        path.write_text(_LOG4J)
    return path


def get_spark(settings: Settings | None = None, app_name: str = "led"):
    """Return the process's SparkSession, creating it from settings if needed."""
    from pyspark.sql import SparkSession

    s = settings or get_settings()
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("PYSPARK_PYTHON", os.environ.get("PYSPARK_PYTHON", __import__("sys").executable))
    return (
        SparkSession.builder.master(s.spark_master)
        .appName(app_name)
        .config("spark.driver.memory", s.spark_driver_memory)
        .config("spark.driver.maxResultSize", "4g")
        .config("spark.sql.shuffle.partitions", str(s.spark_shuffle_partitions))
        .config("spark.default.parallelism", str(s.spark_shuffle_partitions))
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.sources.partitionOverwriteMode", "dynamic")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.ui.enabled", str(s.spark_ui_enabled).lower())
        .config("spark.ui.port", str(s.spark_ui_port))
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.driver.extraJavaOptions", f"-Dlog4j.configurationFile=file:{_log4j_file()}")
        .getOrCreate()
    )


PROGRESS_LOG = logging.getLogger("led.spark")
# Prefect gives its extra loggers (PREFECT_LOGGING_EXTRA_LOGGERS=led) its handlers but not a level:
# left NOTSET they inherit the root's WARNING and the INFO progress lines would be dropped.
PROGRESS_LOG.setLevel(logging.INFO)
POLL_SECONDS = 0.5


class _StageWatcher:
    """Polls the active SparkContext's status tracker; logs each stage once it has finished."""

    def __init__(self, log: logging.Logger):
        self.log, self.started, self.done = log, {}, set()

    def poll(self) -> None:
        from pyspark import SparkContext

        sc = SparkContext._active_spark_context
        if sc is None:  # the stage has not created its session yet
            return
        tracker, now = sc.statusTracker(), time.monotonic()
        active = set(tracker.getActiveStageIds())
        for job in tracker.getJobIdsForGroup(None):
            info = tracker.getJobInfo(job)
            for stage in info.stageIds if info else ():
                self._update(tracker, stage, stage in active, now)

    def _update(self, tracker, stage: int, active: bool, now: float) -> None:
        if stage in self.done:
            return
        info = tracker.getStageInfo(stage)
        if info is None or info.numTasks == 0:
            return
        self.started.setdefault(stage, now)
        if not active and info.numCompletedTasks + info.numFailedTasks >= info.numTasks:
            self.done.add(stage)
            failed = f", {info.numFailedTasks} failed" if info.numFailedTasks else ""
            self.log.info("spark stage %d (%s): %d tasks%s in %.1f s", stage, info.name.split(" at ")[0],
                          info.numTasks, failed, now - self.started[stage])


@contextlib.contextmanager
def stage_progress(log: logging.Logger = PROGRESS_LOG):
    """Log one line per finished Spark stage while the block runs; cancel its jobs if it raises
    (a stage timeout must not leave the JVM computing)."""
    watcher, stop = _StageWatcher(log), threading.Event()

    def loop():
        while not stop.wait(POLL_SECONDS):
            try:
                watcher.poll()
            except Exception:  # noqa: BLE001 - progress is best-effort, never a failure
                pass

    # the thread runs in a copy of this context, so log handlers bound to the run still see it
    thread = threading.Thread(target=contextvars.copy_context().run, args=(loop,), daemon=True,
                              name="spark-progress")
    thread.start()
    try:
        yield
    except BaseException:
        from pyspark import SparkContext

        if SparkContext._active_spark_context is not None:
            SparkContext._active_spark_context.cancelAllJobs()
        raise
    finally:
        stop.set()
        thread.join(5)
        with contextlib.suppress(Exception):
            watcher.poll()  # stages that finished since the last poll
