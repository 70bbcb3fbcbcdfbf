"""Where the nodes of a grid's DAG run (a registry).

A DAG is a list of ``Node``s; a node's function receives its dependencies' results (small:
run ids) as keyword arguments. Every node is idempotent by spec hash (it looks up the
tracking store before computing), so an executor may run a lost node again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Node:
    key: str
    fn: Callable[..., object]
    deps: dict[str, str] = field(default_factory=dict)   # kwarg name -> dependency key


class SerialExecutor:
    """Runs nodes in order, in this process (the default, for tests and the demo).

    A node that raises makes its dependants fail with the same error; others go on.
    """

    name = "serial"

    def run(self, nodes: list[Node]) -> dict[str, object]:
        results: dict[str, object] = {}
        for node in nodes:
            failed = [results[d] for d in node.deps.values() if isinstance(results.get(d), BaseException)]
            if failed:
                results[node.key] = failed[0]
                continue
            try:
                results[node.key] = node.fn(**{k: results[d] for k, d in node.deps.items()})
            except Exception as e:  # noqa: BLE001 - reported per node by the grid summary
                results[node.key] = e
        return results


_EXECUTORS: dict[str, Callable[..., object]] = {"serial": lambda **kw: SerialExecutor()}


def register_executor(name: str, factory: Callable[..., object]) -> None:
    if name in _EXECUTORS:
        raise ValueError(f"executor {name!r} is already registered")
    _EXECUTORS[name] = factory


def list_executors() -> list[str]:
    return sorted(_EXECUTORS)


def get_executor(name: str, **options):
    if name not in _EXECUTORS:
        raise ValueError(f"executor {name!r}: unknown; allowed: {', '.join(sorted(_EXECUTORS))}")
    return _EXECUTORS[name](**options)
