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

from typing import TYPE_CHECKING

import numpy as np

from .ops import Pipeline
from .pipeline import ORIG_SIZE

if TYPE_CHECKING:
    from .pipeline import PipelineConfig

IGNORE_INDEX = 255  # PaddleSeg's ignore_index; fills LABEL_MAP beyond an image's own size


def outputs(config: "PipelineConfig") -> list[tuple[str, str, list[int]]]:
    return [("LABEL_MAP", "int32", [-1, -1]), ("IMAGE_SIZE", "int32", [2])]


def label_maps(raw: np.ndarray, output_op: str | None = None) -> np.ndarray:
    """Network output -> int32 label maps [N, h, w]."""
    raw = np.asarray(raw)
    if raw.ndim == 4 and raw.shape[1] == 1 and output_op == "argmax":
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
        self.output_op = config.postprocess.get("output_op")
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
