"""The asyncio client: runs the shared plans (``core.py``) with ``tritonclient.grpc.aio`` or
``tritonclient.http.aio`` (``protocols.py``);
the requests of a split batch go out concurrently (at most ``concurrency`` at a time)."""
from __future__ import annotations

import asyncio
from typing import Sequence

import numpy as np

from ..errors import ClientError
from .core import ClientCore, ImageSource, merge_requests
from .plans import Call, Plan, Sleep, Step
from .tasks import task_of


class AsyncTritonClient(ClientCore):
    """A connection to one model, for one event loop: ``async with AsyncClassificationClient(...)``."""

    _clients: dict[str, type] = {}

    def __init__(self, model: str, url: str | None = None, timeout: float = 30.0, verbose: bool = False, **options):
        super().__init__(model, url=url, timeout=timeout, verbose=verbose, **options)
        self._session = None  # created inside the running loop, on first use

    def _connection(self):
        if self._session is None:
            try:
                self._session = self.protocol.connect_async(self.options)
            except Exception as exc:
                raise ClientError(f"cannot create a {self.protocol.label} client for {self.url!r}: {exc}") from None
        return self._session

    # --------------------------------------------------------------------- the driver

    async def _run(self, plan: Plan):
        reply, error = None, None
        try:
            while True:
                try:
                    step = plan.throw(error) if error is not None else plan.send(reply)
                except StopIteration as done:
                    return done.value
                reply, error = None, None
                try:
                    reply = await self._perform(step)
                except Exception as exc:  # back into the plan, which translates and retries
                    error = exc
        finally:
            plan.close()

    async def _perform(self, step: Step):
        if isinstance(step, Call):
            call = self._connection().perform(step)
            if not step.atomic:
                return await call
            running = asyncio.ensure_future(call)
            try:
                return await asyncio.shield(running)
            except asyncio.CancelledError:
                await asyncio.wait([running])  # finish (bounded by the call's timeout), then stop
                raise
        if isinstance(step, Sleep):
            await asyncio.sleep(step.seconds)
            return None
        limit = asyncio.Semaphore(self.options.concurrency)

        async def limited(plan: Plan):
            async with limit:
                return await self._run(plan)

        try:  # the first failure cancels the other requests and waits for them to clean up
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(limited(plan)) for plan in step.plans]
        except BaseExceptionGroup as failed:
            raise failed.exceptions[0] from None
        return [task.result() for task in tasks]

    # ---------------------------------------------------------------------- the API

    async def metadata(self):
        return await self._run(self._metadata_plan())

    async def is_ready(self) -> bool:
        return await self._run(self._ready_plan())

    async def infer_images(self, images: Sequence[ImageSource], outputs: Sequence[str]) -> dict[str, np.ndarray]:
        return merge_requests(await self._run(self._infer_plan(images, outputs)))

    async def run(self, images: Sequence[ImageSource]) -> list:
        """The task's typed results, one per image."""
        return await self._run(self._task_plan(images))

    async def close(self) -> None:
        try:
            await self._run(self._close_plan())
        finally:
            if self._session is not None:
                await self._session.close()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()


async def async_client_for(model: str, url: str | None = None, timeout: float = 30.0, **options) -> AsyncTritonClient:
    """The asyncio task client that fits ``model`` (``async with await async_client_for(...)``)."""
    async with AsyncTritonClient(model, url=url, timeout=timeout, **{**options, "shared_memory": "none"}) as probe:
        info = await probe._run(probe._model_info_plan())
    client = AsyncTritonClient.for_task(task_of(model, info.outputs))(model, url=url, timeout=timeout, **options)
    client._info = info
    return client
