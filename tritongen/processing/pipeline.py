"""The serving pipeline's two ends: encoded images -> input batch, raw outputs -> results.

``PipelineConfig`` is what a generated repository stores (``pipeline.json``); the
in-process predictor, the Triton Python models and the tests all build from it.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from . import classification
from .errors import PreprocessError
from .image import DEFAULT_MIN_SIDE, decode_image
from .ops import Pipeline

PIPELINE_FILE = "pipeline.json"


@dataclass
class PipelineConfig:
    task: str
    input_name: str
    output_name: str
    preprocess: list[dict[str, Any]]
    postprocess: dict[str, Any] = field(default_factory=dict)
    labels: list[str] | None = None
    min_image_side: int = DEFAULT_MIN_SIDE

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, ensure_ascii=False) + "\n"

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json(), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> "PipelineConfig":
        return cls(**json.loads(Path(path).read_text(encoding="utf-8")))


class Preprocessor:
    """Encoded images -> one float32 batch [N, ...] for the model's input."""

    def __init__(self, config: PipelineConfig):
        self.config = config
        self.ops = Pipeline.from_config(config.preprocess)

    def one(self, data: bytes) -> np.ndarray:
        return self.ops(decode_image(data, self.config.min_image_side))

    def __call__(self, images: Sequence[bytes]) -> np.ndarray:
        tensors = []
        for i, data in enumerate(images):
            try:
                tensors.append(self.one(data))
            except PreprocessError as exc:
                raise PreprocessError(f"image {i}: {exc}" if len(images) > 1 else str(exc)) from None
        shapes = {t.shape for t in tensors}
        if len(shapes) > 1:
            raise PreprocessError(
                f"the images of one request became tensors of different shapes {sorted(shapes)}; "
                "this model has no fixed-size crop, so send images of one size per request"
            )
        return np.stack(tensors)


class ClassificationPostprocessor:
    """Model scores [N, C] -> LABEL_IDS / SCORES (/ LABELS) [N, K]."""

    def __init__(self, config: PipelineConfig):
        self.k = int(config.postprocess["topk"])
        self.labels = config.labels

    def __call__(self, scores: np.ndarray) -> dict[str, np.ndarray]:
        ids, top_scores = classification.topk(scores, self.k)
        out = {"LABEL_IDS": ids, "SCORES": top_scores}
        if self.labels is not None:
            out["LABELS"] = classification.label_names(ids, self.labels)
        return out


POSTPROCESSORS = {"classification": ClassificationPostprocessor}


def postprocessor(config: PipelineConfig) -> ClassificationPostprocessor:
    return POSTPROCESSORS[config.task](config)
