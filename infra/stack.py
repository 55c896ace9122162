"""The local stack: the real services of the pipeline on 127.0.0.1.

- moto's standalone S3 server (the stand-in for AWS S3 here),
- an MLflow tracking server (SQLite backend, artifacts served by the server),
- a Prefect server (SQLite).

All state lives under ``settings.stack_dir``: ``logs/NAME.log``,
``pids/NAME.json`` (pid, port, process start time), ``mlflow/`` and
``prefect/``. Each service runs in its own process group so ``down`` stops
exactly the processes it started (the PID file's start time guards against a
recycled PID) and everything they spawned.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import psutil

from infra.errors import UserError
from infra.settings import Settings

SERVICES = ("moto", "mlflow", "prefect")


@dataclass(frozen=True)
class Service:
    name: str
    port: int
    command: list[str]
    env: dict[str, str]
    health_url: str
    healthy: Callable[[int, bytes], bool]
    url: str


def _python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def services(s: Settings) -> dict[str, Service]:
    host, root = s.stack_host, s.stack_dir
    mlflow_dir, prefect_home = root / "mlflow", root / "prefect"
    return {
        "moto": Service(
            "moto", s.moto_port,
            _python_module("moto.server", "-H", host, "-p", str(s.moto_port)),
            {}, f"http://{host}:{s.moto_port}/moto-api/", lambda code, body: code == 200,
            f"http://{host}:{s.moto_port}"),
        "mlflow": Service(
            "mlflow", s.mlflow_port,
            _python_module("mlflow", "server", "--host", host, "--port", str(s.mlflow_port), "--workers", "1",
                           "--backend-store-uri", f"sqlite:///{mlflow_dir / 'mlflow.db'}",
                           "--artifacts-destination", str(mlflow_dir / "artifacts")),
            {"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
            f"http://{host}:{s.mlflow_port}/health", lambda code, body: code == 200 and b"OK" in body,
            f"http://{host}:{s.mlflow_port}"),
        "prefect": Service(
            "prefect", s.prefect_port,
            _python_module("prefect", "server", "start", "--analytics-off"),
            {"PREFECT_HOME": str(prefect_home), "PREFECT_SERVER_API_HOST": host,
             "PREFECT_SERVER_API_PORT": str(s.prefect_port),
             "PREFECT_UI_API_URL": f"http://{host}:{s.prefect_port}/api",
             "PREFECT_SERVER_ANALYTICS_ENABLED": "false"},
            f"http://{host}:{s.prefect_port}/api/health", lambda code, body: code == 200 and b"true" in body,
            f"http://{host}:{s.prefect_port}"),
    }


def _probe(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read(200)
    except Exception:  # noqa: BLE001 - any failure means "not healthy yet"
        return 0, b""


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS reports free on ``host`` now (tests and benchmarks bind their servers to it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def stop_group(proc: "subprocess.Popen", grace: float = 20.0) -> None:
    """SIGTERM a child's whole process group (a server and its workers), SIGKILL what is left."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=grace)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=10)


def live_children(pid: int) -> set[int]:
    """The live (non-zombie) direct children of ``pid``: a gunicorn master's workers."""
    found = set()
    for child in psutil.Process(pid).children():
        try:
            if child.status() != psutil.STATUS_ZOMBIE:
                found.add(child.pid)
        except psutil.NoSuchProcess:
            pass
    return found


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


class LocalStack:
    """Start, stop and inspect the local stack described by the settings."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.root = settings.stack_dir
        self.services = services(settings)

    # --- PID bookkeeping ------------------------------------------------------
    def _pid_file(self, name: str) -> Path:
        return self.root / "pids" / f"{name}.json"

    def _process(self, name: str) -> psutil.Process | None:
        """Our still-running process for ``name`` (None if gone or the PID was recycled)."""
        try:
            info = json.loads(self._pid_file(name).read_text())
            proc = psutil.Process(info["pid"])
            if abs(proc.create_time() - info["create_time"]) < 1.0 and proc.status() != psutil.STATUS_ZOMBIE:
                return proc
        except (FileNotFoundError, json.JSONDecodeError, KeyError, psutil.Error):
            pass
        return None

    # --- commands ----------------------------------------------------------------
    def status(self) -> dict:
        out = {}
        for name, svc in self.services.items():
            proc = self._process(name)
            code, body = _probe(svc.health_url)
            out[name] = {"url": svc.url, "pid": proc.pid if proc else None,
                         "running": proc is not None, "healthy": svc.healthy(code, body)}
        return out

    def up(self, names: tuple[str, ...] = SERVICES, timeout: float = 120.0,
           log: Callable[[str], None] = lambda msg: None) -> dict:
        """Start the named services that are not running; wait until all are healthy."""
        started: list[str] = []
        for name in names:
            svc = self.services[name]
            if self._process(name):
                log(f"{name}: already running")
                continue
            if port_in_use(self.settings.stack_host, svc.port):
                self._stop(started)
                raise UserError(f"{name}: port {svc.port} on {self.settings.stack_host} is already in use by "
                                f"another process; free it or set LED_{name.upper()}_PORT")
            self._start(svc)
            started.append(name)
            log(f"{name}: starting on {svc.url}")
        deadline = time.monotonic() + timeout
        for name in names:
            svc = self.services[name]
            while not svc.healthy(*_probe(svc.health_url)):
                if self._process(name) is None or time.monotonic() > deadline:
                    tail = self._log_tail(name)
                    self._stop(started)
                    why = "exited" if time.monotonic() <= deadline else f"not healthy after {timeout:.0f}s"
                    raise UserError(f"{name} {why}; last log lines: {tail}")
                time.sleep(0.3)
            log(f"{name}: healthy")
        return {"started": started, **self.status()}

    def down(self, names: tuple[str, ...] = SERVICES) -> dict:
        stopped = self._stop([n for n in names if self._process(n)])
        for name in names:
            self._pid_file(name).unlink(missing_ok=True)
        return {"stopped": stopped}

    # --- internals ---------------------------------------------------------------
    def _start(self, svc: Service) -> None:
        for sub in ("logs", "pids", "mlflow/artifacts", "prefect"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        env = os.environ.copy() | svc.env
        with open(self.root / "logs" / f"{svc.name}.log", "ab") as logf:
            proc = subprocess.Popen(svc.command, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=env, cwd=self.root, start_new_session=True)
        info = {"pid": proc.pid, "port": svc.port, "create_time": psutil.Process(proc.pid).create_time(),
                "command": svc.command}
        self._pid_file(svc.name).write_text(json.dumps(info))

    def _stop(self, names: list[str], grace: float = 15.0) -> list[str]:
        """SIGTERM each service's process group, then SIGKILL what is left after ``grace`` seconds."""
        groups = {}
        for name in names:
            proc = self._process(name)
            if proc is None:
                continue
            members = [proc, *proc.children(recursive=True)]
            groups[name] = members
            for sig in (signal.SIGTERM, signal.SIGINT):  # some servers need two signals to exit
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    pass
        everyone = [p for members in groups.values() for p in members]
        _, alive = psutil.wait_procs(everyone, timeout=grace)
        for p in alive:
            try:
                p.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(alive, timeout=5)
        for name in groups:
            self._pid_file(name).unlink(missing_ok=True)
        return list(groups)

    def _log_tail(self, name: str, lines: int = 5) -> str:
        path = self.root / "logs" / f"{name}.log"
        if not path.exists():
            return "(no log)"
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
