"""Client SDK: call tritongen ensembles over gRPC and get typed results."""
from .base import TritonClient, read_image_bytes
from ..results import Classification
from .classification import ClassificationClient

__all__ = ["TritonClient", "ClassificationClient", "Classification", "read_image_bytes"]
