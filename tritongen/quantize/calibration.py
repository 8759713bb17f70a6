"""Calibration and held-out images, run through the model's own preprocessing.

A folder of images is split deterministically: the calibration set feeds the quantizer, the
held-out set (never calibrated on) measures FP32 vs INT8 fidelity afterwards.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import TritongenError
from ..intake.spec import ModelSpec
from ..processing.errors import PreprocessError
from ..processing.pipeline import Preprocessor

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


class CalibrationError(TritongenError):
    """The calibration images cannot be used."""


@dataclass
class ImageSet:
    """Preprocessed images (float32, one array each) and where they came from."""

    paths: list[Path]
    tensors: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.paths)

    def batches(self, batch_size: int) -> Iterator[np.ndarray]:
        for start in range(0, len(self.tensors), batch_size):
            yield np.stack(self.tensors[start : start + batch_size])


@dataclass
class CalibrationData:
    calibration: ImageSet
    holdout: ImageSet
    skipped: list[tuple[Path, str]]  # unreadable files and why


def list_images(directory: str | Path) -> list[Path]:
    root = Path(directory)
    if not root.is_dir():
        raise CalibrationError(f"{root}: calibration directory not found")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise CalibrationError(f"{root}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found")
    return files


def load_calibration(
    spec: ModelSpec, directory: str | Path, holdout_fraction: float = 0.2, min_holdout: int = 1, max_images: int | None = None
) -> CalibrationData:
    """Preprocess every image in ``directory`` with the model's pipeline; split off a held-out set.

    Every ``k``-th image (by sorted path) is held out, so both sets span the folder.
    """
    from rich.progress import Progress

    preprocess = Preprocessor(spec.pipeline_config())
    files = list_images(directory)
    if max_images:
        files = files[:max_images]
    paths, tensors, skipped = [], [], []
    shape = None
    with Progress(transient=True) as bar:
        task = bar.add_task("preprocessing calibration images", total=len(files))
        for path in files:
            try:
                tensor = preprocess.one(path.read_bytes())
            except (PreprocessError, OSError) as exc:
                skipped.append((path, str(exc)))
            else:
                if shape is None:
                    shape = tensor.shape
                if tensor.shape != shape:  # no fixed crop: a batch needs one size
                    skipped.append((path, f"preprocessed to {tensor.shape}, the others to {shape}"))
                else:
                    paths.append(path)
                    tensors.append(tensor)
            bar.advance(task)
    if len(paths) < 2:
        detail = "; ".join(f"{p.name}: {why}" for p, why in skipped[:3])
        raise CalibrationError(
            f"{directory}: {len(paths)} usable image(s) of {len(files)}; need at least 2 (one to calibrate, one to check)"
            + (f" — {detail}" if detail else "")
        )
    n_holdout = max(min_holdout, int(round(len(paths) * holdout_fraction)))
    n_holdout = min(n_holdout, len(paths) - 1)
    step = len(paths) / n_holdout
    held = {int(i * step + step / 2) for i in range(n_holdout)}
    calib = ImageSet([p for i, p in enumerate(paths) if i not in held], [t for i, t in enumerate(tensors) if i not in held])
    hold = ImageSet([p for i, p in enumerate(paths) if i in held], [t for i, t in enumerate(tensors) if i in held])
    return CalibrationData(calib, hold, skipped)
