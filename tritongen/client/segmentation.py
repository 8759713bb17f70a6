"""Segmentation results from a tritongen ensemble (IMAGE -> LABEL_MAP, IMAGE_SIZE)."""
from __future__ import annotations

from typing import Sequence

from ..results import Segmentation
from .aio import AsyncTritonClient
from .base import ImageSource, TritonClient
from .tasks import SEGMENTATION

OUTPUTS = SEGMENTATION.required


class SegmentationClient(TritonClient):
    task = SEGMENTATION

    def segment(self, images: Sequence[ImageSource]) -> list[Segmentation]:
        """A label map at each image's own size; batched, in requests of at most max_batch_size images."""
        return self.run(images)


class AsyncSegmentationClient(AsyncTritonClient):
    task = SEGMENTATION

    async def segment(self, images: Sequence[ImageSource]) -> list[Segmentation]:
        """A label map at each image's own size; requests of at most max_batch_size images, sent concurrently."""
        return await self.run(images)
