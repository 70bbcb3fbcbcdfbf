"""Agreement of the regime labellers with the drawn maps of the synthetic grids (issue 15).

    python bench/labels.py [--seeds N]

For each generator of ``selection.synthetic`` (paper-like 6 and 16 temperatures, MNIST-1D-like
6 and 10 temperatures) and seeds 0..N-1: the fraction of cells whose I-vs-II label agrees with
``true_regime``, for ``label_grid`` (the jump along temperature) and for ``label_regimes``
(one eps estimated from the pooled barriers). The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from selection import synthetic as syn  # noqa: E402
from selection.regimes import REGIME_I, label_grid, label_regimes  # noqa: E402

GRIDS = {
    "paper-6T": lambda seed: syn.paper_like_grid(seed=seed),
    "paper-16T": lambda seed: syn.paper_like_grid(syn.PAPER_FINE_TEMPERATURES, seed=seed),
    "mnist1d-6T": lambda seed: syn.mnist1d_like_grid(seed=seed),
    "mnist1d-10T": lambda seed: syn.mnist1d_like_grid(syn.MNIST1D_FINE_TEMPERATURES, seed=seed),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=20)
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    figures = {}
    for name, make in GRIDS.items():
        jump, pooled = [], []
        for seed in range(args.seeds):
            df = make(seed)
            truth = df[syn.TRUE_REGIME] == REGIME_I
            jump.append(float(((label_grid(df, n_resamples=0)[0]["regime"] == REGIME_I)
                               == truth).mean()))
            pooled.append(float(((label_regimes(df)[0]["regime"] == REGIME_I) == truth).mean()))
        figures[name] = {"jump_min": min(jump), "jump_mean": float(np.mean(jump)),
                         "pooled_min": min(pooled), "pooled_mean": float(np.mean(pooled))}
        print(f"{name:12} jump: min {min(jump):.3f} mean {np.mean(jump):.3f}   pooled eps: "
              f"min {min(pooled):.3f} mean {np.mean(pooled):.3f}")
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
