"""Classification results from a tritongen ensemble (IMAGE -> LABEL_IDS, SCORES[, LABELS])."""
from __future__ import annotations

from typing import Sequence

from ..results import Classification
from .aio import AsyncTritonClient
from .base import ImageSource, TritonClient
from .tasks import CLASSIFICATION


class ClassificationClient(TritonClient):
    task = CLASSIFICATION

    def classify(self, images: Sequence[ImageSource]) -> list[Classification]:
        """Top-k for each image; batched, in requests of at most max_batch_size images."""
        return self.run(images)


class AsyncClassificationClient(AsyncTritonClient):
    task = CLASSIFICATION

    async def classify(self, images: Sequence[ImageSource]) -> list[Classification]:
        """Top-k for each image; requests of at most max_batch_size images, sent concurrently."""
        return await self.run(images)
