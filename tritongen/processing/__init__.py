"""Pre/post-processing shared by every place a model runs.

This package is copied verbatim into generated Triton models, so it must import nothing
but the standard library, numpy and cv2 (runtimes are imported lazily in ``runners``), and
it must never import ``tritongen``.
"""
from .errors import PreprocessError

__all__ = ["PreprocessError"]
