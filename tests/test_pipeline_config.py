"""Grid configs: the demo loads; every bad input fails before compute, naming the field."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from pipeline.config import load_config, parse_config
from pipeline.specs import DataSpec, FinetuneSpec, TrainSpec

DEMO = Path(__file__).resolve().parent.parent / "configs" / "demo.yaml"


def _demo_raw() -> dict:
    return yaml.safe_load(DEMO.read_text())


def test_demo_config_loads():
    cfg = load_config(DEMO)
    assert cfg.knob == "epochs"
    assert cfg.temperatures == (2, 5, 10, 20, 40, 80)
    assert cfg.densities == (0.05, 0.1, 0.2, 0.4, 0.8)
    assert cfg.data == DataSpec(name="mnist1d")
    assert isinstance(cfg.dense, TrainSpec) and cfg.dense.epochs == 80
    assert isinstance(cfg.finetune, FinetuneSpec)
    assert cfg.finetune.seeds == (0, 1, 2) and cfg.finetune.train.epochs == 20
    assert cfg.finetune.recipe == "short"
    cells = cfg.cells()
    assert len(cells) == 6 * 5
    assert [c.temperature for _, c, _ in cells[::5]] == [80, 40, 20, 10, 5, 2]     # cold -> hot
    dense, cell, seed = cells[0]
    assert seed == 0 and cell.checkpoint_epoch == 80 and cell.prune.density == 0.05
    assert cell.prune.method == "global"
    # every temperature of the epochs knob comes from ONE dense run
    assert len({d.spec_hash() for d, _, _ in cells}) == 1
    assert len({c.spec_hash(parent=d.spec_hash()) for d, c, _ in cells}) == 30


@pytest.mark.parametrize("path, bad", [
    ((), "temperature"),                       # top level: temperatures misspelt
    (("dense",), "epoch"),
    (("finetune",), "lr_rate"),
    (("data",), "nam"),
    (("measure",), "lmc_point"),
    (("runtime",), "max_member"),
])
def test_unknown_key_is_an_error_naming_it(path, bad):
    raw = _demo_raw()
    node = raw
    for k in path:
        node = node[k]
    node[bad] = 1
    with pytest.raises(ValueError, match=repr(bad).replace("[", r"\[")):
        parse_config(raw)


@pytest.mark.parametrize("override, words", [
    ("densities=[0.1, 1.5]", ["densities", "1.5"]),
    ("densities=[0]", ["densities", "0"]),
    ("densities=[]", ["densities"]),
    ("temperatures=[2, 100]", ["100", "80"]),          # beyond the 80-epoch dense schedule
    ("temperatures=[0]", ["0"]),
    ("temperatures=[2.5]", ["2.5", "integer"]),
    ("knob=heat", ["knob", "heat"]),
    ("data.name=imagenet", ["data.name", "imagenet"]),
    ("model.name=resnet9000", ["model.name", "resnet9000"]),
    ("prune.method=snip", ["prune.method", "snip"]),
    ("measure.metrics=[lmc, hessian]", ["measure.metrics", "hessian"]),
    ("dense.lr=-1", ["lr"]),
    ("finetune.seeds=[0, 0]", ["seeds"]),
    ("dense_seeds=[1, 1]", ["dense_seeds"]),
])
def test_bad_values_fail_fast_naming_the_field(override, words):
    with pytest.raises(ValueError) as err:
        load_config(DEMO, [override])
    for w in words:
        assert w in str(err.value), (w, str(err.value))


def test_batch_size_knob_needs_an_iteration_budget():
    overrides = ["knob=batch_size", "temperatures=[32, 128]"]
    with pytest.raises(ValueError, match="iterations"):
        load_config(DEMO, overrides)
    cfg = load_config(DEMO, overrides + ["dense.iterations=1000"])
    dense, cell = cfg.cell(32, 0.1, 0)
    assert dense.train.batch_size == 32 and dense.train.iterations == 1000
    assert cell.checkpoint_epoch == 0
    assert cfg.cell(128, 0.1, 0)[0].spec_hash() != dense.spec_hash()


def test_epochs_knob_refuses_an_iteration_budget():
    with pytest.raises(ValueError, match="iterations"):
        load_config(DEMO, ["dense.iterations=1000"])


def test_set_overrides():
    cfg = load_config(DEMO, ["finetune.epochs=5", "densities=[0.1, 0.2]", "prune.method=lamp",
                             "dense_seeds=[0, 1]", "runtime.max_members=8", "data.train_subset=500",
                             "finetune.seeds=[3, 4]"])
    assert cfg.finetune.train.epochs == 5
    assert cfg.finetune.seeds == (3, 4)
    assert cfg.densities == (0.1, 0.2)
    assert cfg.prune.method == "lamp"
    assert cfg.runtime.max_members == 8
    assert cfg.data.train_subset == 500
    assert len(cfg.cells()) == 6 * 2 * 2
    with pytest.raises(ValueError, match="key=value"):
        load_config(DEMO, ["finetune.epochs"])


def test_parse_config_does_not_modify_its_input():
    raw = _demo_raw()
    before = copy.deepcopy(raw)
    parse_config(raw, ["finetune.epochs=5", "dense.lr=0.05"])
    assert raw == before, "parse_config wrote the --set overrides into the caller's mapping"
    # so a second parse of the same mapping without overrides gets the file's values
    assert parse_config(raw).finetune.train.epochs == 20


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("knob: [epochs\n")
    with pytest.raises(ValueError, match="YAML"):
        load_config(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="mapping"):
        load_config(listy)
    raw = _demo_raw()
    del raw["densities"]
    with pytest.raises(ValueError, match="densities"):
        parse_config(raw)
