"""The synchronous client: runs the shared plans (``core.py``) over a protocol session
(``protocols.py``: ``tritonclient.grpc`` or ``tritonclient.http``)."""
from __future__ import annotations

import time
from typing import Sequence

import numpy as np

from ..errors import ClientError
from .core import ClientCore, ImageSource, merge_requests, read_image_bytes
from .plans import Call, Plan, Sleep, Step

__all__ = ["TritonClient", "ImageSource", "read_image_bytes"]


class TritonClient(ClientCore):
    """A connection to one model on a Triton server (gRPC or HTTP). Thread-safe."""

    _clients: dict[str, type] = {}

    def __init__(self, model: str, url: str | None = None, timeout: float = 30.0, verbose: bool = False, **options):
        super().__init__(model, url=url, timeout=timeout, verbose=verbose, **options)
        try:
            self._session = self.protocol.connect(self.options)
        except Exception as exc:  # tritonclient raises plain exceptions for malformed URLs / unreadable PEM files
            self._closed = True
            if self._shm is not None:
                self._shm.destroy_all()
            raise ClientError(f"cannot create a {self.protocol.label} client for {self.url!r}: {exc}") from None

    # --------------------------------------------------------------------- the driver

    def _run(self, plan: Plan):
        reply, error = None, None
        try:
            while True:
                try:
                    step = plan.throw(error) if error is not None else plan.send(reply)
                except StopIteration as done:
                    return done.value
                reply, error = None, None
                try:
                    reply = self._perform(step)
                except Exception as exc:  # back into the plan, which translates and retries
                    error = exc
        finally:
            plan.close()

    def _perform(self, step: Step):
        if isinstance(step, Call):
            return self._session.perform(step)
        if isinstance(step, Sleep):
            time.sleep(step.seconds)
            return None
        return [self._run(plan) for plan in step.plans]  # Gather: one request after another

    # ---------------------------------------------------------------------- the API

    def metadata(self):
        return self._run(self._metadata_plan())

    def is_ready(self) -> bool:
        return self._run(self._ready_plan())

    def infer_images(self, images: Sequence[ImageSource], outputs: Sequence[str]) -> dict[str, np.ndarray]:
        """``outputs`` for ``images`` as batch arrays; sent in requests of at most
        ``max_batch_size`` images."""
        return merge_requests(self._run(self._infer_plan(images, outputs)))

    def run(self, images: Sequence[ImageSource]) -> list:
        """The task's typed results, one per image (what ``tritongen infer`` calls)."""
        return self._run(self._task_plan(images))

    def close(self) -> None:
        """Unregister and unlink the shared-memory regions, close the channel. Idempotent."""
        try:
            self._run(self._close_plan())
        finally:
            self._session.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
