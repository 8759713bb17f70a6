"""Classification results from a tritongen ensemble (IMAGE -> LABEL_IDS, SCORES[, LABELS])."""
from __future__ import annotations

from typing import Sequence

from ..errors import ClientError
from ..results import Classification
from .base import ImageSource, TritonClient


class ClassificationClient(TritonClient):
    def classify(self, images: Sequence[ImageSource]) -> list[Classification]:
        """Top-k for each image, sent together as one batched request."""
        outputs = [o.name for o in self.metadata().outputs]
        missing = {"LABEL_IDS", "SCORES"} - set(outputs)
        if missing:
            raise ClientError(f"model {self.model!r} is not a tritongen classifier (outputs {outputs})")
        wanted = [n for n in ("LABEL_IDS", "SCORES", "LABELS") if n in outputs]
        return Classification.batch_from_outputs(self.infer_images(images, wanted))

    run = classify  # the task-independent name `tritongen infer` calls
