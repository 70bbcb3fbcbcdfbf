"""Benchmark (a): one demo cell, plain per-model loop vs batched, side by side.

Fine-tuning: K seeds one model at a time (``max_members=1``, one process with ``--threads``
torch threads) vs the K seeds -- and, as the grid runner does, all the cells of one dense
checkpoint -- trained as multi-member models, chunks side by side (``runtime.workers``, one
torch thread each).
LMC + CKA: every interpolation point of every pair evaluated one model at a time vs together.
Both sides do the same work on the same inputs; the metrics are compared too.

    python bench/cell.py [--quick] [--threads 2]

The LAST line printed is one JSON object of the figures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from pipeline.cell import run_cells  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.data import load_dataset  # noqa: E402
from pipeline.dense import train_dense  # noqa: E402
from pipeline.landscape import all_pairs, measure_pairs  # noqa: E402
from pipeline.models import (
    build_model,  # noqa: E402
    stack_members,  # noqa: E402
)
from pipeline.parallel import map_chunks, split  # noqa: E402
from pipeline.train import train  # noqa: E402


def timed(fn, repeats=1):
    best = float("inf")
    out = None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer epochs (a smoke run)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--config", default="configs/demo.yaml")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    overrides = ["temperatures=[5,10]", "dense.epochs=10", "finetune.epochs=3",
                 "finetune.last_epochs=1"] if args.quick else []
    cfg = load_config(args.config, overrides)
    temperature = max(cfg.temperatures) if not args.quick else 10
    data = load_dataset(cfg.data)
    dense, _ = cfg.cell(temperature, cfg.densities[0], cfg.dense_seeds[0])
    t0 = time.perf_counter()
    states = train_dense(dense, data, keep_every_epoch=cfg.knob == "epochs")
    dense_seconds = time.perf_counter() - t0
    jobs = []
    for d in sorted(cfg.densities):
        _, cell = cfg.cell(temperature, d, cfg.dense_seeds[0])
        jobs.append((cell, dense, states[cell.checkpoint_epoch]))
    k = len(cfg.finetune.seeds)
    ft = cfg.finetune
    n = len(data.x_train)
    print(f"cell: {cfg.data.name} {cfg.model.name}, temperature {temperature}, "
          f"{len(jobs)} densities x {k} seeds, {ft.train.epochs} fine-tune epochs "
          f"over {n} examples; {args.threads} threads")

    # --- fine-tuning alone: same members, same seeds, same masks --------------------------
    def finetune(members_at_once: int, cells: list, workers: int) -> float:
        from pipeline.cell import prunable_weights
        from pipeline.prune import apply_masks, prune

        plain = build_model(dense.model, data.input_shape, data.num_classes)
        names = plain.prunable_names()
        members = []
        for cell, _, state in cells:
            mask = prune(prunable_weights(state, names), cell.prune)
            pruned = apply_masks(state, mask)
            members += [(pruned, mask, s) for s in ft.seeds]
        def run(rng: range) -> None:
            chunk = [members[i] for i in rng]
            model = build_model(dense.model, data.input_shape, data.num_classes, len(chunk))
            model.load_state_dict(stack_members([c[0] for c in chunk]))
            masks = {nm: torch.cat([c[1][nm] for c in chunk]) for nm in names}
            train(model, data, ft.train, [c[2] for c in chunk], masks=masks, stream="finetune")

        start = time.perf_counter()
        map_chunks(run, split(len(members), members_at_once, workers), workers)
        return time.perf_counter() - start

    one_cell = jobs[:1]
    workers = cfg.runtime.resolved_workers()
    ft_plain = finetune(1, one_cell, 1)
    ft_cell = finetune(k, one_cell, workers)
    ft_grid_plain = finetune(1, jobs, 1)
    ft_grid = finetune(cfg.runtime.max_members, jobs, workers)
    print(f"fine-tune one cell ({k} models): plain {ft_plain:.2f} s, batched {ft_cell:.2f} s, "
          f"x{ft_plain / ft_cell:.2f}")
    print(f"fine-tune one dense checkpoint's cells ({len(jobs) * k} models): "
          f"plain {ft_grid_plain:.2f} s, batched {ft_grid:.2f} s, x{ft_grid_plain / ft_grid:.2f}")

    # --- LMC + CKA on the fine-tuned copies of every cell ------------------------------------
    results = run_cells(jobs, data, cfg.runtime.max_members)
    fin = [s for r in results for s in r.finetuned]
    pairs = [(c * k + a, c * k + b) for c in range(len(jobs)) for a, b in all_pairs(k)]

    def build(m):
        return build_model(dense.model, data.input_shape, data.num_classes, m)

    land_plain, plain_m = timed(lambda: measure_pairs(
        build, fin, pairs, data.x_train, data.y_train, cfg.measure, max_members=1))
    land_batched, batched_m = timed(lambda: measure_pairs(
        build, fin, pairs, data.x_train, data.y_train, cfg.measure,
        max_members=cfg.runtime.max_members, workers=workers))
    diff_lmc = max(abs(a.lmc_barrier - b.lmc_barrier)
                   for a, b in zip(plain_m, batched_m, strict=True))
    diff_cka = max(abs(a.cka - b.cka) for a, b in zip(plain_m, batched_m, strict=True))
    n_models = len(pairs) * cfg.measure.lmc_points
    print(f"LMC+CKA for {len(pairs)} pairs ({n_models} interpolated models): "
          f"plain {land_plain:.2f} s, batched {land_batched:.2f} s, "
          f"x{land_plain / land_batched:.2f}; "
          f"max |diff| barrier {diff_lmc:.2e}, CKA {diff_cka:.2e}")
    figures = {
        "finetune_speedup": round(ft_grid_plain / ft_grid, 3),
        "finetune_speedup_one_cell": round(ft_plain / ft_cell, 3),
        "landscape_speedup": round(land_plain / land_batched, 3),
        "finetune_plain_s": round(ft_grid_plain, 3), "finetune_batched_s": round(ft_grid, 3),
        "landscape_plain_s": round(land_plain, 3), "landscape_batched_s": round(land_batched, 3),
        "landscape_max_abs_diff_barrier": diff_lmc, "landscape_max_abs_diff_cka": diff_cka,
        "dense_seconds": round(dense_seconds, 3), "threads": args.threads, "workers": workers,
        "mean_test_acc": statistics.fmean(a for r in results for a in r.test_acc),
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
