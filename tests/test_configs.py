"""Every shipped config loads and validates (file-based datasets pointed at a temporary dir)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import load_config
from pipeline.specs import cell_hash

CONFIGS = sorted(Path(__file__).resolve().parent.parent.glob("configs/**/*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_shipped_config_loads(path, tmp_path):
    overrides = [f"data.data_dir={tmp_path}", "runtime.device=cpu"]
    cfg = load_config(path, overrides)
    cells = cfg.cells()
    assert len(cells) == len(cfg.temperatures) * len(cfg.densities) * len(cfg.dense_seeds)
    assert len({cell_hash(c, d) for d, c, _ in cells}) == len(cells)   # the parent is in the hash
    if cfg.knob == "epochs":     # ONE dense run per dense seed serves every temperature
        assert len({d.spec_hash() for d, _, _ in cells}) == len(cfg.dense_seeds)


def test_there_are_paper_and_demo_configs():
    names = {p.stem for p in CONFIGS}
    assert {"demo", "demo_batch_size", "demo_sam", "cifar10_preresnet20_epochs",
            "cifar10_preresnet20_batch_size", "cifar10_preresnet20_sam"} <= names


def test_cuda_device_without_gpu_is_a_clear_error(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is visible: the error cannot be provoked here")
    with pytest.raises(ValueError, match="runtime.device='cuda'"):
        load_config(CONFIGS[0].parent / "demo.yaml", ["runtime.device=cuda"])


def test_a_boolean_density_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="densities contains True"):
        load_config(CONFIGS[0].parent / "demo.yaml", ["densities=[true]"])
