"""Serving: a real tritonserver (from the nvidia-pytriton wheel) on 127.0.0.1, watched for
backend crashes (a model whose Python backend process dies is reloaded); several replicas of one
repository for client-side balancing; a repository on local disk or in object storage."""
from .server import TritonServer, check_repository, find_tritonserver, free_port
from .replicas import ReplicaSet, replica_ports
from .watchdog import StubCrash

__all__ = ["TritonServer", "ReplicaSet", "replica_ports", "StubCrash", "check_repository", "find_tritonserver", "free_port"]
