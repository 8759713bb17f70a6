"""Tasks a tritongen ensemble serves: which outputs it has, and how they decode into results.

A task is recognised by its required outputs; the most specific task whose outputs are all
present wins (a detector also has LABEL_IDS and SCORES, like a classifier). Adding a task is
one ``register(Task(...))`` call and a results class with ``batch_from_outputs``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np

from ..errors import ClientError
from ..results import Classification, Detection, Segmentation


@dataclass(frozen=True)
class Task:
    name: str
    noun: str  # "classifier": in "model X is not a tritongen classifier"
    required: tuple[str, ...]
    optional: tuple[str, ...]
    decode: Callable[[dict[str, np.ndarray]], list]  # batch outputs -> one result per image

    def outputs(self, model: str, available: Iterable[str]) -> list[str]:
        """The outputs to request from ``model``; ClientError if it lacks a required one."""
        available = list(available)
        if set(self.required) - set(available):
            raise ClientError(f"model {model!r} is not a tritongen {self.noun} (outputs {available})")
        return [*self.required, *(n for n in self.optional if n in available)]


TASKS: dict[str, Task] = {}


def register(task: Task) -> Task:
    if task.name in TASKS:
        raise ValueError(f"task {task.name!r} is registered twice")
    TASKS[task.name] = task
    return task


def task_of(model: str, outputs: Iterable[str]) -> Task:
    """The task of an ensemble with these outputs."""
    outputs = set(outputs)
    fitting = [t for t in TASKS.values() if set(t.required) <= outputs]
    if not fitting:
        raise ClientError(f"model {model!r} is not a tritongen ensemble (outputs {sorted(outputs)})")
    return max(fitting, key=lambda t: len(t.required))


CLASSIFICATION = register(Task("classification", "classifier", ("LABEL_IDS", "SCORES"), ("LABELS",),
                               Classification.batch_from_outputs))
DETECTION = register(Task("detection", "detector", ("NUM_DETECTIONS", "BOXES", "SCORES", "LABEL_IDS"), ("LABELS",),
                          Detection.batch_from_outputs))
SEGMENTATION = register(Task("segmentation", "segmenter", ("LABEL_MAP", "IMAGE_SIZE"), (),
                             Segmentation.batch_from_outputs))
