"""Conversion: Paddle inference programs -> ONNX (and later TensorRT plans)."""
from .onnx import OnnxModel, paddle_to_onnx

__all__ = ["OnnxModel", "paddle_to_onnx"]
