"""`make run`: the main job on the embedded defaults.

Generates a synthetic week (the embedded default world) into LED_HOME/demo/events,
replacing the previous demo, and prints its statistics. Nothing external is imported.
"""
from __future__ import annotations

import shutil
import sys

from cli.main import main as led
from infra.settings import get_settings


def main() -> int:
    events = get_settings().home / "demo" / "events"
    shutil.rmtree(events, ignore_errors=True)  # the demo folder is ours: rerunning replaces it
    code = led(["generate", "--out", str(events), "--days", "7"])
    if code == 0:
        code = led(["stats", "--events", str(events)])
    print(f"\nDemo event store: {events}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
