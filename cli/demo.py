"""`make run`: the main job on the embedded defaults.

A short simulation of the whole product (`led simulate`): a synthetic world with
catalog and user churn, the daily flow through the local stack (started if
needed, stopped afterwards), a running `led serve` queried between days, and
at the end where to look: the Prefect UI, the MLflow UI and the serving URL.
"""
from __future__ import annotations

import sys

from cli.main import main as led

DEMO = ["simulate", "--days", "6", "--warmup", "3"]


def main() -> int:
    return led(DEMO + sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
