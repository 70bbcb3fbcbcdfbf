"""Benchmark (d): peak memory beside time of LMC + CKA on one PreResNet-20 pair.

Three ways to measure the same pair of models (11 interpolation points, BatchNorm re-estimated
over the whole training set in batches of 64, train errors, softmax CKA), each in a fresh
process, so that its peak resident memory is its own (``VmHWM``, ``pipeline.memstat``: a
child's ``ru_maxrss`` would start at its parent's size):

- plain:    one model at a time, batches of 64 (the protocol of the paper's authors' code,
            written here with our functions on a one-member model);
- unbounded: our batched path with no memory budget (every distinct point in one chunk of
            members, evaluation batches of 1000 examples: the sizes before budgets existed);
- budgeted: our batched path with the default budget (``runtime.memory_gb`` = 0) or
            ``--memory-gb``.

The metrics of the three are compared (they must agree). ``--paper`` instead runs ONE
paper-size PreResNet-20 cell (50,000 generated CIFAR-shaped images, 3 fine-tune seeds, a short
fine-tune of ``--paper-iterations`` steps, LMC + CKA) through ``run_cells`` with the default
budget (or ``--memory-gb``; ``--unbounded``: none) and prints its peak memory (goal: under 8 GB
on a CPU) beside the peak the budget's own sizes predict.

Peak memory depends on the shapes of the work, not on how much of it there is: with
``--pass-batches K`` every BatchNorm re-estimation and error-counting pass of the LMC stops
after its first K batches (same members per chunk, same batch sizes, the whole training set
still held), which makes the paper cell minutes instead of hours; its metrics are then NOT the
cell's (the statistics come from K batches), only its peak memory is. The CKA pass and the
cell's test/validation evaluations stay whole.

    python bench/memory.py [--quick] [--images 2048] [--threads 2] [--memory-gb 0]
                           [--pass-batches 0]
    python bench/memory.py --paper [--paper-iterations 20] [--paper-images 50000]
                           [--pass-batches 0] [--unbounded] [--memory-gb 0]

While a child runs, the parent stops it where the machine's available memory falls under
``--min-free-gb`` (a shared machine) and reports the peak reached by then.

The LAST line printed is one JSON object of the figures.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

import pipeline.landscape as landscape  # noqa: E402
from pipeline.landscape import (  # noqa: E402
    interpolate,
    linear_cka,
    lmc_barrier_from_curve,
    measure_pairs,
)
from pipeline.memstat import peak_rss_mb, varied_states  # noqa: E402
from pipeline.models import build_model  # noqa: E402
from pipeline.parallel import Budget, default_workers  # noqa: E402
from pipeline.specs import MeasureSpec, ModelSpec  # noqa: E402

SPEC = ModelSpec(name="preresnet", depth=20)
SHAPE = (3, 32, 32)
MEASURE = MeasureSpec(lmc_points=11, cka_examples=6464, bn_batch_size=64)


def generated(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *SHAPE, generator=g), torch.randint(0, 10, (n,), generator=g)


def pair_states() -> list[dict]:
    """Two PreResNet-20s with different weights and BatchNorm affine parameters."""
    return varied_states(SPEC, SHAPE, 2, bn_seed=10)


def truncate_passes(batches: int) -> None:
    """Make every LMC re-estimation and counting pass (``pipeline.landscape``'s, which the
    plain loop here uses too) stop after its first ``batches`` batches; 0: whole passes."""
    if not batches:
        return
    real_reestimate, real_counts = landscape.reestimate_bn, landscape.correct_counts

    def reestimate(model, x, batch_size=64):
        real_reestimate(model, x[:batches * batch_size], batch_size)

    def counts(model, x, y, batch_size=None):
        size = batch_size or landscape.eval_batch_size(model, x)
        return real_counts(model, x[:batches * size], y[:batches * size], size)

    landscape.reestimate_bn, landscape.correct_counts = reestimate, counts


def plain(states, x, y) -> dict:
    """One model at a time: every point re-estimated and counted in batches of 64."""
    ts = torch.linspace(0, 1, MEASURE.lmc_points).tolist()
    errors = []
    for t in ts:
        model = build_model(SPEC, SHAPE, 10)
        model.load_state_dict(interpolate(states[0], states[1], t))
        landscape.reestimate_bn(model, x, MEASURE.bn_batch_size)
        errors.append(float(len(x) - landscape.correct_counts(model, x, y, 64)[0]) / len(x))
    outs = []
    xc = x[:MEASURE.cka_examples]
    for st in states:
        model = build_model(SPEC, SHAPE, 10)
        model.load_state_dict(st)
        model.eval()
        with torch.no_grad():
            outs.append(torch.cat([model(xc[i:i + 64]).softmax(-1) for i in range(0, len(xc), 64)]))
    return {"errors": errors, "barrier": lmc_barrier_from_curve(errors),
            "cka": linear_cka(outs[0], outs[1])}


def batched(states, x, y, memory: Budget | None, workers: int) -> dict:
    build = lambda m: build_model(SPEC, SHAPE, 10, m)  # noqa: E731
    r = measure_pairs(build, states, [(0, 1)], x, y, MEASURE, 64, workers, memory=memory)[0]
    return {"errors": r.lmc_errors, "barrier": r.lmc_barrier, "cka": r.cka}


def child(args) -> None:
    """One measurement in this (fresh) process; prints one JSON line."""
    torch.set_num_threads(args.threads)
    truncate_passes(args.pass_batches)
    x, y = generated(args.images)
    states = pair_states()
    setup = peak_rss_mb()
    start = time.perf_counter()
    if args.child == "plain":
        out = plain(states, x, y)
    else:
        memory = Budget(math.inf) if args.child == "unbounded" else (
            Budget.for_device("cpu", args.memory_gb))
        with_workers = args.threads if args.workers == 0 else args.workers
        torch.set_num_threads(1 if with_workers > 1 else args.threads)
        out = batched(states, x, y, memory, with_workers)
    out.update(seconds=time.perf_counter() - start, peak_mb=peak_rss_mb(), setup_mb=setup)
    print(json.dumps(out))


def predicted_work_mb(data, ft, memory: Budget, workers: int, distinct_points: int) -> dict:
    """The activation memory (MiB) each phase of ``run_cells`` may hold at once, from the same
    probe and ``Budget.fit`` sizes the code uses: fine-tuning (the members trained side by
    side), the LMC passes (every worker's chunk of members x its evaluation batch) and the
    one-model test evaluations (batches of 1000, no budget)."""
    from pipeline.cell import finetune_members
    from pipeline.models import eval_batch_size
    from pipeline.parallel import activation_size, split

    plain_model = build_model(SPEC, SHAPE, 10)
    size = activation_size(plain_model, data.x_train[:2])
    per = activation_size(plain_model, data.x_train[:2],
                          im2col=getattr(plain_model, "member_major", False)).eval
    members = len(ft.seeds)
    ft_chunk = finetune_members(SPEC, data, ft, 64, workers, memory)
    at_once = min(members, workers * ft_chunk)
    finetune = at_once * (ft.train.batch_size * size.train + 4 * size.parameters)
    share = memory.shared_by(workers)
    chunk = max(len(r) for r in split(distinct_points, share.fit(per * 64, 64), workers))
    batch = eval_batch_size(build_model(SPEC, SHAPE, 10, chunk), data.x_train, share, per)
    lmc = min(workers, distinct_points) * chunk * max(batch, 64) * per
    evaluation = 1000 * size.eval
    return {"finetune": finetune / 2 ** 20, "lmc": lmc / 2 ** 20, "test_eval": evaluation / 2 ** 20,
            "lmc_chunk": chunk, "lmc_batch": batch, "finetune_chunk": ft_chunk}


def paper_cell(args) -> None:
    """One paper-size cell through run_cells (this process); prints one JSON line."""
    from pipeline.cell import run_cells
    from pipeline.data import Dataset, _augmentation
    from pipeline.specs import CellSpec, DenseSpec, FinetuneSpec, PruneSpec, TrainSpec

    workers = args.workers or default_workers()
    torch.set_num_threads(1 if workers > 1 else args.threads)
    truncate_passes(args.pass_batches)
    n = args.paper_images
    x, y = generated(n)
    xt, yt = generated(n // 5, seed=1)
    cut = n * 9 // 10
    data = Dataset("generated-cifar", x[:cut], y[:cut], x[cut:], y[cut:], xt, yt, 10,
                   augment=_augmentation("crop_flip", torch.zeros(3)))
    dense = DenseSpec(model=SPEC)
    ft = FinetuneSpec(train=TrainSpec(epochs=1, iterations=args.paper_iterations, batch_size=64),
                      seeds=(0, 1, 2), last_epochs=1)
    cell = CellSpec(temperature=160, checkpoint_epoch=160,
                    prune=PruneSpec(density=0.1, method="uniform"), finetune=ft, measure=MEASURE)
    state = build_model(SPEC, SHAPE, 10, seed=0).state_dict()
    memory = Budget(math.inf) if args.unbounded else Budget.for_device("cpu", args.memory_gb)
    distinct = 3 + 3 * (MEASURE.lmc_points - 2)              # 3 pairs of 3 copies
    predicted = predicted_work_mb(data, ft, memory, workers, distinct)
    setup = peak_rss_mb()
    start = time.perf_counter()
    r = run_cells([(cell, dense, state)], data, workers=workers, memory=memory)[0]
    print(json.dumps({"seconds": time.perf_counter() - start, "peak_mb": peak_rss_mb(),
                      "setup_mb": setup, "budget_gb": memory.total / 2 ** 30, "workers": workers,
                      "predicted_work_mb": predicted, "pass_batches": args.pass_batches,
                      "iterations": args.paper_iterations, "images": n,
                      "barriers": [p.lmc_barrier for p in r.pairs],
                      "cka": [p.cka for p in r.pairs]}))


def available_mb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    return math.inf


def child_peak_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return math.nan


def run_child(mode: str, args) -> dict:
    """Run one mode in a fresh process; stop it where the machine runs short of memory."""
    cmd = [sys.executable, __file__, "--child", mode, "--images", str(args.images),
           "--threads", str(args.threads), "--workers", str(args.workers),
           "--memory-gb", str(args.memory_gb), "--paper-iterations", str(args.paper_iterations),
           "--paper-images", str(args.paper_images), "--pass-batches", str(args.pass_batches)]
    if args.unbounded:
        cmd.append("--unbounded")
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    peak = 0.0
    while proc.poll() is None:
        peak = max(peak, child_peak_mb(proc.pid) or 0.0)
        if available_mb() < args.min_free_gb * 1024:
            proc.kill()
            proc.wait()
            sys.exit(f"{mode} stopped: the machine's available memory fell under "
                     f"{args.min_free_gb} GB; the child's peak had reached {peak:.0f} MB")
        time.sleep(0.5)
    stdout, stderr = proc.communicate()
    if proc.returncode:
        sys.exit(f"{mode} failed:\n{stderr}")
    return json.loads(stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="512 images (a smoke run)")
    ap.add_argument("--images", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=default_workers(),
                    help="torch threads of the plain loop, and worker threads of ours")
    ap.add_argument("--workers", type=int, default=0, help="0 = --threads")
    ap.add_argument("--memory-gb", type=float, default=0.0, help="budget; 0 = the default")
    ap.add_argument("--paper", action="store_true", help="one paper-size cell (50,000 images)")
    ap.add_argument("--paper-iterations", type=int, default=20, help="fine-tune steps")
    ap.add_argument("--paper-images", type=int, default=50_000, help="(smaller: a smoke run)")
    ap.add_argument("--unbounded", action="store_true", help="--paper with no memory budget")
    ap.add_argument("--pass-batches", type=int, default=0,
                    help="LMC passes stop after this many batches (peak memory only); 0 = whole")
    ap.add_argument("--min-free-gb", type=float, default=2.0,
                    help="stop a child where the machine's available memory falls under this")
    ap.add_argument("--child", choices=["plain", "unbounded", "budgeted", "paper"],
                    help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.quick:
        args.images = 512
    if args.child == "paper":
        return paper_cell(args)
    if args.child:
        return child(args)
    if args.paper:
        r = run_child("paper", args)
        w = r["predicted_work_mb"]
        passes = f"of {args.pass_batches} batches" if args.pass_batches else "whole"
        print(f"PreResNet-20 cell, {args.paper_images} images, {args.paper_iterations} fine-tune "
              f"steps, LMC passes {passes}, {'no' if args.unbounded else 'a'} budget: "
              f"peak {r['peak_mb']:.0f} MB (data and setup {r['setup_mb']:.0f} MB), "
              f"{r['seconds']:.0f} s, budget {r['budget_gb']:.1f} GiB, {r['workers']} workers; "
              f"goal: under 8 GB -> {'met' if r['peak_mb'] < 8000 else 'NOT met'}")
        print(f"  the budget's sizes predict setup + max(fine-tune {w['finetune']:.0f}, LMC "
              f"{w['lmc']:.0f} ({w['lmc_chunk']} members x {w['lmc_batch']}), test evaluation "
              f"{w['test_eval']:.0f}) = "
              f"{r['setup_mb'] + max(w['finetune'], w['lmc'], w['test_eval']):.0f} MB")
        print(json.dumps({"paper_cell": r}))
        return
    print(f"LMC + CKA of one PreResNet-20 pair, {args.images} generated 3x32x32 images, "
          f"{args.threads} threads/workers, each mode in a fresh process")
    results = {}
    for mode in ("plain", "unbounded", "budgeted"):
        r = results[mode] = run_child(mode, args)
        print(f"  {mode:9s}  peak {r['peak_mb']:7.0f} MB (setup {r['setup_mb']:5.0f} MB)  "
              f"{r['seconds']:8.1f} s  barrier {r['barrier']:+.6f}  cka {r['cka']:.6f}", flush=True)
    p, u, b = results["plain"], results["unbounded"], results["budgeted"]
    diff = max(abs(b["barrier"] - u["barrier"]), abs(b["cka"] - u["cka"]),
               max(abs(e1 - e2) for e1, e2 in zip(b["errors"], u["errors"], strict=True)))
    diff_plain = max(abs(b["barrier"] - p["barrier"]), abs(b["cka"] - p["cka"]))
    summary = {"images": args.images, "threads": args.threads,
               "peak_mb": {k: r["peak_mb"] for k, r in results.items()},
               "seconds": {k: r["seconds"] for k, r in results.items()},
               "peak_budgeted_over_plain": b["peak_mb"] / p["peak_mb"],
               "peak_unbounded_over_plain": u["peak_mb"] / p["peak_mb"],
               "time_budgeted_over_unbounded": b["seconds"] / u["seconds"],
               "max_metric_diff_budgeted_vs_unbounded": diff,
               "max_metric_diff_budgeted_vs_plain": diff_plain}
    print(f"peak memory budgeted / plain = {summary['peak_budgeted_over_plain']:.2f}x (goal <= 2), "
          f"unbounded / plain = {summary['peak_unbounded_over_plain']:.2f}x; time budgeted / "
          f"unbounded = {summary['time_budgeted_over_unbounded']:.2f}x (goal <= 1.10); metrics "
          f"differ by {diff:.1e} (budgeted vs unbounded), {diff_plain:.1e} (vs plain)")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
