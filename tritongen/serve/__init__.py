"""Serving: a real tritonserver (from the nvidia-pytriton wheel) on 127.0.0.1."""
from .server import TritonServer, check_repository, find_tritonserver

__all__ = ["TritonServer", "check_repository", "find_tritonserver"]
