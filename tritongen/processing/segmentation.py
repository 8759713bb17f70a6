"""PaddleSeg postprocessing: network output -> label map at each image's original size.

The network answers either logits/probabilities [N, C, h, w] (``output_op: none|softmax``;
argmax over C here, first maximum on ties like ``paddle.argmax``) or a label map [N, h, w]
(``output_op: argmax``). Each map is then taken back through the preprocessing ops in reverse
(``paddleseg.core.infer.reverse_transform`` with ``mode='nearest'``): resizes are undone with
Paddle's nearest interpolation, paddings are cropped. The ops are deterministic, so the
``trans_info`` is recomputed from the original size (the ``ORIG_SIZE`` side tensor).

Ensemble results:
``LABEL_MAP`` int32 [N, H, W] where H, W are the largest original height/width in the request;
    an image smaller than that is padded bottom/right with 255, PaddleSeg's ``ignore_index``
    (never a real class id here: a model has at most 255 classes in that convention).
``IMAGE_SIZE`` int32 [N, 2]: each image's own (height, width); crop ``LABEL_MAP[i, :h, :w]``.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any

import numpy as np

from .ops import Pipeline
from .pipeline import ORIG_SIZE
from .settings import check_int, check_keys

if TYPE_CHECKING:
    from .pipeline import PipelineConfig

IGNORE_INDEX = 255  # PaddleSeg's ignore_index; fills LABEL_MAP beyond an image's own size


class SegmentationOutput(str, Enum):
    """What the network returns; the values are PaddleSeg's ``Deploy.output_op``."""

    LABEL_MAP = "argmax"  # int label map [N, h, w] (or [N, 1, h, w])
    SCORES = "softmax"  # softmax probabilities [N, C, h, w]
    LOGITS = "none"  # raw class scores [N, C, h, w]


@dataclass(frozen=True)
class SegmentationSettings:
    """``{"output_op": ..., "num_classes": C}`` in pipeline.json; num_classes when the
    network returns per-class scores of a static class count."""

    output_op: SegmentationOutput
    num_classes: int | None = None

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "output_op", SegmentationOutput(self.output_op))
        except ValueError:
            known = ", ".join(o.value for o in SegmentationOutput)
            raise ValueError(f"output_op must be one of {known}, got {self.output_op!r}") from None
        if self.num_classes is not None:
            check_int("num_classes", self.num_classes, minimum=1)
            if self.output_op is SegmentationOutput.LABEL_MAP:
                raise ValueError("num_classes applies to class scores, but output_op is 'argmax' (a label map)")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"output_op": self.output_op.value}
        if self.num_classes is not None:
            out["num_classes"] = self.num_classes
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SegmentationSettings":
        check_keys("segmentation", data, {"output_op", "num_classes"})
        if "output_op" not in data:
            raise ValueError("segmentation postprocess settings lack output_op")
        return cls(**data)


Settings = SegmentationSettings  # what PipelineConfig builds from pipeline.json's "postprocess"


def outputs(config: "PipelineConfig") -> list[tuple[str, str, list[int]]]:
    return [("LABEL_MAP", "int32", [-1, -1]), ("IMAGE_SIZE", "int32", [2])]


def label_maps(raw: np.ndarray, output_op: SegmentationOutput | str | None = None) -> np.ndarray:
    """Network output -> int32 label maps [N, h, w]."""
    raw = np.asarray(raw)
    if raw.ndim == 4 and raw.shape[1] == 1 and output_op == SegmentationOutput.LABEL_MAP:
        raw = raw[:, 0]
    if raw.ndim == 4:
        return np.argmax(raw, axis=1).astype(np.int32)
    if raw.ndim == 3:
        return raw.astype(np.int32)
    raise ValueError(f"segmentation output of shape {raw.shape}: expected [N, C, H, W] scores or an [N, H, W] label map")


class Postprocessor:
    """raw[outputs[0]] (+ ORIG_SIZE) -> LABEL_MAP [N, H, W] and IMAGE_SIZE [N, 2]."""

    def __init__(self, config: "PipelineConfig"):
        from .ops_paddleseg import reverse_transform, trans_info

        self._reverse, self._trans_info = reverse_transform, trans_info
        self.output_name = config.outputs[0]
        self.output_op = config.postprocess.output_op
        self.ops = Pipeline.from_config(config.preprocess, config.family).ops

    def one(self, label: np.ndarray, orig_hw: tuple[int, int]) -> np.ndarray:
        """One [h, w] map at the network's resolution -> the original image size."""
        return self._reverse(label, self._trans_info(self.ops, orig_hw))

    def __call__(self, raw: dict[str, np.ndarray], side: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        maps = label_maps(raw[self.output_name], self.output_op)
        if side is not None and ORIG_SIZE in side:
            sizes = np.asarray(side[ORIG_SIZE], np.int32).reshape(len(maps), 2)
            restored = [self.one(m, (int(h), int(w))) for m, (h, w) in zip(maps, sizes)]
        else:  # no original size known: the maps stay at the network's resolution
            restored = list(maps)
        sizes = np.array([r.shape for r in restored], np.int32).reshape(len(restored), 2)
        height, width = (int(v) for v in sizes.max(axis=0)) if len(restored) else (0, 0)
        out = np.full((len(restored), height, width), IGNORE_INDEX, np.int32)
        for i, r in enumerate(restored):
            out[i, : r.shape[0], : r.shape[1]] = r
        return {"LABEL_MAP": out, "IMAGE_SIZE": sizes}
