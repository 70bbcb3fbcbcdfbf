"""``python -m selection <command>``: classify, select, tune, replay.

Each command module exposes ``add_parser(subparsers)``, which adds its subcommand(s) and sets
``func(args) -> int`` (the exit status) as their default. To add commands, import the module
and append it to ``_COMMAND_MODULES``.
"""

from __future__ import annotations

import argparse
import sys

from selection import classify_cli, demo, map_cli, select_cli, tune_cli

# one entry per command module; a module may add several commands (tune_cli: tune, replay)
_COMMAND_MODULES = [classify_cli, select_cli, tune_cli, demo, map_cli]


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
