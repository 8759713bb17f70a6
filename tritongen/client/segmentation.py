"""Segmentation results from a tritongen ensemble (IMAGE -> LABEL_MAP, IMAGE_SIZE)."""
from __future__ import annotations

from typing import Sequence

from ..errors import ClientError
from ..results import Segmentation
from .base import ImageSource, TritonClient

OUTPUTS = ("LABEL_MAP", "IMAGE_SIZE")


class SegmentationClient(TritonClient):
    def segment(self, images: Sequence[ImageSource]) -> list[Segmentation]:
        """A label map at each image's own size, the images sent together as one batched request."""
        outputs = [o.name for o in self.metadata().outputs]
        if set(OUTPUTS) - set(outputs):
            raise ClientError(f"model {self.model!r} is not a tritongen segmenter (outputs {outputs})")
        return Segmentation.batch_from_outputs(self.infer_images(images, list(OUTPUTS)))

    run = segment  # the task-independent name `tritongen infer` calls
