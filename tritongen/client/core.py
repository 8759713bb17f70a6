"""The client logic both transports share, as plans (see ``plans.py``).

Request building, splitting by ``max_batch_size``, shared memory, retries, error translation
and result decoding live here once; ``TritonClient`` (sync, ``base.py``) and
``AsyncTritonClient`` (asyncio, ``aio.py``) only run the plans.
"""
from __future__ import annotations

import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

import tritongen  # noqa: F401  (loads zlib before paddle can shadow it; tritonclient.grpc needs it)

from ..errors import ClientError
from .model import ModelInfo
from .options import ClientOptions
from .plans import Gather, Plan, Sleep, rpc
from .protocols import PROTOCOLS
from .shm import Region, ShmPool, Slot, input_capacity, output_layout
from .tasks import Task

ImageSource = bytes | str | Path
CONTROL_TIMEOUT = 5.0  # at least this long for control RPCs (model config, shared memory), whatever the inference timeout
UNREGISTER_WAIT = 10.0  # seconds close() waits for the server to finish with a region a timed-out call used


def read_image_bytes(image: ImageSource) -> bytes:
    if isinstance(image, (bytes, bytearray)):
        return bytes(image)
    path = Path(image)
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ClientError(f"cannot read image {path}: {exc.strerror or exc}") from None


class ClientCore:
    """A client of one model; the transport subclasses add how steps are performed."""

    task: type[Task] | None = None  # set by the task clients (a tritongen.tasks registry entry)
    _clients: dict[str, type]  # task name -> client class, per transport (filled by __init_subclass__)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("task") is not None:
            cls._clients[cls.task.name] = cls

    def __init__(self, model: str, url: str | None = None, timeout: float = 30.0, verbose: bool = False, **options):
        """``url``: HOST:PORT (default Triton's port of the protocol: 8001 gRPC, 8000 HTTP);
        ``options``: the fields of ``ClientOptions`` (protocol, retries, retry_delay,
        compression, shared_memory, ssl, root_certificates, private_key, certificate_chain,
        concurrency)."""
        self.model = model
        self.options = ClientOptions(url=url, timeout=timeout, verbose=verbose, **options)
        self.protocol = PROTOCOLS[self.options.protocol]
        self._info: ModelInfo | None = None
        self._closed = False
        self._shm = ShmPool() if self.options.shared_memory == "system" else None
        if self._shm is not None:  # never-closed clients still unlink their segments
            weakref.finalize(self, self._shm.destroy_all)

    @property
    def url(self) -> str:
        return self.options.url

    @property
    def timeout(self) -> float:
        return self.options.timeout

    @property
    def control_timeout(self) -> float:
        """Seconds for control RPCs: a tiny inference ``timeout`` must not keep the client from
        reading the model's config or from dropping its shared-memory regions on the server."""
        return max(self.options.timeout, CONTROL_TIMEOUT)

    @property
    def shm_prefix(self) -> str | None:
        """Name prefix of this client's shared-memory regions (``/dev/shm/<prefix>-*``)."""
        return self._shm.prefix if self._shm is not None else None

    @classmethod
    def for_task(cls, task: type[Task]) -> type:
        return cls._clients[task.name]

    # ----------------------------------------------------------------------------- plans

    def _rpc(self, what: str, method: str, *args, **kwargs) -> Plan:
        return rpc(self.options, what, method, *args, **kwargs)

    def _model_info_plan(self) -> Plan:
        """The model's config, read once per client."""
        if self._info is None:
            response = yield from self._rpc(f"model {self.model!r}", "get_model_config", self.model,
                                            timeout=self.control_timeout)
            self._info = ModelInfo.from_config(self.protocol.model_config(response))
        return self._info

    def _metadata_plan(self) -> Plan:
        """``service_pb2.ModelMetadataResponse`` whatever the protocol."""
        return self.protocol.model_metadata((yield from self._rpc(f"model {self.model!r}", "get_model_metadata", self.model)))

    def _ready_plan(self) -> Plan:
        return bool((yield from self._rpc("health check", "is_model_ready", self.model)))

    def _task_plan(self, images: Sequence[ImageSource]) -> Plan:
        """Typed results, one per image, in order."""
        if self.task is None:
            raise ClientError(f"{type(self).__name__} has no task; use client_for(model) or a task client")
        info = yield from self._model_info_plan()
        outputs = self.task.outputs(self.model, info.outputs)
        answers = yield from self._infer_plan(images, outputs)
        results: list = [None] * sum(len(a.images) for a in answers)
        for answer in answers:
            for position, result in zip(answer.images, self.task.decode(answer.outputs)):
                results[position] = result
        return results

    def _infer_plan(self, images: Sequence[ImageSource], outputs: Sequence[str]) -> Plan:
        """``outputs`` of each request (:class:`Answer`); the images are split into requests of at
        most ``max_batch_size`` — of one image size each where the model needs that — which the
        transport may send concurrently."""
        if self._closed:
            raise ClientError("the client is closed")
        if isinstance(images, (str, bytes, Path)):
            images = [images]
        data = [read_image_bytes(i) for i in images]
        if not data:
            raise ClientError("no images given")
        batch = np.empty((len(data), 1), dtype=np.object_)
        batch[:, 0] = data
        info = yield from self._model_info_plan()
        unknown = [n for n in outputs if n not in info.outputs]
        if unknown:
            raise ClientError(f"model {self.model!r} has no output {', '.join(unknown)} (outputs {list(info.outputs)})")
        groups = request_groups(data, info.max_batch_size, info.one_size_per_request)
        requests = [self._request_plan(info, batch[list(group)], list(outputs)) for group in groups]
        if len(requests) == 1:
            arrays = [(yield from requests[0])]
        else:
            arrays = yield Gather(tuple(requests))
        return [Answer(group, outputs) for group, outputs in zip(groups, arrays)]

    def _request_plan(self, info: ModelInfo, batch: np.ndarray, outputs: list[str]) -> Plan:
        """One inference request: IMAGE [n, 1] BYTES in, ``outputs`` back as arrays."""
        tensors = self.protocol.tensors()
        image = tensors.InferInput(info.image.name, list(batch.shape), "BYTES")
        requested = [tensors.InferRequestedOutput(name) for name in outputs]
        slot = None if self._shm is None else (yield from self._slot_plan(info))
        finished = False
        try:
            if slot is None:
                image.set_data_from_numpy(batch)
            else:
                yield from self._bind_plan(slot, image, batch, requested)
            result = yield from self._rpc(
                f"inference on {self.model!r}", "infer", info.name, [image], outputs=requested,
                compression=self.options.compression_algorithm,
            )
            arrays = {name: self._output(result, name, slot) for name in outputs}
            finished = True
            return arrays
        finally:
            if slot is not None:  # a request that did not finish may still be written to: never reuse it
                (self._shm.release if finished else self._shm.retire)(slot)

    def _output(self, result, name: str, slot: Slot | None) -> np.ndarray:
        if slot is None or name not in slot.layout:
            return result.as_numpy(name)
        datatype, shape = self.protocol.output_tensor(result, name)
        return slot.output.read(datatype, shape, slot.layout[name][0])

    # ------------------------------------------------------------------- shared memory

    def _slot_plan(self, info: ModelInfo) -> Plan:
        """A free slot with its output region registered (created on first use)."""
        for region in self._shm.take_retired():
            yield from self._unregister_plan(region)
        slot = self._shm.acquire()
        try:
            if slot.output is None:
                layout = output_layout(info)
                if layout:
                    size = max(offset + per_item * info.max_batch_size for offset, per_item in layout.values())
                    slot.output = yield from self._register_plan(self._shm.new_region("out", size))
                slot.layout = layout
        except BaseException:
            self._shm.retire(slot)
            raise
        return slot

    def _bind_plan(self, slot: Slot, image, batch: np.ndarray, requested: list) -> Plan:
        """Write the serialized images into the slot's input region (growing it when too
        small) and point the input and the fixed-size outputs at the slot's regions."""
        from tritonclient.utils import serialize_byte_tensor, serialized_byte_size

        serialized = serialize_byte_tensor(batch)
        size = serialized_byte_size(serialized)
        if slot.input is None or slot.input.size < size:
            old, slot.input = slot.input, None
            if old is not None:
                yield from self._unregister_plan(old)
            slot.input = yield from self._register_plan(self._shm.new_region("in", input_capacity(size)))
        slot.input.write([serialized])
        image.set_shared_memory(slot.input.name, size)
        for output in requested:
            if output.name() in slot.layout:
                offset, per_item = slot.layout[output.name()]
                output.set_shared_memory(slot.output.name, per_item * len(batch), offset)

    def _register_plan(self, region: Region) -> Plan:
        try:
            yield from self._rpc(
                f"registering system shared memory {region.key} (shared_memory='system' needs Triton on this machine)",
                "register_system_shared_memory", region.name, region.key, region.size, atomic=True,
                timeout=self.control_timeout,
            )
        except BaseException:  # failed, timed out or cancelled: the server may have registered it all the same
            self._shm.retire_region(region)
            raise
        return region

    def _unregister_plan(self, region: Region, wait: bool = False) -> Plan:
        """Unregister, then unlink the local segment (also when the server cannot be told).
        Triton refuses while a request still uses the region (one the client gave up on):
        then the region stays retired for later, or with ``wait`` is asked for until the
        request had time to finish (at least UNREGISTER_WAIT seconds).

        Its own time budget, not the inference ``timeout``: a call that timed out after 2 ms
        must still be able to tell the server to drop its regions."""
        done = False
        try:
            delay, deadline = 0.05, time.monotonic() + max(self.options.timeout, UNREGISTER_WAIT)
            while True:
                try:
                    yield from self._rpc("unregistering shared memory", "unregister_system_shared_memory", region.name,
                                         retry=False, atomic=True, timeout=self.control_timeout)
                    break
                except ClientError as exc:  # gone, never knew the region, or still using it
                    in_use = "in use" in str(exc)
                    if in_use and not wait:
                        return
                    if not in_use or time.monotonic() + delay > deadline:
                        break
                yield Sleep(delay)
                delay = min(2 * delay, 1.0)
            done = True
        finally:
            if done:
                region.destroy()
            else:  # in use, or interrupted: again later (close() unlinks it at the latest)
                self._shm.retire_region(region)

    def _close_plan(self) -> Plan:
        if self._closed:
            return
        self._closed = True
        if self._shm is not None:
            regions = self._shm.take_all()
            try:
                while regions:
                    yield from self._unregister_plan(regions.pop(), wait=True)
            finally:  # even when closing is interrupted, no segment outlives the client
                for region in regions:
                    region.destroy()
                self._shm.destroy_all()


@dataclass(frozen=True)
class Answer:
    """One request's outputs and the positions of its images in the caller's list."""

    images: tuple[int, ...]
    outputs: dict[str, np.ndarray]


def request_groups(data: Sequence[bytes], max_batch_size: int, one_size: bool) -> list[tuple[int, ...]]:
    """Image positions per request: consecutive runs of ``max_batch_size``; with ``one_size``,
    first grouped by the size each image's header declares (an image whose header cannot be
    read goes alone, and the server says what is wrong with it)."""
    if not one_size:
        return [tuple(range(i, min(i + max_batch_size, len(data)))) for i in range(0, len(data), max_batch_size)]
    from ..processing.image import read_header

    by_size: dict[object, list[int]] = {}
    for position, image in enumerate(data):
        try:
            header = read_header(image)
            key: object = (header.width, header.height)
        except ValueError:
            key = ("unreadable", position)
        by_size.setdefault(key, []).append(position)
    return [tuple(group[i : i + max_batch_size]) for group in by_size.values() for i in range(0, len(group), max_batch_size)]


def merge_requests(answers: list[Answer]) -> dict[str, np.ndarray]:
    """The outputs of the requests as one batch, in the order the images were given."""
    if len(answers) == 1 and answers[0].images == tuple(range(len(answers[0].images))):
        return answers[0].outputs
    order = np.argsort(np.concatenate([np.asarray(a.images, dtype=np.int64) for a in answers]), kind="stable")
    merged = {}
    for name in answers[0].outputs:
        parts = [a.outputs[name] for a in answers]
        if len({p.shape[1:] for p in parts}) > 1:
            raise ClientError(f"output {name} has different shapes in the requests the images were split into "
                              f"({[list(p.shape) for p in parts]}); the task methods (segment, ...) handle that")
        merged[name] = np.concatenate(parts)[order]
    return merged
