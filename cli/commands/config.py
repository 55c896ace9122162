"""``led config``: print the effective settings (secrets masked)."""
from __future__ import annotations

import json


def register(sub) -> None:
    p = sub.add_parser("config", help="print the effective settings (secrets masked)",
                       description="Print the effective settings as JSON: defaults, overridden by led.toml "
                       "(or the file in LED_CONFIG), the tools' standard variables and LED_* variables.")
    p.set_defaults(func=run)


def run(args) -> int:
    from infra.settings import get_settings

    print(json.dumps(get_settings().masked(), indent=2))
    return 0
