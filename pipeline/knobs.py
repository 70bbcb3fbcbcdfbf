"""Temperature knobs: which dense-training hyperparameter plays the role of temperature.

A knob's name and which direction is *hotter* (noisier / less converged training) are
``tracking.knobs``'s, shared by every layer; here each knob adds how its value turns a base
dense recipe into the dense run that produces the checkpoint of that temperature. This
module imports no torch so that the selection layer can read knobs cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass

from tracking.knobs import DIRECTIONS, HOTTER_HIGHER, HOTTER_LOWER, Direction
from tracking.registries import Registry

__all__ = ["HOTTER_HIGHER", "HOTTER_LOWER", "KNOBS", "Knob", "get_knob"]


@dataclass(frozen=True)
class Knob:
    """A temperature knob.

    Attributes:
        name: the knob's name, also the ``knob`` column of results tables; its direction is
            registered in ``tracking.knobs`` (an unknown name is an error).
        dense_field: the field of ``DenseSpec`` the knob sets; ``None`` for ``epochs``, where
            one fixed-length run serves every temperature through its epoch checkpoints.
        integer: whether values are integers.
    """

    name: str
    dense_field: str | None
    integer: bool
    description: str

    def __post_init__(self) -> None:
        DIRECTIONS.get(self.name)

    @property
    def direction(self) -> Direction:
        return DIRECTIONS.get(self.name)

    @property
    def hotter(self) -> str:
        """``"lower"`` if smaller values are hotter (epochs, batch size), else ``"higher"``."""
        return self.direction.hotter

    def hotter_than(self, a: float, b: float) -> bool:
        """True if temperature value ``a`` is strictly hotter than ``b``."""
        return self.direction.hotter_than(a, b)

    def sort_cold_to_hot(self, values) -> list:
        """Values ordered from the coldest to the hottest."""
        return self.direction.sort_cold_to_hot(values)


KNOBS: Registry[Knob] = Registry("knob")
for _knob in (
    Knob("epochs", None, True, "checkpoint at the end of epoch T of ONE fixed-length dense run"),
    Knob("batch_size", "batch_size", True,
         "one dense run per batch size at a fixed iteration budget"),
    Knob("sam_rho", "sam_rho", False, "one dense run per SAM radius rho"),
    Knob("lr", "lr", False, "one dense run per learning rate"),
    Knob("weight_decay", "weight_decay", False,
         "one dense run per weight decay (ours, not in the paper)"),
):
    KNOBS.register(_knob.name, _knob)

get_knob = KNOBS.get      # the knob of a name; unknown names fail listing the known ones
