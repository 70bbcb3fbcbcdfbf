"""A dense run's life in the tracking store: taken, trained with resumable uploads, read back.

One MLflow run per dense spec (for the ``epochs`` knob ONE run serves every temperature). A
process *takes* the run (:class:`DenseState`): it is already FINISHED, or this process starts
it, or reopens a dead one, under the claim lock, so two processes never train the same dense
run; while another live process trains it, it waits. Training uploads, after every epoch, the
new checkpoint(s) and the state to resume from (two alternating slots) and refreshes the
heartbeat. A checkpoint that fails its checksum is never used: the run is discarded and
trained again in a new run (docs/design.md#dense-runs-checkpoints-and-resume).
"""

from __future__ import annotations

import math
import time
from enum import Enum
from typing import NamedTuple

from tqdm.auto import tqdm

from pipeline.config import GridConfig
from pipeline.data import Dataset, load_dataset
from pipeline.dense import FINAL, train_dense
from pipeline.specs import DenseSpec, dense_hash
from pipeline.train import TrainState, total_epochs, total_iterations
from tracking import keys
from tracking.artifacts import CorruptArtifactError, load_file, log_files
from tracking.cache import RunCache

POLL_SECONDS = 2.0   # while waiting for another process's node


class DenseState(Enum):
    """How this process holds a dense run it asked for."""

    FINISHED = "finished"   # already in the store: nothing to train
    NEW = "new"             # started now, owned by this process
    REOPENED = "reopened"   # a dead run taken over: resumes from its newest verified state


class DenseRun(NamedTuple):
    """A FINISHED dense run (:meth:`DenseRuns.ensure`)."""

    run_id: str
    computed: bool          # trained (or resumed) by this call
    spec_hash: str


class _Taken(NamedTuple):
    state: DenseState
    run_id: str


def dense_name(cfg: GridConfig, dense: DenseSpec) -> str:
    """A readable run name for the MLflow UI, e.g. ``dense epochs<=40 s=0``."""
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
    name = "final" if epoch == FINAL else f"epoch_{epoch:04d}"
    return f"{keys.ARTIFACT_CHECKPOINT_DIR}/{name}.pt"


def progress_bar(total: int, desc: str, enabled: bool):
    return tqdm(total=total, desc=desc, unit="step", disable=not enabled, leave=False,
                dynamic_ncols=True)


def _dense_params(cfg: GridConfig, dense: DenseSpec) -> dict:
    t = dense.train
    return {keys.DATASET: dense.data.name, keys.MODEL: dense.model.name, keys.KNOB: cfg.knob,
            keys.DENSE_SEED: dense.seed, keys.DENSE_EPOCHS: t.epochs,
            keys.DENSE_ITERATIONS: t.iterations, keys.BATCH_SIZE: t.batch_size, keys.LR: t.lr,
            keys.WEIGHT_DECAY: t.weight_decay, keys.SAM_RHO: t.sam_rho}


class DenseRuns:
    """The dense runs of one grid config in one experiment's store (see module doc)."""

    def __init__(self, cfg: GridConfig, cache: RunCache, progress: bool = True,
                 poll_seconds: float = POLL_SECONDS):
        self.cfg, self.cache, self.progress, self.poll_seconds = cfg, cache, progress, poll_seconds

    def ensure(self, dense: DenseSpec, parent_run_id: str | None = None) -> DenseRun:
        """The FINISHED dense run of ``dense``, trained (or resumed) first if needed; a run
        started here nests under ``parent_run_id``."""
        h = dense_hash(dense)
        taken = self._take(dense, h, parent_run_id)
        if taken.state is DenseState.FINISHED:
            return DenseRun(taken.run_id, False, h)
        self._train(dense, h, taken)
        return DenseRun(taken.run_id, True, h)

    def checkpoint(self, dense: DenseSpec, run_ids: dict[str, str], epoch: int,
                   parent_run_id: str | None = None):
        """The state dict after ``epoch`` of the dense run ``run_ids[hash of dense]``.

        A checkpoint that fails its checksum is never used: the run is discarded and trained
        again from scratch in a new run (its resume state would skip the bad epoch), whose id
        replaces the old one in ``run_ids``; then it is read again.
        """
        h = dense_hash(dense)
        try:
            return load_file(self.cache.client, run_ids[h], checkpoint_path(epoch))
        except CorruptArtifactError as e:
            self.cache.discard(run_ids[h], f"{e}; recomputed in a new run")
            run_ids[h] = self.ensure(dense, parent_run_id).run_id
            return load_file(self.cache.client, run_ids[h], checkpoint_path(epoch))

    # -- taking the run ------------------------------------------------------------------
    def _take(self, dense: DenseSpec, h: str, parent_run_id: str | None) -> _Taken:
        """The FINISHED run, or the run this process now owns (new or reopened); waits while
        another live process trains it."""
        while True:
            entry = self.cache.lookup(h, keys.KIND_DENSE)
            if entry.finished is not None:
                return _Taken(DenseState.FINISHED, entry.finished.info.run_id)
            taken = None if entry.active is not None else self._take_locked(dense, h,
                                                                            parent_run_id)
            if taken is not None:
                return taken
            time.sleep(self.poll_seconds)   # another live process trains it: wait for it

    def _take_locked(self, dense: DenseSpec, h: str, parent_run_id: str | None) -> _Taken | None:
        """Under the claim lock: the FINISHED run, or one started or reopened now; None when
        another process holds the lock or trains the run."""
        with self.cache.exclusive(h, keys.KIND_DENSE) as held:
            if not held:
                return None
            entry = self.cache.lookup(h, keys.KIND_DENSE)     # again, under the lock
            if entry.finished is not None:
                return _Taken(DenseState.FINISHED, entry.finished.info.run_id)
            if entry.active is not None:
                return None
            if entry.resumable is not None:
                return _Taken(DenseState.REOPENED, self.cache.reopen(entry.resumable))
            run_id = self.cache.start(h, keys.KIND_DENSE, dense_name(self.cfg, dense),
                                      parent_run_id=parent_run_id,
                                      params=_dense_params(self.cfg, dense))
            return _Taken(DenseState.NEW, run_id)

    # -- training ------------------------------------------------------------------------
    def _train(self, dense: DenseSpec, h: str, taken: _Taken) -> None:
        """Train (or resume) the run this process owns and set it FINISHED."""
        run_id, client = taken.run_id, self.cache.client
        data = load_dataset(dense.data, self.cfg.runtime.device)
        resume = None
        if taken.state is DenseState.REOPENED:
            resume = self._resume_state(run_id)   # None: nothing usable, start again in the run
        else:
            log_files(client, run_id, {keys.ARTIFACT_SPEC: {"spec": dense.to_dict(),
                                                            "spec_hash": h}})
        keep_every = self.cfg.knob == "epochs"
        n = len(data.x_train)
        epochs = total_epochs(dense.train, n)
        pending_files: dict[str, object] = {}
        beat = self.cache.heartbeats([run_id])

        def on_checkpoint(epoch: int, state) -> None:
            pending_files[checkpoint_path(epoch)] = state
            if self.cfg.measure.spectra:
                self._log_spectra(run_id, epoch if epoch != FINAL else epochs, state, data,
                                  pending_files)

        def on_epoch_state(state: TrainState) -> None:
            # one upload per epoch: the new checkpoint(s) and the state to resume from
            files = dict(pending_files)
            pending_files.clear()
            if state.epoch < epochs:
                files[resume_path(state.epoch)] = state.to_dict()
            if files:
                log_files(client, run_id, files)
            beat()

        steps = total_iterations(dense.train, n)
        bar = progress_bar(steps, dense_name(self.cfg, dense), self.progress)
        with self.cache.computing(run_id), bar:
            if resume is not None:
                bar.update(resume.iteration)
            kept = train_dense(dense, data, keep_every, on_checkpoint, on_epoch_state, resume,
                               progress=bar.update)
            self._log_accuracy(run_id, dense, data, kept[max(kept)] if keep_every
                               else kept.get(FINAL))

    def _log_accuracy(self, run_id: str, dense: DenseSpec, data: Dataset, state) -> None:
        """``dense_acc``: the test accuracy of the last checkpoint (if training kept one)."""
        from pipeline.models import build_model
        from pipeline.train import evaluate

        model = build_model(dense.model, data.input_shape, data.num_classes)
        model = model.to(data.x_train.device)
        if state is None:
            return
        model.load_state_dict(state)
        accuracy = float(evaluate(model, data.x_test, data.y_test)[0])
        self.cache.log(run_id, metrics={keys.DENSE_ACC: accuracy})

    def _resume_state(self, run_id: str) -> TrainState | None:
        """The newest saved training state of ``run_id`` whose checksum verifies, or None."""
        states = []
        for slot in (0, 1):
            try:
                states.append(TrainState.from_dict(load_file(
                    self.cache.client, run_id, keys.ARTIFACT_RESUME_SLOT.format(slot))))
            except CorruptArtifactError:
                pass   # never written, or the owner died mid-upload: the other slot is intact
        return max(states, key=lambda state: state.epoch, default=None)

    def _log_spectra(self, run_id: str, epoch: int, state, data: Dataset, files: dict) -> None:
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
