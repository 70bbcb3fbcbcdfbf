"""One grid cell end to end, as plain functions over specs and tensors (no MLflow here).

dense checkpoint at temperature T -> prune to density d -> K fine-tunes from the same pruned
weights and mask -> accuracies, LMC barrier and CKA on every pair of fine-tuned copies.

``run_cells`` computes many cells at once: the fine-tunes of all cells that share a model
and a fine-tuning recipe train side by side as one M-member model, and every pair of every
cell is measured in the same passes over the data. A cell's numbers do not depend on which
other cells it was computed with (each member has its own seed stream); ``max_members=1``
is the plain one-model-at-a-time loop.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field

import torch

from pipeline.data import Dataset
from pipeline.landscape import PairMetrics, all_pairs, measure_pairs
from pipeline.models import build_model, eval_batch_size, split_members, stack_members
from pipeline.parallel import Budget, activation_size, map_chunks, split
from pipeline.prune import Masks, apply_masks, prune, realized_density, select_prunable
from pipeline.specs import CellSpec, DenseSpec, FinetuneSpec, ModelSpec, cell_hash
from pipeline.train import EpochReport, evaluate, total_epochs, total_iterations, train

State = dict[str, torch.Tensor]


@dataclass
class CellResult:
    """Everything one cell measures (docs/method.md#measurements, #aggregation)."""

    spec: CellSpec
    dense: DenseSpec
    spec_hash: str
    dense_acc: float
    pruned_acc: float
    realized_density: float
    test_acc: list[float]                  # per fine-tune seed: mean of the last N epochs
    val_acc: list[float]
    curves: dict[str, list[list[float]]]   # name -> per seed -> per epoch
    pairs: list[PairMetrics]
    mask: Masks
    finetuned: list[State]
    seconds: float = 0.0
    # the measurements turned on in the cell's measure spec (spectra, curvature): metrics, and
    # the dense and pruned models' per-layer weight spectra (``pipeline.spectra.cell_spectra``)
    optional_metrics: dict[str, float] = field(default_factory=dict)
    spectra: dict | None = None

    def metrics(self) -> dict[str, float]:
        """Aggregates over fine-tune seeds (accuracies) and pairs (landscape)."""
        def mean_std(xs):
            xs = [x for x in xs if not math.isnan(x)]
            if not xs:
                return float("nan"), float("nan")
            return statistics.fmean(xs), (statistics.pstdev(xs) if len(xs) > 1 else 0.0)

        out = {}
        for name, values in (("test_acc", self.test_acc), ("val_acc", self.val_acc),
                             ("lmc_barrier", [p.lmc_barrier for p in self.pairs]),
                             ("cka", [p.cka for p in self.pairs])):
            out[name], out[f"{name}_std"] = mean_std(values)
        out.update(pruned_acc=self.pruned_acc, dense_acc=self.dense_acc,
                   realized_density=self.realized_density)
        out.update(self.optional_metrics)   # spectra, curvature: only when measured
        return out


def prunable_weights(state: State, names: list[str]) -> dict[str, torch.Tensor]:
    return {k: state[k] for k in names}


def run_cell(cell: CellSpec, dense: DenseSpec, dense_state: State, data: Dataset,
             **kw) -> CellResult:
    """One cell (see ``run_cells``)."""
    return run_cells([(cell, dense, dense_state)], data, **kw)[0]


def run_cells(jobs: list[tuple[CellSpec, DenseSpec, State]], data: Dataset, max_members: int = 64,
              eval_every: int = 5, workers: int = 1, progress=None,
              memory: Budget | None = None) -> list[CellResult]:
    """Compute several cells; fine-tunes and measurements are batched across them.

    Args:
        jobs: (cell spec, the dense run's spec, the dense checkpoint's state_dict) per cell.
            All jobs must share the model and the fine-tuning and measurement specs.
        max_members: the most model copies trained or evaluated at once.
        workers: chunks of members computed side by side (one torch thread each); the
            results do not depend on it.
        eval_every: validation/test curves are sampled every this many epochs (and at each
            of the last ``finetune.last_epochs`` epochs, whose mean is the reported accuracy).
        progress: optional callable taking a number of completed steps (a progress bar).
        memory: bounds the members fine-tuned or evaluated at once and the evaluation
            batches (``finetune_members``, ``landscape.lmc_curves``); None: the default
            budget of the data's device. No result depends on it.
    """
    if not jobs:
        return []
    started = time.perf_counter()
    cell0, dense0, _ = jobs[0]
    for cell, dense, _ in jobs:
        if (dense.model, cell.finetune, cell.measure) != (dense0.model, cell0.finetune,
                                                          cell0.measure):
            raise ValueError("run_cells batches cells that share the model, fine-tune and "
                             "measure specs; group the cells first")
    device = data.x_train.device
    mspec, ft = dense0.model, cell0.finetune

    def build(members: int):
        return build_model(mspec, data.input_shape, data.num_classes, members).to(device)

    plain = build(1)
    budget = memory or Budget.for_device(device)
    chunk_budget = budget.shared_by(workers)
    eval_example_bytes = activation_size(plain, data.x_train[:2],
                                         im2col=getattr(plain, "member_major", False)).eval
    ft_members = finetune_members(mspec, data, ft, max_members, workers, budget)
    pruned_states, masks, dense_accs, pruned_accs = [], [], [], []
    for cell, _, state in jobs:
        plain.load_state_dict(state)
        dense_accs.append(float(evaluate(plain, data.x_test, data.y_test)[0]))
        mask = prune(prunable_weights(state, select_prunable(plain, cell.prune)), cell.prune)
        pruned = apply_masks(state, mask)
        plain.load_state_dict(pruned)
        pruned_accs.append(float(evaluate(plain, data.x_test, data.y_test)[0]))
        pruned_states.append(pruned)
        masks.append(mask)

    # cells may prune different weights (prune.include/exclude): a weight one cell keeps
    # whole has a mask of ones while it trains beside cells that prune it
    names = list(dict.fromkeys(k for mask in masks for k in mask))
    n_epochs, n_last = total_epochs(ft.train, len(data.x_train)), ft.last_epochs
    members = [(c, s) for c in range(len(jobs)) for s in ft.seeds]
    finetuned: list[State] = [None] * len(members)  # type: ignore[list-item]
    curves = {k: [[] for _ in members] for k in ("train_loss", "val_acc", "test_acc")}

    def finetune_chunk(chunk: range) -> None:
        model = build(len(chunk))
        model.load_state_dict(stack_members([pruned_states[members[i][0]] for i in chunk]))
        cells = [members[i][0] for i in chunk]
        stacked_masks = {k: torch.cat([masks[c].get(k, torch.ones_like(pruned_states[c][k]))
                                       for c in cells]) for k in names}

        def record(report: EpochReport, m, _snapshot) -> None:
            # Accuracies are needed for the last N epochs (the reported means); elsewhere the
            # curves are sampled every ``eval_every`` epochs, since evaluating M models on the
            # validation and test sets every epoch costs as much as a quarter of the training.
            measured = report.epoch > n_epochs - n_last or report.epoch % eval_every == 0
            nan = torch.full((len(chunk),), math.nan)
            bs = eval_batch_size(m, data.x_test, chunk_budget, eval_example_bytes)
            val = evaluate(m, data.x_val, data.y_val, bs) if measured and len(data.x_val) else nan
            test = evaluate(m, data.x_test, data.y_test, bs) if measured else nan
            for j, i in enumerate(chunk):
                curves["train_loss"][i].append(float(report.train_loss[j]))
                curves["val_acc"][i].append(float(val[j]))
                curves["test_acc"][i].append(float(test[j]))

        train(model, data, ft.train, [members[i][1] for i in chunk], masks=stacked_masks,
              on_epoch_end=record, stream="finetune", progress=progress)
        weights = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        for i, st in zip(chunk, split_members(weights, len(chunk)), strict=True):
            finetuned[i] = st

    map_chunks(finetune_chunk, split(len(members), ft_members, workers), workers)

    k = len(ft.seeds)
    local_pairs = all_pairs(k)
    global_pairs = [(c * k + a, c * k + b) for c in range(len(jobs)) for a, b in local_pairs]
    measured = measure_pairs(build, [{kk: v.to(device) for kk, v in s.items()} for s in finetuned],
                             global_pairs, data.x_train, data.y_train, cell0.measure,
                             max_members, workers, memory=budget)
    optional = _optional_measurements(cell0.measure, jobs, masks, finetuned, k, build, data)
    results = []
    elapsed = time.perf_counter() - started
    for c, (cell, dense, _) in enumerate(jobs):
        idx = list(range(c * k, (c + 1) * k))
        pairs = measured[c * len(local_pairs):(c + 1) * len(local_pairs)]
        for p, lp in zip(pairs, local_pairs, strict=True):
            p.pair = lp
        results.append(CellResult(
            spec=cell, dense=dense, spec_hash=cell_hash(cell, dense),
            dense_acc=dense_accs[c], pruned_acc=pruned_accs[c],
            realized_density=realized_density(masks[c]),
            test_acc=[statistics.fmean(curves["test_acc"][i][-n_last:]) for i in idx],
            val_acc=[statistics.fmean(curves["val_acc"][i][-n_last:]) for i in idx],
            curves={name: [curves[name][i] for i in idx] for name in curves},
            pairs=pairs, mask={kk: v.cpu() for kk, v in masks[c].items()},
            finetuned=[finetuned[i] for i in idx], seconds=elapsed / len(jobs),
            optional_metrics=optional[c].metrics, spectra=optional[c].spectra))
    return results


@dataclass
class _Optional:
    metrics: dict[str, float] = field(default_factory=dict)
    spectra: dict | None = None


def _optional_measurements(measure, jobs, masks, finetuned, k, build, data) -> list[_Optional]:
    """Per cell: the measurements turned on in ``measure`` (weight spectra of the dense and
    pruned models, curvature of the first fine-tuned copy)."""
    out = [_Optional() for _ in jobs]
    if measure.spectra:
        from pipeline.spectra import cell_spectra, cell_spectra_metrics

        for c, (_, _, state) in enumerate(jobs):
            both = cell_spectra(state, masks[c], measure.spectra_min_evals)
            out[c].spectra = both
            out[c].metrics.update(cell_spectra_metrics(both))
    if measure.hessian:
        from pipeline.curvature import model_curvature
        from tracking import keys

        n = min(measure.hessian_examples, len(data.x_train))
        x, y = data.x_train[:n], data.y_train[:n]
        model = build(1)
        for c in range(len(jobs)):
            model.load_state_dict(finetuned[c * k])
            got = model_curvature(model, x, y, masks[c], measure.hessian_probes,
                                  measure.hessian_iterations)
            out[c].metrics.update({keys.HESSIAN_TRACE: got.trace,
                                   keys.HESSIAN_TRACE_STDERR: got.trace_stderr,
                                   keys.HESSIAN_TOP_EIGENVALUE: got.top_eigenvalue,
                                   keys.HESSIAN_EXAMPLES: float(got.examples)})
    return out


def finetune_members(mspec: ModelSpec, data: Dataset, ft: FinetuneSpec, max_members: int = 64,
                     workers: int = 1, memory: Budget | None = None) -> int:
    """The most fine-tunes ``run_cells`` trains in one chunk: ``max_members``, or fewer where
    a training step of that many members (activations of a batch, parameters, gradients,
    momenta and masks) would not fit each worker's share of ``memory`` (None: the default
    budget of the data's device)."""
    budget = (memory or Budget.for_device(data.x_train.device)).shared_by(workers)
    if budget.total == float("inf"):
        return max_members
    plain = build_model(mspec, data.input_shape, data.num_classes, 1).to(data.x_train.device)
    size = activation_size(plain, data.x_train[:2])
    batch = min(ft.train.batch_size, len(data.x_train))
    return budget.fit(batch * size.train + 4 * size.parameters, max_members, train=True)


def finetune_steps(jobs_count: int, cell: CellSpec, n_train: int, max_members: int = 64,
                   workers: int = 1) -> int:
    """Optimizer steps ``run_cells`` will take (for progress bars); pass as ``max_members``
    what ``finetune_members`` returns where a memory budget applies."""
    chunks = len(split(jobs_count * len(cell.finetune.seeds), max_members, workers))
    return chunks * total_iterations(cell.finetune.train, n_train)
