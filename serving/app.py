"""The recommendation HTTP service behind ``led serve``.

Pieces, from the inside out:

- ``LoadedModel``: a verified slot directory mapped into memory (``.npy``
  arrays with ``allow_pickle=False``, the Annoy index mmapped) wrapped in a
  ``serving.index.Recommender``.
- ``Service``: the transport-independent request handler
  ``handle(method, path, body) -> (status, content_type, bytes)``. Each request
  reads ``self.model`` once, so a swap (one reference assignment by the poller
  thread) never changes the model under a request in flight: it finishes on the
  old one, which is freed when the last reference goes.
- ``Poller``: a daemon thread that polls ``ACTIVE`` (conditional GET, a 304
  when nothing changed), downloads and verifies the new slot into
  ``cache_dir/<manifest_sha256>/`` (temp dir + rename, so a partial slot is
  never visible), loads it, and only then swaps. Any failure keeps the old
  model serving and is shown in ``/model`` (``last_error``) and ``/metrics``
  (``led_model_load_failures_total``); a slot that failed verification is not
  retried until ACTIVE changes again.
- The HTTP transport. Default: a small asyncio HTTP/1.1 server (keep-alive,
  Content-Length bodies only) that calls ``Service.handle`` inline on the event
  loop; the handler is CPU-bound and short (~0.1-1 ms), so a thread hand-off
  would cost more than it saves. Measured against the stdlib
  ``ThreadingHTTPServer`` (``--http stdlib``), see benchmarks/README.md. Parallelism
  comes from ``workers`` processes sharing one listening socket (each maps the
  same index file, so pages are shared). Each worker has its own poller and
  its own ``/metrics`` counters (a scrape sees one worker); run one worker per
  port/container where per-process metrics matter. Idle connections close
  after 60 s.

Endpoints: ``POST /recommend`` ``{"items": [ids], "k": 10}``; ``GET /healthz``,
``/readyz``, ``/model``, ``/metrics``. Bad input is answered 4xx with
``{"error": ...}``; 503 only while no model is loaded.

Imports: numpy, annoy, boto3 (for S3) and the standard library only.
"""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from serving.index import INDEX_FILE, IndexParams, Recommender, load_index
from serving.metrics import Metrics
from serving.storage import MANIFEST, BlueGreenStore, VerificationError

JSON = "application/json"
PROMETHEUS = "text/plain; version=0.0.4; charset=utf-8"
MAX_HEADER_BYTES = 16 * 1024
IDLE_TIMEOUT_SECONDS = 60.0


@dataclass(frozen=True)
class Limits:
    max_items: int = 1000
    max_k: int = 1000
    max_body_bytes: int = 1 << 20

    @classmethod
    def from_settings(cls, settings) -> "Limits":
        return cls(settings.serve_max_items, settings.serve_max_k, settings.serve_max_body_bytes)


@dataclass
class LoadedModel:
    recommender: Recommender
    model_version: str
    slot: str
    manifest_sha256: str
    directory: Path
    manifest: dict = field(default_factory=dict)
    loaded_at: float = field(default_factory=time.time)

    def describe(self) -> dict:
        return {"model_version": self.model_version, "slot": self.slot,
                "manifest_sha256": self.manifest_sha256, "items": self.recommender.size,
                "dim": self.recommender.params.dim if self.recommender.params else None,
                "ann_recall": self.manifest.get("ann_recall"),
                "index": self.manifest.get("index"), "created_at": self.manifest.get("created_at"),
                "loaded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.loaded_at)),
                "directory": str(self.directory)}


def load_slot_dir(directory: Path, slot: str, manifest_sha256: str) -> LoadedModel:
    """Map a verified slot directory; ``ValueError`` when it is inconsistent."""
    directory = Path(directory)
    manifest = json.loads((directory / MANIFEST).read_text())
    params = IndexParams.from_json(manifest["index"])
    arrays = {name: np.load(directory / f"{name}.npy", allow_pickle=False, mmap_mode="r")
              for name in ("V", "b", "counts")}
    item_ids = np.load(directory / "item_ids.npy", allow_pickle=False)
    V = np.asarray(arrays["V"], dtype=np.float32)
    if V.ndim != 2 or V.shape[1] != params.dim or V.shape[0] != len(item_ids):
        raise ValueError(f"V shape {V.shape} does not match {len(item_ids)} items x dim {params.dim}")
    index = load_index(directory / INDEX_FILE, params)
    if index.get_n_items() != len(item_ids):
        raise ValueError(f"index has {index.get_n_items()} items, catalog {len(item_ids)}")
    rec = Recommender(item_ids, V, np.asarray(arrays["b"], dtype=np.float32),
                      np.asarray(arrays["counts"]), index, params)
    rec.recommend([rec.item_ids[0]], 1)  # smoke query: fail here, not on the first user
    return LoadedModel(rec, str(manifest["model_version"]), slot, manifest_sha256, directory, manifest)


class BadRequest(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class Service:
    """Transport-independent handler; holds the live model reference and the metrics."""

    def __init__(self, limits: Limits, metrics: Metrics | None = None):
        self.limits = limits
        self.metrics = metrics or Metrics()
        self.model: LoadedModel | None = None
        self.last_error: str | None = None
        self.last_poll: float | None = None
        self.active: dict | None = None
        self.swaps = 0

    # --- model lifecycle (called from the poller thread) --------------------
    def swap(self, model: LoadedModel) -> None:
        swapped = self.model is not None
        self.model = model  # one reference assignment: atomic for readers
        self.swaps += int(swapped)
        self.last_error = None
        self.metrics.model_loaded(model.model_version, model.slot, swapped)

    def report_failure(self, message: str) -> None:
        self.last_error = message
        self.metrics.load_failed()

    # --- requests --------------------------------------------------------------
    def handle(self, method: str, path: str, body: bytes) -> tuple[int, str, bytes]:
        start = time.perf_counter()
        path = path.split("?", 1)[0]
        try:
            status, ctype, payload = self._route(method, path, body)
        except BadRequest as exc:
            status, ctype, payload = exc.status, JSON, _json({"error": str(exc)})
        except Exception as exc:  # a bug, never the client's fault: say so, keep serving
            status, ctype, payload = 500, JSON, _json({"error": f"internal error: {type(exc).__name__}"})
            print(f"led serve: internal error on {method} {path}: {exc!r}", file=sys.stderr, flush=True)
        endpoint = path if path in ROUTES else "other"
        self.metrics.observe(endpoint, status, time.perf_counter() - start)
        return status, ctype, payload

    def _route(self, method: str, path: str, body: bytes) -> tuple[int, str, bytes]:
        allowed = ROUTES.get(path)
        if allowed is None:
            raise BadRequest(404, f"no such endpoint: {path}")
        if method != allowed:
            raise BadRequest(405, f"{path} accepts {allowed} only")
        if path == "/recommend":
            return 200, JSON, self.recommend(body)
        if path == "/healthz":
            return 200, JSON, b'{"status":"ok"}'
        if path == "/readyz":
            ready = self.model is not None
            return (200 if ready else 503), JSON, _json({"ready": ready})
        if path == "/model":
            return 200, JSON, _json(self.describe())
        return 200, PROMETHEUS, self.metrics.render().encode()

    def recommend(self, body: bytes) -> bytes:
        model = self.model  # read once: a concurrent swap cannot change it under this request
        items, k = self._parse(body)
        if model is None:
            raise BadRequest(503, "no model loaded yet")
        rec = model.recommender.recommend(items, k)
        self.metrics.count_recommendation(rec.unknown, rec.fallback)
        return _json({"ids": rec.ids, "scores": rec.scores, "model_version": model.model_version,
                      "slot": model.slot, "unknown_items": rec.unknown,
                      "fallback": "popularity" if rec.fallback else None})

    def _parse(self, body: bytes) -> tuple[list[str], int]:
        if len(body) > self.limits.max_body_bytes:
            raise BadRequest(413, f"body larger than {self.limits.max_body_bytes} bytes")
        try:
            data = json.loads(body)
        except (ValueError, RecursionError):
            raise BadRequest(400, "body is not valid JSON") from None
        if not isinstance(data, dict):
            raise BadRequest(400, 'body must be a JSON object {"items": [...], "k": 10}')
        items = data.get("items", [])
        if not isinstance(items, list):
            raise BadRequest(400, '"items" must be a list of item ids')
        if len(items) > self.limits.max_items:
            raise BadRequest(413, f'"items" has {len(items)} entries, limit {self.limits.max_items}')
        k = data.get("k", 10)
        if not isinstance(k, int) or isinstance(k, bool):
            raise BadRequest(400, '"k" must be an integer')
        if not 1 <= k <= self.limits.max_k:
            raise BadRequest(422, f'"k" must be between 1 and {self.limits.max_k}')
        ids = []
        for item in items:
            if isinstance(item, str):
                ids.append(item)
            elif isinstance(item, int) and not isinstance(item, bool):
                ids.append(str(item))
            else:
                raise BadRequest(400, '"items" entries must be strings (or integers)')
        return ids, k

    def describe(self) -> dict:
        current = self.model.describe() if self.model else None
        return {"ready": self.model is not None, "model": current, "active": self.active,
                "swaps": self.swaps, "last_error": self.last_error,
                "last_poll": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.last_poll))
                if self.last_poll else None, "limits": self.limits.__dict__, "pid": os.getpid()}


ROUTES = {"/recommend": "POST", "/healthz": "GET", "/readyz": "GET", "/model": "GET", "/metrics": "GET"}


def _json(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode()


# --- the poller ------------------------------------------------------------------------------------

class Poller(threading.Thread):
    """Follows ACTIVE: download + verify + load the new slot, then swap; never swaps in a partial slot."""

    def __init__(self, service: Service, store: BlueGreenStore, cache_dir: Path, interval: float):
        super().__init__(name="led-active-poller", daemon=True)
        self.service, self.store, self.cache_dir, self.interval = service, store, Path(cache_dir), interval
        self.etag: str | None = None
        self.failed_etag: str | None = None
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.wait(self.interval):
            self.poll_once()

    def stop(self) -> None:
        self.stop_event.set()

    def poll_once(self) -> bool:
        """One poll; True when a new model was swapped in."""
        try:
            active = self.store.active_changed(self.etag)
        except Exception as exc:  # store unreachable: keep serving, report, retry next poll
            self.service.metrics.poll_failed()
            self.service.last_error = f"polling ACTIVE failed: {exc}"
            return False
        self.service.last_poll = time.time()
        if active is False or active is None or active.etag == self.failed_etag:
            return False
        self.service.active = active.to_json()
        current = self.service.model
        if current is not None and (current.slot, current.manifest_sha256) == (active.slot, active.manifest_sha256):
            self.etag = active.etag  # e.g. a rollback-and-forward to the version we serve
            return False
        try:
            model = self._fetch_and_load(active)
        except VerificationError as exc:
            self.failed_etag = active.etag  # this ACTIVE names a bad slot: wait for the next flip
            self.service.report_failure(f"refused slot {active.slot} ({active.model_version}): {exc}")
            return False
        except Exception as exc:  # transient (network, disk): retry on the next poll
            self.service.report_failure(f"loading slot {active.slot} ({active.model_version}) failed: {exc!r}")
            return False
        self.service.swap(model)
        self.etag = active.etag
        self._prune_cache(keep={active.manifest_sha256, current.manifest_sha256 if current else ""})
        return True

    def _fetch_and_load(self, active) -> LoadedModel:
        dest = self.cache_dir / active.manifest_sha256
        if not (dest / MANIFEST).is_file():  # cache dirs only appear complete (temp dir + rename)
            self.store.download_slot(active.slot, dest, active.manifest_sha256)
        return load_slot_dir(dest, active.slot, active.manifest_sha256)

    def _prune_cache(self, keep: set[str]) -> None:
        for entry in self.cache_dir.iterdir():
            if entry.is_dir() and entry.name not in keep and not entry.name.startswith(".tmp-"):
                shutil.rmtree(entry, ignore_errors=True)  # mapped files stay valid until unmapped


# --- transports ------------------------------------------------------------------------------------

REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout",
           411: "Length Required", 413: "Content Too Large", 422: "Unprocessable Content",
           431: "Request Header Fields Too Large", 500: "Internal Server Error", 501: "Not Implemented",
           503: "Service Unavailable"}


def _response(status: int, ctype: str, payload: bytes, keep_alive: bool) -> bytes:
    head = (f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {len(payload)}\r\n{'' if keep_alive else 'Connection: close' + chr(13) + chr(10)}\r\n")
    return head.encode("latin-1") + payload


class HttpProtocol(asyncio.Protocol):
    """Minimal HTTP/1.1: request line + headers, Content-Length bodies, keep-alive, pipelining."""

    def __init__(self, service: Service):
        self.service = service
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.sent_continue = False
        self.last_active = time.monotonic()

    def connection_made(self, transport) -> None:
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        asyncio.get_running_loop().call_later(IDLE_TIMEOUT_SECONDS, self._close_if_idle)

    def connection_lost(self, exc) -> None:
        self.transport = None

    def _close_if_idle(self) -> None:
        """Idle keep-alive (or half-sent) connections are closed so they cannot pile up."""
        if self.transport is None or self.transport.is_closing():
            return
        idle = time.monotonic() - self.last_active
        if idle >= IDLE_TIMEOUT_SECONDS:
            self.transport.close()
        else:
            asyncio.get_running_loop().call_later(IDLE_TIMEOUT_SECONDS - idle, self._close_if_idle)

    def data_received(self, data: bytes) -> None:
        self.last_active = time.monotonic()
        self.buffer += data
        while self.transport is not None and not self.transport.is_closing():
            if not self._handle_one():
                return

    def _handle_one(self) -> bool:
        """Answer one complete request from the buffer; False when more bytes are needed."""
        end = self.buffer.find(b"\r\n\r\n")
        if end > MAX_HEADER_BYTES or (end < 0 and len(self.buffer) > MAX_HEADER_BYTES):
            self._fail(431, "request headers too large")
            return False
        if end < 0:
            return False
        try:
            method, path, version, headers = _parse_head(bytes(self.buffer[:end]))
        except ValueError as exc:
            self._fail(400, str(exc))
            return False
        if "chunked" in headers.get("transfer-encoding", ""):
            self._fail(411, "chunked bodies are not supported: send Content-Length")
            return False
        try:
            length = int(headers.get("content-length", "0"))
            if length < 0:
                raise ValueError
        except ValueError:
            self._fail(400, "bad Content-Length")
            return False
        if length > self.service.limits.max_body_bytes:
            self._fail(413, f"body larger than {self.service.limits.max_body_bytes} bytes")
            return False
        total = end + 4 + length
        if len(self.buffer) < total:
            if headers.get("expect", "").lower() == "100-continue" and not self.sent_continue:
                self.sent_continue = True  # curl waits ~1 s for this before sending bodies > 1 KiB
                self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            return False
        self.sent_continue = False
        body = bytes(self.buffer[end + 4:total])
        del self.buffer[:total]
        connection = headers.get("connection", "").lower()
        keep_alive = connection != "close" and (version == "HTTP/1.1" or connection == "keep-alive")
        status, ctype, payload = self.service.handle(method, path, body)
        self.transport.write(_response(status, ctype, payload, keep_alive))
        if not keep_alive:
            self.transport.close()
        return True

    def _fail(self, status: int, message: str) -> None:
        self.service.metrics.observe("other", status, 0.0)
        self.transport.write(_response(status, JSON, _json({"error": message}), keep_alive=False))
        self.transport.close()
        self.buffer.clear()


def _parse_head(head: bytes) -> tuple[str, str, str, dict[str, str]]:
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes any byte
        raise ValueError("undecodable request head") from None
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise ValueError("malformed request line")
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            raise ValueError("malformed header line")
        headers[name.strip().lower()] = value.strip()
    return parts[0], parts[1], parts[2], headers


async def _serve_asyncio(service: Service, sock: socket.socket, stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: HttpProtocol(service), sock=sock, backlog=1024)
    async with server:
        await stop.wait()


def run_asyncio(service: Service, sock: socket.socket) -> None:
    """Serve on ``sock`` until SIGTERM/SIGINT."""
    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await _serve_asyncio(service, sock, stop)

    asyncio.run(main())


def run_stdlib(service: Service, sock: socket.socket) -> None:
    """The comparison transport: ``http.server.ThreadingHTTPServer`` (one thread per connection)."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body are separate writes: avoid the 40 ms delayed-ACK stall

        def _answer(self) -> None:
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                length = -1
            if length < 0:
                status, ctype, payload = 400, JSON, _json({"error": "bad Content-Length"})
                self.close_connection = True
            elif length > service.limits.max_body_bytes:
                status, ctype, payload = 413, JSON, _json({"error": "body too large"})
                self.close_connection = True
            else:
                status, ctype, payload = service.handle(self.command, self.path, self.rfile.read(length))
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = do_PUT = do_DELETE = _answer

        def log_message(self, *args) -> None:  # access logs would dominate the cost
            pass

    class Server(ThreadingHTTPServer):
        daemon_threads = True

        def server_bind(self) -> None:  # the socket is already bound (shared with workers)
            self.server_address = self.socket.getsockname()

    server = Server(sock.getsockname(), Handler, bind_and_activate=False)
    server.socket.close()
    server.socket = sock
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass


TRANSPORTS = {"asyncio": run_asyncio, "stdlib": run_stdlib}


def bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


# --- process setup -------------------------------------------------------------------------------

def prepare_local_model(model_dir: Path, cache_dir: Path, settings) -> Path:
    """``led serve --model DIR``: index an exported model into a local slot dir (no S3)."""
    from serving.publish import build_slot_files

    cache_dir.mkdir(parents=True, exist_ok=True)
    work = cache_dir / f".tmp-local-{os.getpid()}"
    files, manifest = build_slot_files(model_dir, work, settings.n_trees, settings.search_k,
                                       settings.min_ann_recall, settings.seed)
    dest = cache_dir / "local"
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir()
    for name, path in files.items():
        shutil.copyfile(path, dest / name)
    (dest / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str))
    shutil.rmtree(work, ignore_errors=True)
    return dest


def serve_forever(settings, sock: socket.socket, cache_dir: Path, local_dir: Path | None = None,
                  http: str = "asyncio") -> None:
    """One serving process: load (local model, or follow ACTIVE with a poller), then answer requests."""
    service = Service(Limits.from_settings(settings))
    poller = None
    if local_dir is not None:
        service.swap(load_slot_dir(local_dir, "local", "local"))
    else:
        store = BlueGreenStore.from_settings(settings)  # boto3 clients are not fork-safe: one per process
        poller = Poller(service, store, cache_dir, settings.serve_poll_seconds)
        # First load before accepting: with several workers on one socket, a worker that is still
        # downloading would otherwise answer 503 to requests its ready siblings could serve.
        poller.poll_once()
        poller.start()
    try:
        TRANSPORTS[http](service, sock)
    finally:
        if poller is not None:
            poller.stop()


def run_server(settings, port: int, cache_dir: Path, model_dir: Path | None = None, workers: int = 1,
               http: str = "asyncio", ready_line: bool = True) -> int:
    """Bind, then serve with ``workers`` processes sharing the socket; returns an exit code."""
    local_dir = prepare_local_model(model_dir, cache_dir, settings) if model_dir else None
    sock = bind(settings.serve_host, port)
    if ready_line:
        print(json.dumps({"listening": f"http://{settings.serve_host}:{sock.getsockname()[1]}",
                          "workers": workers, "http": http, "pid": os.getpid()}), flush=True)
    if workers <= 1:
        serve_forever(settings, sock, cache_dir, local_dir, http)
        return 0
    children = []
    for _ in range(workers):
        pid = os.fork()
        if pid == 0:  # child
            code = 0
            try:
                serve_forever(settings, sock, cache_dir, local_dir, http)
            except BaseException as exc:  # noqa: BLE001 - report and exit the child, never return to the parent's code
                print(f"led serve worker {os.getpid()}: {exc!r}", file=sys.stderr, flush=True)
                code = 1
            finally:
                os._exit(code)
        children.append(pid)
    forward = lambda signum, _frame: [_kill(pid, signum) for pid in children]  # noqa: E731
    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    status = 0
    for pid in children:
        _, code = os.waitpid(pid, 0)
        status = status or os.waitstatus_to_exitcode(code)
    return 0 if status in (0, -signal.SIGTERM, -signal.SIGINT) else 1


def _kill(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass
