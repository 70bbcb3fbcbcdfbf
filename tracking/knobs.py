"""Temperature knobs as every layer needs them: their names and which direction is hotter.

The ``knob`` column of a results table holds one of these names. Which values are hotter
orders temperatures everywhere: on the phase diagrams' axis (``tracking.plots``), in the
grid (``pipeline``) and in the regime labels (``selection``). How a knob's value turns a base
recipe into a dense run is the pipeline's part, in ``pipeline/knobs.py``, whose knobs must
be registered here too. This module imports neither torch nor pipeline.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from tracking.registries import Registry

HOTTER_LOWER = "lower"
HOTTER_HIGHER = "higher"


@dataclass(frozen=True)
class Direction:
    """Which values of a knob are hotter (noisier, less converged training).

    Attributes:
        hotter: ``"lower"`` if smaller values are hotter (epochs, batch size), else
            ``"higher"``.
        axis: what the values are, for the temperature axis of the phase diagrams.
    """

    hotter: str
    axis: str

    def __post_init__(self) -> None:
        if self.hotter not in (HOTTER_LOWER, HOTTER_HIGHER):
            raise ValueError(f"hotter={self.hotter!r}: allowed: {HOTTER_LOWER}, {HOTTER_HIGHER}")

    def hotter_than(self, a: float, b: float) -> bool:
        """True if temperature value ``a`` is strictly hotter than ``b``."""
        return a < b if self.hotter == HOTTER_LOWER else a > b

    def sort_cold_to_hot(self, values: Iterable[float]) -> list:
        """``values`` ordered from the coldest to the hottest."""
        return sorted(values, reverse=self.hotter == HOTTER_LOWER)


DIRECTIONS: Registry[Direction] = Registry("knob")
DIRECTIONS.register("epochs", Direction(HOTTER_LOWER, "dense training epochs (fewer = hotter)"))
DIRECTIONS.register("batch_size",
                    Direction(HOTTER_LOWER, "batch size, examples (smaller = hotter)"))
DIRECTIONS.register("sam_rho", Direction(HOTTER_HIGHER, "SAM radius rho (larger = hotter)"))
DIRECTIONS.register("lr", Direction(HOTTER_HIGHER, "learning rate (larger = hotter)"))
DIRECTIONS.register("weight_decay", Direction(HOTTER_HIGHER, "weight decay (larger = hotter)"))


def hotter_is_lower(knob: str) -> bool:
    """True if smaller values of ``knob`` are hotter (epochs, batch size).

    Raises:
        ValueError: unknown knob (the message lists the known ones).
    """
    return DIRECTIONS.get(knob).hotter == HOTTER_LOWER


def cold_to_hot(knob: str, values: Iterable[float]) -> list:
    """``values`` sorted from the coldest to the hottest temperature of ``knob``."""
    return DIRECTIONS.get(knob).sort_cold_to_hot(values)


def axis_label(knob: str) -> str:
    """The temperature axis label of ``knob``'s phase diagrams (any name: a table may hold
    a knob this code does not know)."""
    what = DIRECTIONS.get(knob).axis if knob in DIRECTIONS else knob
    return f"temperature: {what}"
