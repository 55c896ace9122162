"""Conventions shared by every ``led`` subcommand.

- progress goes to stderr;
- a command that does work ends by printing exactly one JSON object on the
  last line of stdout (scripts read it);
- a user mistake raises ``UserError``: one line on stderr, exit code 2.
"""
from __future__ import annotations

import json
import sys
import time
from typing import Any

from infra.errors import UserError  # noqa: F401  (re-exported for commands)


def emit(result: dict[str, Any]) -> None:
    """Print the command's summary as the last line of stdout."""
    sys.stdout.flush()
    print(json.dumps(result, default=str, sort_keys=False), flush=True)


class Progress:
    """Rate-limited progress lines on stderr: ``[label] 3/10 (30%) 1.2s``."""

    def __init__(self, label: str, total: int | None = None, every_seconds: float = 1.0):
        self.label, self.total, self.every = label, total, every_seconds
        self.start = self._last = time.monotonic()

    def update(self, done: int, note: str = "", force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < self.every and (self.total is None or done < self.total):
            return
        self._last = now
        frac = f" ({100 * done / self.total:.0f}%)" if self.total else ""
        of = f"/{self.total}" if self.total else ""
        print(f"[{self.label}] {done}{of}{frac} {now - self.start:.1f}s {note}".rstrip(),
              file=sys.stderr, flush=True)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
