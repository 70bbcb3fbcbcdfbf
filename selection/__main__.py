"""``python -m selection <command>``: classify, select, tune, replay, demo, map.

Each command is a module of :mod:`selection.cli` exposing ``add_parser(subparsers)``, which
adds its subcommand and sets ``func(args) -> int`` (the exit status) as its default. To add a
command, write its module there and add its name to ``COMMANDS``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# the order of ``python -m selection --help``
COMMANDS = ("classify", "select", "tune", "replay", "demo", "map")
_COMMAND_MODULES = [importlib.import_module(f"selection.cli.{name}") for name in COMMANDS]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m selection",
        description="Selection layer over a results table: regime labels and classifier, "
                    "model selection, temperature tuning.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in _COMMAND_MODULES:
        module.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from tracking.store import TrackingUnavailableError

    try:
        return args.func(args)
    except TrackingUnavailableError as e:   # a store that does not answer: one clear error
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
