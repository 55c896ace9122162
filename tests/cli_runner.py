"""The ``led`` command as the end-to-end tests run it: a subprocess in its own session.

Output goes to files, not pipes, and the session is killed when the command ends, so whatever a
command leaves behind (a Spark JVM whose launch a timeout interrupted, a serving process) cannot
hold a test.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def led(*args: str, env: dict | None = None, timeout: float = 900) -> tuple[int, dict | None, str]:
    """Run `led` in its own session, output to files (not pipes): whatever it leaves behind (e.g. a
    Spark JVM whose launch a timeout interrupted) cannot hold the test, and is killed with the session."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([sys.executable, "-m", "cli.main", *map(str, args)], stdout=out, stderr=err,
                                text=True, cwd=ROOT, env=os.environ.copy() | (env or {}), start_new_session=True)
        try:
            proc.wait(timeout)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    lines = stdout.strip().splitlines()
    try:
        last = json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:
        last = None
    return proc.returncode, last, stdout + stderr


def stop_worker(worker: subprocess.Popen) -> None:
    for _ in range(2):  # a Prefect worker needs two signals to exit
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGINT)
            try:
                worker.wait(15)
            except subprocess.TimeoutExpired:
                pass
    if worker.poll() is None:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(10)


def generated_world(folder: Path, seed: int, days: int = 8, users: int = 1500, items: int = 400) -> Path:
    """``led generate`` into ``folder/events``: the small world the flow tests run the daily flow on."""
    out = Path(folder) / "events"
    code, _, log = led("generate", "--out", out, "--days", days, "--users", users, "--items", items, "--seed", seed)
    assert code == 0, log
    return out
