"""Intake: a model directory or zoo name -> ModelSpec."""
from __future__ import annotations

from pathlib import Path

from ..errors import IntakeError
from . import zoo
from .families import FAMILIES, labels_from_file
from . import paddledetection  # noqa: F401  (registers the family)
from . import paddleseg as _paddleseg  # noqa: F401  (registers the PaddleSeg family)
from .spec import ModelSpec, TensorSpec

__all__ = ["load_model", "ModelSpec", "TensorSpec", "FAMILIES"]


def load_model(
    source: str | Path,
    name: str | None = None,
    labels: str | Path | None = None,
    sha256: str | None = None,
    progress: bool = True,
    score_threshold: float | None = None,
    max_detections: int | None = None,
) -> ModelSpec:
    """Read an exported Paddle inference directory (or fetch a zoo model) into a ModelSpec."""
    directory = Path(source)
    if not directory.exists():
        if str(source) in zoo.ZOO:
            directory = zoo.fetch(str(source), sha256=sha256, progress=progress)
        elif "/" in str(source) or directory.suffix:
            raise IntakeError(f"{source}: no such directory")
        else:
            raise IntakeError(
                f"{source!r} is neither a directory nor a zoo model; zoo models: {', '.join(sorted(zoo.ZOO))}"
            )
    if not directory.is_dir():
        raise IntakeError(f"{directory}: expected an exported model directory, got a file")
    matches = [fam for fam in FAMILIES.values() if fam.config_file(directory) is not None]
    if not matches:
        known = ", ".join(f"{n} ({f.__name__})" for f in FAMILIES.values() for n in f.config_names)
        raise IntakeError(f"{directory}: no deploy config found; expected one of {known}")
    spec = matches[0].load(directory)
    if name:
        spec.name = name
    if labels is not None:
        spec.labels = labels_from_file(Path(labels))
    if score_threshold is not None or max_detections is not None:
        paddledetection.apply_detection_options(spec, score_threshold, max_detections)
    return spec
