"""Write a Triton model repository for one model, in one of two layouts (:class:`Layout`):

* ``ensemble``: ensemble NAME = NAME_preprocess -> NAME_runtime -> NAME_postprocess;
* ``fused``: one Python model NAME that decodes, preprocesses, runs the network and
  post-processes (python-onnxruntime / python-paddle), with the same inputs and outputs.

Everything is rendered and proto-validated in memory first, written into a staging
directory inside the output, and only then renamed into place, so a failure leaves the
repository as it was.
"""
from __future__ import annotations

import json
import re
import shutil
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from .. import __version__
from ..convert.runtime import RuntimeArtifact
from ..errors import EmitError
from ..intake.spec import ModelSpec
from ..measure import usable_cores
from ..processing.pipeline import PIPELINE_FILE, PipelineConfig
from ..registry import Registry
from .backends import BACKENDS, Backend, RuntimeFiles, RuntimeOptions, get_backend
from .pbtxt import NUMPY_TO_TRITON, parse_config, render_config, template_path

PROCESSING_PACKAGE = "tritongen_processing"  # the name tritongen.processing gets inside a model
BUILD_INFO_FILE = "tritongen_build.json"
WARMUP_DIR = "warmup"  # Triton reads ModelWarmup input_data_file from <model>/warmup/
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class Layout(str, Enum):
    """How the model NAME a client calls is made (see the module docstring)."""

    ENSEMBLE = "ensemble"
    FUSED = "fused"


# The layout `tritongen build` emits when none is given, for backends that can run it (the others
# get the ensemble); the one place it is decided. Measured on the demo classifier (python-onnxruntime,
# 2 cores, one run): fused (2 instances x 1 thread) answers c=1 in 5.9-6.9 ms against 6.9-8.0 ms for
# the ensemble (in-process 4.5-5.1 ms) and serves c=4 at 197-275 against 125-137 infer/s.
DEFAULT_LAYOUT = Layout.FUSED


def default_layout(backend: Backend) -> Layout:
    """DEFAULT_LAYOUT where ``backend`` runs it, else the ensemble (platform runtimes)."""
    return DEFAULT_LAYOUT if backend.runs_fused else Layout.ENSEMBLE


@dataclass
class ModelDir:
    name: str
    config_text: str
    # path in the model dir -> source file, text, or bytes
    files: dict[str, Path | str | bytes] = field(default_factory=dict)
    config: Any = None  # parsed ModelConfig
    executable: set[str] = field(default_factory=set)  # paths in the model dir written with mode 0755
    notes: list[str] = field(default_factory=list)  # what the user must know about this model
    next_command: str | None = None  # what the user runs before Triton can load it ("{repository}" = its quoted path)


@dataclass
class Repository:
    path: Path
    ensemble: str  # the model clients call (an ensemble, or the fused model)
    models: list[str]
    backend: str
    served_locally: bool
    layout: Layout = DEFAULT_LAYOUT


# ----------------------------------------------------------------------------------- layouts


class LayoutPlanner(ABC):
    """One layout: its steps (the models ``--instances`` counts), its defaults and its models."""

    layout: ClassVar[Layout]
    steps: ClassVar[tuple[str, ...]]

    def check(self, backend: Backend, backend_name: str) -> None:
        """Raise EmitError when ``backend`` cannot be served in this layout."""

    @abstractmethod
    def default_instances(self, cores: int) -> dict[str, int]:
        """Instances per step on a machine with ``cores`` cores."""

    @abstractmethod
    def default_threads(self, counts: dict[str, int], cores: int) -> int:
        """CPU threads per network instance."""

    @abstractmethod
    def models(self, plan: "_Plan") -> list[ModelDir]:
        """The model directories (configs rendered, not yet parsed), the one clients call last."""


LAYOUTS: Registry[type[LayoutPlanner]] = Registry("layout", key="layout")


def get_layout(layout: Layout | str | None = None) -> LayoutPlanner:
    """The planner of ``layout`` (None: :data:`DEFAULT_LAYOUT`); EmitError naming the layouts otherwise."""
    if layout is None:
        layout = DEFAULT_LAYOUT
    name = layout.value if isinstance(layout, Layout) else str(layout)
    return LAYOUTS.lookup(name, EmitError)()


def check_layout(layout: Layout | str | None, backend_name: str) -> Layout:
    """The layout (None: :func:`default_layout`), once it is known that ``backend_name`` can be served
    in it (build checks this first)."""
    backend = get_backend(backend_name)
    planner = get_layout(default_layout(backend) if layout is None else layout)
    planner.check(backend, backend_name)
    return planner.layout


@dataclass(frozen=True)
class InstanceCounts:
    """Model instances per step of a layout: ensemble ``preprocess`` / ``runtime`` /
    ``postprocess``, fused ``fused``.

    Defaults come from the machine that builds (``cores`` = the CPUs this process may use,
    ``os.cpu_count()`` without an affinity mask) — build on the serving machine or pass counts:

    * ensemble: preprocess = max(1, cores // 2) (decoding + resizing is the slow step),
      runtime = 1, postprocess = 1; each runtime instance gets max(1, (cores - preprocess) //
      runtime) threads (``--threads`` overrides), so the steps together fill the cores;
    * fused: fused = cores, each running the network on max(1, cores // fused) threads (1 with
      the default): every core decodes, preprocesses and runs the network of its own batch.
      (Measured on 2 shared cores, demo classifier: 2 instances x 1 thread served about twice
      the throughput of 1 x 2 threads, whose ONNX Runtime threads fought the server for the cores.)

    On 2 cores: ensemble 1/1/1 with 1 thread, fused 2 instances with 1 thread.
    """

    layout: Layout
    counts: dict[str, int]

    def __post_init__(self) -> None:
        steps = get_layout(self.layout).steps
        object.__setattr__(self, "layout", Layout(self.layout))
        for step, count in self.counts.items():
            if step not in steps:
                raise EmitError(f"--instances: unknown step {step!r} for the {self.layout.value} layout; "
                                f"its steps are {', '.join(steps)}")
            if isinstance(count, bool) or not isinstance(count, int) or count < 1:
                raise EmitError(f"--instances: {step}={count!r}; instance counts must be whole numbers >= 1")
        missing = [s for s in steps if s not in self.counts]
        if missing:
            raise EmitError(f"--instances: no count for {', '.join(missing)}")

    def __getitem__(self, step: str) -> int:
        return self.counts[step]

    @classmethod
    def default(cls, layout: Layout | str | None = None, cores: int | None = None) -> "InstanceCounts":
        planner = get_layout(layout)
        return cls(planner.layout, planner.default_instances(cores or usable_cores()))

    @classmethod
    def parse(cls, value: "InstanceCounts | int | str | None", layout: Layout | str | None = None,
              cores: int | None = None) -> "InstanceCounts":
        """``None`` (the defaults), ``2`` / ``"2"`` (every step), or ``"preprocess=2,runtime=1"``
        (the steps named; the others keep their defaults)."""
        planner = get_layout(layout)
        if isinstance(value, InstanceCounts):
            if value.layout is not planner.layout:
                raise EmitError(f"--instances: counts for the {value.layout.value} layout given to the "
                                f"{planner.layout.value} layout")
            return value
        counts = planner.default_instances(cores or usable_cores())
        if value is None or (isinstance(value, str) and not value.strip()):
            return cls(planner.layout, counts)
        if isinstance(value, int) and not isinstance(value, bool):
            return cls(planner.layout, {step: value for step in planner.steps})
        text = str(value).strip()
        usage = (f"give a number (every step) or STEP=N[,STEP=N...] with the {planner.layout.value} layout's steps "
                 f"{', '.join(planner.steps)}")
        if "=" not in text:
            return cls(planner.layout, {step: _count(text, text, usage) for step in planner.steps})
        seen: set[str] = set()
        for item in text.split(","):
            step, eq, number = (part.strip() for part in item.partition("="))
            if not eq or not step:
                raise EmitError(f"--instances {text!r}: {usage}")
            if step not in planner.steps:
                raise EmitError(f"--instances: unknown step {step!r} for the {planner.layout.value} layout; "
                                f"its steps are {', '.join(planner.steps)}")
            if step in seen:
                raise EmitError(f"--instances {text!r} names {step} twice")
            seen.add(step)
            counts[step] = _count(number, item.strip(), usage)
        return cls(planner.layout, counts)

    def default_threads(self, cores: int | None = None) -> int:
        """Threads per network instance when ``--threads`` is not given."""
        return get_layout(self.layout).default_threads(self.counts, cores or usable_cores())

    def to_dict(self) -> dict[str, int]:
        return dict(self.counts)


def _count(number: str, shown: str, usage: str) -> int:
    try:
        count = int(number)
    except ValueError:
        raise EmitError(f"--instances {shown!r}: {usage}") from None
    if count < 1:
        raise EmitError(f"--instances {shown!r}: instance counts must be whole numbers >= 1")
    return count


@dataclass
class _Plan:
    """What every layout's models are made of (computed once in :func:`plan_models`)."""

    spec: ModelSpec
    backend: Backend
    backend_name: str
    name: str
    max_batch_size: int
    instances: InstanceCounts
    options: RuntimeOptions
    runtime: RuntimeArtifact
    pipeline: PipelineConfig
    image: dict[str, Any]  # the IMAGE input tensor
    feeds: list[dict[str, Any]]  # the network's feeds
    raw_outputs: list[dict[str, Any]]  # the network's outputs
    side: list[dict[str, Any]]  # per-image tensors preprocess hands to postprocess (ORIG_SIZE)
    results: list[dict[str, Any]]  # the task's outputs

    @property
    def common(self) -> dict[str, Any]:
        """Template context shared by the Python models."""
        return {"max_batch_size": self.max_batch_size, "parameters": {}, "platform": None, "backend": "python",
                "preferred_batch_sizes": [], "max_queue_delay_us": 0, "gpu_accelerators": [], "warmup": []}

    @property
    def pipeline_files(self) -> dict[str, str]:
        return {"1/" + PIPELINE_FILE: self.pipeline.to_json()}

    def runtime_files(self, model_name: str) -> RuntimeFiles:
        self.options.model_name = model_name
        return self.backend.runtime(self.spec, self.runtime, self.options)


@LAYOUTS.register
class EnsembleLayout(LayoutPlanner):
    layout = Layout.ENSEMBLE
    steps = ("preprocess", "runtime", "postprocess")

    def default_instances(self, cores: int) -> dict[str, int]:
        return {"preprocess": max(1, cores // 2), "runtime": 1, "postprocess": 1}

    def default_threads(self, counts: dict[str, int], cores: int) -> int:
        return max(1, (cores - counts["preprocess"]) // counts["runtime"])

    def models(self, plan: _Plan) -> list[ModelDir]:
        names = {step: f"{plan.name}_{step}" for step in self.steps}
        common, image, feeds, side = plan.common, plan.image, plan.feeds, plan.side
        models = [
            ModelDir(
                names["preprocess"],
                render_config("model/config.pbtxt.j2", name=names["preprocess"], inputs=[image], outputs=feeds + side,
                              instance_count=plan.instances["preprocess"], instance_kind="KIND_CPU",
                              dynamic_batching=True, **common),
                {"1/model.py": template_path("python/preprocess.py"), **plan.pipeline_files},
            ),
        ]
        files = plan.runtime_files(names["runtime"])
        count = plan.instances["runtime"]
        warmup, warmup_files = _network_warmup(plan.spec, plan.pipeline, feeds)
        runtime_ctx = {**common, "platform": files.platform, "backend": files.backend, "parameters": files.parameters,
                       "gpu_accelerators": files.gpu_accelerators, "warmup": warmup}
        models.append(
            ModelDir(
                names["runtime"],
                render_config("model/config.pbtxt.j2", name=names["runtime"], inputs=feeds, outputs=plan.raw_outputs,
                              # Platforms: no instance_group unless asked (Triton then puts one on each GPU)
                              instance_count=count if files.instance_kind or count > 1 else 0,
                              instance_kind=files.instance_kind, dynamic_batching=True, **runtime_ctx),
                {**{f"1/{k}": v for k, v in files.files.items()}, **files.model_files, **warmup_files},
                executable={f"1/{k}" for k in files.executable},
                notes=list(files.notes),
                next_command=files.next_command,
            )
        )
        models.append(
            ModelDir(
                names["postprocess"],
                render_config("model/config.pbtxt.j2", name=names["postprocess"], inputs=plan.raw_outputs + side,
                              outputs=plan.results, instance_count=plan.instances["postprocess"],
                              instance_kind="KIND_CPU", dynamic_batching=True, **common),
                {"1/model.py": template_path("python/postprocess.py"), **plan.pipeline_files},
            )
        )
        # Ensemble-internal tensor names: what each step hands to the next.
        fed = {t["name"]: f"preprocessed/{t['name']}" for t in feeds}
        raw = {t["name"]: f"raw/{t['name']}" for t in plan.raw_outputs}
        passed = {t["name"]: f"side/{t['name']}" for t in side}
        steps = [
            {"model": names["preprocess"], "inputs": {"IMAGE": "IMAGE"}, "outputs": {**fed, **passed}},
            {"model": names["runtime"], "inputs": fed, "outputs": raw},
            {"model": names["postprocess"], "inputs": {**raw, **passed},
             "outputs": {t["name"]: t["name"] for t in plan.results}},
        ]
        models.append(
            ModelDir(
                plan.name,
                render_config("ensemble/config.pbtxt.j2", name=plan.name, max_batch_size=plan.max_batch_size,
                              inputs=[image], outputs=plan.results, steps=steps),
                {"1/.keep": ""},
            )
        )
        return models


@LAYOUTS.register
class FusedLayout(LayoutPlanner):
    layout = Layout.FUSED
    steps = ("fused",)

    def check(self, backend: Backend, backend_name: str) -> None:
        if not backend.runs_fused:
            fused = ", ".join(name for name, cls in BACKENDS.items() if cls.runs_fused)
            raise EmitError(f"--layout fused runs the network inside one Python model, which --backend {backend_name} "
                            f"cannot do; use --backend {fused.replace(', ', ' or ')}, or --layout ensemble")

    def default_instances(self, cores: int) -> dict[str, int]:
        return {"fused": cores}

    def default_threads(self, counts: dict[str, int], cores: int) -> int:
        return max(1, cores // counts["fused"])

    def models(self, plan: _Plan) -> list[ModelDir]:
        files = plan.runtime_files(plan.name)
        warmup, warmup_files = _image_warmup(plan.spec, plan.pipeline)
        config = render_config(
            "model/config.pbtxt.j2", name=plan.name, inputs=[plan.image], outputs=plan.results,
            instance_count=plan.instances["fused"], instance_kind="KIND_CPU", dynamic_batching=True,
            **{**plan.common, "parameters": files.parameters, "warmup": warmup},
        )
        return [
            ModelDir(
                plan.name, config,
                {**{f"1/{k}": v for k, v in files.files.items()}, "1/model.py": template_path("python/fused.py"),
                 **plan.pipeline_files, **files.model_files, **warmup_files},
                executable={f"1/{k}" for k in files.executable},
                notes=list(files.notes),
                next_command=files.next_command,
            )
        ]


# ----------------------------------------------------------------------------------- warmup


def _warmup_entry(inputs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One ModelWarmup (batch 1); ``inputs``: name -> {data_type, dims, file (or None: zero_data)}."""
    return {"name": "tritongen_warmup", "batch_size": 1, "inputs": inputs}


def _network_warmup(spec: ModelSpec, pipeline: PipelineConfig,
                    feeds: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, bytes]]:
    """ModelWarmup of the runtime model: one image of the network's fixed input size (zeros), its
    ``scale_factor`` 1 and ``im_shape`` that size. Nothing when a feed's shape is image-dependent."""
    if any(d < 1 for t in feeds for d in t["dims"]):
        return [], {}
    image_hw = spec.preprocessed_shape[-2:]
    inputs, files = {}, {}
    declared = {t.name: t for t in spec.inputs}
    for tensor in feeds:
        source = pipeline.feeds[tensor["name"]]
        entry = {"data_type": tensor["data_type"], "dims": tensor["dims"], "file": None}
        if source != "image":  # im_shape = (h, w) of the network input; scale_factor = 1 (no resize)
            value = image_hw if source == "im_shape" else [1] * int(np.prod(tensor["dims"]))
            data = np.asarray(value, dtype=declared[tensor["name"]].dtype).reshape(tensor["dims"])
            entry["file"] = f"{len(files)}_{source}.bin"
            files[f"{WARMUP_DIR}/{entry['file']}"] = data.tobytes()
        inputs[tensor["name"]] = entry
    return [_warmup_entry(inputs)], files


def _image_warmup(spec: ModelSpec, pipeline: PipelineConfig) -> tuple[list[dict[str, Any]], dict[str, bytes]]:
    """ModelWarmup of the fused model: one encoded grey PNG (the network's input size when it is
    fixed) through decode, preprocessing, the network and postprocessing."""
    import cv2

    shape = spec.preprocessed_shape
    h, w = (shape[-2], shape[-1]) if len(shape) >= 2 and min(shape[-2:]) > 0 else (64, 64)
    side = max(pipeline.min_image_side, 1)
    ok, png = cv2.imencode(".png", np.full((max(h, side), max(w, side), 3), 127, np.uint8))
    if not ok:
        raise EmitError("cannot encode the warmup image (OpenCV)")
    data = png.tobytes()
    # A TYPE_STRING warmup file holds Triton's serialized string tensor: 4-byte little-endian length + bytes.
    files = {f"{WARMUP_DIR}/image.bin": len(data).to_bytes(4, "little") + data}
    inputs = {"IMAGE": {"data_type": NUMPY_TO_TRITON["bytes"], "dims": [1], "file": "image.bin"}}
    return [_warmup_entry(inputs)], files


# ------------------------------------------------------------------------------------- plan


def _tensor(name: str, dtype: str, dims: list[int]) -> dict[str, Any]:
    if dtype not in NUMPY_TO_TRITON:
        raise EmitError(f"tensor {name!r} has dtype {dtype}, which Triton configs cannot express")
    return {"name": name, "data_type": NUMPY_TO_TRITON[dtype], "dims": list(dims)}


def plan_models(
    spec: ModelSpec,
    backend_name: str,
    name: str,
    runtime: RuntimeArtifact | None,
    max_batch_size: int = 8,
    instances: InstanceCounts | int | str | None = None,
    min_image_side: int | None = None,
    build_info: dict[str, Any] | None = None,
    options: RuntimeOptions | None = None,
    layout: Layout | str | None = None,
) -> list[ModelDir]:
    """The model directories of ``layout`` (None: :func:`default_layout`), rendered and
    validated, nothing written yet; the model clients call (NAME) is the last one.

    ``instances``: see :class:`InstanceCounts` (None: derived from this machine's cores)."""
    backend = get_backend(backend_name)
    planner = get_layout(default_layout(backend) if layout is None else layout)
    planner.check(backend, backend_name)
    counts = InstanceCounts.parse(instances, planner.layout)
    options = options or RuntimeOptions()
    options.max_batch_size = max_batch_size
    runtime = runtime or RuntimeArtifact(None)
    if backend.needs_onnx and runtime.onnx is None:
        raise EmitError(f"backend {backend_name} needs an ONNX model")
    if max_batch_size < 1:
        raise EmitError("max_batch_size must be >= 1")
    if options.trt_accelerator is not None and not backend.accepts_trt_accelerator:
        raise EmitError(f"the TensorRT accelerator option applies to --backend onnxruntime, not {backend_name}")
    pipeline = spec.pipeline_config(min_image_side)
    declared = {t.name: t for t in spec.inputs}
    plan = _Plan(
        spec=spec, backend=backend, backend_name=backend_name, name=name, max_batch_size=max_batch_size,
        instances=counts, options=options, runtime=runtime, pipeline=pipeline,
        image=_tensor("IMAGE", "bytes", [1]),
        feeds=[
            _tensor(feed, declared[feed].dtype,
                    spec.preprocessed_shape if source == "image" else list(declared[feed].shape[1:]))
            for feed, source in pipeline.feeds.items()
        ],
        raw_outputs=[_tensor(t.name, t.dtype, list(t.shape[1:])) for t in spec.outputs],
        side=[_tensor(s, "int32", [2]) for s in pipeline.side],  # ORIG_SIZE: (height, width)
        results=_task_outputs(spec),
    )
    models = planner.models(plan)
    info = {"tritongen_version": __version__, "backend": backend_name, "layout": planner.layout.value,
            "family": spec.family, "task": spec.task, "source": str(spec.source_dir),
            "composing_models": [m.name for m in models[:-1]], "instances": counts.to_dict(),
            "threads": options.threads, **(build_info or {})}
    models[-1].files[BUILD_INFO_FILE] = json.dumps(info, indent=2) + "\n"
    for model in models:
        model.config = parse_config(model.config_text, model.name)
        if model.config.backend == "python":  # generated Python models import only their own copy
            model.files[f"1/{PROCESSING_PACKAGE}"] = _processing_package()
    return models


def _task_outputs(spec: ModelSpec) -> list[dict[str, Any]]:
    """The ensemble's result tensors, as the task's own processing module declares them."""
    from ..processing.pipeline import task_module

    try:
        declared = task_module(spec.task).outputs(spec.pipeline_config())
    except ValueError as exc:
        raise EmitError(str(exc)) from None
    return [_tensor(name, dtype, dims) for name, dtype, dims in declared]


def _processing_package() -> Path:
    return Path(__file__).resolve().parents[1] / "processing"


def check_name(name: str) -> None:
    if not _NAME_RE.match(name):
        raise EmitError(f"model name {name!r}: use letters, digits, '_', '-', '.' (starting with a letter or digit)")


def write_repository(models: list[ModelDir], output: Path, force: bool = False) -> None:
    """Stage every model directory, then rename them into ``output``."""
    output.mkdir(parents=True, exist_ok=True)
    existing = [m.name for m in models if (output / m.name).exists()]
    if existing and not force:
        raise EmitError(f"{output} already holds {', '.join(existing)}; pass --force to replace them")
    staging = output / f".tritongen-staging-{uuid.uuid4().hex[:8]}"
    try:
        for model in models:
            root = staging / model.name
            root.mkdir(parents=True)
            (root / "config.pbtxt").write_text(model.config_text, encoding="utf-8")
            for rel, source in model.files.items():
                dest = root / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                if isinstance(source, Path):
                    if source.is_dir():
                        shutil.copytree(source, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
                    else:
                        shutil.copyfile(source, dest)
                elif isinstance(source, bytes):
                    dest.write_bytes(source)
                else:
                    dest.write_text(source, encoding="utf-8")
                if rel in model.executable:
                    dest.chmod(0o755)
        trash = staging / ".replaced"
        for stale in _stale_composing_models(models, output):  # e.g. an ensemble rebuilt as --layout fused
            trash.mkdir(exist_ok=True)
            (output / stale).rename(trash / stale)
        for model in models:
            target = output / model.name
            if target.exists():
                trash.mkdir(exist_ok=True)
                target.rename(trash / model.name)
            (staging / model.name).rename(target)
    except OSError as exc:
        raise EmitError(f"cannot write the repository at {output}: {exc}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _stale_composing_models(models: list[ModelDir], output: Path) -> list[str]:
    """Models a replaced tritongen build composed that the new build no longer has (so a rebuild
    in another layout leaves no orphaned NAME_preprocess / NAME_runtime / NAME_postprocess)."""
    new = {m.name for m in models}
    stale = []
    for model in models:
        if BUILD_INFO_FILE not in model.files:
            continue
        try:
            old = json.loads((output / model.name / BUILD_INFO_FILE).read_text(encoding="utf-8"))
            composing = [str(c) for c in old.get("composing_models", [])]
        except (OSError, ValueError, AttributeError):
            continue
        stale += [c for c in composing if c not in new and _NAME_RE.match(c) and (output / c).is_dir()]
    return stale
