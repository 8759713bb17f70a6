"""How closely an INT8 model follows its FP32 original on held-out images.

Per output: mean/min cosine similarity per image, max |difference|, and for [N, C] score
outputs the top-1 agreement. Detectors are compared on what users get, the postprocessed
detections (score >= the export's threshold, NMS applied, in original-image pixels): per
held-out image each FP32 detection, best first, is matched to the unmatched INT8 detection of
the same class with the highest IoU >= 0.5. The *detection agreement* is matched detections
over the larger of the two counts, summed over images: 1.0 only when every detection on
either side has a partner. Raw NMS rows (``multiclass_nms3`` in the graph) have no per-output
statistics — their number and order change with any score — while NMS-less detectors keep
them beside the agreement.

Segmenters are compared on their label maps (the argmax of class scores, or the map an
argmax export returns, at network resolution — the served result is this map resized): the
*pixel agreement* is the share of held-out pixels given the same class, beside the mean IoU
per class of the INT8 map against the FP32 one. Cosine of class scores hides what matters:
a small shift of near-tied logits flips pixels.

The headline number is the detection agreement for detectors, the pixel agreement for
segmenters, top-1 agreement for classifiers and the mean cosine otherwise; ``--max-drop D``
fails when 1 - headline > D.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, Sequence

import numpy as np

from ..errors import TritongenError
from .calibration import ImageSet

if TYPE_CHECKING:
    from ..processing.pipeline import PipelineConfig

FIDELITY_FILE = "fidelity.json"
MATCH_IOU = 0.5


class FidelityError(TritongenError):
    """The INT8 model drifted further from FP32 than allowed."""


class Runner(Protocol):
    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


@dataclass
class OutputFidelity:
    name: str
    cosine_mean: float
    cosine_min: float
    max_abs_diff: float
    top1_agreement: float | None = None


@dataclass
class DetectionFidelity:
    """Postprocessed detections of the candidate matched to the reference's, image by image."""

    score_threshold: float
    iou_threshold: float
    reference_detections: int
    candidate_detections: int
    matched: int
    agreement: float  # matched / sum over images of max(reference, candidate) detections
    mean_iou: float  # over matched pairs (1.0 when nothing matched because nothing was detected)
    max_score_diff: float  # over matched pairs
    per_image: list[dict] = field(default_factory=list)  # reference / candidate / matched counts per image


@dataclass
class SegmentationFidelity:
    """Label maps of the candidate against the reference's, pixel by pixel."""

    pixels: int
    pixel_agreement: float  # share of pixels with the same class
    min_image_agreement: float
    mean_iou: float  # per class present in either map, IoU of candidate vs reference pixels, averaged
    classes: int  # classes present in either map


@dataclass
class FidelityReport:
    reference: str
    candidate: str
    images: list[str]
    outputs: list[OutputFidelity] = field(default_factory=list)
    detection: DetectionFidelity | None = None
    segmentation: SegmentationFidelity | None = None
    notes: list[str] = field(default_factory=list)
    image_kind: str = "held-out images"  # what ``images`` are, for the summary

    @property
    def headline(self) -> tuple[str, float]:
        if self.detection is not None:
            return "detection agreement", self.detection.agreement
        if self.segmentation is not None:
            return "pixel agreement", self.segmentation.pixel_agreement
        first = self.outputs[0]
        if first.top1_agreement is not None:
            return "top-1 agreement", first.top1_agreement
        return "mean cosine", first.cosine_mean

    @property
    def resolution(self) -> float:
        """The smallest step the headline can take: one of the items it counts (held-out images for
        top-1, detections, pixels). Two candidates closer than this are tied; 0 for cosines."""
        if self.detection is not None:
            counted = sum(max(i["reference"], i["candidate"]) for i in self.detection.per_image)
            return 1.0 / counted if counted else 0.0
        if self.segmentation is not None:
            return 1.0 / self.segmentation.pixels
        if self.outputs and self.outputs[0].top1_agreement is not None:
            return 1.0 / len(self.images)
        return 0.0

    @property
    def secondary(self) -> tuple[str, float]:
        """The tie-breaker after the headline: mean IoU of matched detections, else the first output's mean cosine."""
        if self.detection is not None:
            return "mean_iou", self.detection.mean_iou
        if self.segmentation is not None:
            return "mean_iou", self.segmentation.mean_iou
        return "cosine_mean", self.outputs[0].cosine_mean

    def check(self, max_drop: float | None) -> None:
        if max_drop is None:
            return
        metric, value = self.headline
        if 1.0 - value > max_drop + 1e-12:
            raise FidelityError(
                f"{self.candidate}: {metric} with {self.reference} on {len(self.images)} {self.image_kind} is "
                f"{value:.4f}, a drop of {1 - value:.4f} > --max-drop {max_drop:g}. Try another --algo "
                "(hist, mse, KL), more calibration images, --skip-tensors for sensitive layers"
                + (", or --method qat." if self.detection is None else ".")
            )

    def summary(self) -> str:
        metric, value = self.headline
        if self.detection is not None:
            d = self.detection
            text = (f"{metric} {value:.4f} ({d.matched} matched at IoU >= {d.iou_threshold:g}, mean IoU {d.mean_iou:.4f}; "
                    f"{d.reference_detections} reference / {d.candidate_detections} INT8 detections with score >= "
                    f"{d.score_threshold:g}) on {len(self.images)} {self.image_kind}")
            return text + "".join(f"; {note}" for note in self.notes)
        if self.segmentation is not None:
            g = self.segmentation
            return (f"{metric} {value:.4f} (worst image {g.min_image_agreement:.4f}, mean IoU {g.mean_iou:.4f} over "
                    f"{g.classes} classes; {g.pixels} pixels) on {len(self.images)} {self.image_kind}")
        first = self.outputs[0]
        return (f"{metric} {value:.4f}, cosine mean {first.cosine_mean:.4f} (min {first.cosine_min:.4f}), "
                f"max |diff| {first.max_abs_diff:.3g} on {len(self.images)} {self.image_kind}")

    def to_dict(self) -> dict:
        metric, value = self.headline
        data = asdict(self)
        for key in ("detection", "segmentation", "notes"):  # only where they say something (classification reports stay as they were)
            if not data[key]:
                del data[key]
        return {**data, "headline": {"metric": metric, "value": value}}

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")


def _cosine_per_row(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.reshape(len(a), -1).astype(np.float64)
    b = b.reshape(len(b), -1).astype(np.float64)
    denom = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    dot = (a * b).sum(axis=1)
    # Two all-zero rows agree perfectly; one zero row does not.
    return np.where(denom > 0, dot / np.maximum(denom, 1e-300), np.where((a == b).all(axis=1), 1.0, 0.0))


# ------------------------------------------------------------------------------ detections


def box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one x1, y1, x2, y2 box with each of ``boxes`` (continuous pixel coordinates)."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    box = np.asarray(box, np.float64)
    iw = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    ih = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    inter = iw * ih
    area = lambda b: np.clip(b[..., 2] - b[..., 0], 0, None) * np.clip(b[..., 3] - b[..., 1], 0, None)  # noqa: E731
    union = area(box) + area(boxes) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def match_detections(reference: np.ndarray, candidate: np.ndarray, iou_threshold: float = MATCH_IOU
                     ) -> list[tuple[int, int, float]]:
    """Greedy matching of two images' detections, rows (class, score, x1, y1, x2, y2).

    Reference detections in descending score order each take the unmatched candidate of the
    same class with the highest IoU, if that IoU >= ``iou_threshold``. Returns (reference
    row, candidate row, IoU) per match."""
    reference, candidate = np.asarray(reference).reshape(-1, 6), np.asarray(candidate).reshape(-1, 6)
    free = np.ones(len(candidate), bool)
    matches = []
    for r in np.argsort(-reference[:, 1], kind="stable"):
        options = np.nonzero(free & (candidate[:, 0] == reference[r, 0]))[0]
        if not len(options):
            continue
        ious = box_iou(reference[r, 2:6], candidate[options, 2:6])
        best = int(np.argmax(ious))
        if ious[best] >= iou_threshold:
            matches.append((int(r), int(options[best]), float(ious[best])))
            free[options[best]] = False
    return matches


def detection_agreement(reference: Sequence[np.ndarray], candidate: Sequence[np.ndarray], score_threshold: float,
                        iou_threshold: float = MATCH_IOU) -> DetectionFidelity:
    """Per-image detections (rows class, score, box, already filtered by ``score_threshold``) of
    two models -> how well they agree (see the module docstring)."""
    if len(reference) != len(candidate):
        raise ValueError(f"{len(reference)} reference images, {len(candidate)} candidate images")
    matched = denominator = n_ref = n_cand = 0
    ious: list[float] = []
    score_diffs: list[float] = []
    per_image = []
    for ref, cand in zip(reference, candidate):
        ref, cand = np.asarray(ref).reshape(-1, 6), np.asarray(cand).reshape(-1, 6)
        pairs = match_detections(ref, cand, iou_threshold)
        ious += [iou for _, _, iou in pairs]
        score_diffs += [abs(float(ref[r, 1]) - float(cand[c, 1])) for r, c, _ in pairs]
        matched += len(pairs)
        denominator += max(len(ref), len(cand))
        n_ref, n_cand = n_ref + len(ref), n_cand + len(cand)
        per_image.append({"reference": len(ref), "candidate": len(cand), "matched": len(pairs)})
    return DetectionFidelity(
        score_threshold=float(score_threshold), iou_threshold=float(iou_threshold), reference_detections=n_ref,
        candidate_detections=n_cand, matched=matched, agreement=matched / denominator if denominator else 1.0,
        mean_iou=float(np.mean(ious)) if ious else (1.0 if not denominator else 0.0),
        max_score_diff=float(max(score_diffs, default=0.0)), per_image=per_image,
    )


def _detections(postprocess, outputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    """What the served ensemble returns (NUM_DETECTIONS, LABEL_IDS, SCORES, BOXES) as rows per image."""
    result = postprocess(outputs)
    rows = []
    for i, n in enumerate(result["NUM_DETECTIONS"][:, 0]):
        rows.append(np.concatenate([result["LABEL_IDS"][i, :n, None].astype(np.float32), result["SCORES"][i, :n, None],
                                    result["BOXES"][i, :n]], axis=1))
    return rows


# ------------------------------------------------------------------------------ label maps


def _label_maps(output: np.ndarray) -> list[np.ndarray]:
    """A segmenter's first output per image as a label map: class scores [N, C, H, W] -> argmax
    over C; an argmax export's [N, H, W] (or [N, 1, H, W]) as it is."""
    output = np.asarray(output)
    if output.ndim == 4 and output.shape[1] > 1:
        output = output.argmax(1)
    return list(output.reshape(len(output), *output.shape[-2:]).astype(np.int64))


def pixel_agreement(reference: list[np.ndarray], candidate: list[np.ndarray]) -> SegmentationFidelity:
    if len(reference) != len(candidate) or any(r.shape != c.shape for r, c in zip(reference, candidate)):
        raise FidelityError("the label maps of the two models differ in number or size")
    same = [float(np.mean(r == c)) for r, c in zip(reference, candidate)]
    ref, cand = np.concatenate([r.ravel() for r in reference]), np.concatenate([c.ravel() for c in candidate])
    classes = np.union1d(np.unique(ref), np.unique(cand))
    ious = [np.sum((ref == k) & (cand == k)) / np.sum((ref == k) | (cand == k)) for k in classes]
    return SegmentationFidelity(pixels=int(ref.size), pixel_agreement=float(np.mean(ref == cand)),
                                min_image_agreement=min(same), mean_iou=float(np.mean(ious)), classes=len(classes))


# ------------------------------------------------------------------------------ comparison


def compare(
    reference: Runner, candidate: Runner, images: ImageSet, config: "PipelineConfig | None" = None,
    batch_size: int = 8, reference_name: str = "FP32", candidate_name: str = "INT8",
) -> FidelityReport:
    """Run both models on ``images`` (every model feed) and compare them.

    ``config`` (the serving pipeline's) is needed for detectors: their detections go through
    its postprocessing; they run one image per batch (a single request; paddle2onnx's NMS
    runs one image at a time)."""
    if len(images) == 0:
        raise FidelityError("no held-out images to measure fidelity on")
    from ..processing.detection import DetectionSettings, Postprocessor
    from ..processing.segmentation import SegmentationSettings

    postprocess = None
    raw_comparable = True
    if config is not None and isinstance(config.postprocess, DetectionSettings):
        postprocess = Postprocessor(config)
        batch_size = 1
        raw_comparable = not postprocess.nms_in_graph  # NMS rows: count and order change with any score
    ref_out: dict[str, list[np.ndarray]] = {}
    cand_out: dict[str, list[np.ndarray]] = {}
    ref_dets: list[np.ndarray] = []
    cand_dets: list[np.ndarray] = []
    segments = config is not None and isinstance(config.postprocess, SegmentationSettings)
    ref_maps: list[np.ndarray] = []
    cand_maps: list[np.ndarray] = []
    for batch in images.batches(batch_size):
        for store, dets, maps, runner in ((ref_out, ref_dets, ref_maps, reference),
                                          (cand_out, cand_dets, cand_maps, candidate)):
            outputs = runner.run(batch)
            for name, value in outputs.items():
                store.setdefault(name, []).append(np.asarray(value))
            if postprocess is not None:
                # Outputs pair up by position: saving a quantized program may rename its fetch targets.
                dets += _detections(postprocess, dict(zip(config.outputs, outputs.values())))
            if segments:
                maps += _label_maps(next(iter(outputs.values())))
    report = FidelityReport(reference_name, candidate_name, [str(p) for p in images.paths])
    if len(ref_out) != len(cand_out):
        raise FidelityError(f"{candidate_name} has {len(cand_out)} outputs, {reference_name} {len(ref_out)}")
    if postprocess is not None:
        report.detection = detection_agreement(ref_dets, cand_dets, postprocess.score_threshold)
        if report.detection.reference_detections == 0:
            report.notes.append(
                f"{reference_name} finds no detection with score >= {postprocess.score_threshold:g} on the held-out "
                "images, so the agreement compares nothing: add images, or lower the threshold (build --score-threshold, "
                "or draw_threshold in infer_cfg.yml)")
    if segments:
        report.segmentation = pixel_agreement(ref_maps, cand_maps)
    if not raw_comparable:
        return report
    for (name, ref_parts), cand_parts in zip(ref_out.items(), cand_out.values()):
        cos, diff, agree = [], 0.0, []
        # Batch by batch: a detector's raw outputs may differ in size between images (keep-ratio resize).
        for ref, cand in zip(ref_parts, cand_parts):
            if cand.shape != ref.shape:
                raise FidelityError(f"{candidate_name} output {name!r} has shape {cand.shape}, {reference_name} {ref.shape}")
            cos.append(_cosine_per_row(ref, cand))
            if ref.size:
                diff = max(diff, float(np.max(np.abs(ref.astype(np.float64) - cand.astype(np.float64)))))
            if ref.ndim == 2 and ref.shape[1] > 1 and np.issubdtype(ref.dtype, np.floating):
                agree.append(ref.argmax(1) == cand.argmax(1))
        cosines = np.concatenate(cos)
        report.outputs.append(OutputFidelity(
            name=name,
            cosine_mean=float(cosines.mean()),
            cosine_min=float(cosines.min()),
            max_abs_diff=diff,
            top1_agreement=float(np.mean(np.concatenate(agree))) if agree else None,
        ))
    return report
