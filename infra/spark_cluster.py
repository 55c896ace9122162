"""A real Spark standalone cluster on 127.0.0.1: one master and N workers, from the jars pyspark ships.

The pipeline needs no code to use a cluster: ``LED_SPARK_MASTER=spark://HOST:PORT`` is enough
(docs/architecture.md, "Running pre-training on a cluster"). This module starts such a cluster
on this machine so a test and a benchmark can prove it:

    with StandaloneCluster(root, workers=2) as cluster:
        env = {"LED_SPARK_MASTER": cluster.master_url}

Every process binds to 127.0.0.1 (``--host`` and ``SPARK_LOCAL_IP``: a worker left to itself
registers with the machine's interface address), on free ports. Each JVM runs in its own process
group, so stopping kills it and the executors it launched; work and log folders live under ``root``.
Workers get this environment without ``PYTHONPATH``, as a worker on another host would: executors
must receive the pipeline's code from the driver (``infra.spark``), not by accident from here.
"""
from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
from pathlib import Path

from infra.stack import free_port, stop_group

HOST = "127.0.0.1"
MASTER_CLASS = "org.apache.spark.deploy.master.Master"
WORKER_CLASS = "org.apache.spark.deploy.worker.Worker"


def spark_home() -> Path:
    """The Spark distribution inside the pyspark package (bin/spark-class and jars/)."""
    import pyspark

    return Path(pyspark.__file__).resolve().parent


class StandaloneCluster:
    """Start a master and ``workers`` workers (``cores`` and ``memory`` each); stop them all."""

    def __init__(self, root: Path, workers: int = 2, cores: int = 1, memory: str = "2g",
                 daemon_memory: str = "512m"):
        self.root, self.workers, self.cores, self.memory = Path(root), workers, cores, memory
        self.daemon_memory = daemon_memory
        self.port, self.webui_port = free_port(HOST), free_port(HOST)
        self.procs: list[subprocess.Popen] = []
        self.names: list[str] = []  # master, worker-0, ... in the order of procs

    @property
    def master_url(self) -> str:
        return f"spark://{HOST}:{self.port}"

    @property
    def webui_url(self) -> str:
        return f"http://{HOST}:{self.webui_port}"

    def status(self) -> dict:
        """The master's JSON status: workers (state ALIVE...), activeapps, completedapps."""
        with urllib.request.urlopen(f"{self.webui_url}/json/", timeout=5) as resp:
            return json.loads(resp.read())

    def start(self, timeout: float = 120.0) -> "StandaloneCluster":
        try:
            self._launch("master", MASTER_CLASS, "--host", HOST, "--port", str(self.port),
                         "--webui-port", str(self.webui_port))
            # the master's ports bound before any worker picks one (a worker's UI once took the master's
            # free port first, and /json/ answered with the worker's HTML page)
            self._wait_for(lambda status: True, "the Spark master's status page", timeout)
            for n in range(self.workers):
                self._launch(f"worker-{n}", WORKER_CLASS, "--host", HOST, "--webui-port", str(free_port(HOST)),
                             "--cores", str(self.cores), "--memory", self.memory, self.master_url)
            self._wait_for(lambda status: sum(w.get("state") == "ALIVE" for w in status.get("workers", []))
                           >= self.workers, f"{self.workers} Spark workers ALIVE", timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop the workers first (they kill their executors), then the master."""
        for proc in reversed(self.procs):
            stop_group(proc, grace=15)
        self.procs.clear()
        self.names.clear()

    def __enter__(self) -> "StandaloneCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- internals ---------------------------------------------------------------
    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("PYSPARK_")}
        return env | {"SPARK_HOME": str(spark_home()), "SPARK_LOCAL_IP": HOST,
                      "SPARK_LOG_DIR": str(self.root / "logs"), "SPARK_WORKER_DIR": str(self.root / "work"),
                      "SPARK_DAEMON_MEMORY": self.daemon_memory,
                      "SPARK_NO_DAEMONIZE": "1"}

    def _launch(self, name: str, cls: str, *args: str) -> None:
        (self.root / "logs").mkdir(parents=True, exist_ok=True)
        command = [str(spark_home() / "bin" / "spark-class"), cls, *args]
        self.names.append(name)
        with open(self.root / "logs" / f"{name}.log", "ab") as logf:
            self.procs.append(subprocess.Popen(command, stdout=logf, stderr=subprocess.STDOUT,
                                               stdin=subprocess.DEVNULL, env=self._env(), cwd=self.root,
                                               start_new_session=True))

    def _log_tail(self, name: str, lines: int = 5) -> str:
        path = self.root / "logs" / f"{name}.log"
        tail = path.read_text(errors="replace").strip().splitlines()[-lines:] if path.exists() else ["(no log)"]
        return f"{' | '.join(tail)} ({path})"

    def _wait_for(self, ready, what: str, timeout: float) -> None:
        """Poll the master's JSON status until ``ready(status)``; fail naming ``what`` and the log tail."""
        deadline = time.monotonic() + timeout
        while True:
            dead = [name for name, p in zip(self.names, self.procs) if p.poll() is not None]
            if dead:
                raise RuntimeError(f"Spark {dead[0]} exited at start: {self._log_tail(dead[0])}")
            try:
                if ready(self.status()):
                    return
            except (OSError, ValueError):  # the web UI is not up yet, or not yet answering JSON
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"no {what} after {timeout:.0f}s: {self._log_tail('master')}")
            time.sleep(0.5)
