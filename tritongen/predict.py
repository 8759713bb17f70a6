"""In-process prediction with the exact pipeline a generated repository serves."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from .client.base import ImageSource, read_image_bytes
from .errors import TritongenError
from .intake.spec import ModelSpec
from .processing.errors import PreprocessError
from .processing.pipeline import Preprocessor, postprocessor
from .processing.runners import OnnxRuntimeRunner, PaddleInferenceRunner
from .results import Classification, Detection, Segmentation


class LocalPredictor:
    """decode -> preprocess -> Paddle Inference or ONNX Runtime -> postprocess, in this process."""

    def __init__(self, spec: ModelSpec, runtime: str = "paddle", onnx_path: Path | None = None, threads: int = 1):
        self.spec = spec
        self.config = config = spec.pipeline_config()
        self.preprocess = Preprocessor(config)
        self.postprocess = postprocessor(config)
        if runtime == "paddle":
            self.runner = PaddleInferenceRunner(
                spec.model_file, spec.params_file, threads=threads,
                enable_mkldnn=spec.runtime_options.enable_mkldnn,
            )
        elif runtime == "onnxruntime":
            if onnx_path is None:
                raise TritongenError("runtime 'onnxruntime' needs onnx_path (see tritongen.convert.paddle_to_onnx)")
            self.runner = OnnxRuntimeRunner(onnx_path, threads=threads)
        else:
            raise TritongenError(f"unknown runtime {runtime!r}: use 'paddle' or 'onnxruntime'")

    def predict(self, images: Sequence[ImageSource]) -> list[Classification] | list[Detection] | list[Segmentation]:
        """One result per image, of the task's result type (``spec.task_kind.result``)."""
        try:
            batch = self.preprocess([read_image_bytes(i) for i in images])
        except PreprocessError as exc:
            raise TritongenError(str(exc)) from None
        raw = self.runner.run({name: batch[name] for name in self.config.feeds})
        return self.spec.task_kind.decode(self.postprocess(raw, batch))

