"""Detection results from a tritongen ensemble (IMAGE -> NUM_DETECTIONS, BOXES, SCORES, LABEL_IDS[, LABELS])."""
from __future__ import annotations

from typing import Sequence

from ..results import Detection
from .aio import AsyncTritonClient
from .base import ImageSource, TritonClient
from .tasks import DETECTION

REQUIRED = DETECTION.required


class DetectionClient(TritonClient):
    task = DETECTION

    def detect(self, images: Sequence[ImageSource]) -> list[Detection]:
        """Detections for each image; batched, in requests of at most max_batch_size images."""
        return self.run(images)


class AsyncDetectionClient(AsyncTritonClient):
    task = DETECTION

    async def detect(self, images: Sequence[ImageSource]) -> list[Detection]:
        """Detections for each image; requests of at most max_batch_size images, sent concurrently."""
        return await self.run(images)
