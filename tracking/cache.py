"""The content-addressed run cache: find a FINISHED run by spec hash, or claim and compute.

Every dense run and every cell is an MLflow run tagged with its ``spec_hash``. Before a
node is computed the store is asked for a FINISHED run with that hash: if there is one it is
reused. Otherwise the caller *claims* the node: a RUNNING run tagged with its owner
(``host:pid``) and a heartbeat. A RUNNING run whose owner is dead (same host, pid gone) or
whose heartbeat is older than ``stale_after`` seconds is taken over: marked FAILED with the
reason, and computed anew (a dense run is instead reopened, so it resumes from its last
checkpoint). A run is set FINISHED only after everything it records is written, so nothing
half-written ever counts as a cache hit.

Claims are *create-then-check* (:meth:`RunCache.claim_many`): a process first creates its
RUNNING run, then reads every live RUNNING and FINISHED run of the same hash. A FINISHED run
wins; otherwise the live claim created first wins (earliest ``start_time``, ties by run id).
Every process that reads after both claims exist picks the same winner, and the one that
read first cannot have missed an earlier claim, so two processes started at once never both
compute a node. A loser ends its run FAILED ("lost claim to <id>") and leaves the node to the
winner. Reopening a dead dense run is guarded the same way by a short-lived ``claim`` run
(:meth:`RunCache.exclusive`), and a cell is set FINISHED only if no other run of its hash
finished first (:meth:`RunCache.finish`).

Note: the order is by the clients' clocks (MLflow stamps ``start_time`` client side). On
several machines whose clocks disagree by more than the time between two claims, both may
win; the check before FINISHED still keeps the results table to one run per hash, except in
the milliseconds between two such checks.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterable
from contextlib import contextmanager
from dataclasses import dataclass

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, Run, RunTag

from tracking import keys
from tracking.store import TrackingUnavailableError, search_all_runs, with_retries

MAX_BATCH = 900   # MLflow's log_batch limit is 1000 metrics per call
HEARTBEAT_SECONDS = 60.0   # how often a long computation refreshes its runs' heartbeats
# runs that can hold a node (RUNNING or FINISHED); MLflow's search has no IN for status
_CONTENDING = "attributes.status != 'FAILED' and attributes.status != 'KILLED'"


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


@dataclass
class Claim:
    """The outcome of a claim: this process's run and the run that holds the node."""

    run_id: str
    winner: str

    @property
    def won(self) -> bool:
        return self.run_id == self.winner


@dataclass
class Computation:
    """Set by :meth:`RunCache.computing` on exit: whether the run was set FINISHED."""

    run_id: str
    finished: bool = False


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
        runs = search_all_runs(self.client, [self.experiment_id],
                               f"tags.{keys.RUN_KIND} = '{kind}'", ["attributes.start_time DESC"])
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
            elif run.data.tags.get(keys.RESUMABLE) != "false":
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
        # a tracking server's REST client takes string tag values only (SQL stores coerce)
        all_tags = {k: str(v) for k, v in all_tags.items()}
        run = with_retries(self.client.create_run, self.experiment_id, tags=all_tags,
                           run_name=run_name)
        if params:
            self.log(run.info.run_id, params=params)
        return run.info.run_id

    def claim_many(self, requests: dict[str, dict], kind: str) -> dict[str, Claim]:
        """Create-then-check claims of several nodes of ``kind`` (see the module doc).

        ``requests`` maps a spec hash to the keyword arguments of :meth:`start` (``run_name``,
        ``parent_run_id``, ``params``, ``tags``). Every claim is created first, then ONE search
        settles them all; lost claims are already ended FAILED when this returns.
        """
        mine = {h: self.start(h, kind, **kw) for h, kw in requests.items()}
        if not mine:
            return {}
        if len(mine) == 1:
            (h,) = mine
            flt = f"tags.{keys.SPEC_HASH} = '{h}'"
        else:
            flt = f"tags.{keys.RUN_KIND} = '{kind}'"
        runs = search_all_runs(self.client, [self.experiment_id], f"{flt} and {_CONTENDING}")
        claims = self._settle(mine, runs, kind, set())
        for claim in claims.values():
            if not claim.won:
                self.lose(claim)
        return claims

    def claim(self, spec_hash: str, kind: str, run_name: str, **start_kwargs) -> Claim:
        """Create-then-check claim of one node (see :meth:`claim_many`)."""
        return self.claim_many({spec_hash: {"run_name": run_name, **start_kwargs}}, kind)[spec_hash]

    def _settle(self, mine: dict[str, str], runs: list[Run], kind: str,
                rivals: set[str]) -> dict[str, Claim]:
        """The winner of each hash among ``runs``: a FINISHED run of ``kind``, else the live
        RUNNING run of ``kind`` or a ``rivals`` kind created first (this process's own claims
        count as live)."""
        now = time.time()
        finished: dict[str, Run] = {}
        live: dict[str, list[Run]] = {}
        ours = set(mine.values())
        for run in runs:
            h, run_kind = run.data.tags.get(keys.SPEC_HASH), run.data.tags.get(keys.RUN_KIND)
            if h not in mine or (run_kind != kind and run_kind not in rivals):
                continue
            if run.info.status == "FINISHED" and run_kind == kind:
                # a FINISHED run always wins; the first finished, so every reader agrees
                if h not in finished or _order(run) < _order(finished[h]):
                    finished[h] = run
            elif run.info.status == "RUNNING" and (run.info.run_id in ours
                                                   or self._is_live(run, now)):
                live.setdefault(h, []).append(run)
        claims = {}
        for h, run_id in mine.items():
            if h in finished:
                winner = finished[h].info.run_id
            else:
                # our claim may be missing from a lagging search: it is then the newest
                candidates = live.get(h, [])
                winner = min(candidates, key=_order).info.run_id if candidates else run_id
            claims[h] = Claim(run_id, winner)
        return claims

    def lose(self, claim: Claim) -> None:
        """End a lost claim FAILED (never resumed) and leave the node to the winner."""
        self.log(claim.run_id, tags={keys.RESUMABLE: "false"})
        self.fail(claim.run_id, f"lost claim to {claim.winner}")

    @contextmanager
    def exclusive(self, spec_hash: str, kind: str):
        """Yield True when this process alone may start or reopen the run of ``spec_hash``.

        A short-lived RUNNING run of kind ``claim`` is the lock, settled create-then-check
        against other locks and against live RUNNING or FINISHED runs of ``kind``: one of
        those held by another process means False. The lock run is deleted on exit, so take
        over the node (``start`` or ``reopen``) inside the block.
        """
        lock = self.start(spec_hash, keys.KIND_CLAIM, f"claim {kind} {spec_hash[:12]}")
        try:
            runs = search_all_runs(self.client, [self.experiment_id],
                                   f"tags.{keys.SPEC_HASH} = '{spec_hash}' and {_CONTENDING}")
            runs = [r for r in runs if r.data.tags.get(keys.RUN_KIND) in (kind, keys.KIND_CLAIM)]
            # a live run of ``kind`` beats every lock: it is being computed (or reopened) now
            claim = self._settle({spec_hash: lock}, runs, kind, {keys.KIND_CLAIM})
            live_node = [r for r in runs if r.data.tags.get(keys.RUN_KIND) == kind
                         and r.info.status == "RUNNING" and self._is_live(r, time.time())]
            yield claim[spec_hash].won and not live_node
        finally:
            with_retries(self.client.delete_run, lock)

    def reopen(self, run: Run) -> str:
        """Take over a dead run (to resume it): RUNNING again, owned by this process."""
        run_id = run.info.run_id
        with_retries(self.client.update_run, run_id, status="RUNNING")
        self.log(run_id, tags={keys.OWNER: self.owner, keys.HEARTBEAT: f"{time.time():.0f}"})
        return run_id

    def heartbeat(self, run_id: str) -> None:
        self.log(run_id, tags={keys.HEARTBEAT: f"{time.time():.0f}"})

    def heartbeats(self, run_ids: Iterable[str]) -> Heartbeat:
        """A :class:`Heartbeat` of ``run_ids``: call it as often as convenient."""
        return Heartbeat(self, list(run_ids))

    def finish(self, run_id: str, spec_hash: str | None = None, kind: str | None = None) -> bool:
        """Set FINISHED; returns True.

        With ``spec_hash`` and ``kind``, first look for another FINISHED run of that hash: if
        there is one, this run ends FAILED as a duplicate instead (returns False), so a hash
        never has two FINISHED runs even when two claims both won (clock skew, see module doc).
        """
        if spec_hash is not None:
            others = search_all_runs(
                self.client, [self.experiment_id],
                f"tags.{keys.SPEC_HASH} = '{spec_hash}' and attributes.status = 'FINISHED'")
            others = [r for r in others if r.data.tags.get(keys.RUN_KIND) == kind
                      and r.info.run_id != run_id]
            if others:
                winner = min(others, key=_order).info.run_id
                self.lose(Claim(run_id, winner))
                return False
        with_retries(self.client.set_terminated, run_id, "FINISHED")
        return True

    def discard(self, run_id: str, reason: str) -> None:
        """End a run FAILED for good: lookups never offer it for resuming (e.g. corrupt)."""
        self.log(run_id, tags={keys.RESUMABLE: "false"})
        self.fail(run_id, reason)

    def fail(self, run_id: str, reason: str) -> None:
        self.log(run_id, tags={keys.FAILURE_REASON: reason[:4000]})
        with_retries(self.client.set_terminated, run_id, "FAILED")

    def abandon(self, run: Run, reason: str) -> None:
        """Mark someone else's dead RUNNING run FAILED so it never looks live again."""
        if run.info.status == "RUNNING":
            self.fail(run.info.run_id, reason)

    @contextmanager
    def computing(self, run_id: str, spec_hash: str | None = None, kind: str | None = None):
        """FINISHED on success; FAILED with the reason (and re-raised) on any exception.

        Yields a :class:`Computation` whose ``finished`` tells, after the block, whether the
        run was set FINISHED (see :meth:`finish` for ``spec_hash`` and ``kind``).
        """
        done = Computation(run_id)
        try:
            yield done
        except TrackingUnavailableError:
            # the store is down: recording the failure would only wait out more retries. The
            # run stays RUNNING under this (soon dead) owner and is taken over on a re-run.
            raise
        except BaseException as e:
            self.fail(run_id, f"{type(e).__name__}: {e}")
            raise
        done.finished = self.finish(run_id, spec_hash, kind)

    def log(self, run_id: str, params: dict | None = None, metrics: dict | None = None,
            tags: dict | None = None, step: int = 0,
            series: dict[str, list[float]] | None = None) -> None:
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


class Heartbeat:
    """Refreshes the heartbeat tags of some runs, at most once every ``HEARTBEAT_SECONDS``.

    On other hosts a claim is live only while its heartbeat is younger than ``stale_after``;
    a long computation calls this at every step or epoch, and only a call a minute after the
    last refresh writes to the store.
    """

    def __init__(self, cache: RunCache, run_ids: list[str], every: float = HEARTBEAT_SECONDS):
        self.cache, self.run_ids, self.every = cache, run_ids, every
        self._last = time.time()

    def __call__(self) -> None:
        if time.time() - self._last > self.every:
            self._last = time.time()
            for run_id in self.run_ids:
                self.cache.heartbeat(run_id)


def _order(run: Run) -> tuple[int, str]:
    """Claims are ordered by creation time, ties by run id: every reader agrees."""
    return run.info.start_time or 0, run.info.run_id
