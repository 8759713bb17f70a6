"""Tasks a tritongen ensemble serves: the one task registry (``tritongen.tasks``), as the
client sees it. A task class knows its required/optional outputs (``outputs``) and decodes
them into results (``decode``); ``task_of`` recognises an ensemble by its outputs.
"""
from __future__ import annotations

from ..tasks import TASKS, Task, task_of

CLASSIFICATION = TASKS["classification"]
DETECTION = TASKS["detection"]
SEGMENTATION = TASKS["segmentation"]

__all__ = ["CLASSIFICATION", "DETECTION", "SEGMENTATION", "TASKS", "Task", "task_of"]
