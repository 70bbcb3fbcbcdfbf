"""Phase diagrams of a results table, and the report that logs them on the grid parent run.

Each diagram is a heatmap over (temperature, density): temperature on the x axis in the knob's
units, ascending; density on the y axis in percent, ascending upwards; each cell annotated
with its number; cells absent from the table left blank (grey, no number). With several
dense seeds per cell the diagrams show their mean.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from tracking import keys
from tracking.knobs import axis_label
from tracking.store import experiment_id, get_client, latest_finished_run, with_retries
from tracking.tables import results_table, validate_table, write_table

_DENSITY_LABEL = "density (% of prunable weights kept)"


def _test_error(mean: pd.DataFrame) -> pd.Series:
    return 100 * (1 - mean[keys.TEST_ACC])


def _test_error_normalized(mean: pd.DataFrame) -> pd.Series:
    error = _test_error(mean)
    return error - error.groupby(level=keys.DENSITY).transform("min")


@dataclass(frozen=True)
class _Panel:
    filename: str
    column: str              # the table column the panel needs
    title: str
    colorbar: str
    values: Callable[[pd.DataFrame], pd.Series]
    fmt: str
    cmap: str
    diverging: bool = False  # colour scale symmetric around 0

    @property
    def name(self) -> str:
        return Path(self.filename).stem


_PANELS = [
    _Panel(keys.PLOT_TEST_ERROR, keys.TEST_ACC, "Test error after pruning and fine-tuning",
           "test error (%)", _test_error, ".1f", "viridis"),
    _Panel(keys.PLOT_TEST_ERROR_NORMALIZED, keys.TEST_ACC,
           "Test error minus the best of its density (0 = best temperature)",
           "test error above the density's best (%-points)", _test_error_normalized, ".1f",
           "magma_r"),
    _Panel(keys.PLOT_LMC_BARRIER, keys.LMC_BARRIER,
           "LMC barrier (< 0: poorly connected, ~0: connected)",
           "barrier in train error (%-points)", lambda m: 100 * m[keys.LMC_BARRIER], ".1f",
           "RdBu", diverging=True),
    _Panel(keys.PLOT_CKA, keys.CKA, "CKA similarity of fine-tuned copies", "linear CKA",
           lambda m: m[keys.CKA], ".2f", "viridis"),
]


def _draw(fig: Figure, ax, grid: pd.DataFrame, panel: _Panel, knob: str) -> None:
    data = np.ma.masked_invalid(grid.to_numpy(dtype=float))
    # light grey marks a missing cell: distinct from the white ~0 of RdBu
    cmap = matplotlib.colormaps[panel.cmap].with_extremes(bad="0.85")
    shown = data.compressed()
    if panel.diverging:
        limit = float(np.abs(shown).max()) if shown.size else 1.0
        norm = Normalize(-(limit or 1.0), limit or 1.0)
    else:
        norm = Normalize(*(shown.min(), shown.max()) if shown.size else (0, 1))
    image = ax.imshow(data, origin="lower", aspect="auto", cmap=cmap, norm=norm)
    ax.set_xticks(range(grid.shape[1]), labels=[f"{t:g}" for t in grid.columns])
    ax.set_yticks(range(grid.shape[0]), labels=[f"{100 * d:g}%" for d in grid.index])
    ax.set_xlabel(axis_label(knob))
    ax.set_ylabel(_DENSITY_LABEL)
    ax.set_title(panel.title, fontsize=10)
    fig.colorbar(image, ax=ax, label=panel.colorbar)
    fontsize = 8 if grid.shape[1] <= 10 else 6
    for (row, col), value in np.ndenumerate(data.filled(np.nan)):
        if np.isnan(value):
            continue
        red, green, blue, _ = cmap(norm(value))
        dark = 0.299 * red + 0.587 * green + 0.114 * blue < 0.5
        text = format(value, panel.fmt)
        if float(text) == 0:  # no "-0.0"
            text = format(0.0, panel.fmt)
        ax.text(col, row, text, ha="center", va="center",
                fontsize=fontsize, color="white" if dark else "black")


def phase_grids(df: pd.DataFrame, knob: str) -> dict[str, pd.DataFrame]:
    """The numbers the phase diagrams of ``knob`` show, one grid per diagram.

    Keys: ``test_error`` (%), ``test_error_normalized`` (%-points above the density's best),
    ``lmc_barrier`` (train-error %-points), ``cka``; a key is absent if the table lacks its
    column. Each grid has densities (fractions) as rows and temperatures as columns, both
    ascending, NaN where the table has no cell; dense seeds are averaged.
    """
    cells = df[df[keys.KNOB] == knob]
    if cells.empty:
        raise ValueError(f"results table has no cell of knob {knob!r}")
    panels = [p for p in _PANELS if p.column in cells.columns]
    columns = list(dict.fromkeys(p.column for p in panels))
    mean = cells.groupby([keys.TEMPERATURE, keys.DENSITY])[columns].mean()
    temperatures = sorted(cells[keys.TEMPERATURE].unique())
    densities = sorted(cells[keys.DENSITY].unique())
    return {p.name: p.values(mean).unstack(keys.TEMPERATURE).reindex(
        index=densities, columns=temperatures) for p in panels}


def phase_diagrams(df: pd.DataFrame, out_dir: str | Path, title: str | None = None
                   ) -> list[Path]:
    """Draw the phase diagrams of results table ``df`` as PNGs in ``out_dir``.

    One PNG per diagram (test error, test error normalised per density, LMC barrier, CKA;
    file names ``keys.PLOT_*``) and one combined figure (``keys.PLOT_PHASE_DIAGRAMS``). A
    diagram whose column the table lacks is left out. With several knobs in the table, each
    knob gets its own set, its file names prefixed with ``<knob>_``. ``title`` (e.g. the
    experiment name) heads the combined figure. The numbers are those of :func:`phase_grids`.

    Returns:
        The paths written, the combined figure last for each knob.
    """
    validate_table(df, [keys.KNOB, keys.TEMPERATURE, keys.DENSITY, keys.TEST_ACC])
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    knobs = sorted(df[keys.KNOB].unique())
    written = []
    for knob in knobs:
        grids = phase_grids(df, knob)
        panels = [p for p in _PANELS if p.name in grids]
        cells = df[df[keys.KNOB] == knob]
        seeds = int(cells.groupby([keys.TEMPERATURE, keys.DENSITY]).size().max())
        subtitle = f"mean over {seeds} dense seeds" if seeds > 1 else ""
        prefix = f"{knob}_" if len(knobs) > 1 else ""
        rows, columns = grids["test_error"].shape
        # a floor, so that on a small grid the titles and colour-bar labels do not overlap
        width, height = max(5.5, 3.5 + 0.55 * columns), max(3.4, 2.0 + 0.4 * rows)

        for panel in panels:
            fig = Figure(figsize=(width, height), layout="constrained")
            _draw(fig, fig.add_subplot(), grids[panel.name], panel, knob)
            if subtitle:
                fig.suptitle(subtitle, fontsize=9)
            written.append(_save(fig, out_dir / f"{prefix}{panel.filename}"))

        fig = Figure(figsize=(2 * width, 2 * height), layout="constrained")
        for index, panel in enumerate(panels):
            _draw(fig, fig.add_subplot(2, 2, index + 1), grids[panel.name], panel, knob)
        heading = f"{title}: phase diagrams" if title else "Phase diagrams"
        heading += f", knob {knob}"
        fig.suptitle(f"{heading} ({subtitle})" if subtitle else heading)
        written.append(_save(fig, out_dir / f"{prefix}{keys.PLOT_PHASE_DIAGRAMS}"))
    return written


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=120)
    return path


@dataclass(frozen=True)
class Report:
    """What :func:`write_report` wrote, and the grid run it logged to (None if none)."""

    table: Path
    plots: list[Path]
    grid_run_id: str | None


def write_report(experiment: str, out_dir: str | Path, client=None) -> Report:
    """Write the results table and phase diagrams of ``experiment`` into ``out_dir``.

    Also logs them as artifacts (``keys.ARTIFACT_RESULTS_CSV`` and ``keys.ARTIFACT_PLOTS_DIR``/)
    of the experiment's most recent FINISHED grid parent run; with no such run the files are
    only written (``Report.grid_run_id`` is None).

    Raises:
        ValueError: unknown experiment, or no FINISHED cell run in it.
    """
    client = client or get_client()
    df = results_table(experiment, client)
    if df.empty:
        raise ValueError(f"experiment {experiment!r} has no FINISHED cell runs: nothing to report")
    out_dir = Path(out_dir)
    table = write_table(df, out_dir / keys.ARTIFACT_RESULTS_CSV)
    plots = phase_diagrams(df, out_dir, title=experiment)
    grid_run = latest_finished_run(client, experiment_id(experiment, client), keys.KIND_GRID)
    if grid_run is None:
        return Report(table, plots, None)
    run_id = grid_run.info.run_id
    with_retries(client.log_artifact, run_id, str(table))
    for plot in plots:
        with_retries(client.log_artifact, run_id, str(plot), keys.ARTIFACT_PLOTS_DIR)
    return Report(table, plots, run_id)
