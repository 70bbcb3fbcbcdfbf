"""README commands not covered elsewhere, run in-process as a user types them."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from helpers import TINY, write_tiny

from pipeline.__main__ import main as pipeline_main
from tracking.tables import results_table

ROOT = Path(__file__).resolve().parent.parent


def test_cell_command_computes_then_reuses_one_cell(tmp_path, tracking_uri, capsys):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    argv = ["cell", str(config), "--temperature", "3", "--density", "0.6", "--no-progress"]
    assert pipeline_main(argv) == 0
    out = capsys.readouterr().out
    assert "epochs=3 d=0.60 s=0" in out and "lmc_barrier" in out
    assert len(results_table("tiny")) == 1
    assert pipeline_main(argv) == 0           # the second time it is a cache lookup
    assert len(results_table("tiny")) == 1


@pytest.mark.slow
def test_paper_config_runs_on_a_users_cifar10_folder(tmp_path, tracking_uri):
    """The README's paper command, shrunk by --set to seconds: CIFAR-10 files from a data dir,
    PreResNet-20 (narrowed), augmentation, one cell."""
    data_dir = tmp_path / "cifar"
    write_tiny("cifar10", data_dir)
    config = ROOT / "configs" / "paper" / "cifar10_preresnet20_epochs.yaml"
    sets = [f"data.data_dir={data_dir}", "runtime.device=cpu", "runtime.threads=1",
            "temperatures=[1]", "densities=[0.1]", "dense_seeds=[0]", "dense.epochs=1",
            "finetune.epochs=1", "finetune.last_epochs=1", "finetune.seeds=[0,1]",
            "model.width=0.25", "measure.lmc_points=3", "measure.cka_examples=16",
            "data.val_fraction=0.25"]
    argv = ["grid", str(config), "--no-progress"] + [a for s in sets for a in ("--set", s)]
    assert pipeline_main(argv) == 0
    table = results_table("paper-cifar10-preresnet20-epochs")
    assert len(table) == 1 and table["lmc_barrier"].notna().all()


@pytest.mark.slow
def test_demo_ends_with_the_labelled_best_temperature_per_density(tmp_path, tracking_uri, capsys,
                                                                    monkeypatch):
    """``make demo``'s command on the tiny grid: the grid step prints the best temperature per
    density, and the demo ends with it again, labelled by the regimes ``classify`` tagged."""
    import selection.tuner
    from selection.__main__ import main as selection_main

    monkeypatch.setattr(selection.tuner, "default_storage_path",
                        lambda: tmp_path / "optuna.journal")
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    argv = ["demo", "--config", str(config), "--density", "0.2", "--n-trials", "2",
            "--replay-repeats", "2", "--out", str(tmp_path / "out")]
    assert selection_main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    header = "best temperature per density (mean fine-tuned test accuracy):"
    grid_step, last = [i for i, line in enumerate(lines) if line == header]
    assert lines[grid_step + 1].split() == ["density", "epochs", "test_acc"]
    assert lines[last + 1].split() == ["density", "epochs", "test_acc", "regime"]
    labelled = results_table("tiny").set_index(["temperature", "density"])["regime"]
    for line in lines[last + 2:last + 4]:
        density, temperature, _, regime = line.split()
        assert regime == labelled[(int(temperature), float(density))]
    assert lines[grid_step + 2].split()[:3] == lines[last + 2].split()[:3]
