"""The Spark session, built from settings (master, driver memory, shuffle partitions).

Works with ``local[*]`` here and with any master elsewhere. Quiet by default:
a log4j2 file sends only errors to stderr and the console progress bar is off.
"""
from __future__ import annotations

import os
import tempfile
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
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.driver.extraJavaOptions", f"-Dlog4j.configurationFile=file:{_log4j_file()}")
        .getOrCreate()
    )
