"""Tasks tritongen serves (classification, detection, segmentation), in one registry.

A task is one class: its postprocess settings type (in ``processing/``, saved in
``pipeline.json``), its result type (``results.py``), the ensemble outputs that identify it,
and what later stages need to know about it (``keeps_tail_float``). Stages ask the task
(``spec.task_kind``) instead of comparing names. Adding a task is one class here, a module
``processing/<name>.py`` and a results class with ``batch_from_outputs``.

A served ensemble is recognised by its outputs: the most specific task whose required
outputs are all present wins (a detector also has LABEL_IDS and SCORES, like a classifier).
"""
from __future__ import annotations

from typing import ClassVar, Iterable

import numpy as np

from .errors import ClientError
from .processing.classification import ClassificationSettings
from .processing.detection import DetectionSettings
from .processing.segmentation import SegmentationSettings
from .registry import Registry
from .results import Classification, Detection, Segmentation

TASKS: Registry[type["Task"]] = Registry("task")
register_task = TASKS.register


class Task:
    """What tritongen knows about one task. Used as a class (never instantiated)."""

    name: ClassVar[str]
    noun: ClassVar[str]  # "classifier": in "model X is not a tritongen classifier"
    settings: ClassVar[type]  # postprocess settings dataclass (processing/<task>.py)
    result: ClassVar[type]  # results.Classification / Detection / Segmentation
    required: ClassVar[tuple[str, ...]]  # ensemble outputs that identify the task
    optional: ClassVar[tuple[str, ...]] = ()
    # Quantization leaves the model's tail float: box decoding, scale_factor division and
    # NMS of detectors lose too much in INT8.
    keeps_tail_float: ClassVar[bool] = False

    @classmethod
    def decode(cls, outputs: dict[str, np.ndarray]) -> list:
        """Batch outputs (ensemble result tensors) -> one result per image."""
        return cls.result.batch_from_outputs(outputs)

    @classmethod
    def outputs(cls, model: str, available: Iterable[str]) -> list[str]:
        """The outputs to request from ``model``; ClientError if it lacks a required one."""
        available = list(available)
        if set(cls.required) - set(available):
            raise ClientError(f"model {model!r} is not a tritongen {cls.noun} (outputs {available})")
        return [*cls.required, *(n for n in cls.optional if n in available)]


def task_named(name: str) -> type[Task]:
    return TASKS.lookup(name)


def task_of(model: str, outputs: Iterable[str]) -> type[Task]:
    """The task of an ensemble with these outputs."""
    outputs = set(outputs)
    fitting = [t for t in TASKS.values() if set(t.required) <= outputs]
    if not fitting:
        raise ClientError(f"model {model!r} is not a tritongen ensemble (outputs {sorted(outputs)})")
    return max(fitting, key=lambda t: len(t.required))


@register_task
class ClassificationTask(Task):
    name = "classification"
    noun = "classifier"
    settings = ClassificationSettings
    result = Classification
    required = ("LABEL_IDS", "SCORES")
    optional = ("LABELS",)


@register_task
class DetectionTask(Task):
    name = "detection"
    noun = "detector"
    settings = DetectionSettings
    result = Detection
    required = ("NUM_DETECTIONS", "BOXES", "SCORES", "LABEL_IDS")
    optional = ("LABELS",)
    keeps_tail_float = True


@register_task
class SegmentationTask(Task):
    name = "segmentation"
    noun = "segmenter"
    settings = SegmentationSettings
    result = Segmentation
    required = ("LABEL_MAP", "IMAGE_SIZE")
