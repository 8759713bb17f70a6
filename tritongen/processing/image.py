"""Decoding encoded images (the bytes a client sends) into BGR uint8 arrays."""
from __future__ import annotations

import cv2
import numpy as np

from .errors import PreprocessError

# Anything smaller carries no usable signal and is almost always a client bug.
DEFAULT_MIN_SIDE = 8
# Decompression-bomb guard: a 20-byte PNG can claim to be 60000x60000.
MAX_PIXELS = 100_000_000


def decode_image(data: bytes | np.ndarray, min_side: int = DEFAULT_MIN_SIDE) -> np.ndarray:
    """Decode JPEG/PNG/BMP/... bytes to an HxWx3 BGR uint8 array, like ``cv2.imread``."""
    if isinstance(data, np.ndarray):
        data = data.tobytes()
    if not isinstance(data, (bytes, bytearray)):
        raise PreprocessError(f"expected encoded image bytes, got {type(data).__name__}")
    if len(data) == 0:
        raise PreprocessError("empty image: the request carried 0 bytes")
    buf = np.frombuffer(bytes(data), dtype=np.uint8)
    header_ok, width, height = _peek_size(buf)
    if header_ok and width * height > MAX_PIXELS:
        raise PreprocessError(f"image of {width}x{height} pixels is larger than the {MAX_PIXELS} pixel limit")
    img = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if img is None:
        raise PreprocessError(
            f"cannot decode image ({len(data)} bytes, starting {bytes(data[:8])!r}): "
            "send JPEG, PNG, BMP or another format OpenCV reads"
        )
    h, w = img.shape[:2]
    if min(h, w) < min_side:
        raise PreprocessError(f"image is {w}x{h} pixels; the smallest side must be at least {min_side}")
    return img


def _peek_size(buf: np.ndarray) -> tuple[bool, int, int]:
    """Width/height from a PNG header without decoding (other formats: unknown)."""
    if len(buf) >= 24 and bytes(buf[:8]) == b"\x89PNG\r\n\x1a\n":
        width = int.from_bytes(bytes(buf[16:20]), "big")
        height = int.from_bytes(bytes(buf[20:24]), "big")
        return True, width, height
    return False, 0, 0
