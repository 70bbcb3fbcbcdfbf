"""AlphaPruning vs global vs uniform magnitude pruning: fine-tuned test accuracy per density.

Run the same grid once per pruning method (different experiments), export each results table,
then compare them here:

    for m in global uniform alpha; do
      python -m pipeline grid configs/demo.yaml --experiment demo-$m --set prune.method=$m \
          --set "densities=[0.05,0.1,0.2]"
      python -m tracking table --experiment demo-$m --out demo-$m.csv
    done
    python bench/alpha_compare.py global=demo-global.csv uniform=demo-uniform.csv \
        alpha=demo-alpha.csv

Per density: each method's best test accuracy over temperatures (and that temperature) and
its mean over temperatures (means over dense seeds first). The LAST line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pandas as pd  # noqa: E402

from tracking import keys  # noqa: E402
from tracking.tables import read_table  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("tables", nargs="+", metavar="METHOD=CSV")
    args = ap.parse_args()
    per_method = {}
    for item in args.tables:
        method, _, path = item.partition("=")
        if not path:
            raise SystemExit(f"{item!r}: expected METHOD=CSV, e.g. alpha=demo-alpha.csv")
        df = read_table(path)
        per_method[method] = (df.groupby([keys.DENSITY, keys.TEMPERATURE])[keys.TEST_ACC]
                              .mean().reset_index())
    densities = sorted(set.intersection(*(set(t[keys.DENSITY]) for t in per_method.values())))
    figures: dict = {}
    header = "| density | " + " | ".join(f"{m} best (T) | {m} mean" for m in per_method) + " |"
    print(header)
    print("|" + "---|" * (1 + 2 * len(per_method)))
    for d in densities:
        cells = []
        figures[str(d)] = {}
        for m, t in per_method.items():
            at = t[t[keys.DENSITY] == d]
            best = at.loc[at[keys.TEST_ACC].idxmax()]
            cells.append(f"{best[keys.TEST_ACC]:.4f} ({best[keys.TEMPERATURE]:g}) | "
                         f"{at[keys.TEST_ACC].mean():.4f}")
            figures[str(d)][m] = {"best": round(float(best[keys.TEST_ACC]), 4),
                                  "best_temperature": float(best[keys.TEMPERATURE]),
                                  "mean": round(float(at[keys.TEST_ACC].mean()), 4)}
        print(f"| {d:g} | " + " | ".join(cells) + " |")
    print(json.dumps(figures))


if __name__ == "__main__":
    pd.set_option("display.width", 200)
    main()
