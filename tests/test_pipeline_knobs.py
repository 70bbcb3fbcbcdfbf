"""Temperature knobs: each has a direction (which values are hotter, from tracking.knobs) and
orders values by it."""

from __future__ import annotations

import pytest

from pipeline.knobs import HOTTER_HIGHER, HOTTER_LOWER, KNOBS, Knob, get_knob
from tracking import knobs as tracking_knobs

# docs/method.md#temperature-knobs: fewer epochs, smaller batch, larger SAM rho, larger lr = hotter
DIRECTIONS = {"epochs": HOTTER_LOWER, "batch_size": HOTTER_LOWER, "sam_rho": HOTTER_HIGHER,
              "lr": HOTTER_HIGHER, "weight_decay": HOTTER_HIGHER}


def test_every_knob_declares_its_direction():
    assert set(KNOBS.names()) == set(DIRECTIONS) == set(tracking_knobs.DIRECTIONS.names())
    for name, direction in DIRECTIONS.items():
        assert get_knob(name).hotter == direction
        assert tracking_knobs.hotter_is_lower(name) == (direction == HOTTER_LOWER)


@pytest.mark.parametrize("name", sorted(DIRECTIONS))
def test_hotter_than_and_cold_to_hot_order(name):
    k = get_knob(name)
    lo, hi = 2, 80
    hot, cold = (lo, hi) if k.hotter == HOTTER_LOWER else (hi, lo)
    assert k.hotter_than(hot, cold) and not k.hotter_than(cold, hot)
    assert not k.hotter_than(hot, hot)
    values = [10, 80, 2, 40, 5, 20]
    order = k.sort_cold_to_hot(values)
    assert order[0] == cold and order[-1] == hot
    assert all(k.hotter_than(b, a) for a, b in zip(order, order[1:], strict=False))


def test_epochs_cold_to_hot_is_descending():
    assert get_knob("epochs").sort_cold_to_hot([2, 80, 10]) == [80, 10, 2]
    assert get_knob("sam_rho").sort_cold_to_hot([0.5, 0.0, 0.1]) == [0.0, 0.1, 0.5]
    assert tracking_knobs.cold_to_hot("epochs", [2, 80, 10]) == [80, 10, 2]


def test_axis_labels_say_which_way_is_hotter():
    assert tracking_knobs.axis_label("epochs") == (
        "temperature: dense training epochs (fewer = hotter)")
    assert tracking_knobs.axis_label("lr") == "temperature: learning rate (larger = hotter)"
    assert tracking_knobs.axis_label("dropout") == "temperature: dropout"   # a knob we lack


def test_unknown_and_duplicate_knobs():
    with pytest.raises(ValueError, match="heat"):
        get_knob("heat")
    with pytest.raises(ValueError, match="already registered"):
        KNOBS.register("epochs", Knob("epochs", None, True, "again"))


def test_a_knob_without_a_direction_is_an_error():
    # the direction lives in tracking.knobs, which every layer reads: a pipeline-only knob
    # would be a knob the phase diagrams and the regime labels cannot order
    with pytest.raises(ValueError, match=r"unknown knob 'warmth'; allowed: batch_size, epochs"):
        Knob("warmth", "warmth", False, "not registered in tracking.knobs")
