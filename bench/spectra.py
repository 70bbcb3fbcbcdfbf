"""Benchmark: the cost of measure.spectra (and measure.hessian) against one demo cell.

Side by side in one process, on the same dense checkpoints: one demo cell computed with the
optional measurements off, with ``measure.spectra`` on and with ``measure.hessian`` on (same
seeds, so the same work plus the measurement), and the spectra alone of every dense checkpoint
of the grid's temperatures and of every pruned model of the grid (temperatures x densities).
Prints each as seconds and as a fraction of the plain cell (the issue's bar: spectra stay off
by default if they cost more than 10% of a demo cell). The weightwatcher import is timed
apart: it is paid once per process, not per cell.

    python bench/spectra.py [--quick] [--threads 1]

The LAST line printed is one JSON object of the figures.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from pipeline.cell import prunable_weights, run_cells  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.data import load_dataset  # noqa: E402
from pipeline.dense import train_dense  # noqa: E402
from pipeline.models import build_model  # noqa: E402
from pipeline.prune import prune, select_prunable  # noqa: E402


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="a short dense run and fine-tune (smoke run)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--config", default="configs/demo.yaml")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    overrides = ["temperatures=[2,5,10]", "dense.epochs=10", "finetune.epochs=2",
                 "finetune.last_epochs=1"] if args.quick else []
    cfg = load_config(args.config, overrides)
    data = load_dataset(cfg.data)
    dense, _ = cfg.cell(cfg.temperatures[0], cfg.densities[0], cfg.dense_seeds[0])
    dense_s, states = timed(lambda: train_dense(dense, data, keep_every_epoch=cfg.knob == "epochs"))
    t_import, _ = timed(lambda: __import__("weightwatcher"))
    from pipeline.spectra import layer_spectra

    temperature, density = max(cfg.temperatures), min(cfg.densities)
    _, cell = cfg.cell(temperature, density, cfg.dense_seeds[0])
    state = states[cell.checkpoint_epoch]
    variants = {"plain": cell.measure, "spectra": replace(cell.measure, spectra=True),
                "hessian": replace(cell.measure, hessian=True)}
    seconds: dict[str, float] = {}
    for name in ("plain", "spectra", "hessian", "plain"):     # plain twice: warm-up, drift
        job = (replace(cell, measure=variants[name]), dense, state)
        took, _ = timed(lambda job=job: run_cells([job], data, cfg.runtime.max_members,
                                                  workers=cfg.runtime.resolved_workers()))
        seconds[name] = min(took, seconds.get(name, float("inf")))
    print(f"one demo cell ({cfg.knob}={temperature}, d={density}, {len(cfg.finetune.seeds)} seeds, "
          f"{cfg.finetune.train.epochs} fine-tune epochs; {args.threads} threads): "
          f"plain {seconds['plain']:.2f} s, with spectra {seconds['spectra']:.2f} s "
          f"(+{(seconds['spectra'] / seconds['plain'] - 1) * 100:.1f}%), with hessian "
          f"{seconds['hessian']:.2f} s (+{(seconds['hessian'] / seconds['plain'] - 1) * 100:.1f}%)")

    plain = build_model(dense.model, data.input_shape, data.num_classes)
    names = select_prunable(plain, cfg.prune)
    per_dense, per_pruned = [], []
    for t in cfg.temperatures:
        _, c0 = cfg.cell(t, cfg.densities[0], cfg.dense_seeds[0])
        weights = prunable_weights(states[c0.checkpoint_epoch], names)
        per_dense.append(
            timed(lambda w=weights: layer_spectra(w, cfg.measure.spectra_min_evals))[0])
        for d in cfg.densities:
            _, c = cfg.cell(t, d, cfg.dense_seeds[0])
            masks = prune(weights, c.prune)
            pruned = {k: w * masks[k] for k, w in weights.items()}
            per_pruned.append(
                timed(lambda p=pruned: layer_spectra(p, cfg.measure.spectra_min_evals))[0])
    mean_dense = sum(per_dense) / len(per_dense)
    mean_pruned = sum(per_pruned) / len(per_pruned)
    per_cell = mean_dense + mean_pruned          # what a cell with spectra on computes
    print(f"spectra alone: {len(per_dense)} dense checkpoints, mean {mean_dense * 1e3:.1f} ms; "
          f"{len(per_pruned)} pruned models, mean {mean_pruned * 1e3:.1f} ms; per cell "
          f"{per_cell * 1e3:.1f} ms = {per_cell / seconds['plain'] * 100:.2f}% of the plain cell; "
          f"weightwatcher import {t_import:.2f} s once per process")
    figures = {
        "cell_plain_s": round(seconds["plain"], 3), "cell_spectra_s": round(seconds["spectra"], 3),
        "cell_hessian_s": round(seconds["hessian"], 3),
        "spectra_overhead": round(seconds["spectra"] / seconds["plain"] - 1, 4),
        "hessian_overhead": round(seconds["hessian"] / seconds["plain"] - 1, 4),
        "spectra_per_cell_s": round(per_cell, 4),
        "spectra_per_cell_fraction": round(per_cell / seconds["plain"], 4),
        "spectra_dense_mean_s": round(mean_dense, 4),
        "spectra_pruned_mean_s": round(mean_pruned, 4),
        "weightwatcher_import_s": round(t_import, 3), "dense_seconds": round(dense_s, 3),
        "threads": args.threads, "quick": args.quick,
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
