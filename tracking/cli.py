"""The store options every command line shares: ``--tracking-uri`` and ``--store-timeout``.

A command adds them with :func:`add_store_options` and, before any compute, calls
:func:`open_store`, which sets the tracking URI and checks that the store answers within the
bounded wait (see :func:`tracking.store.ensure_reachable`)::

    add_store_options(parser)
    ...
    try:
        uri = open_store(args)
    except (ValueError, StoreUnreachableError) as e:   # nothing computed, nothing written
        ...
"""

from __future__ import annotations

import argparse

# Defined here, not in tracking.store, so that building a parser does not import MLflow.
ENV_STORE_TIMEOUT = "THREE_REGIME_STORE_TIMEOUT"
DEFAULT_STORE_TIMEOUT = 30.0     # seconds a command waits for a store before it gives up

TRACKING_URI_HELP = ("MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else "
                     "sqlite:///<repo>/mlflow.db)")
STORE_TIMEOUT_HELP = (f"seconds to wait for the tracking store (also the Optuna storage and a "
                      f"Dask scheduler) to answer before giving up (default: ${ENV_STORE_TIMEOUT}, "
                      f"else {DEFAULT_STORE_TIMEOUT:g})")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r}: must be a number of seconds > 0")
    return value


def add_store_options(parser: argparse.ArgumentParser, *, subcommand: bool = False) -> None:
    """Add ``--tracking-uri`` and ``--store-timeout`` to ``parser``. ``subcommand``: the
    parser is a subcommand's, beside the same options on the main parser; a value given
    after the subcommand wins, and an option not given there keeps the main parser's (its
    default is ``argparse.SUPPRESS``, so the subparser does not overwrite it with None)."""
    default = argparse.SUPPRESS if subcommand else None
    parser.add_argument("--tracking-uri", help=TRACKING_URI_HELP, default=default)
    parser.add_argument("--store-timeout", type=_seconds, metavar="SECONDS",
                        help=STORE_TIMEOUT_HELP, default=default)


def apply_store_timeout(args: argparse.Namespace) -> float:
    """Export ``--store-timeout`` (if given) for this process and its workers; return the
    timeout in force.

    Raises:
        ValueError: ``$THREE_REGIME_STORE_TIMEOUT`` is not a number of seconds > 0.
    """
    from tracking.store import set_store_timeout

    return set_store_timeout(getattr(args, "store_timeout", None))


def open_store(args: argparse.Namespace) -> str:
    """Set the tracking URI from ``--tracking-uri`` and check that the store answers; return
    the URI.

    Raises:
        StoreUnreachableError: no answer within ``--store-timeout`` seconds (one line on stderr
            per pause); the message names the URI (password redacted) and what to check.
        ValueError: a bad ``$THREE_REGIME_STORE_TIMEOUT``.
    """
    from tracking.store import configure, ensure_reachable

    timeout = apply_store_timeout(args)
    uri = configure(getattr(args, "tracking_uri", None))
    ensure_reachable(uri, timeout)
    return uri
