"""The recommendation service behind ``led serve``: model lifecycle and the request handler.

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
  model serving and is shown in ``/model`` (``last_error``), ``/metrics``
  (``led_model_load_failures_total``) and one JSON log line; a slot that failed
  verification is not retried until ACTIVE changes again.
- **Storage outages.** Every swap records the slot in
  ``cache_dir/LAST_ACTIVE.json``. A process that starts while the store is
  unreachable re-checks that cached slot's hashes on disk and serves it,
  flagged *stale* in ``/model``, ``/readyz`` and ``/metrics`` until a poll
  reaches the store again (then it confirms the model or swaps to the new
  ACTIVE). With nothing verified in the cache it stays unready and
  ``/readyz`` says why.

The HTTP transport and the worker processes are maintained software
(``serving/server.py``: gunicorn owns the workers, uvicorn speaks HTTP), so this
module knows nothing about sockets.

Endpoints: ``POST /recommend`` ``{"items": [ids], "k": 10, "exclude": [ids],
"candidates": [ids]}``; ``GET /healthz``, ``/readyz``, ``/model``, ``/metrics``.
Bad input is answered 4xx with ``{"error": ...}``; 503 only while no model is
loaded.

Imports: numpy, annoy, boto3 (for S3), prometheus_client and the standard library only.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from serving.events import log_event
from serving.index import INDEX_FILE, IndexParams, Recommender, load_index
from serving.metrics import Metrics
from serving.storage import (MANIFEST, BlueGreenStore, VerificationError, recall_active, remember_active,
                             verify_cached_slot)

JSON = "application/json"
PROMETHEUS = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(frozen=True)
class Limits:
    max_items: int = 1000
    max_k: int = 1000
    max_body_bytes: int = 1 << 20
    max_exclude: int = 10_000
    max_candidates: int = 10_000

    @classmethod
    def from_settings(cls, settings) -> "Limits":
        return cls(settings.serve_max_items, settings.serve_max_k, settings.serve_max_body_bytes,
                   settings.serve_max_exclude, settings.serve_max_candidates)


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


@dataclass(frozen=True)
class Query:
    items: list[str]
    k: int
    exclude: list[str]
    candidates: list[str] | None


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
        self.stale_reason: str | None = None  # set while serving a cached model ACTIVE could not confirm
        self.unready_reason: str | None = "starting: no model loaded yet"

    # --- model lifecycle (called from the poller thread) --------------------
    def swap(self, model: LoadedModel, stale_reason: str | None = None) -> None:
        previous = self.model
        self.model = model  # one reference assignment: atomic for readers
        self.swaps += int(previous is not None)
        self.last_error = None
        self.stale_reason = stale_reason
        self.unready_reason = None
        self.metrics.model_loaded(model.model_version, model.slot, previous is not None, stale_reason is not None)
        log_event("model_swap" if previous else "model_loaded", model_version=model.model_version, slot=model.slot,
                  manifest_sha256=model.manifest_sha256, previous_version=previous.model_version if previous else None,
                  stale=stale_reason is not None, directory=str(model.directory))

    def confirm(self) -> None:
        """A poll reached the store and ACTIVE names the model being served: it is no longer stale."""
        if self.stale_reason is not None:
            self.stale_reason = None
            self.metrics.set_stale(False)
            log_event("model_confirmed", model_version=self.model.model_version if self.model else None)

    def report_failure(self, event: str, message: str, **fields) -> None:
        self.last_error = message
        self.metrics.load_failed()
        log_event(event, error=message, **fields)

    @property
    def stale(self) -> bool:
        return self.stale_reason is not None

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
        if method != allowed and not (method == "HEAD" and allowed == "GET"):
            raise BadRequest(405, f"{path} accepts {allowed} only")
        if path == "/recommend":
            return 200, JSON, self.recommend(body)
        if path == "/healthz":
            return 200, JSON, b'{"status":"ok"}'
        if path == "/readyz":
            return self.readiness()
        if path == "/model":
            return 200, JSON, _json(self.describe())
        return 200, PROMETHEUS, self.metrics.render()

    def readiness(self) -> tuple[int, str, bytes]:
        if self.model is None:
            return 503, JSON, _json({"ready": False, "reason": self.unready_reason})
        return 200, JSON, _json({"ready": True, "stale": self.stale, "stale_reason": self.stale_reason,
                                 "model_version": self.model.model_version})

    def recommend(self, body: bytes) -> bytes:
        model = self.model  # read once: a concurrent swap cannot change it under this request
        query = self._parse(body)
        if model is None:
            raise BadRequest(503, f"no model loaded: {self.unready_reason}")
        rec = model.recommender.recommend(query.items, query.k, query.exclude, query.candidates)
        self.metrics.count_recommendation(rec.unknown, rec.fallback)
        return _json({"ids": rec.ids, "scores": rec.scores, "model_version": model.model_version,
                      "slot": model.slot, "unknown_items": rec.unknown,
                      "fallback": "popularity" if rec.fallback else None})

    def _parse(self, body: bytes) -> Query:
        limits = self.limits
        if len(body) > limits.max_body_bytes:
            raise BadRequest(413, f"body larger than {limits.max_body_bytes} bytes")
        try:
            data = json.loads(body)
        except (ValueError, RecursionError):
            raise BadRequest(400, "body is not valid JSON") from None
        if not isinstance(data, dict):
            raise BadRequest(400, 'body must be a JSON object {"items": [...], "k": 10}')
        k = data.get("k", 10)
        if not isinstance(k, int) or isinstance(k, bool):
            raise BadRequest(400, '"k" must be an integer')
        if not 1 <= k <= limits.max_k:
            raise BadRequest(422, f'"k" must be between 1 and {limits.max_k}')
        items = _id_list(data.get("items", []), "items", limits.max_items)
        exclude = _id_list(data.get("exclude") or [], "exclude", limits.max_exclude)
        candidates = data.get("candidates")
        candidates = None if candidates is None else _id_list(candidates, "candidates", limits.max_candidates)
        return Query(items, k, exclude, candidates)

    def describe(self) -> dict:
        current = self.model.describe() if self.model else None
        return {"ready": self.model is not None, "model": current, "stale": self.stale,
                "stale_reason": self.stale_reason, "unready_reason": None if self.model else self.unready_reason,
                "active": self.active, "swaps": self.swaps, "last_error": self.last_error,
                "last_poll": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.last_poll))
                if self.last_poll else None, "limits": self.limits.__dict__, "pid": os.getpid()}


ROUTES = {"/recommend": "POST", "/healthz": "GET", "/readyz": "GET", "/model": "GET", "/metrics": "GET"}


def allowed_methods(path: str) -> str | None:
    """The ``Allow`` header value of a 405 (RFC 9110 15.5.6)."""
    method = ROUTES.get(path.split("?", 1)[0])
    return None if method is None else ("GET, HEAD" if method == "GET" else method)


def _id_list(value: Any, name: str, limit: int) -> list[str]:
    if not isinstance(value, list):
        raise BadRequest(400, f'"{name}" must be a list of item ids')
    if len(value) > limit:
        raise BadRequest(413, f'"{name}" has {len(value)} entries, limit {limit}')
    ids = []
    for item in value:
        if isinstance(item, str):
            ids.append(item)
        elif isinstance(item, int) and not isinstance(item, bool):
            ids.append(str(item))
        else:
            raise BadRequest(400, f'"{name}" entries must be strings (or integers)')
    return ids


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
        self.store_error: str | None = None
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.wait(self.interval):
            self.poll_once()

    def stop(self) -> None:
        self.stop_event.set()

    def start_up(self) -> None:
        """The first load, before the worker accepts requests: ACTIVE when the store answers, else the
        verified local cache (served as stale)."""
        self.poll_once()
        if self.service.model is None and self.store_error is not None:
            self.load_cached()

    def poll_once(self) -> bool:
        """One poll; True when a new model was swapped in."""
        try:
            active = self.store.active_changed(self.etag)
        except Exception as exc:  # store unreachable: keep serving, report, retry next poll
            self.store_error = f"polling ACTIVE failed: {exc}"
            self.service.metrics.poll_failed()
            self.service.last_error = self.store_error
            if self.service.model is None:
                self.service.unready_reason = f"store unreachable: {exc}"
            log_event("poll_failed", error=str(exc), store=self.store.url, serving=self._serving())
            return False
        self.store_error = None
        self.service.last_poll = time.time()
        if active is None and self.service.model is None:
            self.service.unready_reason = f"no ACTIVE model in {self.store.url} yet"
        if active is False or active is None or active.etag == self.failed_etag:
            return False
        self.service.active = active.to_json()
        current = self.service.model
        if current is not None and (current.slot, current.manifest_sha256) == (active.slot, active.manifest_sha256):
            self.etag = active.etag  # e.g. a rollback-and-forward to the version we serve, or a cached start
            self.service.confirm()
            return False
        try:
            model = self._fetch_and_load(active)
        except VerificationError as exc:
            self.failed_etag = active.etag  # this ACTIVE names a bad slot: wait for the next flip
            self.service.report_failure("slot_refused", f"refused slot {active.slot} ({active.model_version}): {exc}",
                                        slot=active.slot, model_version=active.model_version,
                                        serving=self._serving())
            return False
        except Exception as exc:  # transient (network, disk): retry on the next poll
            self.service.report_failure("slot_load_failed",
                                        f"loading slot {active.slot} ({active.model_version}) failed: {exc!r}",
                                        slot=active.slot, model_version=active.model_version,
                                        serving=self._serving())
            return False
        self.service.swap(model)
        self.etag = active.etag
        remember_active(self.cache_dir, active)
        self._prune_cache(keep={active.manifest_sha256, current.manifest_sha256 if current else ""})
        return True

    def load_cached(self) -> bool:
        """Serve the slot this cache last swapped in, after re-checking every hash on disk."""
        remembered = recall_active(self.cache_dir)
        if remembered is None:
            self.service.unready_reason = (f"{self.store_error}; and no verified model in the local cache "
                                           f"{self.cache_dir}")
            log_event("cache_empty", cache_dir=str(self.cache_dir), reason=self.service.unready_reason)
            return False
        directory = self.cache_dir / remembered.manifest_sha256
        try:
            verify_cached_slot(directory, remembered.manifest_sha256)
            model = load_slot_dir(directory, remembered.slot, remembered.manifest_sha256)
        except (VerificationError, ValueError, OSError) as exc:
            self.service.unready_reason = f"{self.store_error}; cached slot refused: {exc}"
            self.service.report_failure("cache_refused", f"cached slot refused: {exc}", directory=str(directory))
            return False
        self.service.swap(model, stale_reason=f"store unreachable at start ({self.store_error}): serving the "
                                              f"verified cached slot {remembered.slot} ({remembered.model_version})")
        return True

    def _serving(self) -> str | None:
        return self.service.model.model_version if self.service.model else None

    def _fetch_and_load(self, active) -> LoadedModel:
        dest = self.cache_dir / active.manifest_sha256
        if not (dest / MANIFEST).is_file():  # cache dirs only appear complete (temp dir + rename)
            self.store.download_slot(active.slot, dest, active.manifest_sha256)
        return load_slot_dir(dest, active.slot, active.manifest_sha256)

    def _prune_cache(self, keep: set[str]) -> None:
        for entry in self.cache_dir.iterdir():
            if entry.is_dir() and entry.name not in keep and not entry.name.startswith("."):
                shutil.rmtree(entry, ignore_errors=True)  # mapped files stay valid until unmapped


# --- process setup -------------------------------------------------------------------------------

def prepare_local_model(model_dir: Path, cache_dir: Path, settings) -> Path:
    """``led serve --model DIR``: index an exported model into a local slot dir (no S3)."""
    from serving.publish import build_slot_files

    cache_dir.mkdir(parents=True, exist_ok=True)
    work = cache_dir / f".tmp-local-{os.getpid()}"
    slot = build_slot_files(model_dir, work, settings.n_trees, settings.search_k, settings.min_ann_recall,
                            settings.seed)
    files, manifest = slot.files, slot.manifest
    dest = cache_dir / "local"
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir()
    for name, path in files.items():
        shutil.copyfile(path, dest / name)
    (dest / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str))
    shutil.rmtree(work, ignore_errors=True)
    return dest


def run_server(settings, port: int, cache_dir: Path, model_dir: Path | None = None, workers: int = 1,
               ready_line: bool = True, **options) -> int:
    """Serve with ``workers`` processes (see ``serving.server``); returns an exit code."""
    from serving.server import run_server as run

    return run(settings, port, cache_dir, model_dir, workers, ready_line=ready_line, **options)
