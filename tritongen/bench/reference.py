"""FastDeploy's published tables (FP32 vs INT8 latency and accuracy), and which of them our models face.

The rows are FastDeploy 1.x's quantization benchmark tables, shipped verbatim as
``tritongen/bench/data/fastdeploy_benchmarks.csv`` and read with :mod:`importlib.resources`
(so they work from an installed wheel). Their conventions: runtime latency = the model only,
end-to-end = with pre/post-processing; mean of 1000 runs in ms; CPU runs use 1 thread;
``max_speedup`` = FP32 latency / the fastest INT8 latency; accuracy is Top-1, mAP or mIoU on
the real validation sets (``"None"`` in the file: not measured, read as ``None``).

Which FastDeploy model each of our models faces is declared once per model, in a small class
registered with :func:`register_model` (duplicate names are rejected, and every FastDeploy
name must exist in the table).
"""
from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import ClassVar

from ..errors import TritongenError

DATA_FILE = "data/fastdeploy_benchmarks.csv"

COLUMNS: tuple[str, ...] = ("family", "model", "backend", "hardware", "latency", "fp32_ms", "int8_ms", "int8_fp16_ms",
                            "int8_fp16_pm_ms", "max_speedup", "fp32_acc", "int8_acc", "metric", "method")


class Family(StrEnum):
    CLS = "cls"
    DET = "det"
    SEG = "seg"

    @classmethod
    def of_intake(cls, family: str) -> "Family":
        """FastDeploy's family of one of our intake families (``ModelSpec.family``)."""
        try:
            return {"paddleclas": cls.CLS, "paddledetection": cls.DET, "paddleseg": cls.SEG}[family]
        except KeyError:
            raise TritongenError(f"no FastDeploy family for model family {family!r}") from None


class Latency(StrEnum):
    RUNTIME = "runtime"  # the model alone
    END2END = "end2end"  # decode + preprocess + model + postprocess


class Backend(StrEnum):
    ONNX_RUNTIME = "ONNX Runtime"
    PADDLE_INFERENCE = "Paddle Inference"
    TENSORRT = "TensorRT"
    PADDLE_TENSORRT = "Paddle-TensorRT"


class Hardware(StrEnum):
    CPU = "CPU"
    GPU = "GPU"


def _number(text: str) -> float | None:
    return None if text.strip() == "None" else float(text)


@dataclass(frozen=True)
class ReferenceRow:
    """One row of FastDeploy's published tables."""

    family: Family
    model: str
    backend: Backend
    hardware: Hardware
    latency: Latency
    fp32_ms: float | None
    int8_ms: float | None
    int8_fp16_ms: float | None  # GPU: INT8 with the rest in FP16
    int8_fp16_pm_ms: float | None  # GPU: the same with pinned memory
    max_speedup: float | None
    fp32_acc: float | None
    int8_acc: float | None
    metric: str  # Top1 | mAP | mIoU
    method: str  # as published (离线量化 = post-training quantization, ...)

    @classmethod
    def from_csv(cls, record: dict[str, str]) -> "ReferenceRow":
        return cls(
            family=Family(record["family"]), model=record["model"], backend=Backend(record["backend"]),
            hardware=Hardware(record["hardware"]), latency=Latency(record["latency"]),
            **{key: _number(record[key]) for key in ("fp32_ms", "int8_ms", "int8_fp16_ms", "int8_fp16_pm_ms",
                                                     "max_speedup", "fp32_acc", "int8_acc")},
            metric=record["metric"], method=record["method"],
        )


def parse_rows(text: str) -> tuple[ReferenceRow, ...]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    if tuple(reader.fieldnames or ()) != COLUMNS:
        raise TritongenError(f"FastDeploy table: expected columns {','.join(COLUMNS)}, got {reader.fieldnames}")
    return tuple(ReferenceRow.from_csv(record) for record in reader)


def data_text() -> str:
    """The shipped CSV, verbatim."""
    return resources.files(__package__).joinpath(DATA_FILE).read_text(encoding="utf-8")


@lru_cache(maxsize=1)
def fastdeploy_rows() -> tuple[ReferenceRow, ...]:
    """Every row of FastDeploy's published tables, in the file's order."""
    return parse_rows(data_text())


def rows_for(model: str) -> tuple[ReferenceRow, ...]:
    """FastDeploy's rows of one of FastDeploy's model names (``ResNet50_vd``, ...)."""
    return tuple(row for row in fastdeploy_rows() if row.model == model)


# --------------------------------------------------------------------------- our models -> theirs


def normalise(name: str) -> str:
    """Case, ``_``/``-``/spaces and an export directory's ``_infer`` suffix do not matter."""
    key = re.sub(r"[^0-9a-z]", "", name.lower())
    return key[: -len("infer")] if key.endswith("infer") and len(key) > len("infer") else key


class ModelMatch:
    """Our model (its names: export directory or zoo names) and the FastDeploy model it faces.

    Subclass, set the attributes, decorate with :func:`register_model`."""

    names: ClassVar[tuple[str, ...]]  # the first is the canonical name; every one is matched after normalise()
    fastdeploy: ClassVar[str | None]  # FastDeploy's ``model`` column; None: FastDeploy published no row
    note: ClassVar[str] = ""  # what differs between what we run and what FastDeploy measured

    @classmethod
    def name(cls) -> str:
        return cls.names[0]

    @classmethod
    def rows(cls) -> tuple[ReferenceRow, ...]:
        return rows_for(cls.fastdeploy) if cls.fastdeploy else ()


MODELS: dict[str, type[ModelMatch]] = {}  # normalised name -> entry


def register_model(cls: type[ModelMatch]) -> type[ModelMatch]:
    if not getattr(cls, "names", None):
        raise ValueError(f"{cls.__name__}: no names")
    if cls.fastdeploy is not None and not rows_for(cls.fastdeploy):
        raise ValueError(f"{cls.__name__}: FastDeploy's tables have no model {cls.fastdeploy!r}")
    keys = [normalise(n) for n in cls.names]
    for name, key in zip(cls.names, keys):
        if key in MODELS or keys.count(key) > 1:
            other = MODELS.get(key, cls).__name__
            raise ValueError(f"model name {name!r} is registered twice ({other} and {cls.__name__})")
    for key in keys:
        MODELS[key] = cls
    return cls


def match_model(name: str) -> type[ModelMatch] | None:
    """The entry of one of our model names, or None when FastDeploy has nothing to say about it."""
    return MODELS.get(normalise(name))


def known_names() -> list[str]:
    return sorted({entry.name() for entry in MODELS.values()})


def source_name(source: str | Path) -> str:
    """The model name of a bench source: its directory's name (``.`` resolved), or the zoo name."""
    path = Path(source)
    return path.resolve().name if path.exists() else path.name or str(source)


@register_model
class ResNet50Vd(ModelMatch):
    names = ("resnet50_vd",)
    fastdeploy = "ResNet50_vd"


@register_model
class MobileNetV1(ModelMatch):
    names = ("mobilenetv1", "mobilenetv1_ssld")
    fastdeploy = "MobileNetV1_ssld"


@register_model
class PPYOLOES(ModelMatch):
    names = ("ppyoloe_s", "ppyoloe_s_nonms", "ppyoloe_crn_s_300e_coco")
    fastdeploy = "ppyoloe_crn_l_300e_coco"
    note = "FastDeploy measured PP-YOLOE-l (ppyoloe_crn_l_300e_coco, 110 GFLOPs); we run PP-YOLOE-s (17.4 GFLOPs)"


@register_model
class PPYOLOEL(ModelMatch):
    names = ("ppyoloe", "ppyoloe_l", "ppyoloe_crn_l_300e_coco")  # the zoo's ppyoloe is FastDeploy's own export
    fastdeploy = "ppyoloe_crn_l_300e_coco"


@register_model
class PPLiteSegT(ModelMatch):
    names = ("pp_liteseg_t_raw", "pp_liteseg_t", "pp_liteseg", "pp_liteseg_t_stdc1_cityscapes_without_argmax")
    fastdeploy = "PP-LiteSeg-T(STDC1)-cityscapes"


@register_model
class BiSeNetV2(ModelMatch):
    names = ("bisenetv2", "bisenet_cityscapes_without_argmax")
    fastdeploy = None


@register_model
class YOLOv5s(ModelMatch):
    names = ("yolov5s",)
    fastdeploy = "YOLOv5s"


@register_model
class YOLOv6s(ModelMatch):
    names = ("yolov6s",)
    fastdeploy = "YOLOv6s"


@register_model
class YOLOv7(ModelMatch):
    names = ("yolov7",)
    fastdeploy = "YOLOv7"


__all__ = ["COLUMNS", "Family", "Latency", "Backend", "Hardware", "ReferenceRow", "fastdeploy_rows", "rows_for",
           "ModelMatch", "MODELS", "register_model", "match_model", "known_names", "normalise", "source_name",
           "parse_rows", "data_text"]
