"""One structured (JSON) log line per serving event: swap, refused slot, failed load, failed poll, worker exit.

Lines go to stderr through the ``led.serving`` logger, one JSON object each
(``{"ts", "event", "pid", ...}``), so a log shipper can parse them without
regular expressions.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import time

LOGGER = logging.getLogger("led.serving")


class _JsonLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return record.getMessage()


class _CurrentStderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at emit time (not the one seen at the first event)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def _handler_installed() -> None:
    if not LOGGER.handlers:
        handler = _CurrentStderr()
        handler.setFormatter(_JsonLines())
        LOGGER.addHandler(handler)
        LOGGER.setLevel(logging.INFO)
        LOGGER.propagate = False


def log_event(event: str, level: int = logging.INFO, **fields) -> dict:
    """Write one JSON line ``{"ts", "event", "pid", **fields}``; returns the record (for tests)."""
    _handler_installed()
    record = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + f".{int(time.time() * 1000) % 1000:03d}Z",
              "event": event, "pid": os.getpid(), **fields}
    LOGGER.log(level, json.dumps(record, default=str, separators=(",", ":")))
    return record
