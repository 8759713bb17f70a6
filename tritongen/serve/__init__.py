"""Serving: a real tritonserver (from the nvidia-pytriton wheel) on 127.0.0.1, watched for
backend crashes (a model whose Python backend process dies is reloaded)."""
from .server import TritonServer, check_repository, find_tritonserver, free_port
from .watchdog import StubCrash

__all__ = ["TritonServer", "StubCrash", "check_repository", "find_tritonserver", "free_port"]
