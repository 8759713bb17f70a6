"""Client SDK: call tritongen ensembles over gRPC or HTTP (sync or asyncio) and get typed results."""
from ..results import Classification, Detection, Segmentation
from .aio import AsyncTritonClient, async_client_for
from .base import TritonClient, read_image_bytes
from .classification import AsyncClassificationClient, ClassificationClient
from .detection import AsyncDetectionClient, DetectionClient
from .options import ClientOptions
from .protocols import PROTOCOLS
from .segmentation import AsyncSegmentationClient, SegmentationClient
from .tasks import TASKS, Task, task_of

__all__ = [
    "TritonClient", "AsyncTritonClient", "ClientOptions", "read_image_bytes", "client_for", "async_client_for",
    "ClassificationClient", "DetectionClient", "SegmentationClient",
    "AsyncClassificationClient", "AsyncDetectionClient", "AsyncSegmentationClient",
    "Classification", "Detection", "Segmentation", "Task", "TASKS", "task_of", "PROTOCOLS",
]


def client_for(model: str, url: str | None = None, timeout: float = 30.0, **options) -> TritonClient:
    """The task client that fits ``model``, told apart by the outputs in its config.
    ``options``: the fields of ``ClientOptions`` (protocol, retries, compression, shared_memory, TLS, ...)."""
    with TritonClient(model, url=url, timeout=timeout, **{**options, "shared_memory": "none"}) as probe:
        info = probe._run(probe._model_info_plan())
    client = TritonClient.for_task(task_of(model, info.outputs))(model, url=url, timeout=timeout, **options)
    client._info = info
    return client
