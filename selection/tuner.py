"""Regime-guided temperature tuning with Optuna: objective, samplers, storage, the study.

For one target density, a trial chooses a training temperature, runs (or fetches from the
cache) the cell at that temperature and density, and returns its VALIDATION accuracy; the
cell's regime, LMC barrier, CKA and MLflow run id become trial user attributes, which the
:class:`~selection.sampler.RegimeGuidedSampler` reads to move the temperature.

Test accuracy is never an objective and is never stored on a trial, so no sampler can see it;
reports that need it (the replay benchmark's regret) look it up themselves, outside the study.
"""

from __future__ import annotations

import math
import warnings
from collections import ChainMap
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import optuna
import pandas as pd
from optuna.distributions import BaseDistribution, FloatDistribution, IntDistribution
from optuna.samplers import BaseSampler
from optuna.storages import BaseStorage, InMemoryStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from pipeline.knobs import Knob, get_knob
from selection._validate import check_objective
from selection.regimes import REGIMES, RegimeWarning, label_grid, label_regimes
from selection.sampler import RegimeGuidedSampler, TransferPrior
from tracking import keys
from tracking.knobs import cold_to_hot
from tracking.tables import RUN_ID

if TYPE_CHECKING:
    from selection._tracking import MlflowTrialLogger

__all__ = [
    "SAMPLER_NAMES", "TEMPERATURE_PARAM", "TEMPERATURE_INDEX_PARAM", "CellObjective",
    "create_sampler", "default_storage_path", "make_storage",
    "sampler_encoding", "study_name_for", "tune",
]

REPO_ROOT = Path(__file__).resolve().parent.parent

SAMPLER_NAMES = ("regime", "tpe", "tpe2", "gp", "random", "grid")
# Samplers that see the temperature as an integer index 0 (coldest) .. n-1 (hottest): TPE and
# GP model an ordered number, not an unordered categorical, so they can exploit the order.
_INDEX_SAMPLERS = ("tpe2", "gp")
TEMPERATURE_PARAM = keys.TEMPERATURE
TEMPERATURE_INDEX_PARAM = "temperature_index"
# Trial user attribute with the thresholds used for the trial's regime label.
THRESHOLDS_ATTR = "regime_thresholds"
# Trial user attribute: which rule gave the regime (classifier, thresholds, cell or grid).
REGIME_SOURCE_ATTR = "regime_source"


# --- samplers ------------------------------------------------------------------------------

def sampler_encoding(name: str) -> str:
    """How sampler ``name`` sees a discrete temperature: ``"index"`` (an integer 0 = coldest ..
    n-1 = hottest, for ``tpe2`` and ``gp``) or ``"value"`` (the temperature itself, categorical
    on a grid)."""
    _check_sampler_name(name)
    return "index" if name in _INDEX_SAMPLERS else "value"


def create_sampler(
    name: str,
    knob: Knob | str,
    seed: int | None = None,
    *,
    temperatures: Sequence[float] | None = None,
    regime_predictor: Callable[[float], str | None] | None = None,
    n_startup_trials: int = 2,
    transfer: TransferPrior | None = None,
) -> BaseSampler:
    """A sampler by name, to be used with a :class:`CellObjective` of
    ``encoding=sampler_encoding(name)``.

    - ``regime``: :class:`~selection.sampler.RegimeGuidedSampler` on the temperature values
      (with ``transfer``, it starts from what the grid's other densities predict).
    - ``tpe``: Optuna's default TPE on the categorical temperature (its first 10 trials are
      random, so on a dozen temperatures it is random search; docs/method.md#baselines-and-replay).
    - ``tpe2``: TPE with ``n_startup_trials`` (2) random trials, over the ordered index.
    - ``gp``: ``GPSampler`` with ``n_startup_trials`` (2) random trials, over the ordered index.
      Ours: Optuna's default of 10 would make it random search on a small grid too, and the
      baseline is meant to be strong.
    - ``random``: ``RandomSampler`` (with repeats).
    - ``grid``: Optuna's ``GridSampler`` over ``temperatures``: every temperature once, in a
      random order fixed by ``seed`` (random search without repeats); the study stops when the
      grid is exhausted. Note: Optuna treats ``seed=None`` as 0 here.
    """
    _check_sampler_name(name)
    knob = get_knob(knob) if isinstance(knob, str) else knob
    if name == "regime":
        return RegimeGuidedSampler(TEMPERATURE_PARAM, knob, seed=seed,
                                   regime_predictor=regime_predictor, transfer=transfer)
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if name == "tpe2":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=n_startup_trials)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=n_startup_trials)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if not temperatures:
        raise ValueError("the grid sampler needs the list of temperatures (a discrete space)")
    return optuna.samplers.GridSampler(
        {TEMPERATURE_PARAM: cold_to_hot(knob.name, _plain_numbers(temperatures))}, seed=seed)


def _check_sampler_name(name: str) -> None:
    if name not in SAMPLER_NAMES:
        raise ValueError(f"unknown sampler {name!r}; allowed: {', '.join(SAMPLER_NAMES)}")


# --- storage -------------------------------------------------------------------------------

def default_storage_path() -> Path:
    """The default Optuna journal file: ``<repo root>/optuna.journal``."""
    return REPO_ROOT / "optuna.journal"


def make_storage(url: str | None = None) -> BaseStorage:
    """An Optuna storage from a URL or path.

    - ``None``: a journal file at :func:`default_storage_path` (no server; safe for several
      local processes);
    - a path ending in ``.journal``: a journal file there;
    - ``memory``: in-memory (one process; the replay benchmark);
    - any SQLAlchemy URL (``postgresql://...``, ``sqlite:///...``): an RDB storage, the choice
      for workers on several machines (PostgreSQL; a database of its own, not MLflow's: both
      keep an ``alembic_version`` table).

    Raises:
        StoreUnreachableError: a database that does not answer within the store timeout.
        RuntimeError: the database cannot be opened (the message says why and what to try).

    Note: create an RDB study once (the ``init`` step) before starting workers: creating the
    schema from several processes at once races.
    """
    if url is None or url.endswith(".journal"):
        path = Path(url).expanduser() if url else default_storage_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    if url == "memory":
        return InMemoryStorage()
    if "://" in url:
        from tracking.store import ensure_reachable, store_timeout

        # answers within the store timeout (one line per pause), or one clear error
        ensure_reachable(url, what="Optuna storage")
        connect_args = ({"connect_timeout": max(2, round(store_timeout()))}
                        if url.startswith(("postgres", "mysql")) else {})
        try:
            return RDBStorage(url, engine_kwargs={"connect_args": connect_args})
        except Exception as e:   # sqlalchemy's OperationalError, a missing driver, bad schema
            from tracking.store import redact_text, redact_uri

            reason = redact_text(str(e).strip().splitlines()[0], url)
            raise RuntimeError(
                f"cannot open the Optuna storage {redact_uri(url)}: {type(e).__name__}: {reason}. "
                "Check that the database server is running and the database exists "
                "(createdb NAME), or use a local journal file (--storage PATH.journal)") from e
    raise ValueError(f"unknown Optuna storage {url!r}: give a path ending in .journal, "
                     "'memory', or a database URL such as postgresql://user@host/db")


# --- the objective -------------------------------------------------------------------------

class CellObjective:
    """Optuna objective: validation accuracy of the cell (suggested temperature, ``density``).

    Args:
        lookup: ``lookup(temperature, density) -> row``, a results-table row (a mapping with at
            least the objective column, ``lmc_barrier``, ``cka``; ``regime`` and ``run_id``
            optional) of the cell, computed or fetched from the cache. A NaN objective makes
            the trial FAIL (Optuna's rule), which the regime sampler treats as "tried".
        density: the target density.
        temperature_space: the temperatures a trial may choose: a sequence of values (a grid),
            or an Optuna ``FloatDistribution``/``IntDistribution`` (any value in a range).
        knob: the temperature knob (or its name); orders a grid from cold to hot.
        encoding: ``"value"`` (the parameter ``temperature`` is the temperature) or ``"index"``
            (the parameter ``temperature_index`` is 0 = coldest .. n-1 = hottest of a grid);
            see :func:`sampler_encoding`.
        objective_column: the row's key returned as the objective; never a test accuracy.
        eps, tau: regime thresholds (see below).
        regime_labeller: ``row -> regime or None``, e.g. a registered regime classifier (see
            :func:`classifier_callables`); the row it gets also has ``temperature`` and
            ``density``.

    The regime of a cell (user attribute ``regime``), first rule that applies:
    1. ``regime_labeller(row)`` if given;
    2. with ``eps`` and ``tau`` both given: the rule labels with those fixed thresholds
       (:func:`selection.regimes.label_regimes`);
    3. with neither given, the row's own ``regime`` if it has a valid one (a labelled table);
    4. otherwise :func:`selection.regimes.label_grid` (the jump along temperature, or the
       given eps with tau estimated) over this cell, the cells of the study's finished trials
       (read back from their user attributes, so every worker sees the same cells) and the
       ``context`` cells: finished cells of the same grid at OTHER densities (e.g. from the
       tracking store), so the labels follow all the grid knows, not the first one to three
       cells. The method and values used are stored in ``regime_thresholds``.
    Which rule applied is the trial attribute ``regime_source``: ``classifier``,
    ``thresholds``, ``cell`` or ``grid``.

    Note:
        Without context, the first cells are labelled from very few points (one cell: by
        the pooled level, i.e. a barrier below -0.01 is Regime I). Labels of finished trials
        are not revised when later cells move the labels; each trial records its own.
    """

    def __init__(
        self,
        lookup: Callable[[float, float], Mapping[str, Any]],
        density: float,
        temperature_space: Sequence[float] | BaseDistribution,
        knob: Knob | str,
        *,
        encoding: str = "value",
        objective_column: str = keys.VAL_ACC,
        eps: float | None = None,
        tau: float | None = None,
        regime_labeller: Callable[[Mapping[str, Any]], str | None] | None = None,
        context: pd.DataFrame | None = None,
    ) -> None:
        check_objective(objective_column)
        if not 0 < density <= 1:
            raise ValueError(f"density must be a fraction in (0, 1], got {density!r}")
        if encoding not in ("value", "index"):
            raise ValueError(f"encoding must be 'value' or 'index', got {encoding!r}")
        self.lookup = lookup
        self.density = float(density)
        self.knob = get_knob(knob) if isinstance(knob, str) else knob
        self.encoding = encoding
        self.objective_column = objective_column
        self.eps, self.tau = eps, tau
        self.regime_labeller = regime_labeller
        self.context = _context_rows(context, self.knob.name, self.density)
        self.last_source: str | None = None
        if isinstance(temperature_space, (FloatDistribution, IntDistribution)):
            if encoding == "index":
                raise ValueError("the index encoding needs a grid of temperatures, not a range")
            self.temperatures, self.distribution = None, temperature_space
        elif isinstance(temperature_space, BaseDistribution):
            raise ValueError(f"unsupported temperature space {temperature_space!r}: give a list "
                             "of values, a FloatDistribution or an IntDistribution")
        else:
            values = _plain_numbers(temperature_space)
            if not values:
                raise ValueError("the temperature space is empty")
            self.temperatures, self.distribution = cold_to_hot(self.knob.name, values), None

    def suggest(self, trial: optuna.Trial) -> float:
        """The trial's temperature (suggests the parameter of this objective's encoding)."""
        if self.encoding == "index":
            index = trial.suggest_int(TEMPERATURE_INDEX_PARAM, 0, len(self.temperatures) - 1)
            return self.temperatures[index]
        if self.temperatures is not None:
            return trial.suggest_categorical(TEMPERATURE_PARAM, self.temperatures)
        d = self.distribution
        if isinstance(d, IntDistribution):
            return trial.suggest_int(TEMPERATURE_PARAM, d.low, d.high, step=d.step, log=d.log)
        return trial.suggest_float(TEMPERATURE_PARAM, d.low, d.high, step=d.step, log=d.log)

    def __call__(self, trial: optuna.Trial) -> float:
        temperature = self.suggest(trial)
        row = self.lookup(temperature, self.density)
        # Read only the keys named here: the row may carry test accuracy, which stays unread.
        value = _number(row.get(self.objective_column))
        # The cell's own coordinates first, then the row's keys, each read only on demand.
        cell = ChainMap({keys.TEMPERATURE: temperature, keys.DENSITY: self.density}, row)
        regime, thresholds = self.regime_of(cell, trial.study)
        attrs = {
            keys.TEMPERATURE: temperature, keys.DENSITY: self.density, keys.REGIME: regime,
            keys.LMC_BARRIER: _number(row.get(keys.LMC_BARRIER)),
            keys.CKA: _number(row.get(keys.CKA)), RUN_ID: row.get(RUN_ID),
        }
        if thresholds is not None:
            attrs[THRESHOLDS_ATTR] = thresholds
        attrs[REGIME_SOURCE_ATTR] = self.last_source
        for name, attr in attrs.items():
            trial.set_user_attr(name, _jsonable(attr))
        return math.nan if value is None else value

    def regime_of(self, row: Mapping[str, Any], study: optuna.Study | None = None
                  ) -> tuple[str | None, dict | None]:
        """The regime of a cell row and the thresholds/labels used (None when none were);
        ``self.last_source`` says which rule applied."""
        self.last_source = None
        if self.regime_labeller is not None:
            self.last_source = "classifier"
            return self.regime_labeller(row), None
        own = row.get(keys.REGIME)
        if self.eps is None and self.tau is None and own in REGIMES:
            self.last_source = "cell"
            return own, None
        barrier, cka = _number(row.get(keys.LMC_BARRIER)), _number(row.get(keys.CKA))
        if barrier is None or cka is None:
            return None, None
        temperature = _number(row.get(keys.TEMPERATURE))
        here = (temperature if temperature is not None else math.nan, self.density, barrier, cka)
        if self.eps is not None and self.tau is not None:
            frame = pd.DataFrame([(barrier, cka)], columns=[keys.LMC_BARRIER, keys.CKA])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RegimeWarning)
                labelled, thresholds = label_regimes(frame, eps=self.eps, tau=self.tau)
            self.last_source = "thresholds"
            return str(labelled[keys.REGIME].iloc[-1]), thresholds.to_dict()
        cells = [c for c in (_labelled_cells(study) if study is not None else [])
                 if c[0] != here[0]] + [here]
        frame = pd.DataFrame(cells, columns=[keys.TEMPERATURE, keys.DENSITY, keys.LMC_BARRIER,
                                             keys.CKA])
        frame[keys.KNOB] = self.knob.name
        frame[keys.DENSE_SEED] = 0
        if self.context is not None:
            frame = pd.concat([self.context, frame], ignore_index=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RegimeWarning)
            labelled, info = label_grid(frame, self.eps, self.tau, n_resamples=0)
        self.last_source = "grid"
        summary = {k: info[k] for k in ("method", "eps", "level", "level_source", "tau",
                                        "tau_source")}
        summary["n_cells"] = len(frame)
        summary["n_context_cells"] = 0 if self.context is None else len(self.context)
        return str(labelled[keys.REGIME].iloc[-1]), summary


def _context_rows(context: pd.DataFrame | None, knob: str, density: float
                  ) -> pd.DataFrame | None:
    """The rows of ``context`` (a results table) that can label a trial: this knob, other
    densities, barrier and CKA known; the columns :func:`label_grid` reads."""
    if context is None or len(context) == 0:
        return None
    df = context.copy()
    if keys.KNOB in df.columns:
        df = df[df[keys.KNOB].astype(str) == knob]
    df = df[~np.isclose(df[keys.DENSITY].to_numpy(dtype=float), density)]
    df = df.dropna(subset=[keys.LMC_BARRIER, keys.CKA])
    if df.empty:
        return None
    from tracking.tables import PAIR_METRICS

    wanted = [keys.KNOB, keys.TEMPERATURE, keys.DENSITY, keys.DENSE_SEED, keys.LMC_BARRIER,
              keys.LMC_BARRIER_STD, keys.CKA, keys.CKA_STD, PAIR_METRICS]
    df[keys.KNOB] = knob
    if keys.DENSE_SEED not in df.columns:
        df[keys.DENSE_SEED] = 0
    return df[[c for c in wanted if c in df.columns]].reset_index(drop=True)


def _labelled_cells(study: optuna.Study) -> list[tuple[float, float, float, float]]:
    """(temperature, density, barrier, cka) of the study's finished trials, one per
    temperature (cells repeat)."""
    cells = {}
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,
                                                          TrialState.PRUNED)):
        barrier = _number(trial.user_attrs.get(keys.LMC_BARRIER))
        cka = _number(trial.user_attrs.get(keys.CKA))
        temperature = _number(trial.user_attrs.get(keys.TEMPERATURE))
        density = _number(trial.user_attrs.get(keys.DENSITY))
        if None not in (barrier, cka, temperature, density):
            cells[temperature] = (temperature, density, barrier, cka)
    return list(cells.values())


def _number(value: Any) -> float | None:
    """A finite float, or None for missing/NaN/non-numeric values."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _jsonable(value: Any) -> Any:
    # Optuna stores user attributes as JSON: numpy scalars and NaN do not survive every storage.
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _plain_numbers(values: Iterable[Any]) -> list:
    """Distinct Python numbers (ints where integral) from any iterable of numbers."""
    out = []
    for v in values:
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.number)):
            raise ValueError(f"temperatures must be numbers, got {v!r}")
        v = float(v)
        if not math.isfinite(v):
            raise ValueError(f"temperatures must be finite, got {v!r}")
        out.append(int(v) if v.is_integer() else v)
    return sorted(set(out))


# --- a registered regime classifier as predictor / labeller --------------------------------

def classifier_callables(
    model: Any, density: float
) -> tuple[Callable[[float], str | None] | None, Callable[[Mapping[str, Any]], str | None] | None]:
    """``(regime_predictor, regime_labeller)`` from a fitted regime classifier
    (:mod:`selection.classifier`) for the target ``density``.

    A ``phase`` model (features temperature and density only) predicts the regime of cells not
    run yet: it becomes the sampler's ``regime_predictor`` (labeller None). A ``landscape``
    model (with LMC barrier and CKA) labels measured cells: it becomes the objective's
    ``regime_labeller`` (predictor None).
    """
    from selection.classifier import predict_regimes

    features = list(model.feature_names_in_)

    def regime(values: Mapping[str, Any]) -> str | None:
        row = {f: _number(values.get(f)) for f in features}
        if any(v is None for v in row.values()):
            return None
        return str(predict_regimes(model, pd.DataFrame([row]))[0])

    if set(features) <= {keys.TEMPERATURE, keys.DENSITY}:
        return (lambda t: regime({keys.TEMPERATURE: t, keys.DENSITY: density})), None

    return None, regime


# --- running a study -----------------------------------------------------------------------

def study_name_for(knob: Knob | str, density: float, sampler: str) -> str:
    """The default study name, e.g. ``tune-epochs-d0.05-regime``."""
    name = knob if isinstance(knob, str) else knob.name
    return f"tune-{name}-d{density:g}-{sampler}"


def tune(
    lookup: Callable[[float, float], Mapping[str, Any]],
    *,
    density: float,
    temperature_space: Sequence[float] | BaseDistribution,
    knob: Knob | str,
    n_trials: int,
    sampler: str = "regime",
    seed: int | None = 0,
    storage: str | BaseStorage | None = None,
    study_name: str | None = None,
    eps: float | None = None,
    tau: float | None = None,
    regime_labeller: Callable[[Mapping[str, Any]], str | None] | None = None,
    regime_predictor: Callable[[float], str | None] | None = None,
    logger: MlflowTrialLogger | None = None,
    context: pd.DataFrame | None = None,
    transfer: TransferPrior | None = None,
) -> optuna.Study:
    """Run ``n_trials`` more trials of a (new or resumed) study; return the study.

    ``storage`` is a :func:`make_storage` URL/path or a storage object; ``None`` is the journal
    file at :func:`default_storage_path`. With ``logger``, every trial of this process is
    logged to MLflow and its ``on_study_end`` is called at the end
    (:class:`selection._tracking.MlflowTrialLogger`).
    ``context``: finished cells (a results table) of the same grid, other densities used by
    the labels (see :class:`CellObjective`); ``transfer``: the regime sampler's start from
    them (:func:`selection.sampler.transfer_prior`).
    """
    knob = get_knob(knob) if isinstance(knob, str) else knob
    if n_trials < 1:
        raise ValueError(f"n_trials must be >= 1, got {n_trials!r}")
    grid = None if isinstance(temperature_space, BaseDistribution) else temperature_space
    objective = CellObjective(lookup, density, temperature_space, knob,
                              encoding=sampler_encoding(sampler) if grid is not None else "value",
                              eps=eps, tau=tau, regime_labeller=regime_labeller,
                              context=context)
    study = optuna.create_study(
        study_name=study_name or study_name_for(knob, density, sampler),
        storage=storage if isinstance(storage, BaseStorage) else make_storage(storage),
        sampler=create_sampler(sampler, knob, seed, temperatures=grid,
                               regime_predictor=regime_predictor, transfer=transfer),
        direction="maximize", load_if_exists=True)
    for name, value in ((keys.KNOB, knob.name), (keys.DENSITY, float(density)),
                        (keys.SAMPLER, sampler)):
        study.set_user_attr(name, value)
    study.optimize(objective, n_trials=n_trials, callbacks=[logger] if logger else None)
    if logger is not None:
        logger.on_study_end(study)
    return study
