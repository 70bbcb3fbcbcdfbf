"""The registry type every "choose it by name" entry uses (tracking/registries.py)."""

from __future__ import annotations

import pytest

from tracking.registries import Registry


def test_register_as_a_call_and_as_a_decorator():
    reg: Registry[object] = Registry("colour")
    entry = object()
    assert reg.register("red", entry) is entry

    @reg.register("blue")
    def blue():
        return "b"

    assert blue() == "b"                       # the decorated function is given back as is
    assert reg.get("red") is entry and reg.get("blue") is blue
    assert "red" in reg and "green" not in reg


def test_names_are_sorted_and_only_the_registered_ones():
    reg: Registry[int] = Registry("colour")
    assert reg.names() == []
    for i, name in enumerate(["red", "blue", "green"]):
        reg.register(name, i)
    assert reg.names() == ["blue", "green", "red"]


def test_unknown_name_lists_what_is_allowed():
    reg: Registry[int] = Registry("pruning method")
    reg.register("lamp", 1)
    reg.register("global", 2)
    with pytest.raises(ValueError) as info:
        reg.get("snip")
    assert str(info.value) == "unknown pruning method 'snip'; allowed: global, lamp"
    with pytest.raises(ValueError) as info:
        reg.get("snip", field="prune.method")
    assert str(info.value) == "prune.method='snip': unknown pruning method; allowed: global, lamp"


@pytest.mark.parametrize("bad", [None, 3, ["lamp"], ""])
def test_a_name_of_another_type_is_unknown_not_a_crash(bad):
    reg: Registry[int] = Registry("metric")
    reg.register("lmc", 1)
    with pytest.raises(ValueError, match="unknown metric .*; allowed: lmc"):
        reg.get(bad)


def test_duplicate_registration_is_an_error_and_keeps_the_first():
    reg: Registry[int] = Registry("dataset")
    reg.register("digits", 1)
    with pytest.raises(ValueError, match="dataset 'digits' is already registered"):
        reg.register("digits", 2)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("digits")(lambda: None)
    assert reg.get("digits") == 1


@pytest.mark.parametrize("bad", ["", None, 7])
def test_a_name_must_be_a_non_empty_string(bad):
    with pytest.raises(ValueError, match="must be a non-empty string"):
        Registry("model").register(bad, object())


def test_the_project_registries_share_the_type():
    from pipeline.data import DATASETS
    from pipeline.executors import EXECUTORS
    from pipeline.knobs import KNOBS
    from pipeline.landscape import METRICS
    from pipeline.models import MODELS
    from pipeline.prune import PRUNING_METHODS
    from tracking.knobs import DIRECTIONS

    for reg in (DATASETS, EXECUTORS, KNOBS, METRICS, MODELS, PRUNING_METHODS, DIRECTIONS):
        assert isinstance(reg, Registry) and reg.names()
    assert METRICS.names() == ["cka", "lmc"]
    assert EXECUTORS.names() == ["dask", "serial"]
