"""``--shared-memory none|system|cuda``: where the request data lives (perf_analyzer's option).

``system`` follows perf_analyzer's ``InferDataManagerShm`` (infer_data_manager_shm.cc):

* one POSIX region per input per distinct request (perf_analyzer: per input per data stream and
  step, named ``<input>_<stream>_<step>``; here ``<prefix><input>_0_<request>``), written once
  before the load starts with the whole batch laid end to end, offset 0;
* one region per output (``<prefix><output>``), shared by every request in flight — nobody reads
  it, the server only needs somewhere to write. Its size is the output's byte size times the
  batch size when the model config fixes it, else ``--output-shared-memory-size`` times the
  batch size (variable dims, BYTES), as perf_analyzer computes it;
* tensor names lose their slashes (``TensorToRegionName``), the key is ``/`` + the region name;
* every region is registered once with the server over the load's protocol, and requests
  carry ``shared_memory_region`` / ``shared_memory_byte_size`` instead of the bytes.

Two things differ on purpose. perf_analyzer names regions after the tensors only and calls
``UnregisterAllSharedMemory`` before and after its run, which would take away the regions of
any other client of the same server; here names carry ``tritongen-perf-<pid>-<random>-`` so
that concurrent runs never collide, and only this run's regions are unregistered. Cleanup runs
on every way out (errors, Ctrl-C, SIGTERM through the CLI, a server that went away): the
server is told what it can be told, and every local segment is unlinked regardless.

``cuda`` needs a GPU, its driver and a CUDA-enabled client: it is refused with the reason.
"""
from __future__ import annotations

import ctypes
import os
import re
import secrets
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ..client.model import Tensor
from ..client.shm import Region
from ..errors import ClientError, PerfError
from ..registry import Registry
from .inputs import ModelInfo, TensorInfo

DEFAULT_OUTPUT_SIZE = 102400  # perf_analyzer's --output-shared-memory-size default (100 KB)
REGION_PREFIX = "tritongen-perf-"
UNREGISTER_WAIT_S = 5.0  # Triton refuses to unregister a region a request still uses: ask again this long


@dataclass(frozen=True)
class ShmRef:
    """Where one tensor of a request lives: a region registered with the server."""

    region: str
    byte_size: int
    offset: int = 0

    def fill(self, parameters) -> None:
        """Set the KServe v2 shared-memory parameters on a gRPC tensor's ``parameters`` map."""
        parameters["shared_memory_region"].string_param = self.region
        parameters["shared_memory_byte_size"].int64_param = self.byte_size
        if self.offset:
            parameters["shared_memory_offset"].int64_param = self.offset

    def as_json(self) -> dict[str, Any]:
        """The same parameters for a REST tensor's ``"parameters"``."""
        return {"shared_memory_region": self.region, "shared_memory_byte_size": self.byte_size,
                **({"shared_memory_offset": self.offset} if self.offset else {})}


@dataclass(frozen=True)
class ShmLayout:
    """What the load workers put in requests: per distinct request its inputs' regions, and the
    outputs' regions (the same for every request)."""

    inputs: tuple[dict[str, ShmRef], ...]
    outputs: dict[str, ShmRef]


def region_name(tensor: str) -> str:
    """perf_analyzer's ``TensorToRegionName``: the tensor name without slashes."""
    return tensor.replace("/", "").replace("\\", "")


def batch1_bytes(tensor: TensorInfo) -> int | None:
    """Bytes of one batch item of ``tensor`` when the model fixes them (perf_analyzer's ``ByteSize``),
    None for BYTES or variable dims."""
    return Tensor(tensor.name, tensor.datatype, tuple(tensor.dims)).item_bytes


class SharedMemory(ABC):
    """One ``--shared-memory`` kind, used as a context manager around the load: ``setup`` makes
    what requests will point at, leaving the context undoes it."""

    kind: ClassVar[str]

    def __init__(self, output_size: int = DEFAULT_OUTPUT_SIZE):
        self.output_size = output_size

    @classmethod
    def check(cls) -> None:
        """Raise PerfError when this kind cannot work here (called while settings are validated)."""

    @abstractmethod
    def setup(self, client: Any, url: str, info: ModelInfo, requests: list[dict[str, np.ndarray]],
              batch_size: int) -> ShmLayout | None:
        """Prepare the requests' data; the layout the engines build requests with (None: inline)."""

    def teardown(self) -> None:
        """Undo ``setup`` (also after a partial one)."""

    def explain(self, message: str) -> str:
        """A failed run's message, with what to change when this kind is why it failed."""
        return message

    def __enter__(self) -> "SharedMemory":
        return self

    def __exit__(self, *exc) -> None:
        self.teardown()


SHARED_MEMORY: Registry[type[SharedMemory]] = Registry("--shared-memory kind", key="kind")


@SHARED_MEMORY.register
class NoSharedMemory(SharedMemory):
    """The tensors travel in the requests and answers (binary tensor data)."""

    kind = "none"

    def setup(self, client, url, info, requests, batch_size) -> None:
        return None


@SHARED_MEMORY.register
class SystemSharedMemory(SharedMemory):
    """POSIX shared memory in /dev/shm, registered with a Triton on this host."""

    kind = "system"

    def __init__(self, output_size: int = DEFAULT_OUTPUT_SIZE):
        super().__init__(output_size)
        self.prefix = f"{REGION_PREFIX}{os.getpid()}-{secrets.token_hex(4)}-"
        self.regions: list[Region] = []  # created here
        self.registered: list[str] = []
        self.client: Any = None
        self.outputs: dict[str, ShmRef] = {}
        self.batch_size = 1

    def setup(self, client, url, info, requests, batch_size) -> ShmLayout:
        from .engines import wire_bytes

        self.client, self.batch_size = client, batch_size
        datatypes = {t.name: t.datatype for t in info.inputs}
        inputs = []
        for index, request in enumerate(requests):
            refs = {}
            for name, array in request.items():
                raw = wire_bytes(array, datatypes[name])
                region = self._create(f"{self.prefix}{region_name(name)}_0_{index}", len(raw))
                if raw:
                    region.write([np.frombuffer(raw, dtype=np.uint8)])
                refs[name] = ShmRef(region.name, len(raw))
            inputs.append(refs)
        for tensor in info.outputs:
            size = (batch1_bytes(tensor) or self.output_size) * batch_size
            self.outputs[tensor.name] = ShmRef(self._create(f"{self.prefix}{region_name(tensor.name)}", size).name, size)
        for region in self.regions:
            self._register(url, region)
        return ShmLayout(tuple(inputs), dict(self.outputs))

    def _create(self, name: str, size: int) -> Region:
        try:
            region = Region(name, max(size, 1))
        except ClientError as exc:
            raise PerfError(f"--shared-memory system: {exc}") from None
        self.regions.append(region)
        return region

    def _register(self, url: str, region: Region) -> None:
        from tritonclient.utils import InferenceServerException

        try:
            self.client.register_system_shared_memory(region.name, region.key, region.size)
        except InferenceServerException as exc:  # e.g. "Unable to open shared memory region: '/...'"
            raise PerfError(
                f"--shared-memory system: Triton at {url} did not register {region.key} ({exc.message()}); system "
                "shared memory needs tritonserver on this host, sharing its /dev/shm (in a container: --ipc=host)"
            ) from None
        except Exception as exc:  # the HTTP client's connection errors
            raise PerfError(f"--shared-memory system: cannot reach Triton at {url} to register {region.key}: {exc}") from None
        self.registered.append(region.name)

    def teardown(self) -> None:
        """Unregister this run's regions (only while the server answers), then unlink every segment."""
        registered, self.registered = self.registered, []
        for name in registered:
            if not self._unregister(name):
                break  # the server is gone or restarted: it cannot be told about the others either
        regions, self.regions = self.regions, []
        for region in regions:
            try:
                region.destroy()
            except Exception:  # already unlinked by someone: nothing left of ours
                pass

    def _unregister(self, name: str) -> bool:
        deadline = time.monotonic() + UNREGISTER_WAIT_S
        while True:
            try:
                self.client.unregister_system_shared_memory(name, client_timeout=UNREGISTER_WAIT_S)
                return True
            except Exception as exc:
                if "in use" not in str(exc) or time.monotonic() > deadline:
                    return False
                time.sleep(0.05)  # an abandoned request still holds it

    def explain(self, message: str) -> str:
        """Triton's answer to an output region that is too small ("shared memory size specified with
        the request for output 'X' (N bytes) should be at least M bytes to hold the results"), with
        the option that sizes it."""
        named = [name for name in self.outputs if f"output '{name}'" in message]
        if not named or "shared memory size" not in message:
            return message
        needed = re.search(r"at least (\d+) bytes", message)
        at_least = f" to at least {-(-int(needed.group(1)) // self.batch_size)}" if needed else ""
        return (f"{message}; raise --output-shared-memory-size (now {self.output_size} bytes per batch item){at_least}")

@SHARED_MEMORY.register
class CudaSharedMemory(SharedMemory):
    """perf_analyzer's ``cuda`` kind: GPU memory shared through CUDA IPC handles."""

    kind = "cuda"

    @classmethod
    def check(cls) -> None:
        try:
            ctypes.CDLL("libcuda.so.1")
            reason = "tritongen perf shares system memory only (CUDA IPC handles need a CUDA-enabled client)"
        except OSError:
            reason = "this machine has no NVIDIA driver (libcuda.so.1 does not load), so there is no GPU memory to share"
        raise PerfError(f"--shared-memory cuda: {reason}; use --shared-memory system (Triton on this host) or none")

    def setup(self, client, url, info, requests, batch_size) -> None:
        self.check()  # raises: there is no GPU memory to set up
