"""``led``: the command-line entry point.

Subcommands live one per module in ``cli/commands/``; each module exposes
``register(subparsers)`` and sets ``func`` on its parser. Heavy libraries are
imported inside the commands, so ``led --help`` stays instant.
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

import cli.commands
from infra.errors import UserError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="led",
        description="Daily-retrained LED recommender: data, training, registry, serving.",
        epilog="Every command that does work ends with one JSON object on the last line of stdout. "
        "Settings: `led config` (environment LED_*, led.toml).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for mod in sorted(pkgutil.iter_modules(cli.commands.__path__), key=lambda m: m.name):
        importlib.import_module(f"cli.commands.{mod.name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"led {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"led {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
