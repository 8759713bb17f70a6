"""Image preprocessing ops with the exact semantics of PaddleClas's deploy predictor.

Each op is built from the parameters written in an exported model's yaml
(``PreProcess.transform_ops`` for PaddleClas) and maps an image array to an image array.
``Pipeline`` chains them and also infers the static output shape, which the emitted
Triton configs need.
"""
from __future__ import annotations

import ast
import operator
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import cv2
import numpy as np

from .errors import OpConfigError, PreprocessError

# (height, width, channels, layout) with None for "depends on the image".
Shape = tuple[int | None, int | None, int, str]

INTERPOLATIONS = {
    "nearest": cv2.INTER_NEAREST,
    "bilinear": cv2.INTER_LINEAR,
    "area": cv2.INTER_AREA,
    "bicubic": cv2.INTER_CUBIC,
    "lanczos": cv2.INTER_LANCZOS4,
}

# Ops by model family: PaddleClas, PaddleDetection and PaddleSeg each name their own ops
# (two different "NormalizeImage"s, two "Resize"s), so every family has its own namespace;
# COMMON ops are visible to all.
COMMON = "common"
OPS: dict[str, dict[str, type["Op"]]] = {}
Info = dict[str, np.ndarray]  # per-image side data: im_shape, scale_factor, orig_shape


def register(*families: str):
    def add(cls: type["Op"]) -> type["Op"]:
        for family in families:
            OPS.setdefault(family, {})[cls.name] = cls
        return cls

    return add


def ops_for(family: str) -> dict[str, type["Op"]]:
    """Ops a family's yaml may name. A family other than PaddleClas keeps its ops in
    ``ops_<family>.py`` beside this file, imported (and so registered) on first use."""
    if family not in OPS:
        import importlib

        try:
            importlib.import_module(f".ops_{family}", __package__)
        except ModuleNotFoundError:
            raise OpConfigError(f"no preprocessing ops for model family {family!r}", key=family) from None
    return {**OPS.get(COMMON, {}), **OPS.get(family, {})}


# Batchers by model family: how a family's predictor stacks the image tensors of one batch
# when they differ in size (PaddleDetection zero-pads). A family without one needs equal shapes.
BATCHERS: dict[str, Callable[[list[np.ndarray]], np.ndarray]] = {}


def register_batcher(family: str):
    def add(fn: Callable[[list[np.ndarray]], np.ndarray]) -> Callable[[list[np.ndarray]], np.ndarray]:
        if family in BATCHERS:
            raise ValueError(f"model family {family!r} has two batchers")
        BATCHERS[family] = fn
        return fn

    return add


def batcher_for(family: str) -> Callable[[list[np.ndarray]], np.ndarray] | None:
    """The family's batcher (from its ``ops_<family>.py``), None if it stacks equal shapes only."""
    ops_for(family)  # imports the family's op module, which registers its batcher
    return BATCHERS.get(family)


def pads_batch(family: str) -> bool:
    """Whether the family batches images that preprocess to different sizes (by padding)."""
    return batcher_for(family) is not None


def initial_info(img: np.ndarray) -> Info:
    """What PaddleDetection's deploy decode_image records, plus the original size."""
    h, w = img.shape[:2]
    return {
        "im_shape": np.array([h, w], np.float32),
        "scale_factor": np.array([1.0, 1.0], np.float32),
        "orig_shape": np.array([h, w], np.int32),
    }


class Op(ABC):
    name: ClassVar[str]
    # parameter name -> default; keys outside this set are rejected.
    params: ClassVar[dict[str, Any]] = {}
    required: ClassVar[tuple[str, ...]] = ()  # params that must be given (not None)

    def __init__(self, **kwargs: Any):
        unknown = sorted(set(kwargs) - set(self.params))
        if unknown:
            raise OpConfigError(
                f"{self.name}: unsupported parameter {unknown[0]!r} (supported: {sorted(self.params) or 'none'})",
                key=unknown[0],
            )
        self.config = {**self.params, **kwargs}
        for key in self.required:
            if self.config[key] is None:
                raise OpConfigError(f"{self.name}: {key!r} is required", key=key)

    @abstractmethod
    def __call__(self, img: np.ndarray) -> np.ndarray:
        """Transform one image."""

    def run(self, img: np.ndarray, info: Info) -> np.ndarray:
        """Transform one image and update its side data (ops that change geometry override this)."""
        return self(img)

    def output_shape(self, shape: Shape) -> Shape:
        return shape

    def to_dict(self) -> dict[str, Any]:
        return {self.name: {k: v for k, v in self.config.items() if v != self.params[k]}}


@register(COMMON)
class ToRGB(Op):
    """PaddleClas's predictor reads with cv2 (BGR) and flips to RGB before the yaml ops."""

    name = "ToRGB"

    def __call__(self, img: np.ndarray) -> np.ndarray:
        # A contiguous copy, as the predictor's cv2.cvtColor makes: a reversed-stride view would
        # send every later cv2 op down its slow non-contiguous path (resize 1.39 vs 0.25 ms measured).
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


@register("paddleclas")
class ResizeImage(Op):
    name = "ResizeImage"
    params = {"size": None, "resize_short": None, "interpolation": None, "backend": "cv2"}

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        c = self.config
        if c["backend"] not in ("cv2", None):
            raise OpConfigError(f"ResizeImage: backend {c['backend']!r} is not supported, only 'cv2'", key="backend")
        interp = c["interpolation"]
        if interp is not None and interp not in INTERPOLATIONS:
            raise OpConfigError(
                f"ResizeImage: interpolation {interp!r} is not one of {sorted(INTERPOLATIONS)}", key="interpolation"
            )
        self.interp = INTERPOLATIONS[interp] if interp is not None else cv2.INTER_LINEAR
        short, size = c["resize_short"], c["size"]
        if short is not None and _positive_int(short, "ResizeImage", "resize_short") > 0:
            self.resize_short, self.w, self.h = short, None, None
        elif size is not None:
            self.resize_short = None
            self.w, self.h = _int_pair(size, "ResizeImage", "size")  # PaddleClas: size = (w, h)
        else:
            raise OpConfigError("ResizeImage: set either 'resize_short' or 'size'", key="size")

    def __call__(self, img: np.ndarray) -> np.ndarray:
        img_h, img_w = img.shape[:2]
        if self.resize_short is not None:
            percent = float(self.resize_short) / min(img_w, img_h)
            w, h = int(round(img_w * percent)), int(round(img_h * percent))
        else:
            w, h = self.w, self.h
        return cv2.resize(img, (w, h), interpolation=self.interp)

    def output_shape(self, shape: Shape) -> Shape:
        if self.resize_short is not None:
            return (None, None, shape[2], shape[3])
        return (self.h, self.w, shape[2], shape[3])


@register("paddleclas")
class CropImage(Op):
    """Centre crop; ``size`` is an int or PaddleClas's (w, h) pair."""

    name = "CropImage"
    params = {"size": None}
    required = ("size",)

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.w, self.h = _int_pair(self.config["size"], "CropImage", "size")

    def __call__(self, img: np.ndarray) -> np.ndarray:
        img_h, img_w = img.shape[:2]
        if img_h < self.h or img_w < self.w:
            raise PreprocessError(
                f"CropImage: the {img_w}x{img_h} image is smaller than the {self.w}x{self.h} crop"
            )
        w_start, h_start = (img_w - self.w) // 2, (img_h - self.h) // 2
        return img[h_start : h_start + self.h, w_start : w_start + self.w, :]

    def output_shape(self, shape: Shape) -> Shape:
        return (self.h, self.w, shape[2], shape[3])


@register("paddleclas")
class NormalizeImage(Op):
    name = "NormalizeImage"
    params = {
        "scale": None,
        "mean": None,
        "std": None,
        "order": "chw",
        "channel_num": 3,
        "output_fp16": False,
    }

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        c = self.config
        if c["output_fp16"]:
            raise OpConfigError("NormalizeImage: output_fp16 is not supported (the model input is FP32)", key="output_fp16")
        if c["channel_num"] not in (3, 4):
            raise OpConfigError("NormalizeImage: channel_num must be 3 or 4", key="channel_num")
        scale = c["scale"]
        if isinstance(scale, str):
            scale = _eval_arithmetic(scale, "NormalizeImage", "scale")
        if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float))):
            raise OpConfigError(f"NormalizeImage: 'scale' must be a number, got {scale!r}", key="scale")
        self.scale = np.float32(scale if scale is not None else 1.0 / 255.0)
        mean = c["mean"] if c["mean"] is not None else [0.485, 0.456, 0.406]
        std = c["std"] if c["std"] is not None else [0.229, 0.224, 0.225]
        for key, val in (("mean", mean), ("std", std)):
            if not isinstance(val, (list, tuple)) or len(val) != 3 or not all(isinstance(v, (int, float)) for v in val):
                raise OpConfigError(f"NormalizeImage: {key!r} must be a list of 3 numbers, got {val!r}", key=key)
        if any(v == 0 for v in std):
            raise OpConfigError("NormalizeImage: 'std' must not contain 0", key="std")
        self.chw = c["order"] == "chw"
        shape = (3, 1, 1) if self.chw else (1, 1, 3)
        self.mean = np.array(mean).reshape(shape).astype("float32")
        self.std = np.array(std).reshape(shape).astype("float32")

    def __call__(self, img: np.ndarray) -> np.ndarray:
        try:
            img = (img.astype("float32") * self.scale - self.mean) / self.std
        except ValueError as exc:  # order does not match the layout at this point
            raise PreprocessError(f"NormalizeImage: order {self.config['order']!r} does not fit an image of shape {img.shape}") from exc
        if self.config["channel_num"] == 4:
            img_h, img_w = (img.shape[1], img.shape[2]) if self.chw else (img.shape[0], img.shape[1])
            pad = np.zeros((1, img_h, img_w)) if self.chw else np.zeros((img_h, img_w, 1))
            img = np.concatenate((img, pad), axis=0) if self.chw else np.concatenate((img, pad), axis=2)
        return img.astype("float32")

    def output_shape(self, shape: Shape) -> Shape:
        return (shape[0], shape[1], self.config["channel_num"], shape[3])


@register("paddleclas")
class ToCHWImage(Op):
    name = "ToCHWImage"

    def __call__(self, img: np.ndarray) -> np.ndarray:
        return img.transpose((2, 0, 1))

    def output_shape(self, shape: Shape) -> Shape:
        return (shape[0], shape[1], shape[2], "chw")


@dataclass
class Pipeline:
    """Decoded BGR image -> model input tensor (one image, no batch axis)."""

    ops: list[Op]
    family: str = "paddleclas"

    @classmethod
    def from_config(cls, op_list: list[dict[str, Any]], family: str = "paddleclas") -> "Pipeline":
        return cls([build_op(entry, i, family) for i, entry in enumerate(op_list)], family)

    def to_config(self) -> list[dict[str, Any]]:
        return [op.to_dict() for op in self.ops]

    def run(self, img: np.ndarray) -> tuple[np.ndarray, Info]:
        info = initial_info(img)
        for op in self.ops:
            img = op.run(img, info)
        return np.ascontiguousarray(img), info

    def __call__(self, img: np.ndarray) -> np.ndarray:
        return self.run(img)[0]

    def output_shape(self) -> list[int]:
        """Static shape of one output tensor, -1 where it depends on the image."""
        shape: Shape = (None, None, 3, "hwc")
        for op in self.ops:
            shape = op.output_shape(shape)
        h, w, c, layout = (-1 if v is None else v for v in shape)
        return [c, h, w] if layout == "chw" else [h, w, c]


def build_op(entry: Any, index: int = 0, family: str = "paddleclas") -> Op:
    """Build one op from the yaml form ``{Name: {param: value}}`` (params may be null)."""
    if not isinstance(entry, dict) or len(entry) != 1:
        raise OpConfigError(f"op #{index}: expected a mapping with one op name, got {entry!r}", key=str(index))
    (name, params), = entry.items()
    known = ops_for(family)
    if name not in known:
        raise OpConfigError(f"op #{index}: unsupported op {name!r} (supported: {', '.join(sorted(known))})", key=str(name))
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise OpConfigError(f"{name}: parameters must be a mapping, got {params!r}", key=str(name))
    return known[name](**params)


def _positive_int(value: Any, op: str, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise OpConfigError(f"{op}: {key!r} must be an integer, got {value!r}", key=key)
    return value


def _int_pair(value: Any, op: str, key: str) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value, value
    if (
        isinstance(value, (list, tuple))
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
    ):
        return value[0], value[1]
    raise OpConfigError(f"{op}: {key!r} must be a positive integer or a [w, h] pair, got {value!r}", key=key)


_ARITH: dict[type, Callable[[float, float], float]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
}


def _eval_arithmetic(text: str, op: str, key: str) -> float:
    """PaddleClas ``eval``s string scales like '1.0/255.0'; accept arithmetic only."""

    def ev(node: ast.AST) -> float:
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return float(node.value)
        if isinstance(node, ast.BinOp) and type(node.op) in _ARITH:
            return _ARITH[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -ev(node.operand)
        raise ValueError(text)

    try:
        return ev(ast.parse(text, mode="eval").body)
    except (SyntaxError, ValueError, ZeroDivisionError):
        raise OpConfigError(f"{op}: {key!r} must be a number or arithmetic like '1.0/255.0', got {text!r}", key=key) from None
