"""PaddleDetection preprocessing ops with the semantics of its deploy predictor
(``deploy/python/preprocess.py`` of PaddleDetection 2.6 / PaddleYOLO).

The yaml (``infer_cfg.yml`` ``Preprocess``) lists ``{type: Name, **params}``; the intake turns
each into ``{Name: params}``. The family prepends the common ``ToRGB`` (the predictor decodes
with cv2 and converts BGR -> RGB). Every op keeps PaddleDetection's side data up to date:
``im_shape`` (the resized image's h, w) and ``scale_factor`` ([scale_y, scale_x]).

Batches: PaddleDetection's predictor zero-pads the images of a batch to the largest h, w
(``create_inputs``); :func:`pad_batch` does the same.

numpy / cv2 / stdlib only: this module is copied into generated Triton models.
"""
from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from .errors import OpConfigError, PreprocessError
from .ops import Info, Op, Shape, register, register_batcher

FAMILY = "paddledetection"


def _size_pair(value: Any, op: str, key: str) -> tuple[int, int]:
    """An int or an [h, w] pair of positive ints (PaddleDetection sizes are (h, w))."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value, value
    if (
        isinstance(value, (list, tuple))
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
    ):
        return int(value[0]), int(value[1])
    raise OpConfigError(f"{op}: {key!r} must be a positive integer or an [h, w] pair, got {value!r}", key=key)


def _three_numbers(value: Any, op: str, key: str) -> list[float]:
    if not isinstance(value, (list, tuple)) or len(value) != 3 or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in value
    ):
        raise OpConfigError(f"{op}: {key!r} must be a list of 3 numbers, got {value!r}", key=key)
    return [float(v) for v in value]


_CV2_INTERPS = (cv2.INTER_NEAREST, cv2.INTER_LINEAR, cv2.INTER_CUBIC, cv2.INTER_AREA, cv2.INTER_LANCZOS4)


@register(FAMILY)
class Resize(Op):
    """``Resize(target_size, keep_ratio=True, interp=cv2.INTER_LINEAR)`` with ``generate_scale``."""

    name = "Resize"
    params = {"target_size": None, "keep_ratio": True, "interp": cv2.INTER_LINEAR}
    required = ("target_size",)

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        c = self.config
        self.target_size = _size_pair(c["target_size"], "Resize", "target_size")
        if not isinstance(c["keep_ratio"], bool):
            raise OpConfigError(f"Resize: 'keep_ratio' must be true or false, got {c['keep_ratio']!r}", key="keep_ratio")
        if isinstance(c["interp"], bool) or c["interp"] not in _CV2_INTERPS:
            raise OpConfigError(
                f"Resize: 'interp' must be a cv2 interpolation code {list(_CV2_INTERPS)}, got {c['interp']!r}", key="interp"
            )
        self.keep_ratio, self.interp = c["keep_ratio"], int(c["interp"])

    def generate_scale(self, img: np.ndarray) -> tuple[float, float]:
        origin_shape = img.shape[:2]
        if self.keep_ratio:
            im_size_min, im_size_max = np.min(origin_shape), np.max(origin_shape)
            target_min, target_max = np.min(self.target_size), np.max(self.target_size)
            im_scale = float(target_min) / float(im_size_min)
            if np.round(im_scale * im_size_max) > target_max:
                im_scale = float(target_max) / float(im_size_max)
            return im_scale, im_scale
        resize_h, resize_w = self.target_size
        return resize_h / float(origin_shape[0]), resize_w / float(origin_shape[1])

    def run(self, img: np.ndarray, info: Info) -> np.ndarray:
        scale_y, scale_x = self.generate_scale(img)
        img = cv2.resize(img, None, None, fx=scale_x, fy=scale_y, interpolation=self.interp)
        info["im_shape"] = np.array(img.shape[:2]).astype("float32")
        info["scale_factor"] = np.array([scale_y, scale_x]).astype("float32")
        return img

    def __call__(self, img: np.ndarray) -> np.ndarray:
        return self.run(img, {})

    def output_shape(self, shape: Shape) -> Shape:
        if self.keep_ratio:
            return (None, None, shape[2], shape[3])
        return (self.target_size[0], self.target_size[1], shape[2], shape[3])


@register(FAMILY)
class NormalizeImage(Op):
    """``NormalizeImage(mean, std, is_scale=True, norm_type='mean_std')`` on an HWC image."""

    name = "NormalizeImage"
    params = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "is_scale": True, "norm_type": "mean_std"}

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        c = self.config
        if not isinstance(c["is_scale"], bool):
            raise OpConfigError(f"NormalizeImage: 'is_scale' must be true or false, got {c['is_scale']!r}", key="is_scale")
        if c["norm_type"] not in ("mean_std", "none"):
            raise OpConfigError(f"NormalizeImage: 'norm_type' must be 'mean_std' or 'none', got {c['norm_type']!r}", key="norm_type")
        mean = _three_numbers(c["mean"], "NormalizeImage", "mean")
        std = _three_numbers(c["std"], "NormalizeImage", "std")
        if c["norm_type"] == "mean_std" and any(v == 0 for v in std):
            raise OpConfigError("NormalizeImage: 'std' must not contain 0", key="std")
        # float64 like the deploy code's np.array(list); the in-place ops keep float32.
        self.mean = np.array(mean)[np.newaxis, np.newaxis, :]
        self.std = np.array(std)[np.newaxis, np.newaxis, :]

    def __call__(self, img: np.ndarray) -> np.ndarray:
        if img.ndim != 3 or img.shape[2] != 3:
            raise PreprocessError(f"NormalizeImage: expects an HWC image with 3 channels, got shape {img.shape}")
        im = img.astype(np.float32, copy=True)
        if self.config["is_scale"]:
            im *= 1.0 / 255.0
        if self.config["norm_type"] == "mean_std":
            im -= self.mean
            im /= self.std
        return im


@register(FAMILY)
class Permute(Op):
    """HWC -> CHW."""

    name = "Permute"

    def __call__(self, img: np.ndarray) -> np.ndarray:
        return img.transpose((2, 0, 1)).copy()

    def output_shape(self, shape: Shape) -> Shape:
        return (shape[0], shape[1], shape[2], "chw")


@register(FAMILY)
class PadStride(Op):
    """Zero-pad a CHW image to multiples of ``stride`` (im_shape unchanged)."""

    name = "PadStride"
    params = {"stride": 0}

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        s = self.config["stride"]
        if isinstance(s, bool) or not isinstance(s, int) or s < 0:
            raise OpConfigError(f"PadStride: 'stride' must be an integer >= 0, got {s!r}", key="stride")
        self.stride = s

    def __call__(self, img: np.ndarray) -> np.ndarray:
        s = self.stride
        if s <= 0:
            return img
        if img.ndim != 3 or img.shape[0] not in (1, 3, 4):
            raise PreprocessError(f"PadStride: expects a CHW image (put it after Permute), got shape {img.shape}")
        c, h, w = img.shape
        pad_h, pad_w = int(np.ceil(float(h) / s) * s), int(np.ceil(float(w) / s) * s)
        out = np.zeros((c, pad_h, pad_w), dtype=np.float32)
        out[:, :h, :w] = img
        return out

    def output_shape(self, shape: Shape) -> Shape:
        s = self.stride

        def up(v):
            return v if v is None or s <= 0 else int(np.ceil(v / s) * s)

        return (up(shape[0]), up(shape[1]), shape[2], shape[3])


@register(FAMILY)
class Pad(Op):
    """Pad an HWC image to ``size`` ([h, w]) at the bottom/right with ``fill_value`` (float32 out)."""

    name = "Pad"
    params = {"size": None, "fill_value": [114.0, 114.0, 114.0]}
    required = ("size",)

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.h, self.w = _size_pair(self.config["size"], "Pad", "size")
        self.fill = np.array(_three_numbers(self.config["fill_value"], "Pad", "fill_value"), dtype=np.float32)

    def __call__(self, img: np.ndarray) -> np.ndarray:
        im_h, im_w = img.shape[:2]
        if img.ndim != 3 or img.shape[2] != 3:
            raise PreprocessError(f"Pad: expects an HWC image with 3 channels, got shape {img.shape}")
        if im_h == self.h and im_w == self.w:
            return img.astype(np.float32)
        if im_h > self.h or im_w > self.w:
            raise PreprocessError(f"Pad: the {im_w}x{im_h} image is larger than the {self.w}x{self.h} pad size")
        canvas = np.ones((self.h, self.w, 3), dtype=np.float32)
        canvas *= self.fill
        canvas[0:im_h, 0:im_w, :] = img.astype(np.float32)
        return canvas

    def output_shape(self, shape: Shape) -> Shape:
        return (self.h, self.w, shape[2], shape[3])


@register(FAMILY)
class LetterBoxResize(Op):
    """Letterbox to ``target_size`` ([h, w]): INTER_AREA resize, 127.5 border, centred."""

    name = "LetterBoxResize"
    params = {"target_size": None}
    required = ("target_size",)

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.height, self.width = _size_pair(self.config["target_size"], "LetterBoxResize", "target_size")

    def run(self, img: np.ndarray, info: Info) -> np.ndarray:
        h, w = img.shape[:2]
        ratio = min(float(self.height) / h, float(self.width) / w)
        new_shape = (round(w * ratio), round(h * ratio))  # (w, h)
        padw, padh = (self.width - new_shape[0]) / 2, (self.height - new_shape[1]) / 2
        top, bottom = round(padh - 0.1), round(padh + 0.1)
        left, right = round(padw - 0.1), round(padw + 0.1)
        img = cv2.resize(img, new_shape, interpolation=cv2.INTER_AREA)
        img = cv2.copyMakeBorder(img, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(127.5, 127.5, 127.5))
        info["im_shape"] = np.array([round(h * ratio), round(w * ratio)], dtype=np.float32)
        info["scale_factor"] = np.array([ratio, ratio], dtype=np.float32)
        return img

    def __call__(self, img: np.ndarray) -> np.ndarray:
        return self.run(img, {})

    def output_shape(self, shape: Shape) -> Shape:
        return (self.height, self.width, shape[2], shape[3])


@register_batcher(FAMILY)
def pad_batch(tensors: list[np.ndarray]) -> np.ndarray:
    """Stack CHW tensors, zero-padding each to the batch's largest h, w (``create_inputs``)."""
    if len({t.shape for t in tensors}) == 1:
        return np.stack(tensors)
    if any(t.ndim != 3 for t in tensors) or len({t.shape[0] for t in tensors}) != 1:
        raise PreprocessError(f"cannot batch image tensors of shapes {sorted({t.shape for t in tensors})}")
    max_h = max(t.shape[1] for t in tensors)
    max_w = max(t.shape[2] for t in tensors)
    out = np.zeros((len(tensors), tensors[0].shape[0], max_h, max_w), dtype=np.float32)
    for i, t in enumerate(tensors):
        out[i, :, : t.shape[1], : t.shape[2]] = t
    return out
