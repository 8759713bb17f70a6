"""Emission: ModelSpec + converted runtime files -> a Triton model repository."""
from .backends import BACKENDS, get_backend
from .repository import Repository, check_name, check_output, plan_models, remove_residue, write_repository

__all__ = ["BACKENDS", "get_backend", "Repository", "check_name", "check_output", "plan_models", "remove_residue",
           "write_repository"]
