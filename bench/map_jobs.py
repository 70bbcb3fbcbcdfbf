"""Replay in several processes against one (``python -m selection map --replay --jobs J``).

    python bench/map_jobs.py [--table bench/data/demo_fine_grid.csv] [--seeds 4] [--jobs 2]

Times the same replay (every strategy, every cell) with ``jobs=1`` and ``jobs=J`` in one run,
checks that both give the same curves, and prints the ratio. The seeds are independent, so
the ratio should approach ``min(J, seeds, cores)`` less the workers' start-up (each is a
fresh interpreter that imports the project). Take it on a quiet machine.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from selection.mapping import replay  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--table", default=str(REPO_ROOT / "bench" / "data" / "demo_fine_grid.csv"))
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    args = ap.parse_args()
    table = pd.read_csv(args.table)
    seeds = range(args.seeds)
    with threadpool_limits(1):          # the serial side on one thread, as each worker is
        start = time.perf_counter()
        serial = replay(table, seeds=seeds)
        serial_s = time.perf_counter() - start
    start = time.perf_counter()
    parallel = replay(table, seeds=seeds, jobs=args.jobs)
    parallel_s = time.perf_counter() - start
    same = all(np.array_equal(serial.agreement[s], parallel.agreement[s])
               and np.array_equal(serial.best_within[s], parallel.best_within[s])
               for s in serial.agreement)
    print(f"{Path(args.table).name}: {serial.total_cells} cells, {args.seeds} seeds, "
          f"{os.cpu_count()} cores")
    print(f"jobs=1 {serial_s:.1f} s, jobs={args.jobs} {parallel_s:.1f} s: "
          f"{serial_s / parallel_s:.2f}x; same curves: {same}")
    if not same:
        sys.exit("the parallel replay's curves differ from the serial one's")


if __name__ == "__main__":
    main()
