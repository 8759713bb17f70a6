"""gRPC plumbing shared by the task clients: connection, encoded-image inputs, errors."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

import tritongen  # noqa: F401  (loads zlib before paddle can shadow it; tritonclient.grpc needs it)

from ..errors import ClientError

ImageSource = bytes | str | Path


def read_image_bytes(image: ImageSource) -> bytes:
    if isinstance(image, (bytes, bytearray)):
        return bytes(image)
    path = Path(image)
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ClientError(f"cannot read image {path}: {exc.strerror or exc}") from None


class TritonClient:
    """A connection to one model on a Triton server (gRPC)."""

    def __init__(self, model: str, url: str = "127.0.0.1:8001", timeout: float = 30.0, verbose: bool = False):
        import tritonclient.grpc as grpcclient

        self.model = model
        self.url = url
        self.timeout = timeout
        try:
            self._client = grpcclient.InferenceServerClient(url=url, verbose=verbose)
        except Exception as exc:  # tritonclient raises plain exceptions for malformed URLs
            raise ClientError(f"cannot create a gRPC client for {url!r}: {exc}") from None
        self._grpc = grpcclient

    def _call(self, what: str, fn, *args, **kwargs):
        from tritonclient.utils import InferenceServerException

        try:
            return fn(*args, **kwargs)
        except InferenceServerException as exc:
            status = exc.status() or ""
            if "UNAVAILABLE" in status or "failed to connect" in (exc.message() or "").lower():
                raise ClientError(f"cannot reach Triton at {self.url}: is the server running? ({exc.message()})") from None
            if "DEADLINE_EXCEEDED" in status:
                raise ClientError(f"{what}: no answer from {self.url} within {self.timeout:g}s") from None
            raise ClientError(f"{what}: {exc.message()}") from None

    def metadata(self):
        return self._call(f"model {self.model!r}", self._client.get_model_metadata, self.model, client_timeout=self.timeout)

    def is_ready(self) -> bool:
        return bool(self._call("health check", self._client.is_model_ready, self.model, client_timeout=self.timeout))

    def infer_images(self, images: Sequence[ImageSource], outputs: Sequence[str]) -> dict[str, np.ndarray]:
        """One request carrying all ``images`` as a batch of encoded bytes."""
        if not images:
            raise ClientError("no images given")
        batch = np.array([[read_image_bytes(i)] for i in images], dtype=np.object_)
        tensor = self._grpc.InferInput("IMAGE", list(batch.shape), "BYTES")
        tensor.set_data_from_numpy(batch)
        requested = [self._grpc.InferRequestedOutput(name) for name in outputs]
        result = self._call(
            f"inference on {self.model!r}", self._client.infer, self.model, [tensor], outputs=requested,
            client_timeout=self.timeout,
        )
        return {name: result.as_numpy(name) for name in outputs}

    def close(self) -> None:
        self._client.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
