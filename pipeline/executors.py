"""Where the nodes of a grid's DAG run (a registry).

A DAG is a list of ``Node``s; a node's function receives its dependencies' results (small:
run ids) as keyword arguments. Every node is idempotent by spec hash (it looks up the
tracking store before computing), so an executor may run a lost node again.

- ``serial``: in this process, in order (the default, for tests and the demo).
- ``dask``: Dask distributed futures with dependencies, on a ``LocalCluster`` of this machine
  or on any running cluster given by its scheduler address (``dask-jobqueue`` on Slurm,
  Kubernetes, ...; see docs/scaling.md).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from tracking.registries import Registry

# name -> the executor class, built with the options of that kind
EXECUTORS: Registry[Callable[..., object]] = Registry("executor")


@dataclass
class Node:
    key: str
    fn: Callable[..., object]
    deps: dict[str, str] = field(default_factory=dict)   # kwarg name -> dependency key


@EXECUTORS.register("serial")
class SerialExecutor:
    """Runs nodes in order, in this process (the default, for tests and the demo).

    A node that raises makes its dependants fail with the same error; others go on, except
    after a ``TrackingUnavailableError``: nothing could be recorded, so every node left gets
    that error without running.
    """

    name = "serial"

    def run(self, nodes: list[Node]) -> dict[str, object]:
        from tracking.store import TrackingUnavailableError

        results: dict[str, object] = {}
        fatal: BaseException | None = None
        for node in nodes:
            failed = [results[d] for d in node.deps.values()
                      if isinstance(results.get(d), BaseException)]
            if fatal is not None or failed:
                results[node.key] = fatal or failed[0]
                continue
            try:
                results[node.key] = node.fn(**{k: results[d] for k, d in node.deps.items()})
            except Exception as e:  # noqa: BLE001 - reported per node by the grid summary
                results[node.key] = e
                if isinstance(e, TrackingUnavailableError):
                    fatal = e
        return results


def _run_node(fn: Callable[..., object], torch_threads: int, deps: dict[str, object]) -> object:
    """A node on a Dask worker: one torch thread per task (worker processes share the cores)."""
    if torch_threads:
        import torch

        if torch.get_num_threads() != torch_threads:
            torch.set_num_threads(torch_threads)
    return fn(**deps)


@EXECUTORS.register("dask")
class DaskExecutor:
    """Submits the DAG as Dask futures with dependencies and waits for all of them.

    Args:
        workers: worker processes of the ``LocalCluster`` started when no ``scheduler`` is
            given (0: one per core). Ignored with ``scheduler``.
        scheduler: address of a running Dask scheduler (``tcp://host:8786``); its workers
            must have this project installed and reach the tracking store.
        torch_threads: torch threads per task (0: leave them).

    A node that raises makes its dependants fail with the same error (Dask propagates it), as
    with :class:`SerialExecutor`. A task whose worker dies is run again by Dask elsewhere: the
    node finds its claim's owner dead and takes it over (a dense run resumes).

    Note: node functions are pickled to the workers (cloudpickle); objects they close over
    must be picklable: ``pipeline.grid.GridRunner`` rebuilds its MLflow client from the
    tracking URI on the worker. Create the stores first (``python -m tracking init``): the
    workers must not create a fresh database concurrently.
    """

    name = "dask"

    def __init__(self, workers: int = 0, scheduler: str | None = None, torch_threads: int = 1):
        if workers < 0:
            raise ValueError(f"workers={workers!r}: must be >= 0 (0 = one per core)")
        self.workers = workers or os.cpu_count() or 1
        self.scheduler = scheduler
        self.torch_threads = torch_threads

    def check(self) -> None:
        """With ``scheduler``: check that it answers, within the store timeout (one line per
        pause); without, nothing to check.

        Raises:
            StoreUnreachableError: it did not answer; the message says what to check.
        """
        if self.scheduler:
            from tracking.store import wait_until_answers

            wait_until_answers(lambda seconds: _scheduler_identity(self.scheduler, seconds),
                               "Dask scheduler", self.scheduler, hints=_SCHEDULER_HINTS)

    def _client(self):
        from distributed import Client, LocalCluster

        if self.scheduler:
            from tracking.store import store_timeout

            self.check()
            return Client(self.scheduler, timeout=store_timeout()), None
        # Loopback only, no dashboard: nothing listens beyond this machine unless asked to.
        cluster = LocalCluster(n_workers=self.workers, threads_per_worker=1, processes=True,
                               host="127.0.0.1", dashboard_address=None,
                               env={"OMP_NUM_THREADS": str(self.torch_threads or 1),
                                    "MKL_NUM_THREADS": str(self.torch_threads or 1)})
        return Client(cluster), cluster

    def run(self, nodes: list[Node]) -> dict[str, object]:
        from distributed import wait

        if not nodes:
            return {}
        client, cluster = self._client()
        try:
            # Keys unique to this run: a shared cluster must not hand us another grid's result.
            token = uuid.uuid4().hex[:8]
            futures = {}
            for node in nodes:
                deps = {k: futures[d] for k, d in node.deps.items()}
                # deps as one dict argument: Dask resolves the futures inside it, and no node's
                # argument name can clash with submit's own keywords
                futures[node.key] = client.submit(_run_node, node.fn, self.torch_threads, deps,
                                                  key=f"{node.key}-{token}", pure=False)
            wait(list(futures.values()))
            results: dict[str, object] = {}
            for key, future in futures.items():
                if future.status == "finished":
                    results[key] = future.result()
                elif future.status == "error":
                    results[key] = future.exception()
                else:
                    results[key] = RuntimeError(f"dask task {key!r} ended {future.status}")
            return results
        finally:
            client.close()
            if cluster is not None:
                cluster.close()


_SCHEDULER_HINTS = ("is a scheduler started at that address (dask scheduler --host HOST --port "
                    "PORT), is the address right (tcp://HOST:8786 by default), and can this "
                    "machine reach it?")


def _scheduler_identity(address: str, seconds: float) -> dict:
    """Ask the scheduler at ``address`` who it is, giving up after ``seconds``.

    Note: ``distributed.Client(timeout=...)`` bounds the connection only: a port that accepts
    and never answers holds it forever, hence the whole exchange under ``wait_for``.
    """
    import asyncio

    from distributed.comm import connect

    from tracking.store import NoAnswer

    async def identity() -> dict:
        comm = await connect(address, timeout=seconds)
        try:
            await comm.write({"op": "identity", "reply": True})
            return await comm.read()
        finally:
            await comm.close()

    try:
        reply = asyncio.run(asyncio.wait_for(identity(), seconds))
    except ValueError as e:          # an address distributed cannot parse: waiting won't help
        raise NoAnswer(str(e), permanent=True) from e
    except TimeoutError as e:        # connected, but the exchange never finished
        raise NoAnswer(f"connected, but no answer within {seconds:.1f} s") from e
    except OSError as e:             # distributed retried the connection until `seconds`
        raise NoAnswer(f"could not connect within {seconds:.1f} s") from e
    kind = reply.get("type") if isinstance(reply, dict) else None
    if kind != "Scheduler":
        raise NoAnswer(f"it answers as {kind or 'something else'}, not as a Dask scheduler",
                       permanent=True)
    return reply


def get_executor(name: str, **options):
    """A new executor of kind ``name`` (see ``EXECUTORS``) built with ``options``.

    Raises:
        ValueError: an unknown name (the message lists the registered ones) or bad options.
    """
    return EXECUTORS.get(name)(**options)
