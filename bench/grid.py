"""Benchmark (b) and (d): the whole demo grid end to end, and a re-run of the finished grid.

Side by side on the same grid (default: configs/demo.yaml):
  plain    -- the plain loop: dense training, then every cell alone, every fine-tune seed
              alone and every LMC point alone (max_members=1, one worker), no tracking;
  untracked-- the batched computation (cells of a checkpoint fine-tuned together, chunks
              computed side by side), no tracking;
  grid     -- `python -m pipeline grid` as a user runs it: batched, tracked in a fresh MLflow
              store (SQLite + local artifacts), cached by spec hash;
  rerun    -- the same grid again: pure cache lookups.

    python bench/grid.py [--quick] [--config configs/demo.yaml]

tracking_overhead = grid / untracked - 1. The LAST line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from pipeline.config import load_config  # noqa: E402
from pipeline.grid import GridRunner, cells_per_batch, compute_grid  # noqa: E402


def compute_untracked(cfg, max_members: int, workers: int,
                      per_batch: int | None) -> tuple[float, dict]:
    """Dense runs + cells without MLflow; returns (seconds, {(T, d, seed): metrics})."""
    start = time.perf_counter()
    grid = compute_grid(cfg, max_members, workers, batch=per_batch or 1)
    metrics = {(r.spec.temperature, r.spec.prune.density, s): r.metrics()
               for r, (_, _, s) in zip(grid.results, grid.points, strict=True)}
    return time.perf_counter() - start, metrics


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a 2x2 grid with short training")
    ap.add_argument("--config", default="configs/demo.yaml")
    ap.add_argument("--skip-plain", action="store_true", help="skip the (slow) plain loop")
    args = ap.parse_args()
    overrides = ["temperatures=[5,10]", "densities=[0.1,0.8]", "dense.epochs=10",
                 "finetune.epochs=4", "finetune.last_epochs=2"] if args.quick else []
    cfg = load_config(args.config, overrides)
    rt = cfg.runtime
    workers = rt.resolved_workers()
    k = len(cfg.finetune.seeds)
    print(f"grid: {cfg.data.name} {cfg.model.name}, {cfg.knob} {list(cfg.temperatures)} x "
          f"density {list(cfg.densities)} x {len(cfg.dense_seeds)} dense seed(s) x {k} fine-tune "
          f"seeds; {cfg.finetune.train.epochs} fine-tune epochs; {os.cpu_count()} cores, "
          f"{workers} workers")

    if not args.skip_plain:
        torch.set_num_threads(os.cpu_count() or 1)
        plain_s, plain_m = compute_untracked(cfg, max_members=1, workers=1, per_batch=1)
        print(f"plain loop (one model at a time, {torch.get_num_threads()} torch threads): "
              f"{plain_s:.1f} s")
    untracked_s, ours_m = compute_untracked(cfg, rt.max_members, workers, cells_per_batch(cfg))
    print(f"batched, untracked: {untracked_s:.1f} s")

    with tempfile.TemporaryDirectory() as tmp:
        env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp}/mlflow.db",
               "THREE_REGIME_ARTIFACT_ROOT": f"{tmp}/mlruns"}
        os.environ.update(env)
        start = time.perf_counter()
        first = GridRunner(cfg, progress=False).run()
        grid_s = time.perf_counter() - start
        start = time.perf_counter()
        again = GridRunner(cfg, progress=False).run()
        rerun_s = time.perf_counter() - start
    assert first.computed == len(cfg.cells()) and again.computed == 0, (first.lines(),
                                                                        again.lines())
    print(f"grid, tracked in MLflow: {grid_s:.1f} s ({first.computed} cells computed)")
    print(f"re-run of the finished grid: {rerun_s:.2f} s ({again.cached} cells cached, 0 computed)")
    figures = {"grid_seconds": round(grid_s, 2), "rerun_seconds": round(rerun_s, 3),
               "untracked_seconds": round(untracked_s, 2),
               "tracking_overhead": round(grid_s / untracked_s - 1, 4),
               "cells": len(cfg.cells()), "workers": workers, "quick": args.quick}
    if not args.skip_plain:
        diffs = {m: statistics.fmean(abs(plain_m[c][m] - ours_m[c][m]) for c in plain_m)
                 for m in ("test_acc", "lmc_barrier", "cka")}
        figures.update(plain_seconds=round(plain_s, 2), grid_speedup=round(plain_s / grid_s, 3),
                       compute_speedup=round(plain_s / untracked_s, 3),
                       mean_abs_diff_vs_plain=diffs)
        print(f"whole grid: plain {plain_s:.1f} s vs tracked grid {grid_s:.1f} s: "
              f"x{plain_s / grid_s:.2f}; mean |plain - batched|: test_acc "
              f"{diffs['test_acc']:.4f}, barrier {diffs['lmc_barrier']:.4f}, CKA "
              f"{diffs['cka']:.4f} (fine-tuning is chaotic in float32: the same seeds give "
              "nearby, not identical, numbers)")
    print(f"tracking overhead: {100 * figures['tracking_overhead']:.1f}% of the untracked "
          "computation")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
