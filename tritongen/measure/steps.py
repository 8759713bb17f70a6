"""What one image costs in each step of the serving pipeline on this machine: decode + preprocess,
the network, postprocess — the numbers the ensemble layout's default instance counts are split by
(``emit.repository.InstanceCounts``)."""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Protocol, Sequence

import numpy as np

if TYPE_CHECKING:
    from ..processing.pipeline import PipelineConfig

STEPS = ("preprocess", "runtime", "postprocess")  # the ensemble's steps, in the order an image meets them


class Runner(Protocol):
    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


@dataclass(frozen=True)
class StepCosts:
    """Median milliseconds one image spends in each step, measured in one process on one thread."""

    preprocess_ms: float  # decode + the model's preprocessing
    runtime_ms: float  # the network
    postprocess_ms: float
    images: str  # what was measured, e.g. "3 JPEG photos of 640x480": the costs depend on image size

    def __post_init__(self) -> None:
        costs = self.by_step.values()
        if not all(math.isfinite(ms) and ms >= 0 for ms in costs) or sum(costs) <= 0:
            raise ValueError(f"step costs must be finite, >= 0 and not all 0; got {self.by_step}")

    @property
    def by_step(self) -> dict[str, float]:
        """Step name (:data:`STEPS`) -> milliseconds."""
        return {"preprocess": self.preprocess_ms, "runtime": self.runtime_ms, "postprocess": self.postprocess_ms}

    def share(self, step: str) -> float:
        """The fraction of an image's total cost spent in ``step``."""
        return self.by_step[step] / sum(self.by_step.values())

    def to_dict(self) -> dict[str, float | str]:
        return asdict(self)

    def __str__(self) -> str:
        return ", ".join(f"{step} {ms:.1f} ms" for step, ms in self.by_step.items())


def measure_step_costs(config: PipelineConfig, runner: Runner, images: Sequence[bytes], kind: str = "images",
                       warmup: int = 2, rounds: int = 10, budget_s: float = 1.5) -> StepCosts:
    """Time each step on every image of ``images`` (encoded, one at a time, as one request each):
    ``warmup`` untimed rounds, then up to ``rounds`` timed ones (at least one; no new round once
    ``budget_s`` is spent); each step's cost is its median. ``runner`` runs the network the
    repository serves (build it with one thread: the steps are split by single-core cost).

    The costs depend on the image size — decoding, resizing and mapping results back to the
    original size grow with it — so measure on images of the size clients send (``kind`` says what
    they are, e.g. ``"JPEG photos"``). They are a starting point for the instance counts:
    ``tritongen tune`` refines those on the server under real load."""
    from ..processing.image import decode_image  # imported here: the rest of tritongen.measure needs no OpenCV
    from ..processing.pipeline import Preprocessor, postprocessor

    if not images:
        raise ValueError("measure_step_costs needs at least one image")
    preprocess, postprocess = Preprocessor(config), postprocessor(config)
    sizes = sorted({decode_image(data, config.min_image_side, config.max_image_pixels).shape[1::-1] for data in images})  # (width, height)

    def one(data: bytes, times: dict[str, list[float]] | None) -> None:
        t0 = time.perf_counter()
        batch = preprocess([data])
        t1 = time.perf_counter()
        raw = runner.run({feed: batch[feed] for feed in config.feeds})
        t2 = time.perf_counter()
        postprocess(raw, batch)
        t3 = time.perf_counter()
        if times is not None:
            for step, start, end in zip(STEPS, (t0, t1, t2), (t1, t2, t3)):
                times[step].append((end - start) * 1000)

    for _ in range(warmup):
        for data in images:
            one(data, None)
    times: dict[str, list[float]] = {step: [] for step in STEPS}
    start = time.perf_counter()
    for i in range(max(1, rounds)):
        if i and time.perf_counter() - start > budget_s:
            break
        for data in images:
            one(data, times)
    median = {step: float(np.median(t)) for step, t in times.items()}
    return StepCosts(median["preprocess"], median["runtime"], median["postprocess"],
                     images=f"{len(images)} {kind} of {', '.join(f'{w}x{h}' for w, h in sizes)}")
