"""How to quantize: one validated settings object shared by the CLI, ``build``, ``quantize`` and ``bench``.

``QuantizeConfig`` is what the user asked for; :class:`QuantizationRecord` is what actually
ran (PaddleSlim's ``avg`` may be replaced by ``abs_max``, detector tails kept float, ...).
The record is saved beside the INT8 export as ``tritongen_quant.json`` so the export
explains itself; nothing reads it back within a run.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from ..errors import TritongenError

QUANT_FILE = "tritongen_quant.json"


class QuantMethod(str, Enum):
    PTQ = "ptq"  # PaddleSlim quant_post_static
    QAT = "qat"  # PaddleSlim ACT quant-aware distillation


class CalibrationAlgo(str, Enum):
    AVG = "avg"
    ABS_MAX = "abs_max"
    HIST = "hist"
    KL = "KL"
    MSE = "mse"


class OrtRecipe(str, Enum):
    """ONNX Runtime INT8 recipes (see convert.int8): built, measured, the most faithful wins."""

    PADDLE_SCALES = "paddle-scales"
    ORT_PLACEMENT = "ort-placement"
    ORT_CALIBRATION = "ort-calibration"


def _enum(kind: type[Enum], value: Any, option: str) -> Any:
    if isinstance(value, kind):
        return value
    try:
        return kind(value)
    except ValueError:
        choices = ", ".join(m.value for m in kind)
        raise TritongenError(f"unknown {option} {value!r}; choose one of {choices}") from None


@dataclass(frozen=True)
class QuantizeConfig:
    """INT8 settings (the ``--int8`` options). Strings are accepted for the enums and checked here."""

    calib_dir: Path
    method: QuantMethod = QuantMethod.PTQ
    algo: CalibrationAlgo = CalibrationAlgo.HIST
    batch_size: int = 4
    batch_nums: int | None = None
    skip_tensors: tuple[str, ...] = ()
    act_config: Path | None = None  # ACT yaml (qat)
    train_iters: int | None = None  # qat
    max_drop: float | None = None  # fidelity gate: 1 - headline metric may not exceed this
    holdout_fraction: float = 0.2
    recipes: tuple[OrtRecipe, ...] = tuple(OrtRecipe)  # ONNX Runtime recipes to try

    def __post_init__(self) -> None:
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731  (frozen)
        set_("calib_dir", Path(self.calib_dir))
        set_("method", _enum(QuantMethod, self.method, "--method"))
        set_("algo", _enum(CalibrationAlgo, self.algo, "--algo"))
        set_("skip_tensors", tuple(self.skip_tensors))
        set_("recipes", tuple(_enum(OrtRecipe, r, "INT8 recipe") for r in self.recipes))
        if self.act_config is not None:
            set_("act_config", Path(self.act_config))
        for name in ("batch_size", "batch_nums", "train_iters"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise TritongenError(f"--{name.replace('_', '-')} must be an integer >= 1, got {value!r}")
        if self.max_drop is not None and not 0.0 <= self.max_drop <= 1.0:
            raise TritongenError(f"--max-drop must be within [0, 1], got {self.max_drop!r}")
        if not 0.0 < self.holdout_fraction < 1.0:
            raise TritongenError(f"holdout_fraction must be within (0, 1), got {self.holdout_fraction!r}")
        if not self.recipes:
            raise TritongenError("at least one ONNX Runtime INT8 recipe is needed")
        if self.method is QuantMethod.PTQ and (self.act_config is not None or self.train_iters is not None):
            raise TritongenError("--config and --train-iters apply to --method qat")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        return {k: _plain(v) for k, v in data.items()}


def _plain(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


@dataclass
class QuantizationRecord:
    """What ran: the effective settings and what the quantizer decided on its own."""

    config: QuantizeConfig  # effective (algo as used)
    source: Path
    calibration_images: list[Path]
    holdout_images: list[Path]
    skipped_images: list[str] = field(default_factory=list)  # "path: why"
    float_tensors: tuple[str, ...] = ()  # tensors whose INT8 observers were removed (kept float)
    notes: list[str] = field(default_factory=list)
    act_config: dict[str, Any] | None = None  # qat: ACT's own effective config (its schema, passed through)
    tritongen_version: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.config.to_dict(),
            "source": str(self.source),
            "calibration_images": [str(p) for p in self.calibration_images],
            "holdout_images": [str(p) for p in self.holdout_images],
            "skipped_images": list(self.skipped_images),
            "float_tensors": list(self.float_tensors),
            "notes": list(self.notes),
            **({"act_config": self.act_config} if self.act_config is not None else {}),
            "tritongen_version": self.tritongen_version,
        }

    def save(self, directory: Path) -> Path:
        path = directory / QUANT_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        return path
