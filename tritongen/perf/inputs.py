"""What to send: the model's inputs (from its metadata and config) and the request data.

Data sources follow perf_analyzer: ``random`` / ``zero`` tensors, or a JSON file in
perf_analyzer's format (``{"data": [{"INPUT": [values] | {"content": [...], "shape": [...]}
| {"b64": "..."}}, ...]}``), plus ``--images DIR`` for encoded-image (BYTES) inputs such as a
tritongen ensemble's ``IMAGE``. Requests are built once, before the load starts.
"""
from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import PerfError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
MAX_DISTINCT_REQUESTS = 64  # data items cycled through; enough variety, bounded memory


@dataclass(frozen=True)
class TensorInfo:
    name: str
    datatype: str  # Triton's: FP32, INT32, BYTES, ...
    dims: tuple[int, ...]  # per batch item when the model batches; -1 = variable


@dataclass
class ModelInfo:
    name: str
    version: str
    max_batch_size: int
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    composing: list[str] = field(default_factory=list)  # models an ensemble runs (recursively)
    response_cache: bool = False

    @property
    def is_ensemble(self) -> bool:
        return bool(self.composing)


def inspect_model(client: Any, model: str, version: str = "") -> ModelInfo:
    """Read a served model's inputs/outputs/batching through a tritonclient.grpc client."""
    metadata = client.get_model_metadata(model, version)
    config = client.get_model_config(model, version).config
    batching = config.max_batch_size > 0

    def tensors(items) -> list[TensorInfo]:
        out = []
        for t in items:
            dims = tuple(int(d) for d in t.shape)
            out.append(TensorInfo(t.name, t.datatype, dims[1:] if batching and dims else dims))
        return out

    composing: list[str] = []
    pending = [s.model_name for s in config.ensemble_scheduling.step]
    while pending:
        name = pending.pop(0)
        if name in composing:
            continue
        composing.append(name)
        sub = client.get_model_config(name).config
        pending.extend(s.model_name for s in sub.ensemble_scheduling.step)
    return ModelInfo(
        name=model, version=version or (metadata.versions[-1] if metadata.versions else "1"),
        max_batch_size=int(config.max_batch_size), inputs=tensors(metadata.inputs), outputs=tensors(metadata.outputs),
        composing=composing, response_cache=bool(config.response_cache.enable),
    )


def parse_shapes(items: list[str]) -> dict[str, list[int]]:
    """``--shape NAME:d1,d2,...`` (per batch item, like perf_analyzer) -> {NAME: dims}."""
    shapes = {}
    for item in items:
        name, sep, dims = item.rpartition(":")
        try:
            parsed = [int(d) for d in dims.split(",")] if sep and name else None
        except ValueError:
            parsed = None
        if not parsed or any(d < 0 for d in parsed):
            raise PerfError(f"--shape {item!r}: expected NAME:d1,d2,... with non-negative integers")
        shapes[name] = parsed
    return shapes


def _np_dtype(datatype: str):
    from tritonclient.utils import triton_to_np_dtype

    dtype = triton_to_np_dtype(datatype)
    if dtype is None:
        raise PerfError(f"input datatype {datatype} is not supported")
    return dtype


def _resolve_dims(t: TensorInfo, shapes: dict[str, list[int]]) -> list[int]:
    given = shapes.get(t.name)
    if given is None:
        if any(d < 0 for d in t.dims):
            raise PerfError(
                f"input {t.name!r} has variable dims {list(t.dims)}; give its shape with --shape {t.name}:"
                + ",".join("D" if d < 0 else str(d) for d in t.dims)
            )
        return list(t.dims)
    if len(given) != len(t.dims) or any(m >= 0 and m != g for m, g in zip(t.dims, given)):
        raise PerfError(f"--shape {t.name}:{','.join(map(str, given))} does not fit the model's dims {list(t.dims)}")
    return given


def _random_item(t: TensorInfo, dims: list[int], rng: np.random.Generator, zero: bool) -> np.ndarray:
    dtype = _np_dtype(t.datatype)
    if t.datatype == "BYTES":
        if zero:
            return np.full(dims, b"", dtype=np.object_)
        # perf_analyzer sends random strings
        flat = [bytes(rng.integers(97, 123, size=8, dtype=np.uint8)) for _ in range(int(np.prod(dims)))]
        return np.array(flat, dtype=np.object_).reshape(dims)
    if zero:
        return np.zeros(dims, dtype=dtype)
    if t.datatype == "BOOL":
        return rng.integers(0, 2, size=dims).astype(bool)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return rng.integers(max(info.min, 0), min(info.max, 100) + 1, size=dims).astype(dtype)
    return rng.random(dims).astype(dtype)


def _images(directory: Path) -> list[bytes]:
    if not directory.is_dir():
        raise PerfError(f"--images {directory}: not a directory")
    files = sorted(p for p in directory.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise PerfError(f"--images {directory}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return [p.read_bytes() for p in files[:MAX_DISTINCT_REQUESTS]]


def _json_steps(path: Path, inputs: list[TensorInfo], dims: dict[str, list[int]]) -> list[dict[str, np.ndarray]]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise PerfError(f"--input-data {path}: {exc.strerror or exc}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PerfError(f"--input-data {path}: not valid JSON ({exc})") from None
    steps = doc.get("data") if isinstance(doc, dict) else None
    if not isinstance(steps, list) or not steps:
        raise PerfError(f"--input-data {path}: expected {{\"data\": [{{INPUT: values}}, ...]}} (perf_analyzer's format)")
    items = []
    for i, step in enumerate(steps):
        if not isinstance(step, dict):
            raise PerfError(f"--input-data {path}: data[{i}] must be an object mapping input names to values")
        item = {}
        for t in inputs:
            if t.name not in step:
                raise PerfError(f"--input-data {path}: data[{i}] has no input {t.name!r}")
            value, shape = step[t.name], dims[t.name]
            if isinstance(value, dict) and "shape" in value:
                shape = [int(d) for d in value["shape"]]
            if isinstance(value, dict) and "b64" in value:
                raw = base64.b64decode(value["b64"])
                array = (np.array([raw], dtype=np.object_) if t.datatype == "BYTES"
                         else np.frombuffer(raw, dtype=_np_dtype(t.datatype)))
            else:
                content = value.get("content") if isinstance(value, dict) else value
                if t.datatype == "BYTES":
                    flat = content if isinstance(content, list) else [content]
                    array = np.array([v.encode() if isinstance(v, str) else bytes(v) for v in flat], dtype=np.object_)
                else:
                    try:
                        array = np.asarray(content, dtype=_np_dtype(t.datatype)).reshape(-1)
                    except (TypeError, ValueError) as exc:
                        raise PerfError(f"--input-data {path}: data[{i}].{t.name}: {exc}") from None
            if array.size != int(np.prod(shape)):
                raise PerfError(f"--input-data {path}: data[{i}].{t.name} has {array.size} values, shape {shape} needs "
                                f"{int(np.prod(shape))}")
            item[t.name] = array.reshape(shape)
        items.append(item)
    return items


def build_requests(
    info: ModelInfo,
    batch_size: int = 1,
    input_data: str = "random",
    shapes: dict[str, list[int]] | None = None,
    images: str | Path | None = None,
    seed: int = 0,
) -> list[dict[str, np.ndarray]]:
    """Distinct requests (input name -> batched array) the load generator cycles through."""
    if batch_size < 1:
        raise PerfError("--batch-size must be >= 1")
    if info.max_batch_size == 0 and batch_size != 1:
        raise PerfError(f"model {info.name!r} does not batch (max_batch_size 0); use --batch-size 1")
    if info.max_batch_size > 0 and batch_size > info.max_batch_size:
        raise PerfError(f"--batch-size {batch_size} exceeds model {info.name!r}'s max_batch_size {info.max_batch_size}")
    shapes = dict(shapes or {})
    unknown = sorted(set(shapes) - {t.name for t in info.inputs})
    if unknown:
        raise PerfError(f"--shape names unknown input(s) {unknown}; model {info.name!r} takes {[t.name for t in info.inputs]}")
    byte_inputs = [t for t in info.inputs if t.datatype == "BYTES"]
    if images is not None:
        if not byte_inputs:
            raise PerfError(f"--images needs a BYTES input; model {info.name!r} takes "
                            f"{[(t.name, t.datatype) for t in info.inputs]}")
        for t in byte_inputs:  # one encoded image per batch item
            shapes.setdefault(t.name, [1 if d < 0 else d for d in t.dims] or [1])
    dims = {t.name: _resolve_dims(t, shapes) for t in info.inputs}
    rng = np.random.default_rng(seed)

    if input_data in ("random", "zero"):
        n_items = MAX_DISTINCT_REQUESTS if input_data == "random" else 1
        items = [{t.name: _random_item(t, dims[t.name], rng, input_data == "zero") for t in info.inputs}
                 for _ in range(n_items)]
    else:
        items = _json_steps(Path(input_data), info.inputs, dims)
    if images is not None:  # every image gets sent: item k carries image k (mod the folder)
        encoded = _images(Path(images))
        items = [{**items[k % len(items)], **{t.name: np.full(dims[t.name], encoded[k % len(encoded)], dtype=np.object_)
                                              for t in byte_inputs}}
                 for k in range(max(len(items), len(encoded)))]

    requests = []
    n = max(len(items), 1)
    for r in range(max(1, min(MAX_DISTINCT_REQUESTS, n))):
        chosen = [items[(r * batch_size + j) % n] for j in range(batch_size)]
        if info.max_batch_size > 0:
            requests.append({t.name: np.stack([c[t.name] for c in chosen]) for t in info.inputs})
        else:
            requests.append(dict(chosen[0]))
    return requests
