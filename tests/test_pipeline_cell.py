"""One cell end to end on MNIST-1D with tiny settings, and batching of several cells."""

from __future__ import annotations

import math
import statistics

import pytest
import torch

from pipeline.cell import finetune_steps, run_cell, run_cells
from pipeline.data import load_dataset
from pipeline.dense import dense_for, train_dense
from pipeline.models import build_model
from pipeline.specs import (
    CellSpec,
    DataSpec,
    DenseSpec,
    FinetuneSpec,
    MeasureSpec,
    PruneSpec,
    TrainSpec,
    cell_hash,
)
from pipeline.train import evaluate

torch.set_num_threads(1)

DATA = DataSpec(name="mnist1d", train_subset=1000)
FT = FinetuneSpec(train=TrainSpec(epochs=3, batch_size=64), seeds=(0, 1, 2), last_epochs=2,
                  recipe="tiny")
MEASURE = MeasureSpec(lmc_points=11, cka_examples=500)


@pytest.fixture(scope="module")
def dense_run():
    data = load_dataset(DATA)
    dense = DenseSpec(data=DATA, train=TrainSpec(epochs=3))
    checkpoints = train_dense(dense, data, keep_every_epoch=True)
    return data, dense, checkpoints


def _cell(temperature: int, density: float, finetune: FinetuneSpec = FT) -> CellSpec:
    return CellSpec(knob="epochs", temperature=temperature, checkpoint_epoch=temperature,
                    prune=PruneSpec(density=density, method="global"), finetune=finetune,
                    measure=MEASURE)


def test_dense_checkpoints_at_every_epoch(dense_run):
    data, dense, checkpoints = dense_run
    assert sorted(checkpoints) == [1, 2, 3]
    final = train_dense(dense, data, keep_every_epoch=False)
    assert list(final) == [0]
    assert all(torch.equal(final[0][k], checkpoints[3][k]) for k in final[0])
    assert dense_for("epochs", 2, dense) == (dense, 2)


def test_one_cell_end_to_end(dense_run):
    data, dense, checkpoints = dense_run
    cell = _cell(3, 0.2)
    res = run_cell(cell, dense, checkpoints[3], data)               # seconds: see --durations
    m = res.metrics()
    expected_keys = {"test_acc", "test_acc_std", "val_acc", "val_acc_std", "lmc_barrier",
                     "lmc_barrier_std", "cka", "cka_std", "pruned_acc", "dense_acc",
                     "realized_density"}
    assert expected_keys <= set(m)
    assert all(math.isfinite(v) for v in m.values()), m
    for key in ("test_acc", "val_acc", "pruned_acc", "dense_acc", "cka"):
        assert 0.0 <= m[key] <= 1.0, key
    assert -1.0 <= m["lmc_barrier"] <= 1.0
    assert m["dense_acc"] > 0.3                                     # 3 epochs learn something
    assert m["test_acc"] > 0.2
    # identity
    assert res.spec_hash == cell_hash(cell, dense)
    # exact realised density: global keeps round(d * N) weights
    names = build_model(dense.model, data.input_shape, 10).prunable_names()
    total = sum(res.mask[k].numel() for k in names)
    assert res.realized_density * total == pytest.approx(round(0.2 * total))
    # 3 seeds -> 3 fine-tuned copies and 3 pairs
    assert len(res.test_acc) == len(res.val_acc) == len(res.finetuned) == 3
    assert [p.pair for p in res.pairs] == [(0, 1), (0, 2), (1, 2)]
    for p in res.pairs:
        assert len(p.lmc_errors) == 11 and math.isfinite(p.lmc_barrier) and 0 <= p.cka <= 1
    # reported accuracy = mean over the last N epochs of the per-epoch curve
    for i in range(3):
        assert len(res.curves["test_acc"][i]) == 3 and len(res.curves["train_loss"][i]) == 3
        assert res.test_acc[i] == pytest.approx(statistics.fmean(res.curves["test_acc"][i][-2:]))
        assert res.val_acc[i] == pytest.approx(statistics.fmean(res.curves["val_acc"][i][-2:]))
    assert m["test_acc"] == pytest.approx(statistics.fmean(res.test_acc))
    assert m["test_acc_std"] == pytest.approx(statistics.pstdev(res.test_acc))
    assert m["lmc_barrier"] == pytest.approx(statistics.fmean(p.lmc_barrier for p in res.pairs))
    # dense and pruned accuracies are those of the checkpoint and of the masked checkpoint
    model = build_model(dense.model, data.input_shape, 10)
    model.load_state_dict(checkpoints[3])
    assert m["dense_acc"] == pytest.approx(float(evaluate(model, data.x_test, data.y_test)[0]))
    pruned = {k: v * res.mask[k] if k in res.mask else v for k, v in checkpoints[3].items()}
    model.load_state_dict(pruned)
    assert m["pruned_acc"] == pytest.approx(float(evaluate(model, data.x_test, data.y_test)[0]))
    # the copies differ (seeds differ in data order) but share the mask
    assert not torch.equal(res.finetuned[0]["classifier.weight"],
                           res.finetuned[1]["classifier.weight"])


def _max_rel_diff(a: dict, b: dict) -> float:
    return max(float((a[k].double() - b[k].double()).abs().max())
               / max(1.0, float(b[k].abs().max()))
               for k in a if a[k].is_floating_point())


def test_run_cells_equals_separate_runs(dense_run):
    """Batching cells together, in chunks of 4 members that cut across the cells' 3 + 3
    fine-tunes and 33 + 33 LMC points, computed by 2 workers side by side, changes nothing."""
    data, dense, checkpoints = dense_run
    short = FT.replace(train=FT.train.replace(epochs=2), last_epochs=1)
    jobs = [(_cell(2, 0.3, short), dense, checkpoints[2]),
            (_cell(3, 0.1, short), dense, checkpoints[3])]
    together = run_cells(jobs, data, max_members=4, workers=2)
    for job, got in zip(jobs, together, strict=True):
        alone = run_cell(*job, data)
        assert got.spec_hash == alone.spec_hash
        assert got.dense_acc == alone.dense_acc and got.pruned_acc == alone.pruned_acc
        assert all(torch.equal(got.mask[k], alone.mask[k]) for k in alone.mask)
        for a, b in zip(got.finetuned, alone.finetuned, strict=True):
            assert _max_rel_diff(a, b) < 1e-5
        assert got.test_acc == pytest.approx(alone.test_acc, abs=1e-6)
        assert got.val_acc == pytest.approx(alone.val_acc, abs=1e-6)
        for p, q in zip(got.pairs, alone.pairs, strict=True):
            assert p.pair == q.pair
            assert p.lmc_errors == pytest.approx(q.lmc_errors, abs=1e-6)
            assert p.cka == pytest.approx(q.cka, abs=1e-5)
    assert together[0].realized_density != together[1].realized_density


def test_run_cells_refuses_mixed_recipes(dense_run):
    data, dense, checkpoints = dense_run
    other = FT.replace(seeds=(0, 1))
    with pytest.raises(ValueError, match="share"):
        run_cells([(_cell(2, 0.3), dense, checkpoints[2]),
                   (_cell(3, 0.3, other), dense, checkpoints[3])], data)
    assert run_cells([], data) == []


def test_finetune_steps_counts_the_optimizer_steps(dense_run):
    data, _, _ = dense_run
    n = len(data.x_train)                                           # 900: 15 steps per epoch
    assert finetune_steps(2, _cell(2, 0.3), n) == 3 * 15
    assert finetune_steps(2, _cell(2, 0.3), n, max_members=4) == 2 * 3 * 15
