"""Detection results from a tritongen ensemble (IMAGE -> NUM_DETECTIONS, BOXES, SCORES, LABEL_IDS[, LABELS])."""
from __future__ import annotations

from typing import Sequence

from ..errors import ClientError
from ..results import Detection
from .base import ImageSource, TritonClient

REQUIRED = ("NUM_DETECTIONS", "BOXES", "SCORES", "LABEL_IDS")


class DetectionClient(TritonClient):
    def detect(self, images: Sequence[ImageSource]) -> list[Detection]:
        """Detections for each image, sent together as one batched request."""
        outputs = [o.name for o in self.metadata().outputs]
        missing = set(REQUIRED) - set(outputs)
        if missing:
            raise ClientError(f"model {self.model!r} is not a tritongen detector (outputs {outputs})")
        wanted = [*REQUIRED, *(["LABELS"] if "LABELS" in outputs else [])]
        return Detection.batch_from_outputs(self.infer_images(images, wanted))

    run = detect  # the task-independent name `tritongen infer` calls
