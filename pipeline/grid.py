"""The grid runner: a config's cells as an MLflow-tracked, cached, resumable DAG.

dense runs (one per knob value and dense seed; for ``epochs`` ONE run serves every
temperature) -> batches of cells (pruned, fine-tuned together, measured together) -> one
MLflow run per cell, nested under the grid's parent run. Every node is looked up by spec
hash first: a finished grid is a pure lookup; extending it computes only the new cells.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass, field, replace

import pandas as pd
import torch
from tqdm.auto import tqdm

from pipeline.cell import CellResult, finetune_members, finetune_steps, run_cells
from pipeline.config import GridConfig
from pipeline.data import load_dataset
from pipeline.dense import FINAL, train_dense
from pipeline.executors import Node, get_executor
from pipeline.parallel import Budget
from pipeline.specs import CellSpec, DenseSpec, cell_hash, dense_hash
from pipeline.train import TrainState, total_epochs, total_iterations
from tracking import keys
from tracking.artifacts import CorruptArtifactError, load_file, log_files
from tracking.cache import RunCache
from tracking.store import TrackingUnavailableError, configure, get_client, init_experiment
from tracking.tables import best_temperature_per_density, format_best_temperatures, results_table

Point = tuple[DenseSpec, CellSpec, int]
HEARTBEAT_SECONDS = 60.0


@dataclass
class GridSummary:
    experiment: str
    grid_run_id: str | None
    cells: int = 0
    computed: int = 0
    cached: int = 0
    busy: int = 0                     # being computed by another live process
    failed: list[tuple[str, str]] = field(default_factory=list)   # (cell name, reason)
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
            out.append(f"  {self.busy} cell(s) still claimed by another live process: run the same "
                       "command again later to collect them")
        if self.best is not None:
            table = format_best_temperatures(self.best)
            if self.failed or self.busy:
                table[0] = table[0].replace(":", ", finished cells only:", 1)
            out += table
        return out


def cell_name(cell: CellSpec, dense_seed: int) -> str:
    """A readable run name for the MLflow UI, e.g. ``epochs=40 d=0.10 s=0``."""
    return f"{cell.knob}={_number(cell.temperature)} d={cell.prune.density:.2f} s={dense_seed}"


def dense_name(cfg: GridConfig, dense: DenseSpec) -> str:
    if cfg.knob == "epochs":
        return f"dense epochs<={dense.train.epochs} s={dense.seed}"
    value = getattr(dense.train, cfg.knob)
    return f"dense {cfg.knob}={value} s={dense.seed}"


def resume_path(epoch: int) -> str:
    """Where the training state after ``epoch`` is saved: two slots, alternating by epoch.

    A file is uploaded before its checksum tag is logged, so an owner killed in between leaves
    the file it was writing unverifiable; the other slot still holds the previous epoch.
    """
    return keys.ARTIFACT_RESUME_SLOT.format(epoch % 2)


def checkpoint_path(epoch: int) -> str:
    return f"{keys.ARTIFACT_CHECKPOINT_DIR}/{'final' if epoch == FINAL else f'epoch_{epoch:04d}'}.pt"


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
        self.poll_seconds = 2.0                 # while waiting for another process's node
        self.wait_busy = self.cache.stale_after  # how long run() waits for cells claimed elsewhere
        if cfg.runtime.threads:
            torch.set_num_threads(cfg.runtime.threads)

    def __getstate__(self) -> dict:
        # Node functions close over the runner and travel to Dask workers: MLflow clients hold
        # database engines, so a worker rebuilds them from the tracking URI (all it needs).
        state = {k: v for k, v in self.__dict__.items() if k not in ("client", "cache")}
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

    # -- the whole grid ------------------------------------------------------------------
    def run(self, points: list[Point] | None = None, executor: str = "serial",
            executor_options: dict | None = None, parent_run_id: str | None = None) -> GridSummary:
        started = time.perf_counter()
        points = points if points is not None else self.cfg.cells()
        summary = GridSummary(self.experiment, None, cells=len(points))
        remaining = {cell_hash(c, d): (d, c, s) for d, c, s in points}
        cell_hashes = set(remaining)
        grid_run = parent_run_id or self._grid_run(sorted(remaining))
        self.grid_run_id = grid_run     # dense runs started by this grid nest under it
        summary.grid_run_id = grid_run
        waited = 0.0
        # Rounds: compute what is free; cells another live process holds are polled until they
        # finish (cached), or their owner dies (then computed here in the next round).
        while True:
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
            if pending:
                for d, c, s in self._compute(pending, grid_run, executor, executor_options, summary):
                    busy[cell_hash(c, d)] = (d, c, s)
            remaining = busy
            if not remaining or waited >= self.wait_busy:
                break
            time.sleep(self.poll_seconds)
            waited += self.poll_seconds
        summary.busy = len(remaining)
        summary.seconds = time.perf_counter() - started
        if not parent_run_id:
            self.cache.log(grid_run, metrics={"cells_computed": summary.computed, "cells_cached": summary.cached,
                                              "cells_failed": len(summary.failed),
                                              "grid_seconds": summary.seconds})
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
        return summary

    def _compute(self, pending: list[Point], grid_run: str, executor: str, executor_options: dict | None,
                 summary: GridSummary) -> list[Point]:
        """Run the DAG of ``pending`` and count it in ``summary``; returns the cells that another
        process claimed or finished first (the caller looks at them again)."""
        nodes, batches = self._dag(pending, grid_run)
        results = get_executor(executor, **(executor_options or {})).run(nodes)
        elsewhere: list[Point] = []
        for node in nodes:
            outcome = results.get(node.key)
            if isinstance(outcome, TrackingUnavailableError):
                raise outcome      # nothing can be recorded: stop; a re-run resumes
            if node.key.startswith("dense:"):
                summary.dense_computed += isinstance(outcome, tuple) and outcome[1]
                continue
            if isinstance(outcome, BaseException):
                batch = batches[node.key]
                summary.failed += [(cell_name(c, s), f"{type(outcome).__name__}: {outcome}") for _, c, s in batch]
            else:
                summary.computed += outcome["computed"]
                summary.failed += outcome["failed"]
                elsewhere += outcome["elsewhere"]
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
                    "temperatures": list(cfg.temperatures), "densities": list(cfg.densities),
                    "dense_seeds": list(cfg.dense_seeds), keys.PRUNE_METHOD: cfg.prune.method,
                    keys.FINETUNE_SEEDS: list(cfg.finetune.seeds), keys.FINETUNE_RECIPE: cfg.finetune.recipe},
            tags={keys.NOTE: cfg.description} if cfg.description else None)
        if not claim.won:
            return claim.winner      # another grid process started at once: share its parent run
        log_files(self.client, claim.run_id, {"config.json": _config_dict(cfg)})
        return claim.run_id

    def _dag(self, pending: list[Point], grid_run: str) -> tuple[list[Node], dict[str, list[Point]]]:
        dense_specs = {dense_hash(d): d for d, _, _ in pending}
        nodes = [Node(f"dense:{h}", (lambda d=d: self.ensure_dense(d))) for h, d in dense_specs.items()]
        batches: dict[str, list[Point]] = {}
        per_batch = max(1, self.cfg.runtime.max_members // len(self.cfg.finetune.seeds)) \
            if self.cfg.runtime.batch_cells else 1
        for start in range(0, len(pending), per_batch):
            batch = pending[start:start + per_batch]
            deps = {f"d{i}": f"dense:{h}" for i, h in enumerate(sorted({dense_hash(d) for d, _, _ in batch}))}

            def fn(batch=batch, grid_run=grid_run, **dense_results):
                runs = {r[2]: r[0] for r in dense_results.values()}
                return self.compute_cells(batch, runs, grid_run)

            nodes.append(Node(f"cells:{start}", fn, deps))
            batches[f"cells:{start}"] = batch
        return nodes, batches

    # -- dense runs ----------------------------------------------------------------------
    def ensure_dense(self, dense: DenseSpec) -> tuple[str, bool, str]:
        """(run id, whether it was computed now, spec hash) of the FINISHED dense run."""
        h = dense_hash(dense)
        how, run_id = self._take_dense(dense, h)
        if how == "finished":
            return run_id, False, h
        data = load_dataset(dense.data, self.cfg.runtime.device)
        resume = None
        if how == "reopened":
            resume = self._resume_state(run_id)   # None: nothing usable, start again in the same run
        else:
            log_files(self.client, run_id, {keys.ARTIFACT_SPEC: {"spec": dense.to_dict(), "spec_hash": h}})
        keep_every = self.cfg.knob == "epochs"
        n = len(data.x_train)
        epochs = total_epochs(dense.train, n)
        pending_files: dict[str, object] = {}
        last_beat = [time.time()]

        def on_checkpoint(epoch: int, state) -> None:
            pending_files[checkpoint_path(epoch)] = state
            if self.cfg.measure.spectra:
                self._log_dense_spectra(run_id, epoch if epoch != FINAL else epochs, state, data,
                                        pending_files)

        def on_epoch_state(state: TrainState) -> None:
            # one upload per epoch: the new checkpoint(s) and the state to resume from
            files = dict(pending_files)
            pending_files.clear()
            if state.epoch < epochs:
                files[resume_path(state.epoch)] = state.to_dict()
            if files:
                log_files(self.client, run_id, files)
            if time.time() - last_beat[0] > HEARTBEAT_SECONDS:
                self.cache.heartbeat(run_id)
                last_beat[0] = time.time()

        steps = total_iterations(dense.train, n)
        with self.cache.computing(run_id), self._bar(steps, dense_name(self.cfg, dense)) as bar:
            if resume is not None:
                bar.update(resume.iteration)
            kept = train_dense(dense, data, keep_every, on_checkpoint, on_epoch_state, resume,
                               progress=bar.update)
            from pipeline.models import build_model
            from pipeline.train import evaluate

            model = build_model(dense.model, data.input_shape, data.num_classes).to(data.x_train.device)
            last_key = max(kept) if keep_every else FINAL
            if last_key in kept:
                model.load_state_dict(kept[last_key])
                self.cache.log(run_id, metrics={keys.DENSE_ACC: float(evaluate(model, data.x_test, data.y_test)[0])})
        return run_id, True, h

    def _resume_state(self, run_id: str) -> TrainState | None:
        """The newest saved training state of ``run_id`` whose checksum verifies, or None."""
        states = []
        for slot in (0, 1):
            try:
                states.append(TrainState.from_dict(load_file(self.client, run_id,
                                                             keys.ARTIFACT_RESUME_SLOT.format(slot))))
            except CorruptArtifactError:
                pass   # never written, or the owner died mid-upload: the other slot is intact
        return max(states, key=lambda state: state.epoch, default=None)

    def _take_dense(self, dense: DenseSpec, h: str) -> tuple[str, str]:
        """("finished", id) of a FINISHED dense run, or ("new" | "reopened", id) of the run this
        process now owns. Waits while another live process trains it; only the holder of the
        claim lock starts or reopens it, so two processes never train the same dense run."""
        while True:
            entry = self.cache.lookup(h, keys.KIND_DENSE)
            if entry.finished is not None:
                return "finished", entry.finished.info.run_id
            if entry.active is None:
                with self.cache.exclusive(h, keys.KIND_DENSE) as held:
                    if held:
                        entry = self.cache.lookup(h, keys.KIND_DENSE)     # again, under the lock
                        if entry.finished is not None:
                            return "finished", entry.finished.info.run_id
                        if entry.active is None and entry.resumable is not None:
                            return "reopened", self.cache.reopen(entry.resumable)
                        if entry.active is None:
                            return "new", self.cache.start(h, keys.KIND_DENSE, dense_name(self.cfg, dense),
                                                           parent_run_id=getattr(self, "grid_run_id", None),
                                                           params=_dense_params(self.cfg, dense))
            time.sleep(self.poll_seconds)   # another live process trains it: wait for its result

    # -- cells ---------------------------------------------------------------------------
    def compute_cells(self, batch: list[Point], dense_runs: dict[str, str], grid_run: str) -> dict:
        """Claim, compute (batched) and log the cells of ``batch``.

        Returns ``{"computed": n, "failed": [(cell name, reason)], "elsewhere": [points]}``,
        ``elsewhere`` being the cells another process claimed or finished first.
        """
        points = {cell_hash(c, d): (d, c, s) for d, c, s in batch}
        looked = self.cache.lookup_many(points, keys.KIND_CELL)
        claims = self.cache.claim_many(
            {h: {"run_name": cell_name(c, s), "parent_run_id": grid_run,
                 "params": _cell_params(self.cfg, d, c, s),
                 "tags": {keys.KNOB: c.knob, keys.TEMPERATURE: _number(c.temperature),
                          keys.DENSITY: c.prune.density}}
             for h, (d, c, s) in points.items() if looked[h].finished is None and looked[h].active is None},
            keys.KIND_CELL)
        runs = {h: claim.run_id for h, claim in claims.items() if claim.won}
        elsewhere = [p for h, p in points.items() if h not in runs]
        todo = [p for h, p in points.items() if h in runs]
        if not todo:
            return {"computed": 0, "failed": [], "elsewhere": elsewhere}
        data = load_dataset(todo[0][0].data, self.cfg.runtime.device)
        failed: list[tuple[str, str]] = []
        jobs, ok_points = [], []
        for d, c, s in todo:
            try:
                state = self._checkpoint(d, dense_runs, c.checkpoint_epoch)
            except Exception as e:  # noqa: BLE001
                reason = f"{type(e).__name__}: {e}"
                self.cache.fail(runs[cell_hash(c, d)], reason)
                failed.append((cell_name(c, s), reason))
                continue
            jobs.append((c, d, state))
            ok_points.append((d, c, s))
        workers = self.cfg.runtime.resolved_workers()
        rt = self.cfg.runtime
        budget = Budget.for_device(data.x_train.device, rt.memory_gb)   # once: free memory changes
        steps = finetune_steps(len(jobs), jobs[0][0], len(data.x_train), finetune_members(
            jobs[0][1].model, data, jobs[0][0].finetune, rt.max_members, workers, budget),
            workers) if jobs else 0
        computed = 0
        with self._bar(steps, f"fine-tune {len(jobs)} cells") as bar:
            try:
                results = run_cells(jobs, data, self.cfg.runtime.max_members, workers=workers, memory=budget,
                                    progress=self._beating(list(runs.values()), bar.update))
            except Exception:   # noqa: BLE001 - isolate the failing cell(s): one at a time
                results = []
                for job, (d, c, s) in zip(jobs, ok_points, strict=True):
                    try:
                        results += run_cells([job], data, self.cfg.runtime.max_members, workers=workers,
                                             memory=budget)
                    except Exception as e:  # noqa: BLE001
                        reason = f"{type(e).__name__}: {e}"
                        self.cache.fail(runs[cell_hash(c, d)], reason)
                        failed.append((cell_name(c, s), reason))
        for r in results:
            run_id = runs[r.spec_hash]
            with self.cache.computing(run_id, r.spec_hash, keys.KIND_CELL) as done:
                # a tag, set now: the dense run may have been replaced (a corrupt checkpoint)
                self._log_cell(run_id, r, dense_runs[dense_hash(r.dense)])
            if done.finished:
                computed += 1
            else:
                elsewhere.append(points[r.spec_hash])   # another run of it finished first
        return {"computed": computed, "failed": failed, "elsewhere": elsewhere}

    def _beating(self, run_ids: list[str], update):
        """``update`` (a progress callback) that also refreshes the runs' heartbeats: on other
        hosts a claim is live only while its heartbeat is younger than ``stale_after``."""
        last = [time.time()]

        def progress(n: int) -> None:
            update(n)
            if time.time() - last[0] > HEARTBEAT_SECONDS:
                last[0] = time.time()
                for run_id in run_ids:
                    self.cache.heartbeat(run_id)

        return progress

    def _checkpoint(self, dense: DenseSpec, dense_runs: dict[str, str], epoch: int):
        run_id = dense_runs[dense_hash(dense)]
        try:
            return load_file(self.client, run_id, checkpoint_path(epoch))
        except CorruptArtifactError as e:
            # never use a bad checkpoint: retrain the dense run from scratch in a new run (its
            # resume state would skip the bad epoch), then read it again
            self.cache.discard(run_id, f"{e}; recomputed in a new run")
            new_id, _, _ = self.ensure_dense(dense)
            dense_runs[dense_hash(dense)] = new_id
            return load_file(self.client, new_id, checkpoint_path(epoch))

    def _log_cell(self, run_id: str, r: CellResult, dense_run: str) -> None:
        metrics = dict(r.metrics())
        metrics[keys.CELL_SECONDS] = r.seconds
        for k, seed in enumerate(r.spec.finetune.seeds):
            metrics[keys.member_metric(keys.TEST_ACC, seed)] = r.test_acc[k]
            metrics[keys.member_metric(keys.VAL_ACC, seed)] = r.val_acc[k]
        for p in r.pairs:
            a, b = (r.spec.finetune.seeds[i] for i in p.pair)
            metrics[keys.pair_metric(keys.LMC_BARRIER, a, b)] = p.lmc_barrier
            metrics[keys.pair_metric(keys.CKA, a, b)] = p.cka
        series = {}
        for k, seed in enumerate(r.spec.finetune.seeds):
            series[keys.member_metric(keys.CURVE_TRAIN_LOSS, seed)] = r.curves["train_loss"][k]
            series[keys.member_metric(keys.CURVE_VAL_ACC, seed)] = r.curves["val_acc"][k]
            series[keys.member_metric(keys.CURVE_TEST_ACC, seed)] = r.curves["test_acc"][k]
        self.cache.log(run_id, metrics={k: v for k, v in metrics.items() if not math.isnan(v)}, series=series,
                       tags={keys.DENSE_RUN_ID: dense_run})
        files: dict[str, object] = {
            keys.ARTIFACT_SPEC: {"cell": r.spec.to_dict(), "dense": r.dense.to_dict(), "spec_hash": r.spec_hash},
            keys.ARTIFACT_MASK: r.mask,
            keys.ARTIFACT_LMC_CURVES: {f"{p.pair[0]}-{p.pair[1]}": p.lmc_errors for p in r.pairs},
        }
        for k, seed in enumerate(r.spec.finetune.seeds):
            files[f"{keys.ARTIFACT_FINETUNED_DIR}/seed_{seed}.pt"] = r.finetuned[k]
        if "spectra" in r.extra:
            from pipeline.spectra import cell_spectra_csv

            files[keys.ARTIFACT_SPECTRA] = cell_spectra_csv(r.extra["spectra"])
        log_files(self.client, run_id, files)

    def _log_dense_spectra(self, run_id: str, epoch: int, state, data, files: dict) -> None:
        """A dense checkpoint's weight spectra: summaries as metrics (step = epoch), per-layer
        values as ``spectra/epoch_<e>.csv`` (uploaded with the checkpoint, in ``files``)."""
        from pipeline.models import build_model
        from pipeline.prune import select_prunable
        from pipeline.spectra import layer_spectra, rows_to_csv, spectra_rows, summary_metrics

        model = build_model(self.cfg.model, data.input_shape, data.num_classes)
        names = select_prunable(model, self.cfg.prune)     # the weights the cells prune
        spectra = layer_spectra({k: state[k] for k in names}, self.cfg.measure.spectra_min_evals)
        self.cache.log(run_id, metrics={k: v for k, v in summary_metrics(spectra, "dense").items()
                                        if not math.isnan(v)}, step=epoch)
        files[f"{keys.ARTIFACT_SPECTRA_DIR}/epoch_{epoch:04d}.csv"] = rows_to_csv(
            spectra_rows(spectra, model="dense", epoch=epoch))

    def _bar(self, total: int, desc: str):
        return tqdm(total=total, desc=desc, unit="step", disable=not self.progress, leave=False,
                    dynamic_ncols=True)


def _config_dict(cfg: GridConfig) -> dict:
    import dataclasses

    return dataclasses.asdict(cfg)


def _dense_params(cfg: GridConfig, dense: DenseSpec) -> dict:
    t = dense.train
    return {keys.DATASET: dense.data.name, keys.MODEL: dense.model.name, keys.KNOB: cfg.knob,
            keys.DENSE_SEED: dense.seed, keys.DENSE_EPOCHS: t.epochs, keys.DENSE_ITERATIONS: t.iterations,
            keys.BATCH_SIZE: t.batch_size, keys.LR: t.lr, keys.WEIGHT_DECAY: t.weight_decay,
            keys.SAM_RHO: t.sam_rho}


def _cell_params(cfg: GridConfig, dense: DenseSpec, cell: CellSpec, seed: int) -> dict:
    return {keys.KNOB: cell.knob, keys.TEMPERATURE: cell.temperature, keys.DENSITY: cell.prune.density,
            keys.DENSE_SEED: seed, keys.FINETUNE_SEEDS: list(cell.finetune.seeds),
            keys.PRUNE_METHOD: cell.prune.method, keys.FINETUNE_RECIPE: cell.finetune.recipe,
            keys.FINETUNE_EPOCHS: cell.finetune.train.epochs, keys.DATASET: dense.data.name,
            keys.MODEL: dense.model.name, keys.DENSE_SPEC_HASH: dense_hash(dense)}


def _number(value: float) -> int | float:
    """40.0 -> 40 for tags and names shown in the UI; other floats unchanged."""
    return int(value) if float(value).is_integer() else value


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
    return GridRunner(cfg, experiment, progress).run(executor=executor, executor_options=executor_options)


def ensure_cell(cfg: GridConfig, temperature: float, density: float, dense_seed: int | None = None,
                experiment: str | None = None, parent_run_id: str | None = None,
                progress: bool = False) -> dict:
    """The results-table row of one cell, computing it (and its dense run) only if needed."""
    from tracking.store import latest_finished_run
    from tracking.tables import run_row

    seed = cfg.dense_seeds[0] if dense_seed is None else dense_seed
    runner = GridRunner(cfg, experiment, progress)
    dense, cell = cfg.cell(temperature, density, seed)
    if parent_run_id is None:
        # a lone cell joins the experiment's latest grid rather than opening a one-cell grid run
        latest = latest_finished_run(runner.client, runner.experiment_id, keys.KIND_GRID)
        parent_run_id = latest.info.run_id if latest is not None else None
    summary = runner.run([(dense, cell, seed)], parent_run_id=parent_run_id)
    if summary.failed:
        raise RuntimeError(f"cell {cell_name(cell, seed)} failed: {summary.failed[0][1]}")
    found = runner.cache.lookup(cell_hash(cell, dense), keys.KIND_CELL).finished
    if found is None:
        raise RuntimeError(f"cell {cell_name(cell, seed)} is being computed by another process")
    return run_row(found)
