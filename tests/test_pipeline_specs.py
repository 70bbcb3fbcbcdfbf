"""Specs and identity: hash stability, parent-in-child hashes, defaulted fields, coercion."""

from __future__ import annotations

import dataclasses
import re

import pytest

import pipeline.specs as specs_mod
from pipeline.specs import (
    SCHEMA_VERSION,
    CellSpec,
    DataSpec,
    DenseSpec,
    FinetuneSpec,
    MeasureSpec,
    ModelSpec,
    PruneSpec,
    TrainSpec,
    cell_hash,
    dense_hash,
)

ALL_SPECS = [DataSpec, ModelSpec, TrainSpec, DenseSpec, PruneSpec, FinetuneSpec, MeasureSpec,
             CellSpec]


def _dense() -> DenseSpec:
    return DenseSpec(data=DataSpec(name="digits"), model=ModelSpec(name="mlp", width=0.5),
                     train=TrainSpec(epochs=20, lr=0.05), seed=3)


def _cell() -> CellSpec:
    return CellSpec(knob="epochs", temperature=5, checkpoint_epoch=5,
                    prune=PruneSpec(density=0.2, method="lamp"),
                    finetune=FinetuneSpec(train=TrainSpec(epochs=10), seeds=(0, 1, 2),
                                          recipe="short"))


# --- stability -----------------------------------------------------------------------------

def test_hashes_are_pinned():
    """Literals computed once: any change to the hashing (format, defaults, schema) shows here.

    If this fails on purpose (a changed default or hash format), bump SCHEMA_VERSION and
    update the literals: every stored run's identity changes with them.
    """
    assert SCHEMA_VERSION == 1
    assert DenseSpec().spec_hash() == "70fef9610bf8fff9"
    assert _dense().spec_hash() == "eda9fbfbf1b11aef"
    assert cell_hash(_cell(), _dense()) == "38ceeaafd4232a86"


def test_hash_covers_non_default_fields_type_and_schema(monkeypatch):
    d = _dense()
    # only the fields whose value differs from their default enter the hash
    assert d.identity() == {"data": {"name": "digits"}, "model": {"name": "mlp", "width": 0.5},
                            "train": {"epochs": 20, "lr": 0.05}, "seed": 3}
    assert re.fullmatch(r"[0-9a-f]{16}", d.spec_hash())
    # floats enter with their exact repr: no rounding merges two nearby values
    assert TrainSpec(lr=0.1 + 0.2).spec_hash() != TrainSpec(lr=0.3).spec_hash()
    # the spec's type is part of the hash: two all-default specs of different types differ
    assert PruneSpec().identity() == MeasureSpec().identity() == {}
    assert PruneSpec().spec_hash() != MeasureSpec().spec_hash()
    # so is the schema version: bumping it changes every hash
    before = d.spec_hash()
    monkeypatch.setattr(specs_mod, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    assert d.spec_hash() != before


def test_equal_specs_hash_equal_and_are_hashable():
    assert _dense().spec_hash() == _dense().spec_hash()
    assert _dense() == _dense()
    assert len({_dense(), _dense(), DenseSpec()}) == 2   # frozen -> usable as dict keys
    with pytest.raises(dataclasses.FrozenInstanceError):
        _dense().seed = 4  # type: ignore[misc]


# Valid alternative values for fields whose type alone does not give one.
_ALTERNATIVES = {
    ("DataSpec", "name"): "digits", ("DataSpec", "val_fraction"): 0.2,
    ("ModelSpec", "name"): "mlp", ("ModelSpec", "shortcut"): "raw",
    ("ModelSpec", "kwargs"): {"n": 1}, ("DataSpec", "kwargs"): {"n": 1},
    ("TrainSpec", "schedule"): "cosine", ("TrainSpec", "milestones"): (0.3,),
    ("TrainSpec", "momentum"): 0.5,
    ("PruneSpec", "method"): "lamp", ("PruneSpec", "density"): 0.5,
    ("PruneSpec", "include"): ("conv*",), ("PruneSpec", "exclude"): ("fc*",),
    ("FinetuneSpec", "seeds"): (0, 1), ("FinetuneSpec", "recipe"): "short",
    ("MeasureSpec", "metrics"): ("lmc",),
    ("CellSpec", "knob"): "batch_size",
}


def _changed(spec, f: dataclasses.Field):
    value = getattr(spec, f.name)
    key = (type(spec).__name__, f.name)
    if key in _ALTERNATIVES:
        return _ALTERNATIVES[key]
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value * 0.5 if value else 0.5
    if dataclasses.is_dataclass(value):
        inner = next(g for g in dataclasses.fields(value) if g.metadata.get("identity", True))
        return value.replace(**{inner.name: _changed(value, inner)})
    if isinstance(value, str):
        return value + "x"
    raise AssertionError(f"no alternative value for {key}: add one to _ALTERNATIVES")


@pytest.mark.parametrize("cls", ALL_SPECS, ids=lambda c: c.__name__)
def test_every_identity_field_changes_the_hash(cls):
    base = cls()
    for f in dataclasses.fields(cls):
        changed = base.replace(**{f.name: _changed(base, f)})
        if f.metadata.get("identity", True):
            assert changed.spec_hash() != base.spec_hash(), f"{cls.__name__}.{f.name} is not hashed"
        else:
            assert changed.spec_hash() == base.spec_hash(), f"{cls.__name__}.{f.name} is hashed"


# --- parents -------------------------------------------------------------------------------

def test_child_hash_contains_parent():
    cell, dense = _cell(), _dense()
    assert cell_hash(cell, dense) == cell.spec_hash(parent=dense_hash(dense))
    assert cell_hash(cell, dense) != cell.spec_hash()
    # any change of the dense run (even deep inside it) changes the cell's hash
    for other in (dense.replace(seed=4), dense.replace(train=dense.train.replace(lr=0.1)),
                  dense.replace(data=dense.data.replace(split_seed=1))):
        assert cell_hash(cell, other) != cell_hash(cell, dense)


def test_identity_excludes_data_dir():
    a = DataSpec(name="cifar10", data_dir="/a")
    b = DataSpec(name="cifar10", data_dir="/somewhere/else")
    assert a != b
    assert a.spec_hash() == b.spec_hash()
    assert "data_dir" not in a.identity()
    assert DenseSpec(data=a).spec_hash() == DenseSpec(data=b).spec_hash()
    assert cell_hash(_cell(), DenseSpec(data=a)) == cell_hash(_cell(), DenseSpec(data=b))


# --- schema evolution: a new field with a default ------------------------------------------

def _with_new_field(cls, name: str, default):
    """``cls`` as a later version of the code would define it: same name, one more field."""
    field = (name, type(default), dataclasses.field(default=default))
    return dataclasses.make_dataclass(cls.__name__, [field], bases=(cls,), frozen=True)


def test_adding_a_defaulted_field_keeps_hashes():
    NewTrain = _with_new_field(TrainSpec, "label_smoothing", 0.0)
    NewData = _with_new_field(DataSpec, "augment_strength", 1)
    old_train, new_train = TrainSpec(epochs=20, lr=0.05), NewTrain(epochs=20, lr=0.05)
    assert new_train.spec_hash() == old_train.spec_hash()
    assert NewData(name="digits").spec_hash() == DataSpec(name="digits").spec_hash()
    # ... also as nested children and through the parent chain
    old_dense = DenseSpec(data=DataSpec(name="digits"), train=old_train)
    new_dense = DenseSpec(data=NewData(name="digits"), train=new_train)
    assert new_dense.spec_hash() == old_dense.spec_hash()
    assert cell_hash(_cell(), new_dense) == cell_hash(_cell(), old_dense)
    # a non-default value of the new field is new work: a new hash
    assert NewTrain(epochs=20, lr=0.05, label_smoothing=0.1).spec_hash() != old_train.spec_hash()


# --- coercion and validation ---------------------------------------------------------------

def test_int_float_coercion():
    t = TrainSpec(lr=1, epochs=5.0)
    assert isinstance(t.lr, float) and t.lr == 1.0
    assert isinstance(t.epochs, int) and t.epochs == 5
    assert t.spec_hash() == TrainSpec(lr=1.0, epochs=5).spec_hash()
    assert CellSpec(temperature=5).spec_hash() == CellSpec(temperature=5.0).spec_hash()
    assert FinetuneSpec(seeds=[0, 1]).seeds == (0, 1)      # lists become tuples (hashable)
    assert FinetuneSpec(seeds=[0, 1]).spec_hash() == FinetuneSpec(seeds=(0, 1)).spec_hash()


@pytest.mark.parametrize("make, field_name", [
    (lambda: TrainSpec(epochs=5.5), "epochs"),
    (lambda: TrainSpec(epochs=True), "epochs"),
    (lambda: TrainSpec(lr="0.1"), "lr"),
    (lambda: TrainSpec(lr=float("nan")), "lr"),
    (lambda: PruneSpec(density=float("inf")), "density"),
])
def test_type_errors_name_the_field(make, field_name):
    with pytest.raises((TypeError, ValueError), match=field_name):
        make()


@pytest.mark.parametrize("make, field_name", [
    (lambda: PruneSpec(density=1.5), "density"),
    (lambda: PruneSpec(density=0.0), "density"),
    (lambda: DataSpec(val_fraction=1.0), "val_fraction"),
    (lambda: DataSpec(train_subset=-1), "train_subset"),
    (lambda: ModelSpec(width=0), "width"),
    (lambda: ModelSpec(depth=-1), "depth"),
    (lambda: TrainSpec(epochs=0), "epochs"),
    (lambda: TrainSpec(batch_size=0), "batch_size"),
    (lambda: TrainSpec(lr=-0.1), "lr"),
    (lambda: TrainSpec(schedule="linear"), "schedule"),
    (lambda: TrainSpec(milestones=(0.5, 1.5)), "milestones"),
    (lambda: TrainSpec(momentum=1.0), "momentum"),
    (lambda: FinetuneSpec(seeds=()), "seeds"),
    (lambda: FinetuneSpec(seeds=(0, 0)), "seeds"),
    (lambda: FinetuneSpec(last_epochs=0), "last_epochs"),
    (lambda: MeasureSpec(lmc_points=1), "lmc_points"),
    (lambda: MeasureSpec(cka_examples=1), "cka_examples"),
])
def test_validation_errors_name_the_field(make, field_name):
    with pytest.raises(ValueError, match=field_name):
        make()


def test_density_one_is_allowed():
    assert PruneSpec(density=1).density == 1.0


def test_to_dict_has_every_field_including_non_identity():
    d = DenseSpec(data=DataSpec(data_dir="/x")).to_dict()
    assert d["data"]["data_dir"] == "/x"
    assert set(d["train"]) == {f.name for f in dataclasses.fields(TrainSpec)}
