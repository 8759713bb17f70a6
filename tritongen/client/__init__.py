"""Client SDK: call tritongen ensembles over gRPC and get typed results."""
from ..results import Classification, Detection, Segmentation
from .base import TritonClient, read_image_bytes
from .classification import ClassificationClient
from .detection import DetectionClient
from .segmentation import SegmentationClient

__all__ = [
    "TritonClient", "read_image_bytes", "client_for",
    "ClassificationClient", "DetectionClient", "SegmentationClient",
    "Classification", "Detection", "Segmentation",
]

# Which task an ensemble serves, recognised by the result tensor only that task has.
_TASK_CLIENTS = (("NUM_DETECTIONS", DetectionClient), ("LABEL_MAP", SegmentationClient), ("LABEL_IDS", ClassificationClient))


def client_for(model: str, url: str = "127.0.0.1:8001", timeout: float = 30.0) -> TritonClient:
    """The task client that fits ``model``, told apart by its outputs in the model metadata."""
    from ..errors import ClientError

    probe = TritonClient(model, url=url, timeout=timeout)
    try:
        outputs = {o.name for o in probe.metadata().outputs}
    finally:
        probe.close()
    for marker, cls in _TASK_CLIENTS:
        if marker in outputs:
            return cls(model, url=url, timeout=timeout)
    raise ClientError(f"model {model!r} is not a tritongen ensemble (outputs {sorted(outputs)})")
