"""Servers the tests start for themselves (a moto S3 on 127.0.0.1), and how they stop child processes.

The shared local stack (moto, MLflow, Prefect) is ``conftest.local_stack``; these are for tests that
need an S3 of their own, e.g. to stop it mid-test (an outage).
"""
from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from pathlib import Path

MOTO_SERVER = Path(sys.executable).parent / "moto_server"


def start_moto(port: int, log: Path, timeout: float = 30.0) -> subprocess.Popen:
    """moto's standalone server on 127.0.0.1:``port``, returned once it answers."""
    with open(log, "a") as out:  # the child keeps its own descriptor
        proc = subprocess.Popen([str(MOTO_SERVER), "-H", "127.0.0.1", "-p", str(port)], stdout=out,
                                stderr=subprocess.STDOUT)
    deadline = time.time() + timeout
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/moto-api/", timeout=1).read()
            return proc
        except OSError:
            if time.time() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError(f"moto_server did not start (log: {log})")
            time.sleep(0.1)


def stop(proc: subprocess.Popen, grace: float = 15.0) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds."""
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
