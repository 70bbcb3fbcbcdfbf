"""Benchmark (c): a PreResNet-20 cell on CIFAR-shaped generated data: images/s.

Dense training (one model) and fine-tuning of K=3 seeds, plain (one model at a time) vs
batched (one 3-member model), on random 3x32x32 images with CIFAR augmentation (random crop
with 4-pixel padding and flip, on the device). Runs on CUDA when a GPU is visible.

    python bench/preresnet.py [--quick] [--images 2048] [--device cpu|cuda]

The LAST line printed is one JSON object of the figures.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from pipeline.data import Dataset, _augmentation  # noqa: E402
from pipeline.models import build_model, stack_members  # noqa: E402
from pipeline.prune import apply_masks, prune  # noqa: E402
from pipeline.specs import ModelSpec, PruneSpec, TrainSpec  # noqa: E402
from pipeline.train import train  # noqa: E402


def generated(n: int, device: str) -> Dataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return Dataset("generated-cifar", x, y, x[:256], y[:256], x[:256], y[:256], 10,
                   augment=_augmentation("crop_flip", torch.zeros(3))).to(device)


def images_per_second(fn, images: int, device: str) -> float:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return images / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--images", type=int, default=2048)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    n = 512 if args.quick else args.images
    data = generated(n, args.device)
    spec = ModelSpec(name="preresnet", depth=20)
    recipe = TrainSpec(epochs=1, batch_size=64)
    seeds = [0, 1, 2]
    print(f"PreResNet-20 on {n} generated 3x32x32 images, batch 64, {args.device}, "
          f"{torch.get_num_threads()} torch threads")

    dense = build_model(spec, data.input_shape, 10, seed=0).to(args.device)
    train(dense, data, TrainSpec(epochs=1, iterations=2, batch_size=64), [0])   # warm-up
    dense_ips = images_per_second(lambda: train(dense, data, recipe, [0]), n, args.device)
    state = {k: v.detach().cpu() for k, v in dense.state_dict().items()}
    names = dense.prunable_names()
    mask = prune({k: state[k] for k in names}, PruneSpec(density=0.1, method="uniform"))
    pruned = apply_masks(state, mask)

    def finetune(members: int):
        def run():
            for i in range(0, len(seeds), members):
                chunk = seeds[i:i + members]
                m = build_model(spec, data.input_shape, 10, len(chunk)).to(args.device)
                m.load_state_dict(stack_members([pruned] * len(chunk)))
                masks = {k: torch.cat([mask[k]] * len(chunk)).to(args.device) for k in names}
                train(m, data, recipe, chunk, masks=masks, stream="finetune")
        return run

    plain_ips = images_per_second(finetune(1), n * len(seeds), args.device)
    batched_ips = images_per_second(finetune(len(seeds)), n * len(seeds), args.device)
    print(f"dense training: {dense_ips:.0f} images/s")
    print(f"fine-tuning {len(seeds)} seeds: plain {plain_ips:.0f} images/s, "
          f"batched {batched_ips:.0f} images/s, x{batched_ips / plain_ips:.2f}")
    print(json.dumps({"device": args.device, "images": n, "dense_images_per_s": round(dense_ips, 1),
                      "finetune_plain_images_per_s": round(plain_ips, 1),
                      "finetune_batched_images_per_s": round(batched_ips, 1),
                      "finetune_speedup": round(batched_ips / plain_ips, 3)}))


if __name__ == "__main__":
    main()
