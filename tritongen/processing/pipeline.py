"""The serving pipeline's two ends: encoded images -> model feeds, raw outputs -> results.

``PipelineConfig`` is what a generated repository stores (``pipeline.json``); the
in-process predictor, the Triton Python models and the tests all build from it.

A model may take several feeds (PaddleDetection: ``image``, ``scale_factor``, ``im_shape``);
``feeds`` maps each feed name to what fills it. ``side`` names per-image tensors that skip
the network and go from preprocessing straight to postprocessing (the original image size).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .errors import PreprocessError
from .image import DEFAULT_MIN_SIDE, MAX_PIXELS, decode_image
from .ops import Info, Pipeline, batcher_for
from .settings import check_int

PIPELINE_FILE = "pipeline.json"
# Feed sources: the preprocessed image, or an entry of the per-image side data.
FEED_SOURCES = ("image", "im_shape", "scale_factor")
ORIG_SIZE = "ORIG_SIZE"  # side tensor: original (height, width), int32


@dataclass
class PipelineConfig:
    task: str
    feeds: dict[str, str]  # model feed name -> one of FEED_SOURCES
    outputs: list[str]  # the network's raw outputs, in order
    preprocess: list[dict[str, Any]]
    family: str = "paddleclas"
    # The task's settings dataclass (``<task>.Settings``); a plain dict (pipeline.json's form)
    # is turned into it, so a loaded config is typed like one built in process.
    postprocess: Any = field(default_factory=dict)
    labels: list[str] | None = None
    min_image_side: int = DEFAULT_MIN_SIDE
    side: list[str] = field(default_factory=list)
    # Decompression-bomb guard: larger images are rejected from their header, before decoding.
    max_image_pixels: int = MAX_PIXELS

    def __post_init__(self) -> None:
        check_int("max_image_pixels", self.max_image_pixels, minimum=1)
        settings = task_module(self.task).Settings
        if isinstance(self.postprocess, dict):
            self.postprocess = settings.from_dict(self.postprocess)
        elif not isinstance(self.postprocess, settings):
            raise ValueError(f"{self.task} postprocess settings must be {settings.__name__}, "
                             f"got {type(self.postprocess).__name__}")

    @property
    def image_feed(self) -> str:
        return next(name for name, source in self.feeds.items() if source == "image")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data (``postprocess`` as its dict form)."""
        return {**asdict(self), "postprocess": self.postprocess.to_dict()}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n"

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json(), encoding="utf-8")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PipelineConfig":
        return cls(**data)  # __post_init__ rebuilds the typed postprocess settings

    @classmethod
    def load(cls, path: str | Path) -> "PipelineConfig":
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


class Preprocessor:
    """Encoded images -> one batch per model feed (and side tensor)."""

    def __init__(self, config: PipelineConfig):
        self.config = config
        self.ops = Pipeline.from_config(config.preprocess, config.family)
        self.batcher = batcher_for(config.family)  # e.g. PaddleDetection zero-pads to the largest h, w

    def sample(self, data: bytes) -> tuple[np.ndarray, Info]:
        return self.ops.run(decode_image(data, self.config.min_image_side, self.config.max_image_pixels))

    def one(self, data: bytes) -> np.ndarray:
        """The image feed of one image (calibration uses this)."""
        return self.sample(data)[0]

    def __call__(self, images: Sequence[bytes]) -> dict[str, np.ndarray]:
        samples = []
        for i, data in enumerate(images):
            try:
                samples.append(self.sample(data))
            except PreprocessError as exc:
                raise PreprocessError(f"image {i}: {exc}" if len(images) > 1 else str(exc)) from None
        batch: dict[str, np.ndarray] = {}
        for feed, source in self.config.feeds.items():
            if source == "image":
                batch[feed] = self._stack_images([img for img, _ in samples])
            else:
                batch[feed] = np.stack([info[source] for _, info in samples]).astype(np.float32)
        if ORIG_SIZE in self.config.side:
            batch[ORIG_SIZE] = np.stack([info["orig_shape"] for _, info in samples]).astype(np.int32)
        return batch

    def _stack_images(self, tensors: list[np.ndarray]) -> np.ndarray:
        if self.batcher is not None:
            return self.batcher(tensors)
        shapes = {t.shape for t in tensors}
        if len(shapes) > 1:
            raise PreprocessError(
                f"the images of one request became tensors of different shapes {sorted(shapes)}; "
                "this model has no fixed-size resize or crop, so send images of one size per request"
            )
        return np.stack(tensors)


def task_module(task: str):
    """The module of a task (classification, detection, segmentation): it defines
    ``Settings`` (its postprocess settings dataclass), ``Postprocessor(config)`` and
    ``outputs(config)``, the ensemble's result tensors."""
    import importlib

    try:
        return importlib.import_module(f".{task}", __package__)
    except ModuleNotFoundError:
        raise ValueError(f"unknown task {task!r}") from None


def postprocessor(config: PipelineConfig):
    return task_module(config.task).Postprocessor(config)
