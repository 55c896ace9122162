"""The Spark session, built from settings (master, driver and executors, shuffle partitions, UI).

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
import hashlib
import logging
import os
import sys
import tempfile
import threading
import time
import zipfile
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
    """Return the process's SparkSession, creating it from settings if needed.

    The same code runs on ``local[*]`` and on any cluster master; what a cluster needs (where
    executors reach the driver, their memory and cores, their Python, the pipeline's code) comes
    from settings too (docs/architecture.md, "Running pre-training on a cluster").
    """
    from pyspark.sql import SparkSession

    s = settings or get_settings()
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    # A Python driver started without spark-submit takes the workers' interpreter from PYSPARK_PYTHON
    # only (pyspark's SparkContext reads the variable, not spark.pyspark.python).
    os.environ["PYSPARK_PYTHON"] = executor_python(s)
    builder = SparkSession.builder.master(s.spark_master).appName(app_name)
    for key, value in spark_conf(s).items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    if s.spark_ship_code and not is_local(s.spark_master):
        ship_code(spark.sparkContext)
    return spark


def is_local(master: str) -> bool:
    return master == "local" or master.startswith("local[")


def executor_python(s: Settings) -> str:
    """The Python workers' interpreter: the setting, else the packed environment's on a cluster,
    else PYSPARK_PYTHON, else this interpreter (right on one machine or a shared image)."""
    if s.spark_executor_python:
        return s.spark_executor_python
    if s.spark_archives and not is_local(s.spark_master):
        alias = s.spark_archives.split(",")[0].rpartition("#")[2] or "env"
        return f"./{alias}/bin/python"
    return os.environ.get("PYSPARK_PYTHON") or sys.executable


def spark_conf(s: Settings) -> dict[str, str]:
    conf = {
        "spark.driver.memory": s.spark_driver_memory,
        "spark.driver.maxResultSize": "4g",
        "spark.driver.host": s.spark_driver_host,
        "spark.driver.bindAddress": s.spark_driver_host,
        "spark.executor.memory": s.spark_executor_memory,
        "spark.memory.fraction": str(s.spark_memory_fraction),
        "spark.sql.shuffle.partitions": str(s.spark_shuffle_partitions),
        "spark.default.parallelism": str(s.spark_shuffle_partitions),
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.sources.partitionOverwriteMode": "dynamic",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.ui.enabled": str(s.spark_ui_enabled).lower(),
        "spark.ui.port": str(s.spark_ui_port),
        "spark.ui.showConsoleProgress": "false",
        "spark.driver.extraJavaOptions": f"-Dlog4j.configurationFile=file:{_log4j_file()}",
    }
    archives = None if is_local(s.spark_master) else s.spark_archives  # only executors unpack them
    optional = {"spark.executor.cores": s.spark_executor_cores, "spark.cores.max": s.spark_cores_max,
                "spark.archives": archives}
    return conf | {key: str(value) for key, value in optional.items() if value is not None}


# The pipeline's packages whose functions executors may run (the rooms below serving).
EXECUTOR_PACKAGES = ("infra", "models", "data_sources", "data_checks")


def ship_code(sc) -> Path:
    """Zip the pipeline's packages as this driver imports them and add the zip to the executors'
    Python path, once per SparkContext (its name carries a content hash, so new code is a new file)."""
    root = Path(__file__).resolve().parents[1]
    sources = sorted(p for pkg in EXECUTOR_PACKAGES for p in (root / pkg).rglob("*.py"))
    digest = hashlib.sha256()
    for path in sources:
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    target = Path(tempfile.gettempdir()) / f"led-code-{digest.hexdigest()[:12]}.zip"
    if target.name in getattr(sc, "_python_includes", []):
        return target
    if not target.exists():  # written beside, then renamed: a concurrent driver never reads half a zip
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
            for path in sources:
                zf.write(path, path.relative_to(root))
        os.replace(tmp, target)
    sc.addPyFile(str(target))
    return target


PROGRESS_LOG = logging.getLogger("led.spark")
# Prefect gives its extra loggers (PREFECT_LOGGING_EXTRA_LOGGERS=led) its handlers but not a level:
# left NOTSET they inherit the root's WARNING and the INFO progress lines would be dropped.
PROGRESS_LOG.setLevel(logging.INFO)
POLL_SECONDS = 0.5


class _StageWatcher:
    """Polls the active SparkContext's status tracker; logs each stage once it has finished."""

    def __init__(self, log: logging.Logger):
        self.log, self.started = log, {}
        # a session outlives a block (the flow reuses it day after day): its earlier stages are not news
        tracker = _status_tracker()
        self.done = set(_stage_ids(tracker)) if tracker else set()

    def poll(self) -> None:
        tracker = _status_tracker()
        if tracker is None:  # the block has not created its session yet
            return
        now, active = time.monotonic(), set(tracker.getActiveStageIds())
        for stage in _stage_ids(tracker):
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


def _status_tracker():
    from pyspark import SparkContext

    sc = SparkContext._active_spark_context
    return sc.statusTracker() if sc is not None else None


def _stage_ids(tracker):
    for job in tracker.getJobIdsForGroup(None):
        info = tracker.getJobInfo(job)
        yield from info.stageIds if info else ()


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
