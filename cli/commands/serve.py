"""``led serve``: the recommendation HTTP service (see serving/app.py)."""
from __future__ import annotations

import os
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser(
        "serve", help="serve recommendations over HTTP, following the live blue/green slot",
        description="POST /recommend {\"items\": [...], \"k\": 10, \"exclude\": [...], \"candidates\": [...]}; GET /healthz, /readyz, /model, /metrics. "
        "Polls ACTIVE every serve_poll_seconds, downloads and verifies the new slot into a local cache and swaps "
        "atomically; serves the verified cached model (flagged stale) when S3 is down at start. Imports numpy, annoy, boto3, prometheus_client, gunicorn and uvicorn only (never TensorFlow/Spark/MLflow/Prefect). Prints one JSON line when the first worker is ready.")
    p.add_argument("--port", type=int, default=None, help="default settings.serve_port (0 = any free port)")
    p.add_argument("--host", default=None, help="default settings.serve_host")
    p.add_argument("--workers", type=int, default=1,
                   help="worker processes (gunicorn replaces any that dies; SO_REUSEPORT spreads connections)")
    p.add_argument("--http", choices=("uvicorn", "gunicorn-asgi"), default="uvicorn",
                   help="HTTP server in each worker: uvicorn httptools+uvloop (default, measured faster) or "
                   "gunicorn's own ASGI worker")
    p.add_argument("--model", type=Path, default=None,
                   help="serve this exported model folder directly (no S3; for development and benchmarks)")
    p.add_argument("--cache-dir", type=Path, default=None, help="default WORK_DIR/serving-cache")
    p.set_defaults(func=run)


def run(args) -> int:
    # Per-request math is one small mat-vec: BLAS threads only add contention. Must precede numpy's import.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from infra.errors import UserError
    from infra.settings import get_settings

    settings = get_settings().with_overrides(serve_port=args.port, serve_host=args.host)
    if args.workers < 1:
        raise UserError("--workers must be >= 1")
    if args.model is not None and not args.model.is_dir():
        raise UserError(f"--model {args.model}: no such folder")

    from serving.app import run_server

    cache_dir = (args.cache_dir or settings.work_dir / "serving-cache").resolve()
    cache_dir.mkdir(parents=True, exist_ok=True)
    try:
        return run_server(settings, settings.serve_port, cache_dir, args.model, args.workers, http=args.http)
    except OSError as exc:
        raise UserError(f"cannot listen on {settings.serve_host}:{settings.serve_port}: {exc}") from None
    except ValueError as exc:  # --model folder is not a valid export
        raise UserError(str(exc)) from None
