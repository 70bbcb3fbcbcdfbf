"""The ``python -m selection`` commands, one module per command.

``classify``, ``select``, ``tune``, ``replay``, ``map`` and ``demo``: each module has
``add_parser(subparsers)``, which adds its subcommand and sets ``func(args) -> int`` (the exit
status) as its default; ``selection/__main__.py`` collects them. ``_common`` holds what several
commands share (the table source, the MLflow options, the regime thresholds).
"""
