"""System (POSIX) shared memory for a client's requests — the local half.

A request in flight holds one *slot*: an input region with the serialized IMAGE tensor
(``serialize_byte_tensor``: 4-byte length + bytes per image) and an output region with every
fixed-size output of the model laid out for ``max_batch_size`` images (sizes from the model
config). Outputs whose size is only known from the answer — BYTES (``LABELS``) and dims of -1
(a segmentation ``LABEL_MAP`` at the images' own size) — come back in the gRPC response
as usual: sizing a region for them would mean guessing an upper bound.

Slots are pooled and reused; an input region that is too small is replaced by one at least
twice the needed size (a power of two, 1 MiB at least). A slot whose request did not finish
normally (error, timeout, cancellation) is retired, never reused: the server may still use
it. Region names are unique per client (``tritongen-<pid>-<random>-<n>``), so concurrent
clients never collide. Registering and unregistering with the server are RPCs, done by the
client plans (``core.py``).
"""
from __future__ import annotations

import itertools
import os
import secrets
import threading
from dataclasses import dataclass, field

import numpy as np

from ..errors import ClientError
from .model import ModelInfo

ALIGN = 64
MIN_INPUT_BYTES = 1 << 20


def _aligned(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


class Region:
    """A shared-memory segment created here; Triton knows it under the same name."""

    def __init__(self, name: str, size: int):
        from tritonclient.utils import shared_memory as shm

        self.name, self.size = name, int(size)
        try:
            # Names carry a random part (see callers), so a region is never one another client made.
            # (tritonclient 2.51, the server's version, has no create_only flag.)
            self.handle = shm.create_shared_memory_region(name, self.key, self.size)
        except shm.SharedMemoryException as exc:
            reason = exc.__cause__ or exc
            raise ClientError(f"cannot create shared memory region {self.key} ({self.size} bytes): {reason}") from None

    @property
    def key(self) -> str:
        return f"/{self.name}"

    def write(self, values: list[np.ndarray]) -> None:
        from tritonclient.utils import shared_memory as shm

        shm.set_shared_memory_region(self.handle, values)

    def read(self, datatype: str, shape: list[int], offset: int) -> np.ndarray:
        from tritonclient.utils import shared_memory as shm
        from tritonclient.utils import triton_to_np_dtype

        return np.array(shm.get_contents_as_numpy(self.handle, triton_to_np_dtype(datatype), shape, offset), copy=True)

    def destroy(self) -> None:
        from tritonclient.utils import shared_memory as shm

        if self.handle is not None:
            handle, self.handle = self.handle, None
            shm.destroy_shared_memory_region(handle)


def output_layout(info: ModelInfo) -> dict[str, tuple[int, int]]:
    """name -> (offset, bytes per image) of the outputs that live in shared memory."""
    layout, offset = {}, 0
    for name, tensor in info.outputs.items():
        per_item = tensor.item_bytes
        if per_item:
            layout[name] = (offset, per_item)
            offset = _aligned(offset + per_item * info.max_batch_size)
    return layout


def input_capacity(needed: int) -> int:
    return max(MIN_INPUT_BYTES, 1 << (2 * needed - 1).bit_length())


@dataclass
class Slot:
    input: Region | None = None
    output: Region | None = None
    layout: dict[str, tuple[int, int]] = field(default_factory=dict)

    def regions(self) -> list[Region]:
        return [r for r in (self.input, self.output) if r is not None]


class ShmPool:
    """The regions of one client: free slots, and regions waiting to be unregistered."""

    def __init__(self):
        self.prefix = f"tritongen-{os.getpid()}-{secrets.token_hex(4)}"
        self._count = itertools.count()
        self._lock = threading.Lock()
        self._free: list[Slot] = []
        self._busy: list[Slot] = []
        self._retired: list[Region] = []

    def new_region(self, kind: str, size: int) -> Region:
        return Region(f"{self.prefix}-{next(self._count)}-{kind}", size)

    def acquire(self) -> Slot:
        with self._lock:
            slot = self._free.pop() if self._free else Slot()
            self._busy.append(slot)
            return slot

    def release(self, slot: Slot) -> None:
        with self._lock:
            self._busy.remove(slot)
            self._free.append(slot)

    def retire(self, slot: Slot) -> None:
        with self._lock:
            self._busy.remove(slot)
            self._retired.extend(slot.regions())

    def retire_region(self, region: Region) -> None:
        """A region that may be registered with the server but is not in a usable slot."""
        with self._lock:
            self._retired.append(region)

    def take_retired(self) -> list[Region]:
        with self._lock:
            retired, self._retired = self._retired, []
            return retired

    def take_all(self) -> list[Region]:
        """Every region, for close(): free, retired, and those of requests still running."""
        with self._lock:
            slots, self._free, self._busy = self._free + self._busy, [], []
            regions, self._retired = self._retired + [r for s in slots for r in s.regions()], []
            return regions

    def destroy_all(self) -> None:
        """Unlink every local segment (the safety net when a client is never closed)."""
        for region in self.take_all():
            region.destroy()
