"""Benchmark (item 5 of "any nn.Module"): the generic ensemble vs the hand-written layers.

For ``cnn1d`` (MNIST-1D shape) and ``preresnet`` (PreResNet-20, CIFAR-shaped generated
images), side by side in one run, on the same stacked state and the same seeds:

- fine-tuning steps per second of M members (``pipeline.train.train`` with masks, as a cell
  fine-tunes them), hand-written ensemble layers (``build_model(spec, ..., M)``) vs
  ``pipeline.generic`` over the built-in's one-member model, which is a plain module
  (``build_generic(lambda: build_model(spec, ..., 1), ..., M)``); M = the demo's member
  counts (one cell's 3 seeds, one dense checkpoint's 5 densities x 3 seeds, the demo's
  ``max_members`` chunk);
- numeric agreement: the largest difference of any weight or BatchNorm buffer after a short
  run (relative to the tensor's scale), and of the logits before it; beside it, the same
  difference between the hand-written M-member model and M one-member runs (how far float
  rounding alone carries two correct implementations apart in that many steps);
- LMC + CKA of one cell's 3 fine-tuned copies (``measure_pairs``, 3 pairs, 27 distinct
  interpolated models), time and the largest difference of barrier and CKA;
- with ``--grid``: the demo grid (``configs/demo.yaml``, in fresh temporary stores) through
  ``python -m pipeline grid``, as configured vs with ``model.factory`` = ``builtin`` below.

    python bench/generic.py [--quick] [--threads 1] [--models cnn1d,preresnet] [--grid]

The ratios printed are generic / hand-written (speed: above 1 = the generic path is faster).
The LAST line printed is one JSON object of the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from pipeline.data import Dataset, load_dataset  # noqa: E402
from pipeline.generic import build_generic  # noqa: E402
from pipeline.landscape import all_pairs, measure_pairs  # noqa: E402
from pipeline.models import build_model, split_members, stack_inputs, stack_members  # noqa: E402
from pipeline.prune import prune  # noqa: E402
from pipeline.specs import DataSpec, MeasureSpec, ModelSpec, PruneSpec, TrainSpec  # noqa: E402
from pipeline.train import train  # noqa: E402

CASES = {
    # name: (spec, members per fine-tuning chunk at the demo's settings)
    "cnn1d": (ModelSpec(name="cnn1d"), (3, 15, 45)),
    "preresnet": (ModelSpec(name="preresnet", depth=20), (3,)),
}


def builtin(name: str, in_shape: list[int], num_classes: int, width: float = 1.0, depth: int = 0):
    """A model factory for configs: the built-in model ``name`` with one member, a plain
    module (``model.factory: bench.generic:builtin``, its arguments in ``model.kwargs``)."""
    return build_model(ModelSpec(name=name, width=width, depth=depth), tuple(in_shape),
                       num_classes, 1)


def data_for(name: str, quick: bool, images: int) -> Dataset:
    if name == "cnn1d":
        return load_dataset(DataSpec(name="mnist1d", train_subset=1000 if quick else 0))
    n = 64 if quick else images
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return Dataset("generated-cifar", x, y, x[:128], y[:128], x[:128], y[:128], 10)


def builders(spec: ModelSpec, data: Dataset):
    shape, k = data.input_shape, data.num_classes

    def hand(members: int):
        return build_model(spec, shape, k, members)

    def generic(members: int):
        return build_generic(lambda: build_model(spec, shape, k, 1), shape, k, members)

    return {"hand-written": hand, "generic": generic}


def rel_diff(a: dict, b: dict) -> float:
    worst = 0.0
    for key, v in a.items():
        if v.is_floating_point():
            scale = max(1.0, float(v.abs().max()))
            worst = max(worst, float((v - b[key]).abs().max()) / scale)
        elif not torch.equal(v, b[key]):
            return float("inf")
    return worst


def finetune_case(spec, data, members: int, steps: int, agree_steps: int, build) -> dict:
    """Steps/s of each path and their agreement, from the same pruned state and seeds."""
    plain = build["hand-written"](1)
    plain_state = {k: v.detach().clone() for k, v in build_model(
        spec, data.input_shape, data.num_classes, 1, seed=0).state_dict().items()}
    names = plain.prunable_names()
    mask = prune({k: plain_state[k] for k in names}, PruneSpec(density=0.2, method="global"))
    masked = {k: v * mask[k] if k in mask else v for k, v in plain_state.items()}
    start = stack_members([masked] * members)
    masks = {k: torch.cat([mask[k]] * members) for k in names}
    seeds = list(range(members))
    recipe = TrainSpec(epochs=1, iterations=steps, batch_size=64, lr=0.05, schedule="constant")
    short = recipe.replace(iterations=agree_steps)
    out, finals, logits = {}, {}, {}
    x_probe = stack_inputs(data.x_train[:32].unsqueeze(0).expand(members, *data.x_train[:32].shape))
    for label, make in build.items():
        model = make(members)
        model.load_state_dict(start)
        model.train()
        with torch.no_grad():
            logits[label] = model.logits(x_probe).clone()
        model.load_state_dict(start)
        train(model, data, short, seeds, masks=masks, stream="finetune")
        finals[label] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(start)
        # warm-up
        train(model, data, recipe.replace(iterations=2), seeds, masks=masks, stream="finetune")
        model.load_state_dict(start)
        t = time.perf_counter()
        train(model, data, recipe, seeds, masks=masks, stream="finetune")
        out[label] = steps / (time.perf_counter() - t)
    baseline = 0.0
    hand_members = split_members(finals["hand-written"], members)
    for m, member_start in enumerate(split_members(start, members)):
        one = build["hand-written"](1)
        one.load_state_dict(member_start)
        train(one, data, short, [seeds[m]],
              masks={k: v[:len(v) // members] for k, v in masks.items()}, stream="finetune")
        baseline = max(baseline, rel_diff(one.state_dict(), hand_members[m]))
    scale = max(1.0, float(logits["hand-written"].abs().max()))
    return {"steps_per_s": out, "ratio": out["generic"] / out["hand-written"],
            "logit_diff": float((logits["generic"] - logits["hand-written"]).abs().max()) / scale,
            "state_diff": rel_diff(finals["generic"], finals["hand-written"]),
            "hand_vs_one_member_runs_diff": baseline}


def landscape_case(spec, data, build, cka_examples: int) -> dict:
    """LMC + CKA of one cell's 3 copies (3 pairs) through each path."""
    recipe = TrainSpec(epochs=1, iterations=20, batch_size=64, lr=0.05, schedule="constant")
    model = build["hand-written"](3)
    model.load_state_dict(stack_members([build_model(spec, data.input_shape, data.num_classes, 1,
                                                     seed=0).state_dict()] * 3))
    train(model, data, recipe, [0, 1, 2], stream="finetune")
    states = split_members({k: v.detach() for k, v in model.state_dict().items()}, 3)
    measure = MeasureSpec(lmc_points=11, cka_examples=cka_examples)
    seconds, metrics = {}, {}
    for label, make in build.items():
        t = time.perf_counter()
        metrics[label] = measure_pairs(make, states, all_pairs(3), data.x_train, data.y_train,
                                       measure, max_members=27)
        seconds[label] = time.perf_counter() - t
    pairs = zip(metrics["generic"], metrics["hand-written"], strict=True)
    diffs = [(abs(a.lmc_barrier - b.lmc_barrier), abs(a.cka - b.cka)) for a, b in pairs]
    return {"seconds": seconds, "ratio": seconds["hand-written"] / seconds["generic"],
            "barrier_diff": max(d[0] for d in diffs), "cka_diff": max(d[1] for d in diffs)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="few steps, small data (a smoke run)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--models", default="cnn1d,preresnet")
    ap.add_argument("--images", type=int, default=2048, help="PreResNet's generated images")
    ap.add_argument("--grid", action="store_true", help="also time the demo grid both ways")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    figures: dict = {"threads": args.threads, "quick": args.quick}
    for name in args.models.split(","):
        spec, member_counts = CASES[name]
        data = data_for(name, args.quick, args.images)
        build = builders(spec, data)
        steps = (5 if args.quick else 40) if name == "preresnet" else (10 if args.quick else 200)
        if args.quick:
            member_counts = member_counts[:2]
        print(f"{name}: {len(data.x_train)} training examples {list(data.input_shape)}, "
              f"{args.threads} torch thread(s); generic over build_model(..., members=1)")
        for members in member_counts:
            r = finetune_case(spec, data, members, steps, 5, build)
            sps = r["steps_per_s"]
            print(f"  fine-tune {members:2d} members, {steps} steps: hand-written "
                  f"{sps['hand-written']:.1f} steps/s, generic {sps['generic']:.1f} steps/s, "
                  f"generic/hand-written x{r['ratio']:.2f}; "
                  f"max rel diff logits {r['logit_diff']:.1e}, "
                  f"state after 5 steps {r['state_diff']:.1e} "
                  f"(hand-written vs {members} one-member "
                  f"runs: {r['hand_vs_one_member_runs_diff']:.1e})")
            figures[f"{name}_finetune_m{members}"] = {
                **{k: v for k, v in r.items() if k != "steps_per_s"}, "ratio": round(r["ratio"], 3),
                "steps_per_s": {k: round(v, 3) for k, v in sps.items()}}
        r = landscape_case(spec, data, build, 64 if args.quick else 2048)
        s = r["seconds"]
        print(f"  LMC+CKA of 3 copies (27 models, {len(data.x_train)} examples): hand-written "
              f"{s['hand-written']:.2f} s, generic {s['generic']:.2f} s, "
              f"speed generic/hand-written x{r['ratio']:.2f}; "
              f"max |diff| barrier {r['barrier_diff']:.1e}, CKA {r['cka_diff']:.1e}")
        figures[f"{name}_landscape"] = {
            "hand_written_s": round(s["hand-written"], 3), "generic_s": round(s["generic"], 3),
            "ratio": round(r["ratio"], 3),
            "barrier_diff": r["barrier_diff"], "cka_diff": r["cka_diff"]}
    if args.grid:
        figures["demo_grid"] = grid_case(args.quick)
    print(json.dumps(figures))


def grid_case(quick: bool) -> dict:
    """The demo grid, as configured and through the generic path, each in a fresh store."""
    root = Path(__file__).resolve().parent.parent
    small = ["temperatures=[2,5]", "densities=[0.1,0.4]", "dense.epochs=5", "finetune.epochs=2",
             "finetune.last_epochs=1", "data.train_subset=1000"] if quick else []
    generic = ["model.factory=bench.generic:builtin",
               "model.kwargs={name: cnn1d, in_shape: [1, 40], num_classes: 10}"]
    seconds = {}
    for label, extra in (("hand-written", []), ("generic", generic)):
        with tempfile.TemporaryDirectory() as tmp:
            env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp}/mlflow.db",
                   "THREE_REGIME_ARTIFACT_ROOT": f"{tmp}/mlruns"}
            cmd = [sys.executable, "-m", "pipeline", "grid", "configs/demo.yaml", "--no-progress"]
            for item in small + extra:
                cmd += ["--set", item]
            t = time.perf_counter()
            subprocess.run(cmd, cwd=root, env=env, check=True, stdout=subprocess.DEVNULL)
            seconds[label] = time.perf_counter() - t
    ratio = seconds["hand-written"] / seconds["generic"]
    print(f"demo grid{' (quick: 2x2 cells, short recipes)' if quick else ''}: hand-written "
          f"{seconds['hand-written']:.1f} s, generic {seconds['generic']:.1f} s, speed "
          f"generic/hand-written x{ratio:.2f}")
    return {"hand_written_s": round(seconds["hand-written"], 2),
            "generic_s": round(seconds["generic"], 2), "ratio": round(ratio, 3)}


if __name__ == "__main__":
    main()
