"""The regime map: regime labels drawn over the phase diagram (temperature x, density y).

Same axes as ``tracking.plots``' phase diagrams: temperature on the x axis in the knob's units,
ascending; density on the y axis in percent, ascending upwards; one square per cell. Each
regime has one colour, thick lines mark the boundaries between regimes, cells absent from
the table are blank. With the label probabilities of ``selection.regimes.label_grid``
(``p_regime_I``, ``p_regime_IIB``), a cell whose label is uncertain (its probability of Regime
I, or of II-B when it is in Regime II, strictly between 0.2 and 0.8) is hatched and its label
followed by ``?``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.colors import BoundaryNorm, ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle

from selection._validate import check_labels, check_table, one_knob
from selection.regimes import (
    P_REGIME_I,
    P_REGIME_IIB,
    REGIME_I,
    REGIME_II_A,
    REGIME_II_B,
    REGIMES,
    uncertain,
)
from tracking import keys
from tracking.knobs import hotter_is_lower

REGIME_COLORS = {REGIME_I: "#d62728", REGIME_II_A: "#ffbf00", REGIME_II_B: "#2ca02c"}
_MEANING = {REGIME_I: "barrier (poorly connected): go hotter",
            REGIME_II_A: "connected, lower CKA: go colder",
            REGIME_II_B: "connected, high CKA: near optimal"}


def regime_grid(df: pd.DataFrame) -> pd.DataFrame:
    """Regime of each (density, temperature) cell of labelled table ``df``.

    Rows: densities ascending; columns: temperatures ascending; None where the table has no
    cell. With several rows per cell (dense seeds) the most frequent label wins, ties going
    to the first in the order I, II-A, II-B.
    """
    check_table(df, (keys.TEMPERATURE, keys.DENSITY, keys.REGIME))
    check_labels(df)

    def majority(labels: pd.Series) -> str:
        counts = labels.value_counts()
        return max(REGIMES, key=lambda r: (counts.get(r, 0), -REGIMES.index(r)))

    labels = df.groupby([keys.DENSITY, keys.TEMPERATURE])[keys.REGIME].agg(majority)
    grid = labels.unstack(keys.TEMPERATURE).reindex(
        index=sorted(df[keys.DENSITY].unique()), columns=sorted(df[keys.TEMPERATURE].unique()))
    return grid.astype(object).where(grid.notna(), None)


def uncertain_grid(df: pd.DataFrame) -> pd.DataFrame | None:
    """Per (density, temperature) cell of :func:`regime_grid`: True where the label is
    uncertain (probabilities averaged over a cell's rows); None without ``p_regime_I``."""
    if P_REGIME_I not in df.columns:
        return None
    grid = regime_grid(df)
    p_i = df.groupby([keys.DENSITY, keys.TEMPERATURE])[P_REGIME_I].mean()
    p_iib = (df.groupby([keys.DENSITY, keys.TEMPERATURE])[P_REGIME_IIB].mean()
             if P_REGIME_IIB in df.columns else None)
    out = pd.DataFrame(False, index=grid.index, columns=grid.columns)
    for (density, temperature), p in p_i.items():
        label = grid.at[density, temperature]
        unsure = bool(uncertain(p))
        if not unsure and label != REGIME_I and p_iib is not None:
            unsure = bool(uncertain(p_iib.get((density, temperature), float("nan"))))
        out.at[density, temperature] = unsure
    return out


def plot_regime_map(df: pd.DataFrame, path: str | Path, title: str | None = None) -> Path:
    """Draw the regime map of labelled table ``df`` (one knob) as a PNG at ``path``."""
    check_table(df, (keys.KNOB, keys.TEMPERATURE, keys.DENSITY, keys.REGIME))
    knob = one_knob(df, "a regime map")
    grid = regime_grid(df)
    codes = np.array([[np.nan if r is None else REGIMES.index(r) for r in row]
                      for row in grid.to_numpy()], dtype=float)
    cmap = ListedColormap([REGIME_COLORS[r] for r in REGIMES]).with_extremes(bad="white")
    rows, columns = codes.shape
    fig = Figure(figsize=(4.5 + 0.55 * columns, 2.2 + 0.4 * rows), layout="constrained")
    ax = fig.add_subplot()
    ax.imshow(np.ma.masked_invalid(codes), origin="lower", aspect="auto", cmap=cmap,
              norm=BoundaryNorm(np.arange(len(REGIMES) + 1) - 0.5, len(REGIMES)))
    unsure = uncertain_grid(df)
    for (row, col), code in np.ndenumerate(codes):
        if not np.isnan(code):
            mark = unsure is not None and bool(unsure.iat[row, col])
            if mark:
                ax.add_patch(Rectangle((col - 0.5, row - 0.5), 1, 1, fill=False, hatch="///",
                                       edgecolor="0.35", linewidth=0))
            ax.text(col, row, REGIMES[int(code)] + ("?" if mark else ""), ha="center",
                    va="center", fontsize=8)
    # boundaries: a thick line on each edge between two cells of different regimes
    for row in range(rows):
        for col in range(columns):
            here = codes[row, col]
            if col + 1 < columns and here != codes[row, col + 1]:
                ax.plot([col + 0.5] * 2, [row - 0.5, row + 0.5], color="black", linewidth=2.5)
            if row + 1 < rows and here != codes[row + 1, col]:
                ax.plot([col - 0.5, col + 0.5], [row + 0.5] * 2, color="black", linewidth=2.5)
    ax.set_xlim(-0.5, columns - 0.5)
    ax.set_ylim(-0.5, rows - 0.5)
    ax.set_xticks(range(columns), labels=[f"{t:g}" for t in grid.columns])
    ax.set_yticks(range(rows), labels=[f"{100 * d:g}%" for d in grid.index])
    direction = "smaller" if hotter_is_lower(knob) else "larger"
    ax.set_xlabel(f"temperature: {knob} ({direction} = hotter)")
    ax.set_ylabel("density (% of prunable weights kept)")
    ax.set_title(title or "Regime map", fontsize=10)
    handles = [Patch(color=REGIME_COLORS[r], label=f"{r}: {_MEANING[r]}") for r in REGIMES]
    if unsure is not None:
        handles.append(Patch(facecolor="white", edgecolor="0.35", hatch="///",
                             label="?: uncertain label (probability 0.2-0.8)"))
    ax.legend(handles=handles,
              loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8, frameon=False)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path
