"""ONNX graph passes: small functions ``(onnx.ModelProto) -> (onnx.ModelProto, PassReport)``.

A pass never modifies the model it is given; it returns a new one plus a report of what it
changed (counts, and notes worth showing a user). Passes register under a name so a backend
can name the chain it needs (``run_passes(model, ["remove_int32_bias_dequantize", ...])``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterable

if TYPE_CHECKING:
    import onnx


@dataclass
class PassReport:
    name: str
    counts: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return any(self.counts.values())


GraphPass = Callable[["onnx.ModelProto"], "tuple[onnx.ModelProto, PassReport]"]
PASSES: dict[str, GraphPass] = {}


def register(name: str) -> Callable[[GraphPass], GraphPass]:
    def deco(fn: GraphPass) -> GraphPass:
        if name in PASSES and PASSES[name] is not fn:
            raise ValueError(f"graph pass {name!r} is registered twice")
        PASSES[name] = fn
        return fn

    return deco


def run_passes(model: "onnx.ModelProto", names: Iterable[str]) -> "tuple[onnx.ModelProto, list[PassReport]]":
    reports = []
    for name in names:
        if name not in PASSES:
            raise KeyError(f"unknown graph pass {name!r}; known: {', '.join(sorted(PASSES))}")
        model, report = PASSES[name](model)
        reports.append(report)
    return model, reports


from . import tensorrt  # noqa: E402,F401  (registers its passes)

__all__ = ["PASSES", "GraphPass", "PassReport", "register", "run_passes"]
