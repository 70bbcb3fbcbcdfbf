"""Which dense run (and which of its checkpoints) serves a temperature of each knob."""

from __future__ import annotations

import pytest

from pipeline.dense import FINAL, dense_for
from pipeline.specs import DenseSpec, TrainSpec

BASE = DenseSpec(train=TrainSpec(epochs=80))
BUDGET = DenseSpec(train=TrainSpec(epochs=80, iterations=1000))


def test_epochs_knob_uses_one_run_and_picks_the_checkpoint():
    assert dense_for("epochs", 20, BASE) == (BASE, 20)
    assert dense_for("epochs", 80.0, BASE) == (BASE, 80)
    for bad in (0, 81):
        with pytest.raises(ValueError, match=r"\[1, 80\]"):
            dense_for("epochs", bad, BASE)
    with pytest.raises(ValueError, match="integer"):
        dense_for("epochs", 2.5, BASE)


@pytest.mark.parametrize("knob, value, base", [
    ("batch_size", 128, BUDGET), ("sam_rho", 0.05, BASE), ("lr", 0.4, BASE),
    ("weight_decay", 5e-4, BASE),
])
def test_other_knobs_set_a_field_and_use_the_final_weights(knob, value, base):
    dense, epoch = dense_for(knob, value, base)
    assert epoch == FINAL
    assert getattr(dense.train, knob) == value
    assert dense.replace(train=dense.train.replace(**{knob: getattr(base.train, knob)})) == base
    assert dense.spec_hash() != dense_for(knob, value * 2, base)[0].spec_hash()


@pytest.mark.parametrize("knob, value, base, words", [
    ("batch_size", 64, BASE, "iterations"),
    ("batch_size", 0, BUDGET, "> 0"),
    ("lr", 0.0, BASE, "> 0"),
    ("sam_rho", -0.1, BASE, ">= 0"),
    ("epochs", 10, BUDGET, "iterations"),
    ("heat", 1.0, BASE, "heat"),
])
def test_impossible_temperatures_fail_fast(knob, value, base, words):
    with pytest.raises(ValueError, match=words):
        dense_for(knob, value, base)
