"""Emission: ModelSpec + converted runtime files -> a Triton model repository."""
from .backends import BACKENDS, get_backend
from .repository import Repository, check_name, plan_models, write_repository

__all__ = ["BACKENDS", "get_backend", "Repository", "check_name", "plan_models", "write_repository"]
