"""The grid runner against a real (temporary) MLflow store: cache, extension, failures, resume."""

from __future__ import annotations

import pytest
import torch
from helpers import TINY
from mlflow import MlflowClient

import pipeline.dense_run as dense_run_mod
import pipeline.grid as grid_mod
from pipeline.config import parse_config
from pipeline.dense_run import checkpoint_path
from pipeline.grid import GridRunner, run_grid
from tracking import keys
from tracking.artifacts import load_file
from tracking.tables import RESULT_COLUMNS, results_table


def tiny(**changes) -> object:
    raw = {**TINY, **changes}
    return parse_config(raw)


def _runs(kind: str, status: str | None = None) -> list:
    client = MlflowClient()
    exp = client.get_experiment_by_name("tiny")
    flt = f"tags.{keys.RUN_KIND} = '{kind}'"
    if status:
        flt += f" and attributes.status = '{status}'"
    return client.search_runs([exp.experiment_id], flt, max_results=1000)


@pytest.fixture
def counted(monkeypatch):
    """Counts the cells and dense runs actually computed."""
    calls = {"cells": 0, "dense": 0}
    real_cells, real_dense = grid_mod.run_cells, dense_run_mod.train_dense

    def cells(jobs, *a, **kw):
        calls["cells"] += len(jobs)
        return real_cells(jobs, *a, **kw)

    def dense(*a, **kw):
        calls["dense"] += 1
        return real_dense(*a, **kw)

    monkeypatch.setattr(grid_mod, "run_cells", cells)
    monkeypatch.setattr(dense_run_mod, "train_dense", dense)
    return calls


def test_rerun_computes_nothing_and_extension_computes_only_new_cells(tracking_uri, counted):
    first = run_grid(tiny(), progress=False)
    assert first.ok and first.computed == 4 and first.cached == 0
    assert counted == {"cells": 4, "dense": 1}          # ONE dense run serves both temperatures
    _assert_best_temperatures(first, results_table("tiny"))
    n_cell_runs = len(_runs(keys.KIND_CELL))

    again = run_grid(tiny(), progress=False)
    assert again.computed == 0 and again.cached == 4
    assert counted == {"cells": 4, "dense": 1}
    assert len(_runs(keys.KIND_CELL)) == n_cell_runs

    wider = run_grid(tiny(densities=[0.2, 0.6, 0.9]), progress=False)
    assert wider.computed == 2 and wider.cached == 4
    assert counted == {"cells": 6, "dense": 1}
    table = results_table("tiny")
    assert list(table.columns) == RESULT_COLUMNS
    assert len(table) == 6
    assert table["density"].tolist() == [0.2, 0.6, 0.9] * 2
    assert table["lmc_barrier"].notna().all() and table["cka"].between(0, 1.001).all()


def _assert_best_temperatures(summary, table) -> None:
    """The grid's summary shows, and its run holds as CSV, the best temperature per density."""
    best = summary.best
    assert best[keys.DENSITY].tolist() == [0.2, 0.6]
    for _, row in best.iterrows():
        at_density = table[table[keys.DENSITY] == row[keys.DENSITY]]
        assert row[keys.TEST_ACC] == pytest.approx(at_density[keys.TEST_ACC].max())
        best_here = at_density.loc[at_density[keys.TEST_ACC].idxmax(), keys.TEMPERATURE]
        assert row[keys.TEMPERATURE] == best_here
    lines = summary.lines()
    header = lines.index("best temperature per density (mean fine-tuned test accuracy):")
    assert lines[header + 1].split() == ["density", "epochs", "test_acc"]   # no regimes yet
    assert len(lines) == header + 2 + len(best)
    logged = load_file(MlflowClient(), summary.grid_run_id, keys.ARTIFACT_BEST_TEMPERATURES)
    assert logged.splitlines()[0] == "knob,density,temperature,test_acc,cells"
    assert len(logged.splitlines()) == 1 + len(best)


def test_failing_cell_is_marked_failed_and_the_grid_goes_on(tracking_uri, monkeypatch):
    real = grid_mod.run_cells

    def flaky(jobs, *a, **kw):
        if any(cell.prune.density == 0.6 and cell.temperature == 3 for cell, _, _ in jobs):
            if len(jobs) == 1:
                raise FloatingPointError("simulated divergence")
            raise FloatingPointError("one member diverged")
        return real(jobs, *a, **kw)

    monkeypatch.setattr(grid_mod, "run_cells", flaky)
    summary = run_grid(tiny(), progress=False)
    assert not summary.ok
    assert [name for name, _ in summary.failed] == ["epochs=3 d=0.60 s=0"]
    assert summary.computed == 3
    failed = _runs(keys.KIND_CELL, "FAILED")
    assert len(failed) == 1
    assert "simulated divergence" in failed[0].data.tags[keys.FAILURE_REASON]
    assert len(_runs(keys.KIND_CELL, "FINISHED")) == 3
    assert _runs(keys.KIND_GRID)[0].info.status == "FAILED"

    monkeypatch.setattr(grid_mod, "run_cells", real)
    retry = run_grid(tiny(), progress=False)      # the failed cell is redone, the rest reused
    assert retry.ok and retry.computed == 1 and retry.cached == 3


class _Killed(Exception):
    pass


def test_interrupted_dense_run_resumes_to_the_same_weights(tracking_uri, monkeypatch):
    cfg = tiny(dense={"epochs": 4, "batch_size": 32})
    dense, _ = cfg.cell(4, 0.5, 0)
    runner = GridRunner(cfg, progress=False)
    real_log = dense_run_mod.log_files
    logged_epochs = []

    def dying(client, run_id, files):
        real_log(client, run_id, files)
        logged_epochs.extend(k for k in files if k.startswith(keys.ARTIFACT_CHECKPOINT_DIR))
        if len(logged_epochs) == 2:
            raise _Killed("process killed after epoch 2")

    monkeypatch.setattr(dense_run_mod, "log_files", dying)
    with pytest.raises(_Killed):
        runner.ensure_dense(dense)
    monkeypatch.setattr(dense_run_mod, "log_files", real_log)
    (run,) = _runs(keys.KIND_DENSE)
    assert run.info.status == "FAILED"

    epochs_trained = []
    real_train = dense_run_mod.train_dense

    def spy(spec, data, keep, on_ckpt, on_state, resume, progress=None):
        epochs_trained.append(resume.epoch if resume else 0)
        return real_train(spec, data, keep, on_ckpt, on_state, resume, progress)

    monkeypatch.setattr(dense_run_mod, "train_dense", spy)
    run_id, computed, _ = runner.ensure_dense(dense)
    assert computed and run_id == run.info.run_id and epochs_trained == [2]
    resumed = load_file(runner.client, run_id, checkpoint_path(4))

    reference = GridRunner(cfg, experiment="tiny-reference", progress=False)
    ref_id, _, _ = reference.ensure_dense(dense)
    uninterrupted = load_file(reference.client, ref_id, checkpoint_path(4))
    for k, v in uninterrupted.items():
        assert torch.equal(v, resumed[k]), k


def test_cell_runs_carry_params_metrics_curves_and_artifacts(tracking_uri):
    run_grid(tiny(temperatures=[3], densities=[0.5]), progress=False)
    (run,) = _runs(keys.KIND_CELL, "FINISHED")
    p, m = run.data.params, run.data.metrics
    assert run.info.run_name == "epochs=3 d=0.50 s=0"
    assert p[keys.KNOB] == "epochs" and float(p[keys.DENSITY]) == 0.5
    assert p[keys.PRUNE_METHOD] == "global"
    for k in (keys.TEST_ACC, keys.TEST_ACC_STD, keys.VAL_ACC, keys.PRUNED_ACC, keys.DENSE_ACC,
              keys.LMC_BARRIER, keys.CKA, keys.pair_metric(keys.LMC_BARRIER, 0, 1)):
        assert k in m, k
    assert run.data.tags[keys.PARENT_RUN_ID] == _runs(keys.KIND_GRID)[0].info.run_id
    client = MlflowClient()
    curve = client.get_metric_history(run.info.run_id, keys.member_metric(keys.CURVE_TRAIN_LOSS, 0))
    assert [x.step for x in curve] == [1]
    mask = load_file(client, run.info.run_id, keys.ARTIFACT_MASK)
    kept = sum(int(v.sum()) for v in mask.values())
    assert kept == round(0.5 * sum(v.numel() for v in mask.values()))
    state = load_file(client, run.info.run_id, f"{keys.ARTIFACT_FINETUNED_DIR}/seed_1.pt")
    for name, v in mask.items():
        assert torch.all(state[name][v == 0] == 0)
