"""Input checks shared by the selection layer: columns, NaN, units (fractions, not percent),
one knob, known regime labels, an objective that is never a test accuracy."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from tracking import keys
from tracking.tables import require_columns, validate_table

# Columns holding fractions: a value beyond these bounds means the table is in percent.
_ACCURACY_COLUMNS = (keys.TEST_ACC, keys.VAL_ACC, keys.DENSE_ACC, keys.PRUNED_ACC)


def _where(df: pd.DataFrame, index: pd.Index, limit: int = 5) -> str:
    """Rows named by their cell (temperature, density) when the table has those columns."""
    if keys.TEMPERATURE in df.columns and keys.DENSITY in df.columns:
        cells = [f"row {i} (temperature={df.at[i, keys.TEMPERATURE]}, "
                 f"density={df.at[i, keys.DENSITY]})" for i in index[:limit]]
    else:
        cells = [f"row {i}" for i in index[:limit]]
    more = f" and {len(index) - limit} more" if len(index) > limit else ""
    return ", ".join(cells) + more


def check_units(df: pd.DataFrame) -> None:
    """Fail on a table that is obviously in percent rather than fractions.

    Raises:
        ValueError: |lmc_barrier| > 1, an accuracy > 1 or a density > 1; says how to fix it.
    """
    if keys.LMC_BARRIER in df.columns:
        values = pd.to_numeric(df[keys.LMC_BARRIER], errors="coerce")
        bad = values[values.abs() > 1]
        if not bad.empty:
            raise ValueError(
                f"column {keys.LMC_BARRIER!r} has values outside [-1, 1] ({bad.tolist()[:3]} in "
                f"{_where(df, bad.index, 3)}): the table looks like it is in percent. Barriers "
                "must be train-error FRACTIONS (negative = a barrier); divide the column by 100.")
    for column in (*_ACCURACY_COLUMNS, keys.DENSITY):
        if column not in df.columns:
            continue
        values = pd.to_numeric(df[column], errors="coerce")
        bad = values[values > 1]
        if not bad.empty:
            raise ValueError(
                f"column {column!r} has values above 1 ({bad.tolist()[:3]} in "
                f"{_where(df, bad.index, 3)}): the table looks like it is in percent. "
                f"{column} must be a fraction in [0, 1]; divide the column by 100.")


def check_table(df: pd.DataFrame, required: Sequence[str], *, allow_nan: bool = False) -> None:
    """Check that ``df`` has the ``required`` columns, rows, numbers in range and (unless
    ``allow_nan``) no NaN in those columns.

    Raises:
        ValueError: naming the column and the rows at fault.
    """
    require_columns(df, required)   # before the units check, which reads the columns
    check_units(df)
    # tracking's check: numeric columns, allowed ranges, duplicate cells
    validate_table(df, list(required))
    if not allow_nan:
        for column in required:
            nan = df.index[df[column].isna()]
            if len(nan):
                raise ValueError(
                    f"column {column!r} has missing (NaN) values in {_where(df, nan)}; "
                    "drop those cells or recompute them before labelling")


def one_knob(df: pd.DataFrame, what: str, fix: str = "select the rows of one knob first"
             ) -> str:
    """The one knob of ``df``, for ``what`` (e.g. "model selection"), which compares the
    temperatures of one knob.

    Raises:
        ValueError: the table has several knobs (or none); ends with ``fix``.
    """
    knobs = df[keys.KNOB].unique().tolist()
    if len(knobs) != 1:
        raise ValueError(f"{what} works on one knob; the table has knobs {knobs}: {fix}")
    return str(knobs[0])


def check_labels(df: pd.DataFrame) -> None:
    """Every value of the ``regime`` column is a regime label.

    Raises:
        ValueError: naming the unknown labels and the allowed ones.
    """
    from selection.regimes import REGIMES  # regimes imports this module

    bad = sorted(set(df[keys.REGIME].unique()) - set(REGIMES))
    if bad:
        raise ValueError(f"column {keys.REGIME!r} has unknown labels {bad}; allowed: "
                         f"{list(REGIMES)} (label the table with label_grid or label_regimes "
                         "first)")


def check_objective(column: str) -> None:
    """Test accuracy is never an objective: no sampler may see it.

    Raises:
        ValueError: ``column`` is a test column.
    """
    if column.startswith("test"):
        raise ValueError(f"objective column {column!r}: test accuracy is never an objective; "
                         "use the validation accuracy (val_acc)")
