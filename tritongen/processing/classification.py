"""PaddleClas ``Topk`` postprocessing (deploy/python/postprocess.py semantics)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .settings import check_int, check_keys

if TYPE_CHECKING:
    from .pipeline import PipelineConfig


@dataclass(frozen=True)
class ClassificationSettings:
    """PaddleClas ``PostProcess.Topk``: how many classes each result lists (``{"topk": k}`` in pipeline.json)."""

    topk: int = 5

    def __post_init__(self) -> None:
        check_int("topk", self.topk, minimum=1)

    def to_dict(self) -> dict[str, Any]:
        return {"topk": self.topk}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ClassificationSettings":
        check_keys("classification", data, {"topk"})
        return cls(**data)


Settings = ClassificationSettings  # what PipelineConfig builds from pipeline.json's "postprocess"


def topk(probs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row of ``probs`` [B, C]: the k best class ids (int32) and their scores (float32).

    Uses PaddleClas's own expression (argsort, last k, reversed) so ties resolve the same way.
    The exported model already ends in softmax, so scores are the raw outputs.
    """
    probs = np.asarray(probs, dtype=np.float32).reshape(len(probs), -1)
    k = min(k, probs.shape[1])
    ids = np.stack([row.argsort(axis=0)[-k:][::-1] for row in probs]).astype(np.int32)
    scores = np.take_along_axis(probs, ids.astype(np.int64), axis=1).astype(np.float32)
    return ids, scores


def parse_label_file(path: str | Path, delimiter: str | None = None) -> dict[int, str]:
    """PaddleClas class_id_map_file: one ``<id><delimiter><name>`` per line (delimiter: space)."""
    delimiter = delimiter if delimiter is not None else " "
    labels: dict[int, str] = {}
    with open(path, "r", encoding="utf-8") as fin:
        for lineno, line in enumerate(fin, 1):
            line = line.split("\n")[0].rstrip("\r")
            if not line.strip():
                continue
            head, _, name = line.partition(delimiter)
            try:
                labels[int(head)] = name
            except ValueError:
                raise ValueError(f"{path}:{lineno}: expected '<class id>{delimiter}<name>', got {line!r}") from None
    return labels


def label_names(ids: np.ndarray, labels: list[str]) -> np.ndarray:
    """Names for class ids as a bytes array (Triton TYPE_STRING); unknown ids get ''."""
    out = np.empty(ids.shape, dtype=object)
    for index, cid in np.ndenumerate(ids):
        out[index] = (labels[cid] if 0 <= cid < len(labels) else "").encode("utf-8")
    return out


def outputs(config: "PipelineConfig") -> list[tuple[str, str, list[int]]]:
    """Ensemble results: (name, numpy dtype or 'bytes', dims without the batch axis)."""
    k = config.postprocess.topk
    result = [("LABEL_IDS", "int32", [k]), ("SCORES", "float32", [k])]
    if config.labels is not None:
        result.append(("LABELS", "bytes", [k]))
    return result


class Postprocessor:
    """Model scores [N, C] -> LABEL_IDS / SCORES (/ LABELS) [N, K]."""

    def __init__(self, config: "PipelineConfig"):
        self.k = config.postprocess.topk
        self.labels = config.labels
        self.scores_name = config.outputs[0]

    def __call__(self, raw: dict[str, np.ndarray], side: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        ids, top_scores = topk(raw[self.scores_name], self.k)
        out = {"LABEL_IDS": ids, "SCORES": top_scores}
        if self.labels is not None:
            out["LABELS"] = label_names(ids, self.labels)
        return out
