"""Ablation: does the regime follow from data-free, pre-fine-tuning measurements?

Cross-validated accuracy of the regime classifier with (a) temperature and density only,
(b) + the dense and pruned checkpoints' weight-spectra summaries, (c) + the landscape metrics
(LMC barrier, CKA), and today's landscape classifier, on a results table whose cells were run
with ``measure.spectra=true``:

    python -m pipeline grid configs/demo.yaml --set measure.spectra=true --experiment demo-spectra
    python -m tracking table --experiment demo-spectra --out demo-spectra.csv
    python bench/ablation.py demo-spectra.csv [more.csv ...] [--labels auto|table|rule|jump]
        [--replay 20]

Labels: ``table`` uses the table's ``regime`` column (e.g. written by ``python -m selection
classify``), ``rule`` labels with ``selection.regimes.label_regimes`` (estimated thresholds),
``jump`` with ``label_grid`` where this version has it; ``auto`` = table if labelled, else
rule. Prints a markdown table per CSV; the LAST line is one JSON object of the figures.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pandas as pd  # noqa: E402

from selection.spectral import ablation, format_ablation  # noqa: E402
from tracking import keys  # noqa: E402
from tracking.tables import read_table  # noqa: E402


def labelled(df: pd.DataFrame, how: str) -> tuple[pd.DataFrame, str]:
    has = keys.REGIME in df.columns and df[keys.REGIME].notna().all() and len(df)
    if how == "table" or (how == "auto" and has):
        if not has:
            raise SystemExit("--labels table: the table has cells without a regime label")
        return df, "table"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if how == "jump":
            from selection import regimes

            if not hasattr(regimes, "label_grid"):
                raise SystemExit("--labels jump: this version has no selection.regimes.label_grid")
            return regimes.label_grid(df)[0], "jump"
        from selection.regimes import label_regimes

        return label_regimes(df)[0], "rule"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("tables", nargs="+", help="results table CSV(s) with spectral columns")
    ap.add_argument("--labels", default="auto", choices=["auto", "table", "rule", "jump"])
    ap.add_argument("--splits", type=int, default=5)
    ap.add_argument("--replay", type=int, default=0, metavar="REPEATS",
                    help="also replay the regime sampler with and without the spectral predictor "
                         "(fitted on the other densities), REPEATS seeds per density")
    args = ap.parse_args()
    figures = {}
    for path in args.tables:
        df, how = labelled(read_table(path), args.labels)
        table = ablation(df, n_splits=args.splits)
        counts = df[keys.REGIME].value_counts().to_dict()
        print(f"\n{path}: {len(df)} cells, labels {how} {counts}")
        print("\n".join(format_ablation(table)))
        figures[path] = {
            r.feature_set: {"cv_accuracy": round(r.cv_accuracy, 4),
                            "cv_accuracy_by_density": round(r.cv_accuracy_by_density, 4)}
            for r in table.itertuples(index=False)}
        figures[path]["labels"] = how
        if args.replay:
            from selection.spectral import replay_trials_saved

            saved = replay_trials_saved(df, repeats=args.replay)
            print(f"replay, regime sampler, trials to the best cell "
                  f"({args.replay} seeds per density):")
            print(saved.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
            figures[path]["replay"] = saved.to_dict("records")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
