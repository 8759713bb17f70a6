"""Calibration and held-out images, run through the model's own preprocessing.

A folder of images is split deterministically: the calibration set feeds the quantizer, the
held-out set (never calibrated on) measures FP32 vs INT8 fidelity afterwards.

Every image carries every model feed, as the serving pipeline fills them: the image tensor,
and for PaddleDetection exports ``scale_factor`` / ``im_shape`` (float32, per image). Models
whose serving pipeline cannot batch images of different sizes (classification, segmentation
without a fixed-size resize) keep only the images of the first image's preprocessed shape;
detectors keep every image (keep-ratio resizes give different shapes), and a set with several
shapes is calibrated and measured one image at a time (:attr:`ImageSet.uniform`), which is
exactly what a single served request sees — no padding in the statistics.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from ..errors import TritongenError
from ..intake.spec import ModelSpec
from ..processing.errors import PreprocessError
from ..processing.ops import pads_batch
from ..processing.pipeline import PipelineConfig, Preprocessor

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


class CalibrationError(TritongenError):
    """The calibration images cannot be used."""


@dataclass
class ImageSet:
    """Preprocessed images and where they came from: per image, every model feed (float32,
    no batch axis) — the image tensor under ``image_feed``, plus scale_factor / im_shape for
    detectors."""

    paths: list[Path]
    feeds: list[dict[str, np.ndarray]]
    image_feed: str

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def tensors(self) -> list[np.ndarray]:
        """The image feed of each image."""
        return [f[self.image_feed] for f in self.feeds]

    @property
    def uniform(self) -> bool:
        """True when every image gives feeds of the same shapes (so any images stack into a batch)."""
        return len({tuple((k, v.shape) for k, v in sorted(f.items())) for f in self.feeds}) <= 1

    def batch(self, indices: Sequence[int]) -> dict[str, np.ndarray]:
        """The feeds of the images at ``indices``, stacked along a new batch axis."""
        names = self.feeds[indices[0]].keys()
        return {name: np.stack([self.feeds[i][name] for i in indices]) for name in names}

    def batches(self, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        """Model feeds, ``batch_size`` images at a time (1 when the images differ in shape)."""
        size = batch_size if self.uniform else 1
        for start in range(0, len(self.feeds), size):
            yield self.batch(range(start, min(start + size, len(self.feeds))))

    def subset(self, indices: Sequence[int]) -> "ImageSet":
        return ImageSet([self.paths[i] for i in indices], [self.feeds[i] for i in indices], self.image_feed)


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
    from ..progress import progress_bar

    config = spec.pipeline_config()
    preprocess = Preprocessor(config)
    files = list_images(directory)
    if max_images:
        files = files[:max_images]
    paths, feeds, skipped = [], [], []
    shape = None
    with progress_bar() as bar:
        task = bar.add_task("preprocessing calibration images", total=len(files))
        for path in files:
            try:
                sample = model_feeds(preprocess, path.read_bytes())
            except (PreprocessError, OSError) as exc:
                skipped.append((path, str(exc)))
            else:
                tensor = sample[config.image_feed]
                if shape is None:
                    shape = tensor.shape
                if tensor.shape != shape and not _pads_batches(config):  # no fixed crop: a batch needs one size
                    skipped.append((path, f"preprocessed to {tensor.shape}, the others to {shape}"))
                else:
                    paths.append(path)
                    feeds.append(sample)
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
    everything = ImageSet(paths, feeds, config.image_feed)
    calib = everything.subset([i for i in range(len(paths)) if i not in held])
    hold = everything.subset([i for i in range(len(paths)) if i in held])
    return CalibrationData(calib, hold, skipped)


def model_feeds(preprocess: Preprocessor, data: bytes) -> dict[str, np.ndarray]:
    """One image -> every model feed, without the batch axis: what ``Preprocessor.__call__``
    builds for a one-image request (image tensor; scale_factor / im_shape as float32)."""
    image, info = preprocess.sample(data)
    feeds = {}
    for feed, source in preprocess.config.feeds.items():
        feeds[feed] = image if source == "image" else np.asarray(info[source], dtype=np.float32)
    return feeds


def _pads_batches(config: PipelineConfig) -> bool:
    """Whether the serving pipeline batches images of different sizes (PaddleDetection's
    predictor zero-pads them; see ``Preprocessor._stack_images``)."""
    return pads_batch(config.family)
