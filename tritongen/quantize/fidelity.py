"""How closely an INT8 model follows its FP32 original on held-out images.

Per output: mean/min cosine similarity per image, max |difference|, and for [N, C] score
outputs the top-1 agreement. The headline number is top-1 agreement for classifiers and the
mean cosine otherwise; ``--max-drop D`` fails when 1 - headline > D.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from ..errors import TritongenError
from .calibration import ImageSet

FIDELITY_FILE = "fidelity.json"


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
class FidelityReport:
    reference: str
    candidate: str
    images: list[str]
    outputs: list[OutputFidelity] = field(default_factory=list)

    @property
    def headline(self) -> tuple[str, float]:
        first = self.outputs[0]
        if first.top1_agreement is not None:
            return "top-1 agreement", first.top1_agreement
        return "mean cosine", first.cosine_mean

    def check(self, max_drop: float | None) -> None:
        if max_drop is None:
            return
        metric, value = self.headline
        if 1.0 - value > max_drop + 1e-12:
            raise FidelityError(
                f"{self.candidate}: {metric} with {self.reference} on {len(self.images)} held-out images is "
                f"{value:.4f}, a drop of {1 - value:.4f} > --max-drop {max_drop:g}. Try another --algo "
                "(hist, mse, KL), more calibration images, --skip-tensors for sensitive layers, or --method qat."
            )

    def summary(self) -> str:
        metric, value = self.headline
        first = self.outputs[0]
        return (f"{metric} {value:.4f}, cosine mean {first.cosine_mean:.4f} (min {first.cosine_min:.4f}), "
                f"max |diff| {first.max_abs_diff:.3g} on {len(self.images)} held-out images")

    def to_dict(self) -> dict:
        metric, value = self.headline
        return {**asdict(self), "headline": {"metric": metric, "value": value}}

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")


def _cosine_per_row(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.reshape(len(a), -1).astype(np.float64)
    b = b.reshape(len(b), -1).astype(np.float64)
    denom = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    dot = (a * b).sum(axis=1)
    # Two all-zero rows agree perfectly; one zero row does not.
    return np.where(denom > 0, dot / np.maximum(denom, 1e-300), np.where((a == b).all(axis=1), 1.0, 0.0))


def compare(
    reference: Runner, candidate: Runner, feed_name: str, images: ImageSet, batch_size: int = 8,
    reference_name: str = "FP32", candidate_name: str = "INT8",
) -> FidelityReport:
    if len(images) == 0:
        raise FidelityError("no held-out images to measure fidelity on")
    ref_out: dict[str, list[np.ndarray]] = {}
    cand_out: dict[str, list[np.ndarray]] = {}
    for batch in images.batches(batch_size):
        for store, runner in ((ref_out, reference), (cand_out, candidate)):
            for name, value in runner.run({feed_name: batch}).items():
                store.setdefault(name, []).append(np.asarray(value))
    report = FidelityReport(reference_name, candidate_name, [str(p) for p in images.paths])
    if len(ref_out) != len(cand_out):
        raise FidelityError(f"{candidate_name} has {len(cand_out)} outputs, {reference_name} {len(ref_out)}")
    # Outputs pair up by position: saving a quantized program may rename its fetch targets.
    for (name, ref_parts), cand_parts in zip(ref_out.items(), cand_out.values()):
        ref, cand = np.concatenate(ref_parts), np.concatenate(cand_parts)
        if cand.shape != ref.shape:
            raise FidelityError(f"{candidate_name} output {name!r} has shape {cand.shape}, {reference_name} {ref.shape}")
        cos = _cosine_per_row(ref, cand)
        top1 = None
        if ref.ndim == 2 and ref.shape[1] > 1 and np.issubdtype(ref.dtype, np.floating):
            top1 = float(np.mean(ref.argmax(1) == cand.argmax(1)))
        report.outputs.append(OutputFidelity(
            name=name,
            cosine_mean=float(cos.mean()),
            cosine_min=float(cos.min()),
            max_abs_diff=float(np.max(np.abs(ref.astype(np.float64) - cand.astype(np.float64)))) if ref.size else 0.0,
            top1_agreement=top1,
        ))
    return report
