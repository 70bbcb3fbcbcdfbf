"""The grid runner: a config's cells as an MLflow-tracked, cached, resumable DAG.

dense runs (one per knob value and dense seed; for ``epochs`` ONE run serves every
temperature; ``pipeline/dense_run.py``) -> batches of cells (pruned, fine-tuned together,
measured together) -> one MLflow run per cell (``tracking/records.py``), nested under the
grid's parent run. Every node is looked up by spec hash first: a finished grid is a pure
lookup; extending it computes only the new cells. :func:`compute_grid` computes the same
cells in this process with nothing tracked or cached (benchmarks, quick sweeps).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import NamedTuple

import pandas as pd
import torch

from pipeline.cell import CellResult, finetune_members, finetune_steps, run_cells
from pipeline.config import GridConfig
from pipeline.data import Dataset, load_dataset
from pipeline.dense import train_dense
from pipeline.dense_run import DenseRun, DenseRuns, progress_bar
from pipeline.dense_run import checkpoint_path as checkpoint_path  # re-exported for callers
from pipeline.executors import Node, get_executor
from pipeline.parallel import Budget
from pipeline.specs import CellSpec, DenseSpec, cell_hash, dense_hash
from tracking import keys
from tracking.artifacts import log_files
from tracking.cache import RunCache
from tracking.records import CellIdentity, CellRecord, PairRecord, cell_run_name, log_cell
from tracking.store import TrackingUnavailableError, configure, get_client, init_experiment
from tracking.tables import best_temperature_per_density, format_best_temperatures, results_table

Point = tuple[DenseSpec, CellSpec, int]


class CellFailure(NamedTuple):
    """A cell that failed, by its run name, and why."""

    name: str
    reason: str


@dataclass
class CellsOutcome:
    """What :meth:`GridRunner.compute_cells` did with a batch of cells."""

    computed: int = 0
    failed: list[CellFailure] = field(default_factory=list)
    elsewhere: list[Point] = field(default_factory=list)  # claimed or finished by another run


@dataclass
class GridSummary:
    experiment: str
    grid_run_id: str | None
    cells: int = 0
    computed: int = 0
    cached: int = 0
    busy: int = 0                     # being computed by another live process
    failed: list[CellFailure] = field(default_factory=list)
    dense_computed: int = 0
    seconds: float = 0.0
    best: pd.DataFrame | None = None  # best temperature per density (None: no finished cell)

    @property
    def ok(self) -> bool:
        """Every cell is FINISHED (none failed, none left to another process)."""
        return not self.failed and not self.busy

    def lines(self) -> list[str]:
        out = [f"grid {self.experiment!r}: {self.cells} cells: {self.computed} computed, "
               f"{self.cached} cached, {len(self.failed)} failed"
               + (f", {self.busy} being computed elsewhere" if self.busy else "")
               + f"; {self.dense_computed} dense runs trained; {self.seconds:.1f} s"]
        out += [f"  FAILED {name}: {reason}" for name, reason in self.failed]
        if self.busy:
            out.append(f"  {self.busy} cell(s) still claimed by another live process: run the "
                       "same command again later to collect them")
        if self.best is not None:
            table = format_best_temperatures(self.best)
            if self.failed or self.busy:
                table[0] = table[0].replace(":", ", finished cells only:", 1)
            out += table
        return out


def cell_name(cell: CellSpec, dense_seed: int) -> str:
    """A readable run name for the MLflow UI, e.g. ``epochs=40 d=0.10 s=0``."""
    return cell_run_name(cell.knob, cell.temperature, cell.prune.density, dense_seed)


def cell_identity(dense: DenseSpec, cell: CellSpec, dense_seed: int) -> CellIdentity:
    """What the cell's run is claimed with (its params and tags)."""
    return CellIdentity(
        knob=cell.knob, temperature=cell.temperature, density=cell.prune.density,
        dense_seed=dense_seed, finetune_seeds=tuple(cell.finetune.seeds),
        prune_method=cell.prune.method, finetune_recipe=cell.finetune.recipe,
        finetune_epochs=cell.finetune.train.epochs, dataset=dense.data.name,
        model=dense.model.name, dense_spec_hash=dense_hash(dense))


def cell_record(r: CellResult, dense_run_id: str) -> CellRecord:
    """What a computed cell's run logs."""
    spectra_csv = None
    if r.spectra is not None:
        from pipeline.spectra import cell_spectra_csv

        spectra_csv = cell_spectra_csv(r.spectra)
    return CellRecord(
        spec=r.spec.to_dict(), dense=r.dense.to_dict(), spec_hash=r.spec_hash,
        seeds=r.spec.finetune.seeds, aggregates=r.metrics(), seconds=r.seconds,
        test_acc=r.test_acc, val_acc=r.val_acc,
        pairs=[PairRecord(tuple(p.pair), p.lmc_barrier, p.cka, p.lmc_errors) for p in r.pairs],
        curves=r.curves, mask=r.mask, finetuned=r.finetuned, dense_run_id=dense_run_id,
        spectra_csv=spectra_csv)


def cells_per_batch(cfg: GridConfig) -> int:
    """How many cells are fine-tuned together (``runtime.batch_cells``, ``max_members``)."""
    if not cfg.runtime.batch_cells:
        return 1
    return max(1, cfg.runtime.max_members // len(cfg.finetune.seeds))


def _reason(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


class GridRunner:
    """Runs the points of one config in one experiment (see module doc)."""

    def __init__(self, cfg: GridConfig, experiment: str | None = None, progress: bool = True,
                 tracking_uri: str | None = None):
        self.cfg = cfg
        self.experiment = experiment or cfg.experiment
        self.progress = progress
        self.uri = configure(tracking_uri)
        self.experiment_id = init_experiment(self.experiment, cfg.description or None)
        self.client = get_client()
        self.cache = RunCache(self.client, self.experiment_id)
        self.dense_runs = DenseRuns(cfg, self.cache, progress)
        self.poll_seconds = self.dense_runs.poll_seconds   # while waiting for cells elsewhere
        self.wait_busy = self.cache.stale_after  # how long run() waits for cells claimed elsewhere
        self.grid_run_id: str | None = None      # set by run(): dense runs started nest under it
        if cfg.runtime.threads:
            torch.set_num_threads(cfg.runtime.threads)

    def __getstate__(self) -> dict:
        # Node functions close over the runner and travel to Dask workers: MLflow clients hold
        # database engines, so a worker rebuilds them from the tracking URI (all it needs).
        unpicklable = ("client", "cache", "dense_runs")
        state = {k: v for k, v in self.__dict__.items() if k not in unpicklable}
        state["stale_after"] = self.cache.stale_after
        return state

    def __setstate__(self, state: dict) -> None:
        stale_after = state.pop("stale_after")
        self.__dict__.update(state)
        self.progress = False               # no progress bars in worker logs
        if not self.cfg.runtime.workers:
            # "one per core" on a worker: the executor already runs a worker process per core
            self.cfg = replace(self.cfg, runtime=replace(self.cfg.runtime, workers=1))
        configure(self.uri)
        self.client = get_client()
        self.cache = RunCache(self.client, self.experiment_id, stale_after)
        self.dense_runs = DenseRuns(self.cfg, self.cache, self.progress, self.poll_seconds)

    # -- the whole grid ------------------------------------------------------------------
    def run(self, points: list[Point] | None = None, executor: str = "serial",
            executor_options: dict | None = None,
            parent_run_id: str | None = None) -> GridSummary:
        started = time.perf_counter()
        points = points if points is not None else self.cfg.cells()
        remaining = {cell_hash(c, d): (d, c, s) for d, c, s in points}
        cell_hashes = set(remaining)
        self.grid_run_id = parent_run_id or self._grid_run(sorted(remaining))
        summary = GridSummary(self.experiment, self.grid_run_id, cells=len(points))
        waited = 0.0
        # Rounds: compute what is free; cells another live process holds are polled until they
        # finish (cached), or their owner dies (then computed here in the next round).
        while True:
            pending, busy = self._triage(remaining, summary)
            if pending:
                elsewhere = self._compute(pending, executor, executor_options, summary)
                busy.update({cell_hash(c, d): (d, c, s) for d, c, s in elsewhere})
            remaining = busy
            if not remaining or waited >= self.wait_busy:
                break
            time.sleep(self.poll_seconds)
            waited += self.poll_seconds
        summary.busy = len(remaining)
        summary.seconds = time.perf_counter() - started
        if not parent_run_id:
            self._end_grid_run(summary, cell_hashes)
        return summary

    def _triage(self, remaining: dict[str, Point],
              summary: GridSummary) -> tuple[list[Point], dict[str, Point]]:
        """The cells to compute now and those another live process holds; FINISHED ones are
        counted as cached, dead claims marked FAILED (then computed again)."""
        looked = self.cache.lookup_many(remaining, keys.KIND_CELL)
        pending: list[Point] = []
        busy: dict[str, Point] = {}
        for h, point in remaining.items():
            entry = looked[h]
            if entry.finished is not None:
                summary.cached += 1
            elif entry.active is not None:
                busy[h] = point
            else:
                if entry.resumable is not None:
                    self.cache.abandon(entry.resumable, "owner died before the cell finished")
                pending.append(point)
        return pending, busy

    def _end_grid_run(self, summary: GridSummary, cell_hashes: set[str]) -> None:
        grid_run = summary.grid_run_id
        self.cache.log(grid_run, metrics={
            keys.CELLS_COMPUTED: summary.computed, keys.CELLS_CACHED: summary.cached,
            keys.CELLS_FAILED: len(summary.failed), keys.GRID_SECONDS: summary.seconds})
        summary.best = best_temperatures(self.experiment, cell_hashes, self.client)
        if summary.best is not None:
            log_files(self.client, grid_run,
                      {keys.ARTIFACT_BEST_TEMPERATURES: summary.best.to_csv(index=False)})
        if summary.failed:
            self.cache.fail(grid_run, f"{len(summary.failed)} cell(s) failed")
        elif summary.busy:
            self.cache.fail(grid_run, f"{summary.busy} cell(s) still computed elsewhere; re-run")
        else:
            self.cache.finish(grid_run)

    def _compute(self, pending: list[Point], executor: str, executor_options: dict | None,
                 summary: GridSummary) -> list[Point]:
        """Run the DAG of ``pending`` and count it in ``summary``; returns the cells that another
        process claimed or finished first (the caller looks at them again)."""
        nodes, batches = self._dag(pending)
        results = get_executor(executor, **(executor_options or {})).run(nodes)
        elsewhere: list[Point] = []
        for node in nodes:
            outcome = results.get(node.key)
            if isinstance(outcome, TrackingUnavailableError):
                raise outcome      # nothing can be recorded: stop; a re-run resumes
            if isinstance(outcome, DenseRun):
                summary.dense_computed += outcome.computed
            elif node.key not in batches:
                continue                # a dense run that failed: its cells' nodes say so
            elif isinstance(outcome, BaseException):   # the batch, or a dense run it needs
                summary.failed += [CellFailure(cell_name(c, s), _reason(outcome))
                                   for _, c, s in batches[node.key]]
            else:
                summary.computed += outcome.computed
                summary.failed += outcome.failed
                elsewhere += outcome.elsewhere
        return elsewhere

    def _grid_run(self, cell_hashes: list[str]) -> str:
        cfg = self.cfg
        grid_hash = hashlib.sha256(json.dumps(cell_hashes).encode()).hexdigest()[:16]
        entry = self.cache.lookup(grid_hash, keys.KIND_GRID)
        existing = entry.finished or entry.resumable or entry.active
        if existing is not None:
            return self.cache.reopen(existing)
        claim = self.cache.claim(
            grid_hash, keys.KIND_GRID,
            f"grid {cfg.knob} {len(cfg.temperatures)}x{len(cfg.densities)}",
            params={keys.KNOB: cfg.knob, keys.DATASET: cfg.data.name, keys.MODEL: cfg.model.name,
                    keys.TEMPERATURES: list(cfg.temperatures),
                    keys.DENSITIES: list(cfg.densities), keys.DENSE_SEEDS: list(cfg.dense_seeds),
                    keys.PRUNE_METHOD: cfg.prune.method,
                    keys.FINETUNE_SEEDS: list(cfg.finetune.seeds),
                    keys.FINETUNE_RECIPE: cfg.finetune.recipe},
            tags={keys.NOTE: cfg.description} if cfg.description else None)
        if not claim.won:
            return claim.winner      # another grid process started at once: share its parent run
        log_files(self.client, claim.run_id, {keys.ARTIFACT_CONFIG: dataclasses.asdict(cfg)})
        return claim.run_id

    def _dag(self, pending: list[Point]) -> tuple[list[Node], dict[str, list[Point]]]:
        dense_specs = {dense_hash(d): d for d, _, _ in pending}
        nodes = [Node(f"dense:{h}", (lambda d=d: self.ensure_dense(d)))
                 for h, d in dense_specs.items()]
        batches: dict[str, list[Point]] = {}
        per_batch = cells_per_batch(self.cfg)
        for start in range(0, len(pending), per_batch):
            batch = pending[start:start + per_batch]
            needed = sorted({dense_hash(d) for d, _, _ in batch})
            deps = {f"d{i}": f"dense:{h}" for i, h in enumerate(needed)}

            def fn(batch=batch, **dense_results: DenseRun) -> CellsOutcome:
                runs = {r.spec_hash: r.run_id for r in dense_results.values()}
                return self.compute_cells(batch, runs)

            nodes.append(Node(f"cells:{start}", fn, deps))
            batches[f"cells:{start}"] = batch
        return nodes, batches

    # -- dense runs ----------------------------------------------------------------------
    def ensure_dense(self, dense: DenseSpec) -> DenseRun:
        """The FINISHED dense run of ``dense`` (trained first if needed; see
        ``pipeline/dense_run.py``)."""
        return self.dense_runs.ensure(dense, self.grid_run_id)

    # -- cells ---------------------------------------------------------------------------
    def compute_cells(self, batch: list[Point], dense_runs: dict[str, str]) -> CellsOutcome:
        """Claim, compute (batched) and log the cells of ``batch``; ``dense_runs`` maps a dense
        spec hash to its FINISHED run."""
        points = {cell_hash(c, d): (d, c, s) for d, c, s in batch}
        runs = self._claim(points)
        outcome = CellsOutcome(elsewhere=[p for h, p in points.items() if h not in runs])
        todo = [p for h, p in points.items() if h in runs]
        if not todo:
            return outcome
        data = load_dataset(todo[0][0].data, self.cfg.runtime.device)
        jobs, ok_points = [], []
        for d, c, s in todo:
            try:
                state = self.dense_runs.checkpoint(d, dense_runs, c.checkpoint_epoch,
                                                   self.grid_run_id)
            except Exception as e:  # noqa: BLE001
                outcome.failed.append(self._fail(runs[cell_hash(c, d)], c, s, e))
                continue
            jobs.append((c, d, state))
            ok_points.append((d, c, s))
        results = self._fine_tune(jobs, ok_points, data, runs, outcome)
        for r in results:
            run_id = runs[r.spec_hash]
            with self.cache.computing(run_id, r.spec_hash, keys.KIND_CELL) as done:
                # the dense run as of now: it may have been replaced (a corrupt checkpoint)
                log_cell(self.cache, run_id, cell_record(r, dense_runs[dense_hash(r.dense)]))
            if done.finished:
                outcome.computed += 1
            else:
                outcome.elsewhere.append(points[r.spec_hash])   # another run finished first
        return outcome

    def _claim(self, points: dict[str, Point]) -> dict[str, str]:
        """Claim the cells nobody holds; the runs of the claims this process won, by hash."""
        looked = self.cache.lookup_many(points, keys.KIND_CELL)
        requests = {h: cell_identity(d, c, s).claim(self.grid_run_id)
                    for h, (d, c, s) in points.items()
                    if looked[h].finished is None and looked[h].active is None}
        claims = self.cache.claim_many(requests, keys.KIND_CELL)
        return {h: claim.run_id for h, claim in claims.items() if claim.won}

    def _fine_tune(self, jobs: list, points: list[Point], data: Dataset, runs: dict[str, str],
                   outcome: CellsOutcome) -> list[CellResult]:
        """``run_cells`` on ``jobs``; if the batch fails, its cells one at a time, so that only
        the failing ones are marked FAILED (in the store and in ``outcome``)."""
        rt = self.cfg.runtime
        workers = rt.resolved_workers()
        budget = Budget.for_device(data.x_train.device, rt.memory_gb)   # once: free memory changes
        steps = finetune_steps(len(jobs), jobs[0][0], len(data.x_train), finetune_members(
            jobs[0][1].model, data, jobs[0][0].finetune, rt.max_members, workers, budget),
            workers) if jobs else 0
        with progress_bar(steps, f"fine-tune {len(jobs)} cells", self.progress) as bar:
            beat = self.cache.heartbeats(runs.values())

            def progress(n: int) -> None:
                bar.update(n)
                beat()

            try:
                return run_cells(jobs, data, rt.max_members, workers=workers, memory=budget,
                                 progress=progress)
            except Exception:   # noqa: BLE001 - isolate the failing cell(s): one at a time
                results = []
                for job, (d, c, s) in zip(jobs, points, strict=True):
                    try:
                        results += run_cells([job], data, rt.max_members, workers=workers,
                                             memory=budget)
                    except Exception as e:  # noqa: BLE001
                        outcome.failed.append(self._fail(runs[cell_hash(c, d)], c, s, e))
                return results

    def _fail(self, run_id: str, cell: CellSpec, dense_seed: int,
              error: Exception) -> CellFailure:
        """End the cell's run FAILED with the error as its reason."""
        failure = CellFailure(cell_name(cell, dense_seed), _reason(error))
        self.cache.fail(run_id, failure.reason)
        return failure


@dataclass
class UntrackedGrid:
    """The cells of a grid computed by :func:`compute_grid`."""

    points: list[Point]
    results: list[CellResult]     # in the order of ``points``
    dense_seconds: float
    cells_seconds: float


def compute_grid(cfg: GridConfig, max_members: int | None = None, workers: int | None = None,
                 batch: int | None = None,
                 log: Callable[[str], None] | None = None) -> UntrackedGrid:
    """Every cell of ``cfg`` in this process, with no MLflow: nothing tracked, cached or resumed.

    One dense run per distinct dense spec, then the cells, ``batch`` at a time (None: all in
    one ``run_cells`` call; a cell's numbers do not depend on it). ``max_members`` and
    ``workers`` default to the config's runtime; ``log`` gets a line per step.
    """
    say = log or (lambda _line: None)
    rt = cfg.runtime
    max_members = rt.max_members if max_members is None else max_members
    workers = rt.resolved_workers() if workers is None else workers
    data = load_dataset(cfg.data, rt.device)
    points = cfg.cells()
    checkpoints: dict[str, dict] = {}
    dense_seconds = 0.0
    for dense, _, _ in points:
        h = dense_hash(dense)
        if h in checkpoints:
            continue
        started = time.perf_counter()
        checkpoints[h] = train_dense(dense, data, keep_every_epoch=cfg.knob == "epochs")
        seconds = time.perf_counter() - started
        dense_seconds += seconds
        say(f"dense run {h} ({dense.train.epochs} epochs, seed {dense.seed}): {seconds:.1f} s")
    jobs = [(cell, dense, checkpoints[dense_hash(dense)][cell.checkpoint_epoch])
            for dense, cell, _ in points]
    say(f"{len(jobs)} cells x {len(cfg.finetune.seeds)} fine-tune seeds "
        f"({cfg.finetune.train.epochs} epochs each), max {max_members} members at once, "
        f"{workers} worker(s) ...")
    started = time.perf_counter()
    size = batch or max(len(jobs), 1)
    results: list[CellResult] = []
    for i in range(0, len(jobs), size):
        results += run_cells(jobs[i:i + size], data, max_members, workers=workers)
    cells_seconds = time.perf_counter() - started
    say(f"cells: {cells_seconds:.1f} s")
    return UntrackedGrid(points, results, dense_seconds, cells_seconds)


def best_temperatures(experiment: str, cell_hashes: set[str] | None = None,
                      client=None) -> pd.DataFrame | None:
    """:func:`~tracking.tables.best_temperature_per_density` over the FINISHED cells of
    ``experiment`` (only those whose spec hash is in ``cell_hashes``, when given): read from
    the results table, nothing recomputed. None when no such cell has a test accuracy.

    The ``regime`` column appears once the cells carry regime tags (``python -m selection
    classify`` writes them): labelling needs the whole grid's thresholds, which belong to the
    selection layer, not to the grid.
    """
    table = results_table(experiment, client)
    if cell_hashes is not None:
        table = table[table[keys.SPEC_HASH].isin(cell_hashes)]
    if table.empty or table[keys.TEST_ACC].isna().all():
        return None
    return best_temperature_per_density(table)


def run_grid(cfg: GridConfig, experiment: str | None = None, executor: str = "serial",
             progress: bool = True, executor_options: dict | None = None) -> GridSummary:
    """Run (or resume) every cell of ``cfg``; see ``GridRunner``."""
    runner = GridRunner(cfg, experiment, progress)
    return runner.run(executor=executor, executor_options=executor_options)


def ensure_cell(cfg: GridConfig, temperature: float, density: float,
                dense_seed: int | None = None, experiment: str | None = None,
                parent_run_id: str | None = None, progress: bool = False) -> dict:
    """The results-table row of one cell, computing it (and its dense run) only if needed."""
    from tracking.records import run_row
    from tracking.store import latest_finished_run

    seed = cfg.dense_seeds[0] if dense_seed is None else dense_seed
    runner = GridRunner(cfg, experiment, progress)
    dense, cell = cfg.cell(temperature, density, seed)
    if parent_run_id is None:
        # a lone cell joins the experiment's latest grid rather than opening a one-cell grid run
        latest = latest_finished_run(runner.client, runner.experiment_id, keys.KIND_GRID)
        parent_run_id = latest.info.run_id if latest is not None else None
    summary = runner.run([(dense, cell, seed)], parent_run_id=parent_run_id)
    if summary.failed:
        raise RuntimeError(f"cell {cell_name(cell, seed)} failed: {summary.failed[0].reason}")
    found = runner.cache.lookup(cell_hash(cell, dense), keys.KIND_CELL).finished
    if found is None:
        raise RuntimeError(f"cell {cell_name(cell, seed)} is being computed by another process")
    return run_row(found)
