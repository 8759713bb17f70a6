"""PaddleSeg 2.8 deploy transforms (``Deploy.transforms`` in an export's deploy.yaml).

Exact semantics of ``paddleseg/transforms/transforms.py`` + ``functional.py`` as PaddleSeg's
deploy predictor runs them: ``Compose`` reads the image with ``cv2.imread(...).astype('float32')``
(so every op works on float32, including resizes and padding), converts BGR -> RGB, runs the
transforms on HWC and transposes to CHW. The family therefore prepends ``ToRGB`` and
``ToFloat32`` and appends ``ToCHW``.

Every geometric op also reports how it changed the size (``trans_info``), computed from the
input size alone, so postprocessing can undo the ops from the original size exactly as
``paddleseg.core.infer.reverse_transform`` does.

Deliberate deviations (all for ops that are not deterministic in PaddleSeg):
``Resize(interp='RANDOM')`` and ``ResizeByShort(short_size=[...])`` (a random choice per
image) are rejected; ``ResizeByShort`` with ``max_size`` applies the cap per image, whereas
PaddleSeg's object keeps the reduced ``short_size`` for all later images (a bug).
"""
from __future__ import annotations

from abc import abstractmethod

import math
from typing import Any

import cv2
import numpy as np

from .errors import OpConfigError, PreprocessError
from .ops import Op, Shape, register

FAMILY = "paddleseg"
# One reverse step: ("resize" | "padding", (height, width) before the op).
TransInfo = tuple[str, tuple[int, int]]

INTERP = {
    "NEAREST": cv2.INTER_NEAREST,
    "LINEAR": cv2.INTER_LINEAR,
    "CUBIC": cv2.INTER_CUBIC,
    "AREA": cv2.INTER_AREA,
    "LANCZOS4": cv2.INTER_LANCZOS4,
}


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _positive(value: Any, op: str, key: str) -> int:
    if not _is_int(value) or value <= 0:
        raise OpConfigError(f"{op}: {key!r} must be a positive integer, got {value!r}", key=key)
    return value


def _wh(value: Any, op: str, key: str) -> tuple[int, int]:
    """PaddleSeg's ``target_size``: a list/tuple (w, h) of positive integers."""
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(_is_int(v) and v > 0 for v in value):
        return int(value[0]), int(value[1])
    raise OpConfigError(f"{op}: {key!r} must be a [width, height] pair of positive integers, got {value!r}", key=key)


class SegOp(Op):
    """A PaddleSeg transform: geometry is a pure function of the input size."""

    def trans(self, hw: tuple[int, int]) -> tuple[TransInfo | None, tuple[int, int]]:
        """(trans_info entry or None, output (h, w)) for an input of size ``hw``."""
        return None, hw


class _ScaledResize(SegOp):
    """A resize whose (w, h) ``target`` depends on the input size (ByLong / ByShort / LimitLong)."""

    @abstractmethod
    def target(self, hw: tuple[int, int]) -> tuple[int, int]:
        """Output (w, h) for an input of size ``hw`` = (h, w)."""

    def trans(self, hw):
        w, h = self.target(hw)
        return ("resize", hw), (h, w)

    def __call__(self, img: np.ndarray) -> np.ndarray:
        return _resize_scaled(img, self.target(img.shape[:2]), self.name)

    def output_shape(self, shape: Shape) -> Shape:
        return (None, None, shape[2], shape[3])


def trans_info(ops: list[Op], orig_hw: tuple[int, int]) -> list[TransInfo]:
    """PaddleSeg's ``data['trans_info']`` for an image of size ``orig_hw`` through ``ops``."""
    info: list[TransInfo] = []
    hw = (int(orig_hw[0]), int(orig_hw[1]))
    for op in ops:
        if isinstance(op, SegOp):
            entry, hw = op.trans(hw)
            if entry is not None:
                info.append(entry)
    return info


def nearest_resize(label: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """``F.interpolate(pred, [h, w], mode='nearest')`` (align_corners=False) on a 2-D map.

    Paddle's CPU kernel: ``in = int(float32(in_size / out_size) * out_index)``.
    """
    h, w = hw
    in_h, in_w = label.shape[:2]
    if (in_h, in_w) == (h, w):
        return label
    ry = np.float32(np.float32(in_h) / np.float32(h))
    rx = np.float32(np.float32(in_w) / np.float32(w))
    ys = np.minimum((ry * np.arange(h, dtype=np.float32)).astype(np.int64), in_h - 1)
    xs = np.minimum((rx * np.arange(w, dtype=np.float32)).astype(np.int64), in_w - 1)
    return label[ys[:, None], xs[None, :]]


def reverse_transform(label: np.ndarray, info: list[TransInfo]) -> np.ndarray:
    """``paddleseg.core.infer.reverse_transform(pred, trans_info, mode='nearest')`` on an [h, w] map."""
    for kind, (h, w) in reversed(info):
        if kind == "resize":
            label = nearest_resize(label, (h, w))
        elif kind == "padding":
            label = label[0:h, 0:w]
        else:  # pragma: no cover - only the ops above record trans_info
            raise ValueError(f"unexpected trans_info {kind!r}")
    return label


@register(FAMILY)
class ToFloat32(Op):
    """``Compose`` reads images as ``cv2.imread(path).astype('float32')``."""

    name = "ToFloat32"

    def __call__(self, img: np.ndarray) -> np.ndarray:
        return img.astype(np.float32)


@register(FAMILY)
class ToCHW(Op):
    """``Compose``'s final ``np.transpose(img, (2, 0, 1))`` (a 2-D image gets a channel axis)."""

    name = "ToCHW"

    def __call__(self, img: np.ndarray) -> np.ndarray:
        if img.ndim == 2:
            img = img[..., np.newaxis]
        return np.ascontiguousarray(np.transpose(img, (2, 0, 1)), dtype=np.float32)

    def output_shape(self, shape: Shape) -> Shape:
        return (shape[0], shape[1], shape[2], "chw")


@register(FAMILY)
class Normalize(Op):
    """``(im / 255 - mean) / std`` with PaddleSeg's default mean = std = [0.5]."""

    name = "Normalize"
    params = {"mean": (0.5,), "std": (0.5,)}

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        for key in ("mean", "std"):
            val = self.config[key]
            if not isinstance(val, (list, tuple)) or len(val) not in (1, 3) or not all(_is_num(v) for v in val):
                raise OpConfigError(f"Normalize: {key!r} must be a list of 1 or 3 numbers, got {val!r}", key=key)
        if any(v == 0 for v in self.config["std"]):
            raise OpConfigError("Normalize: 'std' must not contain 0", key="std")
        self.mean = np.array(self.config["mean"])
        self.std = np.array(self.config["std"])

    def __call__(self, img: np.ndarray) -> np.ndarray:
        # functional.normalize, operation for operation (float64 mean/std applied in place)
        im = img.astype(np.float32, copy=False) / 255.0
        im -= self.mean
        im /= self.std
        return im

    def to_dict(self) -> dict[str, Any]:
        c = {k: list(v) for k, v in self.config.items()}
        return {self.name: {k: v for k, v in c.items() if v != list(self.params[k])}}


@register(FAMILY)
class Resize(SegOp):
    """``Resize(target_size=(w, h), keep_ratio, size_divisor, interp)``."""

    name = "Resize"
    params = {"target_size": (512, 512), "keep_ratio": False, "size_divisor": None, "interp": "LINEAR"}

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        c = self.config
        self.w, self.h = _wh(c["target_size"], "Resize", "target_size")
        if not isinstance(c["keep_ratio"], bool):
            raise OpConfigError(f"Resize: 'keep_ratio' must be true or false, got {c['keep_ratio']!r}", key="keep_ratio")
        if c["size_divisor"] is not None:
            _positive(c["size_divisor"], "Resize", "size_divisor")
        if c["interp"] == "RANDOM":
            raise OpConfigError(
                "Resize: interp 'RANDOM' picks a random interpolation per image (training augmentation); "
                f"use one of {sorted(INTERP)} for serving", key="interp")
        if c["interp"] not in INTERP:
            raise OpConfigError(f"Resize: 'interp' must be one of {sorted(INTERP)}, got {c['interp']!r}", key="interp")
        self.interp = INTERP[c["interp"]]

    def target(self, hw: tuple[int, int]) -> tuple[int, int]:
        """(w, h) the image is resized to."""
        size: Any = (self.w, self.h)
        if self.config["keep_ratio"]:
            h, w = hw
            # functional.rescale_size((w, h), target_size)
            scale = min(max(size) / max(w, h), min(size) / min(w, h))
            size = [round(i * scale) for i in (w, h)]
        divisor = self.config["size_divisor"]
        if divisor:
            size = [math.ceil(i / divisor) * divisor for i in size]
        return int(size[0]), int(size[1])

    def trans(self, hw):
        w, h = self.target(hw)
        return ("resize", hw), (h, w)

    def __call__(self, img: np.ndarray) -> np.ndarray:
        w, h = self.target(img.shape[:2])
        if w <= 0 or h <= 0:
            raise PreprocessError(f"Resize: the {img.shape[1]}x{img.shape[0]} image would become {w}x{h}")
        return cv2.resize(img, (w, h), interpolation=self.interp)

    def output_shape(self, shape: Shape) -> Shape:
        if self.config["keep_ratio"]:
            return (None, None, shape[2], shape[3])
        w, h = self.target((1, 1))  # independent of the input size
        return (h, w, shape[2], shape[3])


def _resize_scaled(img: np.ndarray, size: tuple[int, int], op: str) -> np.ndarray:
    w, h = size
    if w <= 0 or h <= 0:
        raise PreprocessError(f"{op}: the {img.shape[1]}x{img.shape[0]} image would become {w}x{h}")
    return cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR)


@register(FAMILY)
class ResizeByLong(_ScaledResize):
    """Long side to ``long_size`` (``functional.resize_long``, bilinear)."""

    name = "ResizeByLong"
    params = {"long_size": None}
    required = ("long_size",)

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.long_size = _positive(self.config["long_size"], "ResizeByLong", "long_size")

    def target(self, hw: tuple[int, int]) -> tuple[int, int]:
        return _scaled_size(hw, float(self.long_size) / float(max(hw)))

@register(FAMILY)
class ResizeByShort(_ScaledResize):
    """Short side to ``short_size`` unless the long side would exceed ``max_size``."""

    name = "ResizeByShort"
    params = {"short_size": None, "max_size": 1e10}
    required = ("short_size",)

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        short = self.config["short_size"]
        if isinstance(short, list):
            raise OpConfigError(
                "ResizeByShort: a list 'short_size' picks a random size (training augmentation); give one integer",
                key="short_size")
        self.short_size = _positive(short, "ResizeByShort", "short_size")
        if not _is_num(self.config["max_size"]) or self.config["max_size"] <= 0:
            raise OpConfigError(f"ResizeByShort: 'max_size' must be a positive number, got {self.config['max_size']!r}",
                                key="max_size")

    def target(self, hw: tuple[int, int]) -> tuple[int, int]:
        h, w = hw
        short = self.short_size
        if short / min(h, w) * max(h, w) > self.config["max_size"]:
            short = int((self.config["max_size"] / max(h, w)) * min(h, w))
        return _scaled_size(hw, float(short) / float(min(hw)))

@register(FAMILY)
class LimitLong(_ScaledResize):
    """Resize the long side into [min_long, max_long] (no-op inside it; still records 'resize')."""

    name = "LimitLong"
    params = {"max_long": None, "min_long": None}

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        lo, hi = self.config["min_long"], self.config["max_long"]
        for key, v in (("min_long", lo), ("max_long", hi)):
            if v is not None:
                _positive(v, "LimitLong", key)
        if lo is not None and hi is not None and lo > hi:
            raise OpConfigError(f"LimitLong: 'min_long' {lo} is larger than 'max_long' {hi}", key="min_long")

    def target(self, hw: tuple[int, int]) -> tuple[int, int]:
        long_edge = max(hw)
        target = long_edge
        if self.config["max_long"] is not None and long_edge > self.config["max_long"]:
            target = self.config["max_long"]
        elif self.config["min_long"] is not None and long_edge < self.config["min_long"]:
            target = self.config["min_long"]
        if target == long_edge:
            return hw[1], hw[0]
        return _scaled_size(hw, float(target) / float(long_edge))

    def __call__(self, img: np.ndarray) -> np.ndarray:
        w, h = self.target(img.shape[:2])
        if (h, w) == img.shape[:2]:  # inside the limits: untouched, though trans_info records a resize
            return img
        return _resize_scaled(img, (w, h), self.name)


def _scaled_size(hw: tuple[int, int], scale: float) -> tuple[int, int]:
    """(w, h) as ``functional.resize_long/resize_short`` round them."""
    return int(round(hw[1] * scale)), int(round(hw[0] * scale))


@register(FAMILY)
class Padding(SegOp):
    """Bottom-right pad to ``target_size`` (w, h) with ``im_padding_value`` (label padding is
    for training labels and is ignored here)."""

    name = "Padding"
    params = {"target_size": None, "im_padding_value": 127.5, "label_padding_value": 255}
    required = ("target_size",)

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.w, self.h = _wh(self.config["target_size"], "Padding", "target_size")
        if not _is_num(self.config["im_padding_value"]):
            raise OpConfigError(
                f"Padding: 'im_padding_value' must be a number, got {self.config['im_padding_value']!r}",
                key="im_padding_value")

    def trans(self, hw):
        return ("padding", hw), (self.h, self.w)

    def __call__(self, img: np.ndarray) -> np.ndarray:
        im_h, im_w = img.shape[:2]
        pad_h, pad_w = self.h - im_h, self.w - im_w
        if pad_h < 0 or pad_w < 0:
            raise PreprocessError(
                f"Padding: the image is {im_w}x{im_h} at this point, larger than the {self.w}x{self.h} target_size")
        channels = 1 if img.ndim == 2 else img.shape[2]
        return cv2.copyMakeBorder(img, 0, pad_h, 0, pad_w, cv2.BORDER_CONSTANT,
                                  value=(self.config["im_padding_value"],) * channels)

    def output_shape(self, shape: Shape) -> Shape:
        return (self.h, self.w, shape[2], shape[3])

