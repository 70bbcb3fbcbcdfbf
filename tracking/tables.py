"""Results tables: an experiment's cell runs as one DataFrame, one row per cell.

The table (docs/design.md#the-results-table) is the contract between layers: written as CSV it
is the input of the classifier, the model selection and the tuner's replay benchmark, so a grid
from any source with these columns can be analysed without recomputation. A row is read from a
cell run by ``tracking.records.run_row``, next to the code that writes the run.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Run

from tracking import keys
from tracking.knobs import DIRECTIONS
from tracking.records import CELL_COLUMNS, METRIC_COLUMNS, OPTIONAL_COLUMNS, PAIR_METRICS, run_row
from tracking.store import experiment_id, get_client, search_all_runs

RUN_ID = keys.RUN_ID
RESULT_COLUMNS = [*CELL_COLUMNS, *METRIC_COLUMNS, keys.REGIME, RUN_ID, keys.SPEC_HASH,
                  PAIR_METRICS]
_REQUIRED = [c for c in RESULT_COLUMNS if c != PAIR_METRICS]  # what a table must have

# Allowed ranges of numeric columns (NaN is always allowed: a metric may be missing).
# Accuracies are fractions; a table in percent is the likely mistake this catches.
_RANGES = {
    keys.DENSITY: (0.0, 1.0),
    keys.TEST_ACC: (0.0, 1.0), keys.TEST_ACC_STD: (0.0, 1.0), keys.VAL_ACC: (0.0, 1.0),
    keys.PRUNED_ACC: (0.0, 1.0), keys.DENSE_ACC: (0.0, 1.0),
    keys.LMC_BARRIER: (-1.0, 1.0), keys.LMC_BARRIER_STD: (0.0, 1.0),
    # float32 Gram matrices can put CKA a hair above 1
    keys.CKA: (0.0, 1.0 + 1e-3), keys.CKA_STD: (0.0, 1.0),
}
_NUMERIC = [keys.TEMPERATURE, keys.DENSITY, keys.DENSE_SEED, *METRIC_COLUMNS]


def _to_numbers(df: pd.DataFrame) -> pd.DataFrame:
    # Params come back from MLflow as strings; "40" becomes an integer column, "0.1" a float one.
    for column in (keys.TEMPERATURE, keys.DENSITY, keys.DENSE_SEED):
        try:
            df[column] = pd.to_numeric(df[column])
        except (ValueError, TypeError) as e:
            raise ValueError(f"cell runs have a non-numeric {column!r} param: {e}") from e
    return df


def results_table(experiment: str, client: MlflowClient | None = None) -> pd.DataFrame:
    """The one-row-per-cell table of the FINISHED cell runs of experiment ``experiment``.

    Columns are :data:`RESULT_COLUMNS` in that order, then those of :data:`OPTIONAL_COLUMNS`
    that some cell logged (NaN for the others); rows are sorted by knob, temperature,
    density and dense seed. A metric a run did not log is NaN; ``regime`` is empty unless the
    run carries the ``regime`` tag. With no finished cell the table is empty (same columns).

    Note: when several FINISHED runs share a ``spec_hash`` (a cell computed twice, e.g. by two
    racing workers) only the one that ended last is kept.

    Raises:
        ValueError: no active experiment of that name (the message lists those that exist).
    """
    client = client or get_client()
    exp_id = experiment_id(experiment, client)
    runs = search_all_runs(
        client, [exp_id],
        f"tags.{keys.RUN_KIND} = '{keys.KIND_CELL}' and attributes.status = 'FINISHED'")
    newest: dict[str, Run] = {}
    for run in runs:
        # a run without a hash cannot be a duplicate of another: key it by its own id
        key = run.data.tags.get(keys.SPEC_HASH) or run.info.run_id
        kept = newest.get(key)
        if kept is None or _ended(run) > _ended(kept):
            newest[key] = run
    rows = [run_row(r) for r in newest.values()]
    # optional measurements (spectra, curvature): a column only when some cell has it
    extra = [c for c in OPTIONAL_COLUMNS if any(c in row for row in rows)]
    df = pd.DataFrame(rows, columns=[*RESULT_COLUMNS, *extra])
    return _to_numbers(df).sort_values(
        [keys.KNOB, keys.TEMPERATURE, keys.DENSITY, keys.DENSE_SEED], kind="stable",
        ignore_index=True)


def _ended(run: Run) -> tuple[int, int]:
    return run.info.end_time or 0, run.info.start_time or 0


class MissingColumnsError(ValueError):
    """A results table lacks columns a command needs; ``missing`` names them."""

    def __init__(self, message: str, missing: Sequence[str]):
        super().__init__(message)
        self.missing = list(missing)


def require_columns(df: pd.DataFrame, required: Sequence[str]) -> None:
    """The table is a non-empty DataFrame with the ``required`` columns
    (:class:`MissingColumnsError`, a ValueError, naming them)."""
    if not isinstance(df, pd.DataFrame):
        raise ValueError(f"a results table must be a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise MissingColumnsError(f"results table lacks required columns {missing}; "
                                  f"it has {list(df.columns)}", missing)
    if df.empty:
        raise ValueError("results table is empty: it has no cells (rows)")


def validate_table(df: pd.DataFrame, required: Sequence[str] = _REQUIRED) -> None:
    """Check that ``df`` is a usable results table with at least the ``required`` columns.

    Checks: the columns are present, there is at least one row, the numeric columns among the
    required ones hold numbers in their allowed range (accuracies and density are fractions in
    [0, 1], the LMC barrier in [-1, 1]), and no cell (knob, temperature, density, dense seed)
    appears twice.

    Raises:
        ValueError: naming what is wrong (missing columns, bad values and their rows, ...).
    """
    require_columns(df, required)
    for column in (c for c in _NUMERIC if c in required):
        if not pd.api.types.is_numeric_dtype(df[column]):
            bad = df[column][pd.to_numeric(df[column], errors="coerce").isna()
                             & df[column].notna()]
            raise ValueError(f"column {column!r} must be numeric; non-numeric values "
                             f"{bad.unique().tolist()[:5]} in rows {bad.index.tolist()[:5]}")
        if column in _RANGES:
            low, high = _RANGES[column]
            values = df[column]
            inside = (values > low if column == keys.DENSITY else values >= low) & (values <= high)
            bad = values[~inside & values.notna()]
            if not bad.empty:
                opening = "(" if column == keys.DENSITY else "["
                raise ValueError(
                    f"column {column!r} must lie in {opening}{low:g}, {high:g}] (fractions, not "
                    f"percent); values {bad.tolist()[:5]} in rows {bad.index.tolist()[:5]}")
    present = [c for c in CELL_COLUMNS if c in df.columns]
    if len(present) == len(CELL_COLUMNS):
        duplicated = df[df.duplicated(present, keep=False)]
        if not duplicated.empty:
            raise ValueError(f"results table has duplicate cells {present}: rows "
                             f"{duplicated.index.tolist()[:10]}")


def write_table(df: pd.DataFrame, path: str | Path,
                required: Sequence[str] = _REQUIRED) -> Path:
    """Validate ``df`` and write it as CSV to ``path``; return the path.

    The :data:`RESULT_COLUMNS` present come first, in their order, then any extra columns.
    """
    validate_table(df, required)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ordered = [c for c in RESULT_COLUMNS if c in df.columns]
    df[ordered + [c for c in df.columns if c not in ordered]].to_csv(path, index=False)
    return path


def fill_knob(df: pd.DataFrame, knob: str | None) -> pd.DataFrame:
    """``df`` with ``knob`` in every row where it has no ``knob`` column (a table typed from a
    paper's figure knows its temperature axis, e.g. ``epochs``, but does not say it); a table
    with the column gives its rows of that knob (row labels kept). ``knob`` None: nothing
    changes.

    Raises:
        ValueError: ``knob`` is not a registered knob (the message lists them), or the
            table's ``knob`` column does not hold it.
    """
    if knob is None:
        return df
    DIRECTIONS.get(knob, field="--knob")
    if keys.KNOB in df.columns:
        rows = df[keys.KNOB].astype(str) == knob
        if not rows.any():
            knobs = sorted(df[keys.KNOB].dropna().astype(str).unique())
            raise ValueError(f"--knob {knob}: the table's {keys.KNOB!r} column has {knobs}, "
                             f"not {knob!r}; --knob names the knob of a table without a "
                             "'knob' column, or picks one of the table's knobs")
        return df if rows.all() else df[rows]
    out = df.copy()
    out.insert(0, keys.KNOB, knob)
    return out


def read_table(path: str | Path, required: Sequence[str] = _REQUIRED,
               knob: str | None = None) -> pd.DataFrame:
    """Read a results table CSV and validate it (see :func:`validate_table`); a table without
    a ``knob`` column gets ``knob`` (:func:`fill_knob`). Column names are matched ignoring
    case, surrounding spaces and the spaces or hyphens between words
    (:func:`normalise_columns`); rows pasted twice
    (:func:`check_repeated_rows`) and barriers of the opposite sign
    (:func:`check_barrier_sign`) are errors.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is not a valid results table (a missing ``knob`` column says to
            give one), or an unknown ``knob``; the message names ``path``.
    """
    path = Path(path)
    if path.is_dir():
        raise FileNotFoundError(f"results table {path} is a folder, not a CSV file")
    if not path.is_file():
        raise FileNotFoundError(f"results table {path} does not exist")
    try:
        df = _read_csv(path)
        df = fill_knob(normalise_columns(df), knob)
    except (ValueError, pd.errors.ParserError) as e:
        # EmptyDataError is a ValueError too
        raise ValueError(f"{path}: {e}") from e
    try:
        validate_table(df, required)
        check_repeated_rows(df)
        check_barrier_sign(df)
    except ValueError as e:
        hint = ("; for a table without a 'knob' column name its temperature knob with --knob "
                "(e.g. --knob epochs)" if keys.KNOB in required and keys.KNOB not in df else "")
        message = f"{path}: {e}{hint}{conversion_hint(df, required)}"
        if isinstance(e, MissingColumnsError):     # keeps its type: callers add their hints
            raise MissingColumnsError(message, e.missing) from e
        raise ValueError(message) from e
    return df


def conversion_hint(df: pd.DataFrame, required: Sequence[str]) -> str:
    """How to get a missing required column from one a paper or another tool names instead
    (a knob's name for the temperature axis, sparsity for density, test error for accuracy)."""
    lower = {header_key(c): c for c in df.columns if isinstance(c, str)}
    hints = []
    if keys.TEMPERATURE in required and keys.TEMPERATURE not in df.columns:
        named = [k for k in DIRECTIONS.names() if k in lower]
        if named:
            hints.append(f"column {lower[named[0]]!r} is the temperature axis: rename it "
                         f"{keys.TEMPERATURE!r} (and name the knob with --knob {named[0]})")
    conversions = ((keys.DENSITY, ("sparsity", "prune_ratio", "pruning_ratio"),
                    "density is the fraction of weights KEPT: density = 1 - {}"),
                   (keys.TEST_ACC, ("test_error", "test_err"), "test_acc = 1 - {}"),
                   (keys.VAL_ACC, ("val_error", "val_err"), "val_acc = 1 - {}"))
    for column, names, rule in conversions:
        if column in required and column not in df.columns:
            hints += [rule.format(lower[n]) for n in names if n in lower][:1]
    return "".join(f"; {h}" for h in hints)


# every column name this project reads from a table, to match a header typed differently
_KNOWN_COLUMNS = [*RESULT_COLUMNS, *OPTIONAL_COLUMNS, keys.PRUNED_ACC, keys.DENSE_ACC]


def header_key(name: str) -> str:
    """How a header is matched to a column: case, surrounding spaces and the spaces or
    hyphens between words do not count (``Test Acc``, ``test-acc`` -> ``test_acc``)."""
    return re.sub(r"[\s\-]+", "_", name.strip().lower())


def normalise_columns(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with a header typed differently (``CKA``, `` density ``, ``Test Acc``,
    ``LMC-barrier``) renamed to the column it names (:func:`header_key`), and the ``knob``
    and ``regime`` values stripped of surrounding spaces and put in the case of a known
    knob or label (``Epochs`` -> ``epochs``, ``ii-a`` -> ``II-A``). Unknown columns and
    values are kept as they are.

    Raises:
        ValueError: two columns name the same one (e.g. ``cka`` and ``CKA``).
    """
    wanted = {header_key(c): c for c in _KNOWN_COLUMNS}
    renamed = {}
    for column in df.columns:
        if not isinstance(column, str):
            continue
        target = wanted.get(header_key(column))
        if target is not None and target != column:
            renamed[column] = target
    out = df.rename(columns=renamed) if renamed else df.copy()
    names = [c for c in out.columns if isinstance(c, str)]
    clashes = sorted({c for c in names if names.count(c) > 1})
    if clashes:
        same = [[orig for orig in df.columns if renamed.get(orig, orig) == c] for c in clashes]
        raise ValueError(f"columns {same} all name {clashes} (names are matched ignoring case, "
                         "spaces and hyphens): keep one of each")
    for column, case, known in ((keys.KNOB, str.lower, set(DIRECTIONS.names())),
                                (keys.REGIME, str.upper, set(_REGIME_LABELS))):
        if column in out.columns and not pd.api.types.is_numeric_dtype(out[column]):
            out[column] = out[column].map(lambda v, case=case, known=known: _tidy(v, case, known))
    return out


_REGIME_LABELS = ("I", "II-A", "II-B")   # selection.regimes.REGIMES (tracking cannot import it)


def _tidy(value, case, known: set) -> object:
    """A string value without surrounding spaces, in ``case`` when that is a ``known`` one."""
    if not isinstance(value, str):
        return value
    value = value.strip()
    return case(value) if case(value) in known else value


def check_repeated_rows(df: pd.DataFrame) -> None:
    """Fail on rows identical in every column in a table without a ``dense_seed`` column.

    Rows of one cell without that column count as its dense seeds (consumers average them),
    but rows equal in every column are a row pasted twice, not two measurements. (With the
    column, :func:`validate_table` rejects a repeated cell.)

    Raises:
        ValueError: naming the rows.
    """
    if keys.DENSE_SEED in df.columns:
        return
    copies = df[df.astype(str).duplicated(keep=False)]
    if not copies.empty:
        raise ValueError(f"results table has identical rows {copies.index.tolist()[:10]} "
                         "(every column equal): drop the repeated rows; several dense seeds "
                         f"of one cell need a {keys.DENSE_SEED!r} column")


def check_barrier_sign(df: pd.DataFrame) -> None:
    """Fail on barriers that look like the opposite sign convention.

    Here a barrier is ``e_bar - e(t*)``: NEGATIVE when the path's error rises above the
    endpoints' (docs/method.md, LMC barrier); a positive value is a path whose error dips
    below them, which measured grids show only at noise level (below 0.001). Some tools report
    the loss barrier as a positive height instead. A table whose largest barrier is above
    +0.01 (one train-error point) and larger than its deepest negative one is taken for such a
    table.

    Raises:
        ValueError: saying to negate the column.
    """
    if keys.LMC_BARRIER not in df.columns:
        return
    values = pd.to_numeric(df[keys.LMC_BARRIER], errors="coerce")
    high, low = values.max(), values.min()
    if high > 0.01 and high > -min(low, 0.0):
        raise ValueError(
            f"column {keys.LMC_BARRIER!r} looks like it uses the opposite sign (largest value "
            f"{high:+.4g}, deepest negative {min(low, 0.0):+.4g}): here a barrier is NEGATIVE "
            "(e_bar - e(t*), docs/method.md), a positive loss-barrier height is its negation; "
            "negate the column")


def _read_csv(path: Path) -> pd.DataFrame:
    """The CSV at ``path`` without its entirely empty rows (a spreadsheet's trailing ``,,,``).

    Raises:
        ValueError: the file is separated by ``;`` or tabs (a spreadsheet's export in some
            locales), not by commas.
    """
    df = pd.read_csv(path)
    for sep, name in ((";", "';'"), ("\t", "tab")):
        if any(isinstance(c, str) and sep in c for c in df.columns):
            raise ValueError(f"the header is {name}-separated ({str(df.columns[0])[:40]!r}...): "
                             "a results table is a comma-separated CSV with '.' as the decimal "
                             "point; export it so")
    return df.dropna(how="all")


BEST_COLUMNS = [keys.KNOB, keys.DENSITY, keys.TEMPERATURE, keys.TEST_ACC, "cells"]


def best_temperature_per_density(df: pd.DataFrame) -> pd.DataFrame:
    """Per knob and density, the temperature with the highest mean fine-tuned test accuracy.

    ``df`` is a results table (one row per cell; ``test_acc`` is already the mean over the
    fine-tune seeds). A (temperature, density) point's accuracy is the mean of its cells'
    ``test_acc`` over dense seeds; cells without ``test_acc`` are left out. On a tie the lower
    temperature is reported. Pure: nothing is recomputed or looked up.

    Returns:
        One row per (knob, density), sorted: ``knob``, ``density``, ``temperature`` (the best),
        ``test_acc`` (its mean), ``cells`` (how many dense seeds that mean is over) and, when
        any row of ``df`` has a ``regime`` label, ``regime``: the label(s) of the best
        point's cells, several joined by ``/`` when the dense seeds disagree ("" if unlabelled).

    Raises:
        ValueError: ``df`` is empty or lacks knob, temperature, density or test_acc.
    """
    require_columns(df, [keys.KNOB, keys.TEMPERATURE, keys.DENSITY, keys.TEST_ACC])
    scored = df[df[keys.TEST_ACC].notna()]
    point = [keys.KNOB, keys.DENSITY, keys.TEMPERATURE]
    means = (scored.groupby(point, sort=True)[keys.TEST_ACC].agg(["mean", "size"])
             .rename(columns={"mean": keys.TEST_ACC, "size": "cells"}).reset_index())
    # sorted by temperature within a density: idxmax keeps the first (lowest) on a tie
    best = means.loc[means.groupby([keys.KNOB, keys.DENSITY], sort=True)[keys.TEST_ACC].idxmax()]
    best = best[BEST_COLUMNS].reset_index(drop=True)
    if keys.REGIME in df.columns and _labelled(df[keys.REGIME]).any():
        labels = scored[_labelled(scored[keys.REGIME])].groupby(point)[keys.REGIME].agg(
            lambda s: "/".join(sorted(set(s))))
        best[keys.REGIME] = [labels.get(tuple(row), "")
                             for row in best[point].itertuples(index=False)]
    return best


def _labelled(regimes: pd.Series) -> pd.Series:
    return regimes.notna() & (regimes.astype(str).str.strip() != "")


def format_best_temperatures(best: pd.DataFrame) -> list[str]:
    """Lines of a :func:`best_temperature_per_density` table for a terminal, e.g.

    ``best temperature per density (mean fine-tuned test accuracy):`` then one row per density:
    ``density``, the knob's name as the temperature column, ``test_acc`` and ``regime``.
    """
    lines = ["best temperature per density (mean fine-tuned test accuracy):"]
    for knob, rows in best.groupby(keys.KNOB, sort=True):
        shown = pd.DataFrame({keys.DENSITY: rows[keys.DENSITY].map("{:g}".format),
                              str(knob): rows[keys.TEMPERATURE].map("{:g}".format),
                              keys.TEST_ACC: rows[keys.TEST_ACC].map("{:.4f}".format)})
        if keys.REGIME in rows.columns:
            shown[keys.REGIME] = rows[keys.REGIME].replace("", "-")
        lines += ["  " + line for line in shown.to_string(index=False).splitlines()]
    return lines
