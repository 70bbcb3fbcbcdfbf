"""Weight spectra (weightwatcher) and AlphaPruning: the fit recovers a known exponent, small
layers are NaN with a reason, AlphaPruning's allocation moves the right way and is exact."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pipeline.models import build_model
from pipeline.prune import alpha_layer_densities, prune
from pipeline.specs import ModelSpec, PruneSpec
from pipeline.spectra import layer_spectra, summarize

torch.set_num_threads(1)


def power_law_matrix(n: int, m: int, alpha: float, seed: int = 0) -> torch.Tensor:
    """W = U diag(sqrt(lambda)) V^T with the m eigenvalues of W^T W drawn from a Pareto law of
    density ~ lambda^-alpha (lambda >= 1), U, V random orthonormal."""
    rng = np.random.default_rng(seed)
    lam = 1.0 + rng.pareto(alpha - 1.0, size=m)          # P(lambda > x) = x^-(alpha - 1)
    u, _ = np.linalg.qr(rng.standard_normal((n, m)))
    v, _ = np.linalg.qr(rng.standard_normal((m, m)))
    return torch.tensor((u * np.sqrt(lam)) @ v.T, dtype=torch.float32)


@pytest.mark.parametrize("alpha", [2.5, 3.5, 4.5])
def test_alpha_of_a_known_power_law_spectrum(alpha):
    w = power_law_matrix(800, 600, alpha)
    spec = layer_spectra({"fc.weight": w})["fc.weight"]
    assert spec.analysed and spec.num_evals == 600
    assert spec.alpha == pytest.approx(alpha, abs=0.4)


def test_alpha_orders_layers_by_their_tails():
    layers = {f"l{a}.weight": power_law_matrix(600, 400, a, seed=1) for a in (2.5, 4.0, 6.0)}
    alphas = [s.alpha for s in layer_spectra(layers).values()]
    assert alphas == sorted(alphas)


def test_convolutions_pool_kernel_positions_and_small_layers_are_nan_with_a_reason():
    torch.manual_seed(0)
    weights = {"stem.weight": torch.randn(21, 1, 5),          # 1-D conv, 5 eigenvalues
               "conv1d.weight": torch.randn(21, 21, 5),        # 21 x 5 = 105
               "conv2d.weight": torch.randn(16, 8, 3, 3),      # 8 x 9 = 72
               "fc.weight": torch.randn(30, 40)}
    spectra = layer_spectra(weights)
    assert list(spectra) == list(weights)
    stem = spectra["stem.weight"]
    assert not stem.analysed and math.isnan(stem.alpha) and "min_evals=8" in stem.reason
    layers = ("conv1d.weight", "conv2d.weight", "fc.weight")
    assert [spectra[k].num_evals for k in layers] == [105, 72, 30]
    assert all(spectra[k].analysed and math.isfinite(spectra[k].alpha) for k in list(weights)[1:])
    # the minimum is a parameter
    assert not layer_spectra(weights, min_evals=80)["conv2d.weight"].analysed
    assert layer_spectra(weights, min_evals=4)["stem.weight"].analysed
    summary = summarize(spectra)
    assert summary["layers"] == 3
    assert summary["alpha"] == pytest.approx(np.mean([spectra[k].alpha for k in list(weights)[1:]]))


def test_nothing_analysable_gives_nan_summaries_not_zeros():
    spectra = layer_spectra({"a.weight": torch.randn(3, 2), "b.weight": torch.zeros(20, 20)})
    assert not any(s.analysed for s in spectra.values())
    assert "zero" in spectra["b.weight"].reason
    summary = summarize(spectra)
    assert summary["layers"] == 0
    assert all(math.isnan(summary[k]) for k in ("alpha", "alpha_weighted"))


# --- AlphaPruning ---------------------------------------------------------------------------

def test_alpha_allocation_prunes_larger_alpha_more_and_is_exact():
    sizes = {"a": 1000, "b": 1000, "c": 1000, "d": 500}
    alphas = {"a": 2.0, "b": 3.0, "c": 6.0, "d": math.nan}
    for density in (0.05, 0.1, 0.3):
        keep = alpha_layer_densities(alphas, sizes, density, eps=0.2)
        assert sum(keep.values()) == round(density * sum(sizes.values()))
        d = {k: keep[k] / sizes[k] for k in sizes}
        assert d["a"] > d["b"] > d["c"]
        # the linear map: best layer / worst layer = (1 + eps) / (1 - eps) before rounding
        assert d["a"] / d["c"] == pytest.approx(1.2 / 0.8, rel=0.02)
        # a NaN alpha counts as the mean alpha (11/3: between b and c)
        assert d["b"] > d["d"] > d["c"]
    # eps = 0: uniform
    keep = alpha_layer_densities(alphas, sizes, 0.2, eps=0.0)
    assert all(abs(keep[k] - 0.2 * sizes[k]) <= 1 for k in sizes)


def test_alpha_allocation_holds_full_layers_at_one_and_stays_exact():
    sizes = {"small": 100, "big": 10000}
    keep = alpha_layer_densities({"small": 2.0, "big": 5.0}, sizes, 0.95, eps=0.5)
    assert keep["small"] == 100                       # would be 1.4 x 0.95 > 1: held at 1
    assert sum(keep.values()) == round(0.95 * 10100)
    assert all(1 <= keep[k] <= sizes[k] for k in sizes)


def test_alpha_pruning_on_a_model_follows_its_alphas():
    model = build_model(ModelSpec(name="preresnet", depth=20, width=0.5), (3, 32, 32), 10, seed=0)
    state = model.state_dict()
    weights = {k: state[k].clone() for k in model.prunable_names()}
    # make one layer's spectrum much heavier-tailed (smaller alpha) than the rest
    name = "blocks.3.conv1.weight"
    w = weights[name]
    flat = power_law_matrix(w.shape[0] * 9, w.shape[1], 2.2, seed=3)
    weights[name] = (flat.reshape(9, w.shape[0], w.shape[1]).permute(1, 2, 0).reshape(w.shape)
                     * w.std())
    alphas = {k: s.alpha for k, s in layer_spectra(weights).items()}
    masks = prune(weights, PruneSpec(density=0.1, method="alpha"))
    dens = {k: float(m.mean()) for k, m in masks.items()}
    finite = [k for k in alphas if math.isfinite(alphas[k])]
    lowest, highest = min(finite, key=alphas.get), max(finite, key=alphas.get)
    assert dens[lowest] > 0.1 > dens[highest]
    kept = sum(int(m.sum()) for m in masks.values())
    assert kept == round(0.1 * sum(w.numel() for w in weights.values()))
    for k, w in weights.items():       # magnitude pruning inside each layer
        assert w[masks[k] == 1].abs().min() >= w[masks[k] == 0].abs().max(), k
    # a larger eps spreads the densities further
    wide = prune(weights, PruneSpec(density=0.1, method="alpha", alpha_eps=0.6))
    assert float(wide[lowest].mean()) > dens[lowest] and float(wide[highest].mean()) < dens[highest]


def test_alpha_eps_default_leaves_hashes_unchanged():
    assert PruneSpec().spec_hash() == PruneSpec(alpha_eps=0.2).spec_hash()
    assert PruneSpec().spec_hash() != PruneSpec(alpha_eps=0.3).spec_hash()
    assert "alpha_eps" not in PruneSpec(method="alpha").identity()
    with pytest.raises(ValueError, match="alpha_eps"):
        PruneSpec(alpha_eps=1.5)


# --- in a cell and in a grid ------------------------------------------------------------------

def _tiny_cell(**measure):
    from pipeline.specs import CellSpec, FinetuneSpec, MeasureSpec, TrainSpec

    return CellSpec(knob="epochs", temperature=2, checkpoint_epoch=2,
                    prune=PruneSpec(density=0.2, method="global"),
                    finetune=FinetuneSpec(train=TrainSpec(epochs=1, batch_size=32), seeds=(0, 1),
                                          last_epochs=1),
                    measure=MeasureSpec(lmc_points=3, cka_examples=100, **measure))


@pytest.mark.slow
def test_cell_metrics_absent_when_off_and_present_when_on():
    from pipeline.cell import run_cell
    from pipeline.data import load_dataset
    from pipeline.dense import train_dense
    from pipeline.specs import DataSpec, DenseSpec, TrainSpec
    from tracking import keys

    data_spec = DataSpec(name="mnist1d", train_subset=300)
    data = load_dataset(data_spec)
    dense = DenseSpec(data=data_spec, model=ModelSpec(name="cnn1d", width=0.5),
                      train=TrainSpec(epochs=2, batch_size=32))
    state = train_dense(dense, data, keep_every_epoch=False)[0]
    off = run_cell(_tiny_cell(), dense, state, data).metrics()
    optional = [*keys.SPECTRAL_COLUMNS, *keys.CURVATURE_COLUMNS, keys.HESSIAN_EXAMPLES]
    assert not any(k in off for k in optional)
    res = run_cell(_tiny_cell(spectra=True, hessian=True, hessian_examples=100, hessian_probes=4,
                              hessian_iterations=5), dense, state, data)
    on = res.metrics()
    assert all(math.isfinite(on[k]) for k in optional)
    assert on[keys.HESSIAN_EXAMPLES] == 100
    assert on[keys.TEST_ACC] == off[keys.TEST_ACC]              # measuring changes nothing
    # the dense summaries are those of the checkpoint; pruning changes the spectra
    names = list(res.mask)
    dense_summary = summarize(layer_spectra({k: state[k] for k in names}))
    assert on["dense_alpha"] == pytest.approx(dense_summary["alpha"])
    assert on["pruned_alpha"] != on["dense_alpha"]
    # stem: 5 evals
    assert on["dense_spectra_layers"] == on["pruned_spectra_layers"] == len(names) - 1


@pytest.mark.slow
def test_grid_logs_spectra_on_dense_and_cell_runs(tracking_uri):
    import io

    import pandas as pd
    from helpers import TINY
    from mlflow import MlflowClient

    from pipeline.config import parse_config
    from pipeline.grid import run_grid
    from tracking import keys
    from tracking.artifacts import load_file
    from tracking.tables import RESULT_COLUMNS, results_table

    cfg = parse_config({**TINY, "temperatures": [3], "densities": [0.2]},
                       ["measure.spectra=true", "prune.method=alpha"])
    summary = run_grid(cfg, progress=False)
    assert summary.ok and summary.computed == 1
    client = MlflowClient()
    exp = client.get_experiment_by_name("tiny").experiment_id
    cell = client.search_runs([exp], f"tags.{keys.RUN_KIND} = '{keys.KIND_CELL}'")[0]
    dense = client.search_runs([exp], f"tags.{keys.RUN_KIND} = '{keys.KIND_DENSE}'")[0]
    for name in keys.SPECTRAL_COLUMNS:
        assert math.isfinite(cell.data.metrics[name]), name
    assert keys.HESSIAN_TRACE not in cell.data.metrics          # off: absent, not zero
    per_layer = pd.read_csv(io.StringIO(load_file(client, cell.info.run_id, keys.ARTIFACT_SPECTRA)))
    assert sorted(set(per_layer["model"])) == ["dense", "pruned"]
    stem = per_layer[per_layer["layer"] == "features.0.weight"]
    assert stem["alpha"].isna().all() and stem["reason"].str.contains("min_evals").all()
    # the dense run: every kept checkpoint (epochs 1..3), summaries per step and per-layer files
    history = client.get_metric_history(dense.info.run_id, "dense_alpha")
    assert sorted(m.step for m in history) == [1, 2, 3]
    at3 = pd.read_csv(io.StringIO(load_file(client, dense.info.run_id, "spectra/epoch_0003.csv")))
    dense_rows = per_layer[per_layer["model"] == "dense"].reset_index(drop=True)
    assert at3["alpha"].equals(dense_rows["alpha"])             # the cell pruned epoch 3
    table = results_table("tiny")
    assert list(table.columns) == [*RESULT_COLUMNS, *keys.SPECTRAL_COLUMNS]
    assert table["pruned_alpha"].iloc[0] == pytest.approx(cell.data.metrics["pruned_alpha"])
