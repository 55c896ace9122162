"""Pre-training and a daily run on a real Spark standalone cluster, by configuration only.

A master and two workers (one core, 1 GB each) run on 127.0.0.1 from pyspark's own jars
(infra/spark_cluster.py). The commands on it run as users run them, in subprocesses, with only
``LED_SPARK_MASTER`` changed (docs/architecture.md, "Running pre-training on a cluster"); the
local reference runs on the test session's own local Spark.
"""
from __future__ import annotations

import sys
import time

import pytest

from benchmarks.svd import agreement
from infra.settings import Settings
from infra.spark import executor_python, spark_conf
from infra.spark_cluster import StandaloneCluster
from models.pretrain import Embeddings, PretrainConfig, pretrain_window
from tests.cli_runner import led

# Small JVMs: four engineers share two cores and the RAM.
# Spark pre-training on purpose: these small windows are under pretrain_local_max_views
MEMORY = {"LED_SPARK_DRIVER_MEMORY": "1g", "LED_SPARK_EXECUTOR_MEMORY": "1g", "LED_PRETRAIN_ENGINE": "spark"}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = StandaloneCluster(tmp_path_factory.mktemp("spark-cluster"), workers=2, cores=1, memory="1g")
    c.start()
    try:
        yield c
    finally:
        c.stop()


def executors_that_ran(cluster: StandaloneCluster, app_name: str) -> dict[str, int]:
    """Per finished application of that name on the master: how many of its executors ran tasks.

    An executor fetches the driver's shipped code (infra/spark.py, ship_code) before its first task,
    so an executor folder holding the zip is one that worked; a silent fallback to local mode would
    leave no application on the master at all.
    """
    deadline = time.monotonic() + 60
    while cluster.status()["activeapps"] and time.monotonic() < deadline:
        time.sleep(1)  # the master marks an application finished once it sees its driver go
    status = cluster.status()
    assert not status["activeapps"], status["activeapps"]
    finished = [a for a in status["completedapps"] if a["name"] == app_name]
    work = cluster.root / "work"
    return {a["id"]: sum(1 for d in (work / a["id"]).glob("*") if any(d.glob("led-code-*.zip")))
            for a in finished}


def test_cluster_settings_become_spark_conf(monkeypatch):
    monkeypatch.delenv("PYSPARK_PYTHON", raising=False)
    packed = Settings(spark_master="spark://10.0.0.5:7077", spark_archives="hdfs:///envs/led-env.tar.gz#pyenv",
                      spark_executor_memory="3g", spark_cores_max=4, spark_driver_host="10.0.0.9")
    conf = spark_conf(packed)
    assert conf["spark.archives"] == packed.spark_archives and executor_python(packed) == "./pyenv/bin/python"
    assert conf["spark.executor.memory"] == "3g" and conf["spark.cores.max"] == "4"
    assert conf["spark.driver.host"] == conf["spark.driver.bindAddress"] == "10.0.0.9"
    assert "spark.executor.cores" not in conf  # empty: Spark's own default
    assert executor_python(packed.with_overrides(spark_executor_python="/opt/py/bin/python")) == "/opt/py/bin/python"
    # local[*] has no executors to unpack an archive: the driver's own interpreter runs the workers
    local = packed.with_overrides(spark_master="local[*]")
    assert "spark.archives" not in spark_conf(local) and executor_python(local) == sys.executable
    monkeypatch.setenv("PYSPARK_PYTHON", "/usr/bin/python3.11")
    assert executor_python(local) == "/usr/bin/python3.11"


@pytest.mark.slow
def test_pretrain_on_the_cluster_agrees_with_local(cluster, small_world, tmp_path, spark):
    before = executors_that_ran(cluster, "led")
    partitions = spark.conf.get("spark.sql.shuffle.partitions")  # the same plan as the local reference
    code, on_cluster, log = led("pretrain", "--events", small_world, "--date", "2026-01-11", "--window", 10,
                                "--dim", 16, "--out", tmp_path / "cluster",
                                env=MEMORY | {"LED_SPARK_MASTER": cluster.master_url,
                                              "LED_SPARK_SHUFFLE_PARTITIONS": partitions})
    assert code == 0, log[-3000:]
    apps = {k: v for k, v in executors_that_ran(cluster, "led").items() if k not in before}
    assert len(apps) == 1 and list(apps.values())[0] >= 1, (apps, cluster.status())

    # the reference: the session's local Spark, same settings and window
    ref = pretrain_window(spark, small_world, "2026-01-11", 10, PretrainConfig.from_settings(Settings(), dim=16))
    emb = Embeddings.load(tmp_path / "cluster")
    figures = agreement({"item_ids": ref.item_ids, "E": ref.E, "s": ref.singular_values}, emb)
    print(f"cluster vs {spark.sparkContext.master}: {figures}; pre-training {on_cluster['timings']['total']} s "
          f"vs {ref.timings['total']:.1f} s")
    assert figures["same_items"] and on_cluster["items"] == len(ref.item_ids) > 16
    assert figures["singular_values_max_rel_diff"] < 1e-4, figures
    assert figures["item_cosine_correlation"] > 0.999 and figures["item_cosine_mean_abs_diff"] < 1e-3, figures


@pytest.mark.slow
@pytest.mark.stack
def test_daily_run_on_the_cluster(cluster, small_world, local_stack):
    before = executors_that_ran(cluster, "led")
    code, res, log = led("run", "--events", small_world, "--date", "2026-01-11", "--param", "dim=16",
                         "--param", "epochs=2", "--param", "num_negatives=100", "--param", "batch_size=256",
                         "--param", "refit_whole_window=false", env=MEMORY | {"LED_SPARK_MASTER": cluster.master_url})
    assert code == 0 and res["state"] == "COMPLETED", log[-3000:]
    assert res["seconds"]["pretrain"] > 0 and res["pushed_slot"] in ("blue", "green")
    apps = {k: v for k, v in executors_that_ran(cluster, "led").items() if k not in before}
    assert len(apps) == 1 and list(apps.values())[0] >= 1, apps
