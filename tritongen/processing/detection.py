"""PaddleDetection post-processing: network outputs -> per-image boxes, scores, class ids.

Two graph styles:

* NMS inside the graph (``multiclass_nms3``): the network returns rows (class, score, x1, y1,
  x2, y2) of all images concatenated plus per-image counts. Triton batching needs
  batch-major tensors, so the runtime model turns them into [N, keep_top_k, 6] + [N, 1]
  with :func:`nms_batch_major`; :class:`Postprocessor` accepts either form.
* NMS outside the graph (PP-YOLOE ``exclude_nms``): boxes [N, A, 4] and scores [N, C, A];
  :func:`multiclass_nms` reproduces Paddle's ``multiclass_nms3`` CPU kernel in numpy.

Boxes are already in original-image pixels (the network divides by ``scale_factor``).
Results keep detections with ``score >= score_threshold`` (default: the export's
``draw_threshold``, which PaddleDetection's deploy code uses to show results), best first,
at most ``max_detections`` (K) per image; rows past NUM_DETECTIONS are zero with label -1.

numpy / stdlib only: this module is copied into generated Triton models.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .classification import label_names
from .settings import as_float, check_bool, check_int, check_keys

if TYPE_CHECKING:
    from .pipeline import PipelineConfig

DEFAULT_MAX_DETECTIONS = 100


@dataclass(frozen=True)
class NmsSettings:
    """``multiclass_nms3`` attributes for an export without NMS in the graph (the yaml's
    ``NMS`` section, or the op's own attributes when tritongen cut it off)."""

    score_threshold: float
    nms_threshold: float
    nms_top_k: int  # -1: every candidate
    keep_top_k: int  # -1: every detection
    normalized: bool = True
    background_label: int = -1

    def __post_init__(self) -> None:
        object.__setattr__(self, "score_threshold", as_float("nms.score_threshold", self.score_threshold))
        object.__setattr__(self, "nms_threshold", as_float("nms.nms_threshold", self.nms_threshold, 0.0, 1.0))
        check_int("nms.nms_top_k", self.nms_top_k)
        check_int("nms.keep_top_k", self.keep_top_k)
        check_bool("nms.normalized", self.normalized)
        check_int("nms.background_label", self.background_label)

    def to_dict(self) -> dict[str, Any]:
        return {"score_threshold": self.score_threshold, "nms_threshold": self.nms_threshold,
                "nms_top_k": self.nms_top_k, "keep_top_k": self.keep_top_k, "normalized": self.normalized,
                "background_label": self.background_label}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "NmsSettings":
        check_keys("detection nms", data, {"score_threshold", "nms_threshold", "nms_top_k", "keep_top_k", "normalized",
                                           "background_label"})
        try:
            return cls(**data)
        except TypeError:  # a required key is missing
            missing = sorted({"score_threshold", "nms_threshold", "nms_top_k", "keep_top_k"} - set(data))
            raise ValueError(f"detection nms settings lack {', '.join(missing)}") from None


@dataclass(frozen=True)
class DetectionSettings:
    """What turns a detector's raw outputs into results.

    ``nms_in_graph``: the network ends in ``multiclass_nms3`` (``keep_top_k`` is the op's);
    otherwise ``nms`` is the NMS this package runs (``nms_cut_from_graph``: tritongen cut the
    op off, see convert/nms.py). ``score_threshold`` / ``max_detections`` filter the results.
    """

    score_threshold: float = 0.5
    max_detections: int = DEFAULT_MAX_DETECTIONS
    nms_in_graph: bool = False
    keep_top_k: int | None = None  # NMS in the graph: the op's keep_top_k (-1: all)
    nms: NmsSettings | None = None  # NMS outside the graph
    nms_cut_from_graph: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "score_threshold", as_float("score_threshold", self.score_threshold, 0.0, 1.0))
        check_int("max_detections", self.max_detections, minimum=1)
        check_bool("nms_in_graph", self.nms_in_graph)
        check_bool("nms_cut_from_graph", self.nms_cut_from_graph)
        if self.keep_top_k is not None:
            check_int("keep_top_k", self.keep_top_k)
        if isinstance(self.nms, dict):
            object.__setattr__(self, "nms", NmsSettings.from_dict(self.nms))
        if self.nms_in_graph:
            if self.nms is not None or self.nms_cut_from_graph:
                raise ValueError("nms / nms_cut_from_graph apply to a graph without NMS, but nms_in_graph is true")
        else:
            if self.nms is None:
                raise ValueError("a detector without NMS in the graph needs nms settings")
            if self.keep_top_k is not None:
                raise ValueError("keep_top_k applies to NMS in the graph; without it, use nms.keep_top_k")

    @property
    def graph_keep_top_k(self) -> int:
        """The in-graph NMS's keep_top_k, -1 when unknown or unlimited."""
        return -1 if self.keep_top_k is None else self.keep_top_k

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"nms_in_graph": self.nms_in_graph, "score_threshold": self.score_threshold,
                               "max_detections": self.max_detections}
        if self.keep_top_k is not None:
            out["keep_top_k"] = self.keep_top_k
        if self.nms is not None:
            out["nms"] = self.nms.to_dict()
        if self.nms_cut_from_graph:
            out["nms_cut_from_graph"] = True
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DetectionSettings":
        check_keys("detection", data, {"nms_in_graph", "score_threshold", "max_detections", "keep_top_k", "nms",
                                       "nms_cut_from_graph"})
        return cls(**data)


Settings = DetectionSettings  # what PipelineConfig builds from pipeline.json's "postprocess"


def outputs(config: "PipelineConfig") -> list[tuple[str, str, list[int]]]:
    k = config.postprocess.max_detections
    result = [
        ("NUM_DETECTIONS", "int32", [1]),
        ("BOXES", "float32", [k, 4]),
        ("SCORES", "float32", [k]),
        ("LABEL_IDS", "int32", [k]),
    ]
    if config.labels is not None:
        result.append(("LABELS", "bytes", [k]))
    return result


def run_nms_graph(runner, batch: dict[str, np.ndarray], nms: dict) -> dict[str, np.ndarray]:
    """Run a graph that ends in multiclass_nms3 with ``runner`` (one image per run when
    ``nms["one_image_per_run"]``: paddle2onnx's NMS takes batch 1) and return its rows batch-major,
    [N, keep_top_k, 6], and counts [N, 1]. ``nms`` is runtime.json's ``nms_outputs``: the rows and
    counts output names, keep_top_k, one_image_per_run. Shared by the served network and the
    in-process benchmark so both see the same tensors."""
    rows_name, counts_name = nms["rows"], nms["counts"]
    n = len(next(iter(batch.values())))
    chunks = [{k: v[i : i + 1] for k, v in batch.items()} for i in range(n)] if nms["one_image_per_run"] else [batch]
    rows, counts = [], []
    for chunk in chunks:
        out = runner.run(chunk)
        r = np.asarray(out[rows_name]).reshape(-1, out[rows_name].shape[-1])
        c = np.asarray(out[counts_name]).reshape(-1)
        rows.append(r if r.shape[-1] == 6 else np.zeros((0, 6), np.float32))  # no detection: an empty [0, 6]
        counts.append(c if r.shape[-1] == 6 else np.zeros_like(c))
    boxes, nums = nms_batch_major(np.concatenate(rows), np.concatenate(counts), int(nms["keep_top_k"]))
    return {rows_name: boxes, counts_name: nums}


def nms_batch_major(rows: np.ndarray, counts: np.ndarray, keep_top_k: int) -> tuple[np.ndarray, np.ndarray]:
    """``multiclass_nms3`` outputs (rows [M, 6] of all images, counts [N]) -> rows [N, K, 6]
    zero-padded and counts [N, 1] int32. K = keep_top_k, or the largest count when <= 0."""
    counts = np.asarray(counts).reshape(-1).astype(np.int64)
    rows = np.asarray(rows, dtype=np.float32)
    if rows.ndim != 2 or rows.shape[-1] != 6:  # legacy "no detections" output [[-1]]
        rows, counts = np.zeros((0, 6), np.float32), np.zeros_like(counts)
    if counts.sum() != len(rows):
        raise ValueError(f"multiclass_nms3 returned {len(rows)} rows but per-image counts {counts.tolist()}")
    k = int(keep_top_k) if keep_top_k and keep_top_k > 0 else max(int(counts.max(initial=0)), 1)
    out = np.zeros((len(counts), k, 6), np.float32)
    num = np.zeros((len(counts), 1), np.int32)
    starts = np.concatenate([[0], np.cumsum(counts)])
    for i, n in enumerate(counts):
        n_kept = min(int(n), k)
        out[i, :n_kept] = rows[starts[i] : starts[i] + n_kept]
        num[i, 0] = n_kept
    return out, num


def _iou_one_to_many(box: np.ndarray, boxes: np.ndarray, normalized: bool) -> np.ndarray:
    """Paddle's JaccardOverlap (nms_util.h) of ``box`` with each of ``boxes``, in float32."""
    norm = np.float32(0.0 if normalized else 1.0)
    disjoint = (boxes[:, 0] > box[2]) | (boxes[:, 2] < box[0]) | (boxes[:, 1] > box[3]) | (boxes[:, 3] < box[1])
    iw = np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]) + norm
    ih = np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]) + norm
    inter = iw * ih

    def area(b):
        valid = (b[..., 2] >= b[..., 0]) & (b[..., 3] >= b[..., 1])
        return np.where(valid, (b[..., 2] - b[..., 0] + norm) * (b[..., 3] - b[..., 1] + norm), np.float32(0))

    with np.errstate(divide="ignore", invalid="ignore"):
        iou = inter / (area(box) + area(boxes) - inter)
    return np.where(disjoint, np.float32(0), iou).astype(np.float32)


def _nms_one_class(boxes: np.ndarray, scores: np.ndarray, score_threshold: float, nms_top_k: int,
                   nms_threshold: float, normalized: bool) -> list[int]:
    candidates = np.nonzero(scores > np.float32(score_threshold))[0]
    order = candidates[np.argsort(-scores[candidates], kind="stable")]
    if nms_top_k > -1:
        order = order[:nms_top_k]
    selected: list[int] = []
    alive = np.ones(len(order), bool)
    for pos, idx in enumerate(order):
        if not alive[pos]:
            continue
        selected.append(int(idx))
        rest = order[pos + 1 :]
        if len(rest):
            alive[pos + 1 :] &= _iou_one_to_many(boxes[idx], boxes[rest], normalized) <= np.float32(nms_threshold)
    return selected


def multiclass_nms(boxes: np.ndarray, scores: np.ndarray, *, score_threshold: float, nms_top_k: int, keep_top_k: int,
                   nms_threshold: float, normalized: bool = False, background_label: int = -1) -> np.ndarray:
    """One image: boxes [A, 4], scores [C, A] -> rows [M, 6] (class, score, x1, y1, x2, y2) in
    the order Paddle's multiclass_nms3 CPU kernel returns them (by class, best first)."""
    boxes = np.asarray(boxes, np.float32)
    scores = np.asarray(scores, np.float32)
    picked: dict[int, list[int]] = {}
    for c in range(scores.shape[0]):
        if c == background_label:
            continue
        picked[c] = _nms_one_class(boxes, scores[c], score_threshold, nms_top_k, nms_threshold, normalized)
    total = sum(len(v) for v in picked.values())
    if keep_top_k > -1 and total > keep_top_k:
        pairs = [(c, i) for c in sorted(picked) for i in picked[c]]
        pair_scores = np.array([scores[c, i] for c, i in pairs], np.float32)
        keep = np.argsort(-pair_scores, kind="stable")[:keep_top_k]
        picked = {}
        for j in keep:
            c, i = pairs[j]
            picked.setdefault(c, []).append(i)
    rows = [[c, scores[c, i], *boxes[i]] for c in sorted(picked) for i in picked[c]]
    return np.array(rows, np.float32).reshape(-1, 6)


class Postprocessor:
    """Raw outputs -> NUM_DETECTIONS [N, 1], BOXES [N, K, 4], SCORES / LABEL_IDS (/ LABELS) [N, K]."""

    def __init__(self, config: "PipelineConfig"):
        settings: DetectionSettings = config.postprocess
        self.k = settings.max_detections
        self.score_threshold = settings.score_threshold
        self.nms_in_graph = settings.nms_in_graph
        self.nms = settings.nms
        self.keep_top_k = settings.graph_keep_top_k
        self.labels = config.labels
        self.first, self.second = config.outputs[0], config.outputs[1]

    def per_image_rows(self, raw: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Rows (class, score, x1, y1, x2, y2) of each image, before the score filter."""
        if self.nms_in_graph:
            rows, counts = np.asarray(raw[self.first]), np.asarray(raw[self.second])
            if rows.ndim != 3:
                rows, counts = nms_batch_major(rows, counts, self.keep_top_k)
            counts = counts.reshape(len(rows), -1)[:, 0]
            return [rows[i, : int(n)] for i, n in enumerate(counts)]
        boxes, scores = np.asarray(raw[self.first]), np.asarray(raw[self.second])
        return [multiclass_nms(boxes[i], scores[i], **self.nms.to_dict()) for i in range(len(boxes))]

    def __call__(self, raw: dict[str, np.ndarray], side: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        per_image = self.per_image_rows(raw)
        n, k = len(per_image), self.k
        num = np.zeros((n, 1), np.int32)
        boxes = np.zeros((n, k, 4), np.float32)
        scores = np.zeros((n, k), np.float32)
        ids = np.full((n, k), -1, np.int32)
        for i, rows in enumerate(per_image):
            rows = rows[rows[:, 1] >= np.float32(self.score_threshold)]
            rows = rows[np.argsort(-rows[:, 1], kind="stable")][:k]
            m = len(rows)
            num[i, 0] = m
            boxes[i, :m] = rows[:, 2:6]
            scores[i, :m] = rows[:, 1]
            ids[i, :m] = rows[:, 0].astype(np.int32)
        out = {"NUM_DETECTIONS": num, "BOXES": boxes, "SCORES": scores, "LABEL_IDS": ids}
        if self.labels is not None:
            out["LABELS"] = label_names(ids, self.labels)
        return out
