"""Temperature direction of a knob, read from ``pipeline.knobs`` (which imports no torch)."""

from __future__ import annotations

from collections.abc import Iterable

from pipeline.knobs import HOTTER_LOWER, get_knob


def hotter_is_lower(knob: str) -> bool:
    """True if smaller values of ``knob`` are hotter (epochs, batch size).

    Raises:
        ValueError: unknown knob (the message lists the known ones).
    """
    return get_knob(knob).hotter == HOTTER_LOWER


def cold_to_hot(knob: str, values: Iterable[float]) -> list[float]:
    """``values`` sorted from the coldest to the hottest temperature of ``knob``."""
    return get_knob(knob).sort_cold_to_hot(values)
