"""Temperature knobs: which dense-training hyperparameter plays the role of temperature.

Each knob says which direction is *hotter* (noisier / less converged training) and how its
value turns a base dense recipe into the dense run that produces the checkpoint of that
temperature. This module imports no torch so that the selection layer can read directions
from a results table alone.
"""

from __future__ import annotations

from dataclasses import dataclass

HOTTER_LOWER = "lower"
HOTTER_HIGHER = "higher"


@dataclass(frozen=True)
class Knob:
    """A temperature knob.

    Attributes:
        name: the knob's name, also the ``knob`` column of results tables.
        hotter: ``"lower"`` if smaller values are hotter (epochs, batch size), else ``"higher"``.
        dense_field: the field of ``DenseSpec`` the knob sets; ``None`` for ``epochs``, where
            one fixed-length run serves every temperature through its epoch checkpoints.
        integer: whether values are integers.
    """

    name: str
    hotter: str
    dense_field: str | None
    integer: bool
    description: str

    def hotter_than(self, a: float, b: float) -> bool:
        """True if temperature value ``a`` is strictly hotter than ``b``."""
        return a < b if self.hotter == HOTTER_LOWER else a > b

    def sort_cold_to_hot(self, values) -> list:
        """Values ordered from the coldest to the hottest."""
        return sorted(values, reverse=self.hotter == HOTTER_LOWER)


_KNOBS: dict[str, Knob] = {}


def register_knob(knob: Knob) -> Knob:
    if knob.name in _KNOBS:
        raise ValueError(f"knob {knob.name!r} is already registered")
    _KNOBS[knob.name] = knob
    return knob


def get_knob(name: str) -> Knob:
    try:
        return _KNOBS[name]
    except KeyError:
        raise ValueError(f"unknown knob {name!r}; allowed: {', '.join(sorted(_KNOBS))}") from None


def list_knobs() -> list[str]:
    return sorted(_KNOBS)


register_knob(Knob("epochs", HOTTER_LOWER, None, True,
                   "checkpoint at the end of epoch T of ONE fixed-length dense run"))
register_knob(Knob("batch_size", HOTTER_LOWER, "batch_size", True,
                   "one dense run per batch size at a fixed iteration budget"))
register_knob(Knob("sam_rho", HOTTER_HIGHER, "sam_rho", False,
                   "one dense run per SAM radius rho"))
register_knob(Knob("lr", HOTTER_HIGHER, "lr", False, "one dense run per learning rate"))
register_knob(Knob("weight_decay", HOTTER_HIGHER, "weight_decay", False,
                   "one dense run per weight decay (ours, not in the paper)"))
