"""The content-addressed run cache: find a FINISHED run by spec hash, or claim and compute.

Every dense run and every cell is an MLflow run tagged with its ``spec_hash``. Before a
node is computed the store is asked for a FINISHED run with that hash: if there is one it is
reused. Otherwise the caller *claims* the node: a RUNNING run tagged with its owner
(``host:pid``) and a heartbeat. A RUNNING run whose owner is dead (same host, pid gone) or
whose heartbeat is older than ``stale_after`` seconds is taken over: marked FAILED with the
reason, and computed anew (a dense run is instead reopened, so it resumes from its last
checkpoint). A run is set FINISHED only after everything it records is written, so nothing
half-written ever counts as a cache hit.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterable
from contextlib import contextmanager
from dataclasses import dataclass

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, Run, RunStatus, RunTag

from tracking import keys
from tracking.store import search_all_runs, with_retries

MAX_BATCH = 900   # MLflow's log_batch limit is 1000 metrics per call


def owner_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _owner_alive(owner: str | None) -> bool | None:
    """True/False when the owner runs on this host, None when it cannot be told."""
    if not owner or ":" not in owner:
        return None
    host, pid = owner.rsplit(":", 1)
    if host != socket.gethostname():
        return None
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError):
        return True
    return True


@dataclass
class Lookup:
    """What the store knows about one spec hash."""

    finished: Run | None = None
    active: Run | None = None         # RUNNING with a live owner: someone else is computing it
    resumable: Run | None = None      # a dead or failed run of the same hash (newest)


class RunCache:
    """Cache lookups and run lifecycle within one experiment."""

    def __init__(self, client: MlflowClient, experiment_id: str, stale_after: float = 900.0):
        self.client, self.experiment_id, self.stale_after = client, experiment_id, stale_after
        self.owner = owner_id()

    # -- lookups -------------------------------------------------------------------------
    def lookup_many(self, hashes: Iterable[str], kind: str) -> dict[str, Lookup]:
        """One search for every run of ``kind``; classify each hash's runs."""
        wanted = set(hashes)
        out = {h: Lookup() for h in wanted}
        runs = search_all_runs(self.client, [self.experiment_id], f"tags.{keys.RUN_KIND} = '{kind}'",
                               ["attributes.start_time DESC"])
        now = time.time()
        for run in runs:
            h = run.data.tags.get(keys.SPEC_HASH)
            if h not in wanted:
                continue
            entry = out[h]
            status = run.info.status
            if status == "FINISHED":
                entry.finished = entry.finished or run
            elif status == "RUNNING" and self._is_live(run, now):
                entry.active = entry.active or run
            else:
                entry.resumable = entry.resumable or run
        return out

    def lookup(self, spec_hash: str, kind: str) -> Lookup:
        return self.lookup_many([spec_hash], kind)[spec_hash]

    def _is_live(self, run: Run, now: float) -> bool:
        owner = run.data.tags.get(keys.OWNER)
        if owner == self.owner:
            return False          # our own leftover from an earlier attempt in this process
        alive = _owner_alive(owner)
        if alive is not None:
            return alive
        beat = float(run.data.tags.get(keys.HEARTBEAT, run.info.start_time / 1000))
        return now - beat < self.stale_after

    # -- lifecycle -----------------------------------------------------------------------
    def start(self, spec_hash: str, kind: str, run_name: str, parent_run_id: str | None = None,
              params: dict | None = None, tags: dict | None = None) -> str:
        """Create a RUNNING run claimed by this process; returns its id."""
        all_tags = {keys.SPEC_HASH: spec_hash, keys.RUN_KIND: kind, keys.OWNER: self.owner,
                    keys.HEARTBEAT: f"{time.time():.0f}", **(tags or {})}
        if parent_run_id:
            all_tags[keys.PARENT_RUN_ID] = parent_run_id
        run = with_retries(self.client.create_run, self.experiment_id, tags=all_tags, run_name=run_name)
        if params:
            self.log(run.info.run_id, params=params)
        return run.info.run_id

    def reopen(self, run: Run) -> str:
        """Take over a dead run (to resume it): RUNNING again, owned by this process."""
        run_id = run.info.run_id
        with_retries(self.client.update_run, run_id, status="RUNNING")
        self.log(run_id, tags={keys.OWNER: self.owner, keys.HEARTBEAT: f"{time.time():.0f}"})
        return run_id

    def heartbeat(self, run_id: str) -> None:
        self.log(run_id, tags={keys.HEARTBEAT: f"{time.time():.0f}"})

    def finish(self, run_id: str) -> None:
        with_retries(self.client.set_terminated, run_id, "FINISHED")

    def fail(self, run_id: str, reason: str) -> None:
        self.log(run_id, tags={keys.FAILURE_REASON: reason[:4000]})
        with_retries(self.client.set_terminated, run_id, "FAILED")

    def abandon(self, run: Run, reason: str) -> None:
        """Mark someone else's dead RUNNING run FAILED so it never looks live again."""
        if run.info.status == "RUNNING":
            self.fail(run.info.run_id, reason)

    @contextmanager
    def computing(self, run_id: str):
        """FINISHED on success; FAILED with the reason (and re-raised) on any exception."""
        try:
            yield run_id
        except BaseException as e:
            self.fail(run_id, f"{type(e).__name__}: {e}")
            raise
        self.finish(run_id)

    def log(self, run_id: str, params: dict | None = None, metrics: dict | None = None,
            tags: dict | None = None, step: int = 0, series: dict[str, list[float]] | None = None) -> None:
        """Log params, metrics, tags and step series in as few ``log_batch`` calls as possible."""
        now = int(time.time() * 1000)
        ms = [Metric(k, float(v), now, step) for k, v in (metrics or {}).items()]
        for k, values in (series or {}).items():
            ms += [Metric(k, float(v), now, i + 1) for i, v in enumerate(values) if v == v]
        ps = [Param(k, str(v)) for k, v in (params or {}).items()]
        ts = [RunTag(k, str(v)) for k, v in (tags or {}).items()]
        first = True
        while first or ms:
            chunk, ms = ms[:MAX_BATCH], ms[MAX_BATCH:]
            with_retries(self.client.log_batch, run_id, metrics=chunk,
                         params=ps if first else [], tags=ts if first else [])
            first = False


def run_status(client: MlflowClient, run_id: str) -> str:
    return RunStatus.to_string(RunStatus.from_string(client.get_run(run_id).info.status))
