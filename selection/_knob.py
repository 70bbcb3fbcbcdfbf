"""Temperature direction of a knob: ``tracking.knobs``'s, under the names selection uses."""

from __future__ import annotations

from tracking.knobs import cold_to_hot, hotter_is_lower

__all__ = ["cold_to_hot", "hotter_is_lower"]
