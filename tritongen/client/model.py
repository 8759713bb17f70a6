"""What a client needs to know about a served model, read once from its config."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ClientError


@dataclass(frozen=True)
class Tensor:
    """One input or output: Triton datatype (``FP32``, ``BYTES``, ...) and dims without the batch axis."""

    name: str
    datatype: str
    dims: tuple[int, ...]

    @property
    def item_bytes(self) -> int | None:
        """Bytes per batch item, or None when the size is only known from the answer
        (BYTES, or a dim of -1 such as a segmentation label map)."""
        if self.datatype == "BYTES" or any(d < 0 for d in self.dims):
            return None
        from tritonclient.utils import triton_to_np_dtype

        return int(np.prod(self.dims, dtype=np.int64)) * np.dtype(triton_to_np_dtype(self.datatype)).itemsize


# The config parameter tritongen writes on the model clients call (emit.repository.IMAGE_SIZES_PARAMETER):
# "one" when a request must carry images of one size (a segmenter without resize).
IMAGE_SIZES_PARAMETER = "tritongen_image_sizes_per_request"


@dataclass(frozen=True)
class ModelInfo:
    name: str
    image: Tensor
    outputs: dict[str, Tensor]
    max_batch_size: int
    one_size_per_request: bool = False  # images of different sizes go in separate requests

    @classmethod
    def from_config(cls, config) -> "ModelInfo":
        """From a ``model_config_pb2.ModelConfig`` (``get_model_config(...).config``)."""
        from tritonclient.grpc import model_config_pb2

        def tensor(t) -> Tensor:
            datatype = model_config_pb2.DataType.Name(t.data_type).removeprefix("TYPE_")
            return Tensor(t.name, "BYTES" if datatype == "STRING" else datatype, tuple(int(d) for d in t.dims))

        inputs = [tensor(t) for t in config.input]
        if len(inputs) != 1 or inputs[0].datatype != "BYTES":
            raise ClientError(f"model {config.name!r} does not take encoded images (inputs "
                              f"{[f'{t.name} {t.datatype}' for t in inputs]}); is it a tritongen ensemble?")
        if config.max_batch_size < 1:
            raise ClientError(f"model {config.name!r} has max_batch_size 0; tritongen ensembles batch images")
        sizes = config.parameters[IMAGE_SIZES_PARAMETER].string_value if IMAGE_SIZES_PARAMETER in config.parameters else ""
        return cls(config.name, inputs[0], {t.name: t for t in map(tensor, config.output)}, int(config.max_batch_size),
                   one_size_per_request=sizes == "one")
