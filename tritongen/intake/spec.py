"""The typed description of a model that every later stage works from."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..processing.ops import Pipeline
from ..processing.pipeline import PipelineConfig


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy name: "float32", "int64", ...
    shape: tuple[int, ...]  # -1 = dynamic; the first axis is the batch


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
    postprocess: dict[str, Any]
    labels: list[str] | None = None
    op_types: frozenset[str] = field(default_factory=frozenset)
    runtime_options: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # things the user should know (missing label file, ...)
    # Model feed -> what fills it ("image", "im_shape", "scale_factor"); default: the image feed only.
    feeds: dict[str, str] = field(default_factory=dict)
    side: list[str] = field(default_factory=list)  # side tensors preprocess -> postprocess (e.g. ORIG_SIZE)

    @property
    def is_quantized(self) -> bool:
        """A PaddleSlim QDQ program (quant_post_static / ACT with onnx_format=True)."""
        return bool(self.op_types & {"quantize_linear", "dequantize_linear"})

    @property
    def image_input(self) -> TensorSpec:
        """The feed that takes the preprocessed image (the first feed unless ``feeds`` says otherwise)."""
        image = next((name for name, source in self.feeds.items() if source == "image"), None)
        return next((t for t in self.inputs if t.name == image), self.inputs[0])

    @property
    def preprocessed_shape(self) -> list[int]:
        """Per-image tensor shape after preprocessing (no batch axis); -1 where image-dependent."""
        return Pipeline.from_config(self.preprocess, self.family).output_shape()

    def pipeline_config(self, min_image_side: int | None = None) -> PipelineConfig:
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
        return cfg
