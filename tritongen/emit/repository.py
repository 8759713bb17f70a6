"""Write a Triton model repository for one model, in one of two layouts (:class:`Layout`):

* ``ensemble``: ensemble NAME = NAME_preprocess -> NAME_runtime -> NAME_postprocess;
* ``fused``: one Python model NAME that decodes, preprocesses, runs the network and
  post-processes (python-onnxruntime / python-paddle), with the same inputs and outputs.

Everything is rendered and proto-validated in memory first, written into a staging
directory inside the output, and only then renamed into place, so a failure leaves the
repository as it was (a build killed while renaming: undone by the next, see :func:`write_repository`).
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import tempfile
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
from ..measure import StepCosts, usable_cores
from ..processing.pipeline import PIPELINE_FILE, PipelineConfig
from ..registry import Registry
from ..residue import owned_dir, remove_stale
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
    def default_instances(self, cores: int, costs: StepCosts | None = None) -> dict[str, int]:
        """Instances per step on a machine with ``cores`` cores (``costs``: what each step measured there)."""

    @abstractmethod
    def default_threads(self, counts: dict[str, int], cores: int, costs: StepCosts | None = None) -> int:
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

    * ensemble with ``costs`` (:class:`measure.StepCosts`, what one image costs in each step here;
      ``tritongen build`` measures them when the network runs on this CPU): the cores are split in
      proportion to the costs (:func:`split_cores`): preprocess and postprocess get round(cores x
      their share) instances, at least 1; runtime = 1 instance with the cores left over as threads;
    * ensemble without costs: preprocess = max(1, cores // 2) (decoding + resizing is the slow step),
      runtime = 1, postprocess = 1; each runtime instance gets max(1, (cores - preprocess) //
      runtime) threads. ``--threads`` overrides the threads either way, so the steps together fill the cores;
    * fused: fused = cores, each running the network on max(1, cores // fused) threads (1 with
      the default): every core decodes, preprocesses and runs the network of its own batch.
      (Measured on 2 shared cores, demo classifier: 2 instances x 1 thread served about twice
      the throughput of 1 x 2 threads, whose ONNX Runtime threads fought the server for the cores.)

    On 2 cores: ensemble 1/1/1 with 1 thread, fused 2 instances with 1 thread.
    """

    layout: Layout
    counts: dict[str, int]
    costs: StepCosts | None = None  # the measured step costs the defaults (and threads) were split by

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
    def default(cls, layout: Layout | str | None = None, cores: int | None = None,
                costs: StepCosts | None = None) -> "InstanceCounts":
        planner = get_layout(layout)
        return cls(planner.layout, planner.default_instances(cores or usable_cores(), costs), costs)

    @classmethod
    def parse(cls, value: "InstanceCounts | int | str | None", layout: Layout | str | None = None,
              cores: int | None = None, costs: StepCosts | None = None) -> "InstanceCounts":
        """``None`` (the defaults), ``2`` / ``"2"`` (every step), or ``"preprocess=2,runtime=1"``
        (the steps named; the others keep their defaults, split by ``costs`` when given)."""
        planner = get_layout(layout)
        if isinstance(value, InstanceCounts):
            if value.layout is not planner.layout:
                raise EmitError(f"--instances: counts for the {value.layout.value} layout given to the "
                                f"{planner.layout.value} layout")
            return value
        counts = planner.default_instances(cores or usable_cores(), costs)
        if value is None or (isinstance(value, str) and not value.strip()):
            return cls(planner.layout, counts, costs)
        if isinstance(value, int) and not isinstance(value, bool):
            return cls(planner.layout, {step: value for step in planner.steps}, costs)
        text = str(value).strip()
        usage = (f"give a number (every step) or STEP=N[,STEP=N...] with the {planner.layout.value} layout's steps "
                 f"{', '.join(planner.steps)}")
        if "=" not in text:
            return cls(planner.layout, {step: _count(text, text, usage) for step in planner.steps}, costs)
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
        return cls(planner.layout, counts, costs)

    def default_threads(self, cores: int | None = None) -> int:
        """Threads per network instance when ``--threads`` is not given."""
        return get_layout(self.layout).default_threads(self.counts, cores or usable_cores(), self.costs)

    def to_dict(self) -> dict[str, int]:
        return dict(self.counts)


def split_cores(cores: int, costs: StepCosts) -> dict[str, int]:
    """Ensemble instances in proportion to what one image costs in each step: preprocess and
    postprocess get round(cores x their share of the cost) (halves up), clamped to [1, cores]; the
    runtime 1 instance, whose threads take the cores left over (:func:`runtime_threads`).

    E.g. 8 cores, preprocess 1.4 ms, runtime 3.5 ms, postprocess 0.1 ms: preprocess 2, runtime 1
    with 6 threads, postprocess 1; 2 cores, 12 / 2 / 1 ms: preprocess 2, runtime 1 x 1, postprocess 1."""
    def instances(step: str) -> int:
        return min(cores, max(1, math.floor(cores * costs.share(step) + 0.5)))

    return {"preprocess": instances("preprocess"), "runtime": 1, "postprocess": instances("postprocess")}


def runtime_threads(counts: dict[str, int], cores: int, costs: StepCosts) -> int:
    """Threads per runtime instance: the cores preprocessing's instances and postprocessing's share
    of the cost leave over (an idle postprocess instance takes no core), at least 1, rounded (halves up)."""
    left = cores - counts["preprocess"] - cores * costs.share("postprocess")
    return max(1, math.floor(left / counts["runtime"] + 0.5))


def _count(number: str, shown: str, usage: str) -> int:
    try:
        count = int(number)
    except ValueError:
        raise EmitError(f"--instances {shown!r}: {usage}") from None
    if count < 1:
        raise EmitError(f"--instances {shown!r}: instance counts must be whole numbers >= 1")
    return count


# The client-facing model's config parameter saying whether one request may carry images of
# different sizes (read by tritongen.client.model.ModelInfo).
IMAGE_SIZES_PARAMETER = "tritongen_image_sizes_per_request"
IMAGE_SIZES_ANY, IMAGE_SIZES_ONE = "any", "one"


def stacks_mixed_sizes(pipeline: PipelineConfig) -> bool:
    """Whether images of different sizes can share a request: the preprocessing ends in a fixed
    size (tried on two differently shaped images) or the family pads a batch to its largest
    image. A segmenter without a resize cannot: its tensors keep each image's size."""
    import cv2

    from ..processing.errors import PreprocessError
    from ..processing.pipeline import Preprocessor

    preprocess = Preprocessor(pipeline)
    try:
        preprocess([cv2.imencode(".png", np.zeros((h, w, 3), np.uint8))[1].tobytes() for h, w in ((480, 640), (333, 250))])
    except PreprocessError:
        return False
    return True


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

    @property
    def client_parameters(self) -> dict[str, str]:
        """What the model clients call tells them in its config: whether one request may carry
        images of different sizes (the SDK groups images by size when it may not)."""
        mixed = IMAGE_SIZES_ANY if stacks_mixed_sizes(self.pipeline) else IMAGE_SIZES_ONE
        return {IMAGE_SIZES_PARAMETER: mixed}

    def runtime_files(self, model_name: str) -> RuntimeFiles:
        self.options.model_name = model_name
        return self.backend.runtime(self.spec, self.runtime, self.options)


@LAYOUTS.register
class EnsembleLayout(LayoutPlanner):
    layout = Layout.ENSEMBLE
    steps = ("preprocess", "runtime", "postprocess")

    def default_instances(self, cores: int, costs: StepCosts | None = None) -> dict[str, int]:
        if costs is not None:
            return split_cores(cores, costs)
        return {"preprocess": max(1, cores // 2), "runtime": 1, "postprocess": 1}

    def default_threads(self, counts: dict[str, int], cores: int, costs: StepCosts | None = None) -> int:
        if costs is not None:
            return runtime_threads(counts, cores, costs)
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
                              inputs=[image], outputs=plan.results, steps=steps, parameters=plan.client_parameters),
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

    def default_instances(self, cores: int, costs: StepCosts | None = None) -> dict[str, int]:
        return {"fused": cores}  # one model runs every step: step costs do not split it

    def default_threads(self, counts: dict[str, int], cores: int, costs: StepCosts | None = None) -> int:
        return max(1, cores // counts["fused"])

    def models(self, plan: _Plan) -> list[ModelDir]:
        files = plan.runtime_files(plan.name)
        warmup, warmup_files = _image_warmup(plan.spec, plan.pipeline)
        config = render_config(
            "model/config.pbtxt.j2", name=plan.name, inputs=[plan.image], outputs=plan.results,
            instance_count=plan.instances["fused"], instance_kind="KIND_CPU", dynamic_batching=True,
            **{**plan.common, "parameters": {**files.parameters, **plan.client_parameters}, "warmup": warmup},
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
    h, w = max(h, side), max(w, side)
    if h * w > pipeline.max_image_pixels:
        raise EmitError(f"--max-image-pixels {pipeline.max_image_pixels} is below the network's own input size "
                        f"({w}x{h} = {w * h} pixels); images that small could not be served")
    ok, png = cv2.imencode(".png", np.full((h, w, 3), 127, np.uint8))
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
    max_image_pixels: int | None = None,
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
    pipeline = spec.pipeline_config(min_image_side, max_image_pixels)
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


def check_name(name: str, output: Path | None = None) -> None:
    """A model name Triton and the filesystem of ``output`` (None: the current directory) take: the
    characters of :data:`_NAME_RE`, short enough for every directory name a layout derives from it
    (``NAME_postprocess``) to fit the filesystem's NAME_MAX."""
    if not _NAME_RE.match(name):
        raise EmitError(f"model name {name[:64]!r}{'...' if len(name) > 64 else ''}: use letters, digits, '_', '-', "
                        "'.' (starting with a letter or digit)")
    suffix = max(len(f"_{step}") for planner in LAYOUTS.values() for step in planner.steps)
    limit = _name_max(Path(output if output is not None else ".")) - suffix
    if len(name) > limit:
        raise EmitError(f"model name {name[:32]!r}... is {len(name)} characters: at most {limit} fit, with the "
                        f"'_postprocess'-style suffixes of the composing models, in a directory name here; "
                        "give a shorter --name")


def _nearest_existing(path: Path) -> Path:
    """``path`` or its nearest ancestor that exists (what a mkdir -p of ``path`` starts from)."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _name_max(path: Path) -> int:
    try:
        return os.pathconf(_nearest_existing(path), "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def check_output(output: Path) -> None:
    """Raise EmitError unless ``output`` can become a model repository: an existing directory or a
    path that can be made, on a filesystem where files can be written (tried: a probe file is made
    and removed in ``output`` or its nearest existing parent). Cheap: for before any conversion."""
    try:
        if output.exists() and not output.is_dir():
            raise EmitError(f"cannot write the repository at {output}: it is a file, not a directory")
        base = _nearest_existing(output)
        if not base.is_dir():
            raise EmitError(f"cannot write the repository at {output}: {base} is a file, not a directory")
    except OSError as exc:
        raise EmitError(f"cannot write the repository at {output}: {exc.strerror or exc}") from None
    try:
        fd, probe = tempfile.mkstemp(prefix=".tritongen-probe-", dir=base)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise EmitError(f"cannot write the repository at {output}: no file can be made in {base} "
                        f"({exc.strerror or exc})") from None


STAGING_PREFIX = ".tritongen-staging-"  # + owner tag (tritongen.residue): where write_repository stages
STAGING_UNNAMED_AGE = 3600  # a staging dir without an owner tag (tritongen < this version) this old is abandoned
SWAP_FILE = "swap.json"  # in a staging dir while its models are being renamed into the repository


def remove_residue(output: Path) -> list[Path]:
    """Remove the staging directories killed builds left in the repository ``output`` (their owner
    process is gone), first undoing the renames of one killed while it swapped models in; the ones removed."""
    if not output.is_dir():
        return []
    return remove_stale(output, STAGING_PREFIX, STAGING_UNNAMED_AGE, remove=lambda staging: _discard(staging, output))


def write_repository(models: list[ModelDir], output: Path, force: bool = False) -> None:
    """Stage every model directory in ``output``, then rename them into place.

    Consistency, for a build that fails or is killed at any moment: everything is written into
    ``output/.tritongen-staging-<owner>/new/`` first. Then ``swap.json`` (the renames to come) is
    written and the models are renamed into place, the composing models first and the model
    clients call (the last of ``models``) after them, each replaced model moved aside into
    ``old/`` just before its new version takes its name; composing models of a replaced build that
    the new one lacks go last (a layout change), so the old client-facing model never points at a
    model that is gone. An exception (SIGTERM through the CLI) renames everything back; a build
    killed by SIGKILL is undone by the next build's :func:`remove_residue`, which finds ``swap.json``
    in the staging of a dead owner. What the repository may hold between the two (a window of a
    few renames): the new composing models under the old client-facing model, or one model
    directory missing between its move aside and its new version's rename."""
    try:
        output.mkdir(parents=True, exist_ok=True)
        remove_residue(output)
        existing = [m.name for m in models if (output / m.name).exists()]
        if existing and not force:
            raise EmitError(f"{output} already holds {', '.join(existing)}; pass --force to replace them")
        staging = owned_dir(output, STAGING_PREFIX)
    except OSError as exc:
        raise EmitError(f"cannot write the repository at {output}: {exc}") from None
    try:
        for model in models:
            _stage(model, staging / "new" / model.name)
        (staging / "old").mkdir()
        swap = {"models": [m.name for m in models], "stale": _stale_composing_models(models, output)}
        (staging / f"{SWAP_FILE}.tmp").write_text(json.dumps(swap), encoding="utf-8")
        os.replace(staging / f"{SWAP_FILE}.tmp", staging / SWAP_FILE)  # from here on, undone unless completed
        for name in swap["models"]:
            target = output / name
            if target.exists() or target.is_symlink():
                target.rename(staging / "old" / name)
            (staging / "new" / name).rename(target)
        for name in swap["stale"]:
            (output / name).rename(staging / "old" / name)
        (staging / SWAP_FILE).unlink()  # done: the staging holds only the replaced models now
    except BaseException as exc:
        with contextlib.suppress(OSError):  # what cannot be undone now, the next build's remove_residue undoes
            _undo_swap(staging, output)
        if isinstance(exc, OSError):
            raise EmitError(f"cannot write the repository at {output}: {exc}") from None
        raise
    finally:
        if not (staging / SWAP_FILE).exists():
            shutil.rmtree(staging, ignore_errors=True)


def _stage(model: ModelDir, root: Path) -> None:
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


def _undo_swap(staging: Path, output: Path) -> None:
    """Undo the renames ``staging/swap.json`` lists, in reverse order: each model renamed into
    ``output`` goes back to ``staging/new``, each one moved aside returns. Nothing without swap.json."""
    try:
        swap = json.loads((staging / SWAP_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return
    except ValueError:  # written through a rename, so never partly; someone else's file
        swap = {}
    new, old = staging / "new", staging / "old"
    names = [str(n) for n in swap.get("models", []) if _NAME_RE.match(str(n))]
    stale = [str(n) for n in swap.get("stale", []) if _NAME_RE.match(str(n))]
    for name in reversed(stale):
        if (old / name).exists() and not (output / name).exists():
            (old / name).rename(output / name)
    for name in reversed(names):
        if not (new / name).exists() and (output / name).exists():  # renamed in: take it back out
            (output / name).rename(new / name)
        if (old / name).exists() and not (output / name).exists():
            (old / name).rename(output / name)
    (staging / SWAP_FILE).unlink()


def _discard(staging: Path, output: Path) -> None:
    """Remove a dead build's staging directory, first undoing its half-done swap."""
    _undo_swap(staging, output)
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
