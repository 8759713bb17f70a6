"""The typed description of a model that every later stage works from."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..processing.classification import ClassificationSettings
from ..processing.detection import DetectionSettings
from ..processing.ops import Pipeline
from ..processing.pipeline import PipelineConfig
from ..processing.segmentation import SegmentationSettings
from ..tasks import Task, task_named

if TYPE_CHECKING:
    from .program import ProgramInfo

PostprocessSettings = ClassificationSettings | DetectionSettings | SegmentationSettings

# Q/DQ pairs: what PaddleSlim ACT and quant_post_static(onnx_format=True) write.
QDQ_OPS = frozenset({"quantize_linear", "dequantize_linear"})
# The older formats (PaddleSlim before onnx_format, Paddle's QAT passes): frozen programs with
# int8-valued weights and dequantize ops after each quantized op, or unfrozen quant-dequant ops.
LEGACY_QUANT_OPS = frozenset({
    "fake_quantize_abs_max", "fake_quantize_range_abs_max", "fake_quantize_moving_average_abs_max",
    "fake_channel_wise_quantize_abs_max", "fake_dequantize_max_abs", "fake_channel_wise_dequantize_max_abs",
    "fake_quantize_dequantize_abs_max", "fake_quantize_dequantize_moving_average_abs_max",
    "fake_channel_wise_quantize_dequantize_abs_max",
})


class QuantFormat(Enum):
    """How a Paddle program carries its INT8 quantization."""

    NONE = "fp32"
    QDQ = "quantize_linear"  # Q/DQ pairs (paddle2onnx converts them to ONNX QuantizeLinear/DequantizeLinear)
    LEGACY = "fake_quantize"  # fake_quantize_* / fake_dequantize_* (rewritten to Q/DQ before conversion)

    @classmethod
    def of(cls, op_types: frozenset[str]) -> "QuantFormat":
        if op_types & LEGACY_QUANT_OPS:
            return cls.LEGACY
        return cls.QDQ if op_types & QDQ_OPS else cls.NONE


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy name: "float32", "int64", ...
    shape: tuple[int, ...]  # -1 = dynamic; the first axis is the batch


@dataclass(frozen=True)
class PredictorOptions:
    """How the export's deploy config asks Paddle Inference to run it (PaddleClas ``Global``)."""

    enable_mkldnn: bool = False
    threads: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.enable_mkldnn, bool):
            raise ValueError(f"enable_mkldnn must be true or false, got {self.enable_mkldnn!r}")
        if isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 1:
            raise ValueError(f"threads must be an integer >= 1, got {self.threads!r}")


@dataclass
class ModelSpec:
    """A Paddle inference model plus the deploy knowledge needed to serve it."""

    name: str
    family: str  # registry key: "paddleclas", ...
    task: str  # "classification", ...
    source_dir: Path
    model_file: Path
    params_file: Path
    config_file: Path
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    preprocess: list[dict[str, Any]]  # ops in order, the form Pipeline.from_config takes
    postprocess: PostprocessSettings  # the task's settings class (task_kind.settings)
    labels: list[str] | None = None
    op_types: frozenset[str] = field(default_factory=frozenset)
    runtime_options: PredictorOptions = field(default_factory=PredictorOptions)
    notes: list[str] = field(default_factory=list)  # things the user should know (missing label file, ...)
    # Model feed -> what fills it ("image", "im_shape", "scale_factor"); default: the image feed only.
    feeds: dict[str, str] = field(default_factory=dict)
    side: list[str] = field(default_factory=list)  # side tensors preprocess -> postprocess (e.g. ORIG_SIZE)

    def __post_init__(self) -> None:
        settings = self.task_kind.settings
        if not isinstance(self.postprocess, settings):
            raise TypeError(f"{self.task} postprocess settings must be {settings.__name__}, "
                            f"got {type(self.postprocess).__name__}")

    def relocated(self, directory: Path, program: "ProgramInfo | None" = None) -> "ModelSpec":
        """This model's deploy knowledge over the program and params ``directory`` holds under the
        same file names (a quantized or rewritten copy written there): op types from that program,
        fetch names by position (saving a program may rename its fetches), shapes and meaning as
        intake read them. ``program``: the copy as already read, if the caller has it; the caller
        checks that it fetches as many tensors."""
        from .program import read_program

        directory = Path(directory)
        model_file = directory / self.model_file.name
        program = program or read_program(model_file)
        outputs = [replace(t, name=new.name) for t, new in zip(self.outputs, program.outputs, strict=True)]
        return replace(self, source_dir=directory, model_file=model_file, params_file=directory / self.params_file.name,
                       config_file=directory / self.config_file.name, outputs=outputs, op_types=program.op_types,
                       notes=list(self.notes))

    @property
    def task_kind(self) -> type[Task]:
        """The task's registry entry (tritongen.tasks): settings and result types, capabilities."""
        return task_named(self.task)

    @property
    def nms_in_graph(self) -> bool:
        """A detector whose graph ends in multiclass_nms3 (rows of all images + per-image counts)."""
        return isinstance(self.postprocess, DetectionSettings) and self.postprocess.nms_in_graph

    @property
    def quant_format(self) -> QuantFormat:
        return QuantFormat.of(self.op_types)

    @property
    def is_quantized(self) -> bool:
        """An INT8 program: PaddleSlim Q/DQ pairs, or the older fake_quantize / fake_dequantize ops."""
        return self.quant_format is not QuantFormat.NONE

    @property
    def image_input(self) -> TensorSpec:
        """The feed that takes the preprocessed image (the first feed unless ``feeds`` says otherwise)."""
        image = next((name for name, source in self.feeds.items() if source == "image"), None)
        return next((t for t in self.inputs if t.name == image), self.inputs[0])

    @property
    def preprocessed_shape(self) -> list[int]:
        """Per-image tensor shape after preprocessing (no batch axis); -1 where image-dependent."""
        return Pipeline.from_config(self.preprocess, self.family).output_shape()

    def pipeline_config(self, min_image_side: int | None = None, max_image_pixels: int | None = None) -> PipelineConfig:
        cfg = PipelineConfig(
            task=self.task,
            family=self.family,
            feeds=dict(self.feeds) or {self.image_input.name: "image"},
            side=list(self.side),
            outputs=[t.name for t in self.outputs],
            preprocess=self.preprocess,
            postprocess=self.postprocess,
            labels=self.labels,
        )
        if min_image_side is not None:
            cfg.min_image_side = min_image_side
        if max_image_pixels is not None:
            cfg.max_image_pixels = max_image_pixels
        return cfg
