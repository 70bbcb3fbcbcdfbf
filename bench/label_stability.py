"""How stable the grid labeller's labels are when cells are missing (issue 15, issue 16).

    python bench/label_stability.py [--subsets 20]

A map run and a tune study label partial grids; their labels should agree with the labels of
the whole grid. For four tables (the measured demo and demo_fine grids, a paper-like 10 x 9 and
an MNIST-1D-like 10 x 5 synthetic grid), with ``label_grid`` (no thresholds, no resampling):

- leave-one-out: for every cell left out, how many OTHER cells change their I-vs-II label
  (mean and max over the cells);
- partial grids: the I-vs-II agreement of the labels of random subsets (30%, 50%, 70% of the
  cells, ``--subsets`` each, seed 0) with the whole grid's labels on the same cells.

Counts only: the same on any machine. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from selection import synthetic as syn  # noqa: E402
from selection.regimes import REGIME_I, RegimeWarning, label_grid  # noqa: E402
from tracking import keys  # noqa: E402

TABLES = {
    "demo": lambda: pd.read_csv(ROOT / "bench" / "data" / "demo_grid.csv"),
    "demo_fine": lambda: pd.read_csv(ROOT / "bench" / "data" / "demo_fine_grid.csv"),
    "paper-like-10x9": lambda: syn.paper_like_grid(
        syn.PAPER_MAP_TEMPERATURES, seed=1),
    "mnist1d-like-10x5": lambda: syn.mnist1d_like_grid(syn.MNIST1D_FINE_TEMPERATURES, seed=0),
}
FRACTIONS = (0.3, 0.5, 0.7)


def regime_i(df: pd.DataFrame) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RegimeWarning)
        return label_grid(df.reset_index(drop=True), n_resamples=0)[0][keys.REGIME].to_numpy() \
            == REGIME_I


def stability(df: pd.DataFrame, subsets: int) -> dict:
    full = regime_i(df)
    flips = []
    for left_out in range(len(df)):
        keep = np.arange(len(df)) != left_out
        flips.append(int((regime_i(df[keep]) != full[keep]).sum()))
    rng = np.random.default_rng(0)
    partial = {}
    for fraction in FRACTIONS:
        agreement = []
        for _ in range(subsets):
            idx = np.sort(rng.choice(len(df), int(fraction * len(df)), replace=False))
            agreement.append(float((regime_i(df.iloc[idx]) == full[idx]).mean()))
        partial[f"{fraction:g}"] = {"mean": float(np.mean(agreement)),
                                    "min": float(np.min(agreement))}
    return {"cells": len(df), "regime_I": int(full.sum()),
            "leave_one_out_flips_mean": float(np.mean(flips)),
            "leave_one_out_flips_max": int(max(flips)), "partial_agreement": partial}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subsets", type=int, default=20, help="random subsets per fraction")
    args = ap.parse_args()
    figures = {}
    print(f"{'table':>18} {'cells':>5} {'I':>3} {'LOO flips mean/max':>19}  "
          + "  ".join(f"{f:.0%} subsets (min)" for f in FRACTIONS))
    for name, make in TABLES.items():
        s = figures[name] = stability(make(), args.subsets)
        parts = "  ".join(f"{s['partial_agreement'][f'{f:g}']['mean']:>8.3f} "
                          f"({s['partial_agreement'][f'{f:g}']['min']:.2f})" for f in FRACTIONS)
        print(f"{name:>18} {s['cells']:>5} {s['regime_I']:>3} "
              f"{s['leave_one_out_flips_mean']:>12.2f} / {s['leave_one_out_flips_max']:<4d}  "
              f"{parts}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
