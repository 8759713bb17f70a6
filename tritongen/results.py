"""Typed task results, the same whether they come from a server or in-process."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Classification:
    label_ids: list[int]
    scores: list[float]
    labels: list[str] | None = None

    def rows(self) -> list[tuple[int, float, str]]:
        names = self.labels or [""] * len(self.label_ids)
        return list(zip(self.label_ids, self.scores, names))

    @classmethod
    def batch_from_outputs(cls, outputs: dict[str, np.ndarray]) -> list["Classification"]:
        """Split ensemble outputs LABEL_IDS/SCORES[/LABELS] [N, K] into one result per image."""
        results = []
        for i in range(len(outputs["LABEL_IDS"])):
            labels = None
            if "LABELS" in outputs:
                labels = [b.decode("utf-8", "replace") if isinstance(b, bytes) else str(b) for b in outputs["LABELS"][i]]
            results.append(cls([int(v) for v in outputs["LABEL_IDS"][i]], [float(v) for v in outputs["SCORES"][i]], labels))
        return results
