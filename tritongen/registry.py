"""One shape for every registry (model families, tasks, backends, INT8 targets, bench runtimes):
a dict from name to class, filled by a class decorator that refuses a second class of the same
name, with one "unknown X; known: ..." error. ``processing/`` keeps its own (it ships inside
generated models and never imports tritongen)."""
from __future__ import annotations

from typing import Callable, Generic, TypeVar

T = TypeVar("T", bound=type)


class Registry(dict[str, T], Generic[T]):
    def __init__(self, kind: str, key: str = "name"):
        super().__init__()
        self.kind, self.key = kind, key

    def register(self, cls: T) -> T:
        """Class decorator: add ``cls`` under its ``key`` attribute; a second class of that name is a bug."""
        name = getattr(cls, self.key)
        if name in self:
            raise ValueError(f"{self.kind} {name!r} is registered twice ({self[name].__name__} and {cls.__name__})")
        self[name] = cls
        return cls

    def lookup(self, name: str, error: Callable[[str], Exception] = ValueError) -> T:
        """The class registered as ``name``; ``error(message)`` naming the known ones otherwise."""
        if name not in self:
            raise error(f"unknown {self.kind} {name!r}; choose one of: {', '.join(self)}")
        return self[name]
