"""``led serve``'s processes and HTTP: gunicorn owns the workers, uvicorn (httptools + uvloop) speaks HTTP.

- **Process manager: gunicorn's arbiter.** It forks ``workers`` processes and
  replaces any that dies (SIGKILL, OOM, a crash) at once; ``child_exit`` logs
  one JSON line and retires the dead worker's live gauges. SIGTERM stops
  gracefully (in-flight requests finish), SIGINT/SIGQUIT at once.
- **Balanced connections: ``SO_REUSEPORT``.** Each worker binds its own
  listening socket on the same port, so the kernel spreads new connections over
  the workers (by a hash of the 4-tuple). With one shared accept socket the
  worker that wakes first accepted a whole burst of keep-alive connections
  (issue 11 measured half the throughput at 8 connections on 2 workers). The
  parent holds the port (bound, never listening) so ``--port 0`` resolves once
  and every worker joins the same group.
- **HTTP: uvicorn's httptools protocol on uvloop**, chosen by
  ``benchmarks/serving.py`` (against the previous hand-written transport, kept
  in ``serving/legacy_http.py`` as the baseline, and gunicorn's own ASGI
  worker). It answers what the hand-written parser got wrong: ``Date`` on every
  response, conflicting ``Content-Length`` headers rejected with 400,
  HTTP/1.0 connections closed unless they ask for keep-alive, chunked bodies.
- **The ASGI app** (``LedAsgi``) is a thin adapter over ``Service.handle``:
  the handler is CPU-bound and short (~0.1-1 ms), so it runs inline on the
  event loop; a thread hand-off would cost more than it saves. ``Allow`` on
  405, ``Connection: close`` after a 413 whose body was not read.

Each worker builds its ``Service`` after the fork and loads its model before it
serves (``Poller.start_up``), then starts its poller thread (threads do not
survive ``fork``). Metrics: ``serving.metrics`` (one scrape, every worker).
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from serving.app import allowed_methods
from serving.events import log_event

TRANSPORTS = ("uvicorn", "gunicorn-asgi")
WORKER_CLASSES = {"uvicorn": "serving.server.LedUvicornWorker", "gunicorn-asgi": "asgi"}
# A worker downloads and verifies its first model before it serves; gunicorn's heartbeat timeout must
# cover that (a 22k x 600 slot from S3 is a few seconds; 120 s leaves room for a slow store).
WORKER_BOOT_TIMEOUT_SECONDS = 120
IDLE_KEEPALIVE_SECONDS = 60
# uvicorn's httptools protocol sets no bound on header size; refuse past this (RFC 6585 431).
MAX_HEADER_BYTES = 16 * 1024


@dataclass(frozen=True)
class WorkerPlan:
    """What every worker needs to build its service (picklable, plain values)."""

    cache_dir: Path
    local_dir: Path | None
    ready_flag: Path
    ready_line: str | None


# --- the ASGI adapter ------------------------------------------------------------------------------

class LedAsgi:
    """ASGI 3 app over ``Service.handle``; lifespan starts and stops the poller."""

    def __init__(self, service, poller=None):
        self.service, self.poller = service, poller

    async def __call__(self, scope, receive, send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive, send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                if self.poller is not None and not self.poller.is_alive():
                    self.poller.start()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.poller is not None:
                    self.poller.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope, receive, send) -> None:
        limit = self.service.limits.max_body_bytes
        if sum(len(name) + len(value) + 4 for name, value in scope["headers"]) > MAX_HEADER_BYTES:
            await self._refuse(send, 431, "request header fields too large")
            return
        declared = _content_length(scope["headers"])
        body = b""
        too_large = declared is not None and declared > limit
        if not too_large:
            chunks, size, more = [], 0, True
            while more:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limit:
                    too_large = True
                    break
                chunks.append(chunk)
                more = message.get("more_body", False)
            body = b"".join(chunks)
        if too_large:
            await self._refuse(send, 413, f"body larger than {limit} bytes")  # unread body: close after
            return
        status, ctype, payload = self.service.handle(scope["method"], scope["path"], body)
        headers = [(b"content-type", ctype.encode()), (b"content-length", str(len(payload)).encode())]
        if status == 405:
            headers.append((b"allow", allowed_methods(scope["path"]).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else payload})

    async def _refuse(self, send, status: int, message: str) -> None:
        """Answer before reading the request body, and close: the unread bytes cannot be skipped safely."""
        payload = json.dumps({"error": message}).encode()
        self.service.metrics.observe("other", status, 0.0)
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"connection", b"close"),
                                (b"content-length", str(len(payload)).encode())]})
        await send({"type": "http.response.body", "body": payload})


def _content_length(headers) -> int | None:
    for name, value in headers:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the HTTP parser has already refused malformed values
    return None


# --- gunicorn --------------------------------------------------------------------------------------

def _gunicorn_classes():
    from gunicorn.app.base import BaseApplication
    from uvicorn_worker import UvicornWorker

    class LedUvicornWorker(UvicornWorker):
        # No access log, no proxy-header rewriting (nothing sits in front of led serve by default):
        # both cost CPU on every request and the service has its own metrics.
        CONFIG_KWARGS = {"loop": "uvloop", "http": "httptools", "access_log": False, "server_header": False,
                         "lifespan": "on", "proxy_headers": False}

    class LedApplication(BaseApplication):
        def __init__(self, options: dict, plan: WorkerPlan, settings):
            self.options, self.plan, self.settings = options, plan, settings
            super().__init__()

        def load_config(self) -> None:
            for key, value in self.options.items():
                self.cfg.set(key, value)

        def load(self):
            return build_worker_app(self.settings, self.plan)

    return LedUvicornWorker, LedApplication


def __getattr__(name: str):  # gunicorn imports the worker class by its dotted path
    if name == "LedUvicornWorker":
        return _gunicorn_classes()[0]
    raise AttributeError(name)


def build_worker_app(settings, plan: WorkerPlan) -> LedAsgi:
    """In a fresh worker: build the service and load its first model before serving."""
    from serving.app import Limits, Poller, Service, load_slot_dir
    from serving.storage import BlueGreenStore

    service = Service(Limits.from_settings(settings))
    poller = None
    if plan.local_dir is not None:
        service.swap(load_slot_dir(plan.local_dir, "local", "local"))
    else:
        store = BlueGreenStore.from_settings(settings)  # boto3 clients are not fork-safe: one per process
        poller = Poller(service, store, plan.cache_dir, settings.serve_poll_seconds)
        poller.start_up()
    return LedAsgi(service, poller)


def _post_worker_init(worker) -> None:
    """The first worker ready prints the ready line (its socket is listening and its model loaded)."""
    plan: WorkerPlan = worker.app.plan
    log_event("worker_ready", worker_pid=worker.pid)
    if plan.ready_line is None:
        return
    try:
        fd = os.open(plan.ready_flag, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.close(fd)
    sys.stdout.write(plan.ready_line + "\n")
    sys.stdout.flush()


def _child_exit(server, worker) -> None:
    from serving.metrics import mark_worker_dead

    mark_worker_dead(worker.pid)
    log_event("worker_exited", worker_pid=worker.pid)  # the arbiter spawns its replacement next


def reserve_port(host: str, port: int) -> socket.socket:
    """Bind (never listen) with SO_REUSEPORT: holds the port for the workers' listening sockets."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    if port:
        with socket.socket(family, socket.SOCK_STREAM) as probe:  # without SO_REUSEPORT: a port another
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # server holds is refused, not joined
            probe.bind((host, port))
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def gunicorn_options(host: str, port: int, workers: int, http: str) -> dict:
    bind = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return {"bind": [bind], "workers": workers, "worker_class": WORKER_CLASSES[http], "reuse_port": True,
            "keepalive": IDLE_KEEPALIVE_SECONDS, "timeout": WORKER_BOOT_TIMEOUT_SECONDS, "graceful_timeout": 10,
            "backlog": 1024, "loglevel": "warning", "errorlog": "-", "accesslog": None,
            "post_worker_init": _post_worker_init, "child_exit": _child_exit, "proc_name": "led-serve",
            "worker_connections": 1000}


def run_server(settings, port: int, cache_dir: Path, model_dir: Path | None = None, workers: int = 1,
               http: str = "uvicorn", ready_line: bool = True, slot_dir: Path | None = None) -> int:
    """Index ``model_dir`` (when given; ``slot_dir``: an already indexed slot), else follow ACTIVE; serve until
    SIGTERM/SIGINT; returns an exit code."""
    from serving.app import prepare_local_model

    if http not in TRANSPORTS:
        raise ValueError(f"unknown transport {http!r}: one of {', '.join(TRANSPORTS)}")
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    local_dir = prepare_local_model(model_dir, cache_dir, settings) if model_dir else slot_dir
    holder = reserve_port(settings.serve_host, port)
    port = holder.getsockname()[1]
    run_dir = Path(tempfile.mkdtemp(prefix=f".run-{os.getpid()}-", dir=cache_dir))
    metrics_dir = run_dir / "metrics"
    metrics_dir.mkdir()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)  # before any worker imports prometheus_client
    line = json.dumps({"listening": f"http://{settings.serve_host}:{port}", "workers": workers, "http": http,
                       "pid": os.getpid()}) if ready_line else None
    plan = WorkerPlan(cache_dir, local_dir, run_dir / "ready", line)
    _, LedApplication = _gunicorn_classes()
    try:
        LedApplication(gunicorn_options(settings.serve_host, port, workers, http), plan, settings).run()
    except SystemExit as exc:  # the arbiter exits through sys.exit
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        return code
    finally:
        holder.close()
        shutil.rmtree(run_dir, ignore_errors=True)
    return 0
