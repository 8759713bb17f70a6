"""The deploy stage's error: bad input, or a written manifest that a validator rejects."""
from ..errors import TritongenError


class DeployError(TritongenError):
    """Manifests cannot be written for this repository, or one of them does not validate."""
