"""Named registries: one small type for every "pick it by name" choice of the project.

Datasets, models, pruning methods, metrics, executors and temperature knobs are each chosen
by a name in a grid config or on the command line. Each kind has one :class:`Registry`; its
``get`` fails with a message that lists what is allowed, so a typo in a config names its
fix. The type lives in ``tracking``, the lowest layer, so that every layer can hold one.
(Not to be confused with ``pipeline/registry.py``, MLflow's model registry.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar, overload

T = TypeVar("T")

_NO_ENTRY = object()


class Registry(Generic[T]):
    """Entries of one kind by name.

    ``kind`` is the word the errors use (``"dataset"``, ``"pruning method"``). Register with
    ``reg.register("name", entry)``, or as a decorator, ``@reg.register("name")``, which
    registers the decorated object and gives it back unchanged.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    @overload
    def register(self, name: str) -> Callable[[T], T]: ...

    @overload
    def register(self, name: str, entry: T) -> T: ...

    def register(self, name, entry=_NO_ENTRY):
        """Add ``entry`` under ``name``; without ``entry``, a decorator that adds its target.

        Raises:
            ValueError: ``name`` is empty or already taken (a second entry would silently
                shadow the first).
        """
        if entry is _NO_ENTRY:
            return lambda target: self.register(name, target)
        if not isinstance(name, str) or not name:
            raise ValueError(f"{self.kind} name {name!r}: must be a non-empty string")
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = entry
        return entry

    def get(self, name: str, field: str | None = None) -> T:
        """The entry of ``name``.

        ``field`` is where the name came from (e.g. ``"data.name"``), named first in the error.

        Raises:
            ValueError: no entry of that name; the message lists the registered names.
        """
        if isinstance(name, str) and name in self._entries:
            return self._entries[name]
        allowed = ", ".join(self.names())
        if field is None:
            raise ValueError(f"unknown {self.kind} {name!r}; allowed: {allowed}")
        raise ValueError(f"{field}={name!r}: unknown {self.kind}; allowed: {allowed}")

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self.names())})"
