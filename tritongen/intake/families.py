"""Model families (PaddleClas, PaddleDetection, PaddleSeg, ...) in one registry.

A family recognises its export directory by the deploy yaml it carries and turns that
directory into a ModelSpec. Adding a family is adding one class here.
"""
from __future__ import annotations

import re
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import yaml

from ..errors import IntakeError
from ..processing.classification import ClassificationSettings, parse_label_file
from ..processing.errors import OpConfigError
from ..processing.ops import Pipeline, pads_batch
from .program import read_program
from ..registry import Registry
from .spec import ModelSpec, PredictorOptions, TensorSpec

FAMILIES: Registry[type["Family"]] = Registry("model family")
register_family = FAMILIES.register
MAX_CLASS_ID = 1_000_000  # label lists are dense; a typo'd id must not allocate gigabytes


class Family(ABC):
    name: ClassVar[str]
    task: ClassVar[str]
    config_names: ClassVar[tuple[str, ...]]  # deploy yaml file names that identify the family

    @classmethod
    def pads_batch(cls) -> bool:
        """Whether the family's predictor batches images of different sizes (zero-padding them);
        known from its processing op module (``processing/ops_<family>.py``)."""
        return pads_batch(cls.name)

    @classmethod
    def config_file(cls, directory: Path) -> Path | None:
        return next((directory / n for n in cls.config_names if (directory / n).is_file()), None)

    @classmethod
    @abstractmethod
    def load(cls, directory: Path) -> ModelSpec:
        """Read an export directory of this family."""

    @classmethod
    def read_config(cls, directory: Path) -> tuple[Path, dict[str, Any]]:
        """The family's deploy yaml and its parsed content."""
        config_file = cls.config_file(directory)
        if config_file is None:
            raise IntakeError(f"{directory}: no {' or '.join(cls.config_names)}")
        return config_file, load_yaml(config_file)

    @classmethod
    def make_spec(cls, directory: Path, config_file: Path, model_file: Path, params_file: Path, program,
                  **fields: Any) -> ModelSpec:
        """A ModelSpec with what every family fills the same way; ``fields`` add or override."""
        common: dict[str, Any] = {
            "name": model_name_from(directory), "family": cls.name, "task": cls.task, "source_dir": directory,
            "model_file": model_file, "params_file": params_file, "config_file": config_file,
            "inputs": program.inputs, "outputs": program.outputs, "op_types": program.op_types,
        }
        return ModelSpec(**{**common, **fields})


def load_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise IntakeError(f"{path}: malformed YAML{where}: {problem}") from None
    except UnicodeDecodeError:
        raise IntakeError(f"{path}: not a UTF-8 text file") from None
    if not isinstance(data, dict):
        raise IntakeError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def get_key(data: dict[str, Any], dotted: str, path: Path, kind: type | tuple[type, ...], default: Any = ...) -> Any:
    """``data['A']['B']`` for 'A.B', with errors that name the file and the key."""
    node: Any = data
    parts = dotted.split(".")
    for depth, part in enumerate(parts):
        if not isinstance(node, dict):  # a section of the wrong type is an error, not "absent"
            section = ".".join(parts[:depth])
            raise IntakeError(f"{path}: key '{section}' must be a mapping, got {node!r}")
        if part not in node:
            if default is not ...:
                return default
            raise IntakeError(f"{path}: missing key '{dotted}'")
        node = node[part]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(node, kind) or (isinstance(node, bool) and bool not in kinds):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise IntakeError(f"{path}: key '{dotted}' must be a {names}, got {node!r}")
    return node


def check_image_shape(config_file: Path, ops_key: str, model_file: Path, tensor: TensorSpec, expected: list[int]) -> None:
    """The yaml's preprocessing must produce what the graph's image input takes (-1: either side open)."""
    declared = list(tensor.shape[1:])
    if len(declared) != len(expected) or any(d != -1 and e != -1 and d != e for d, e in zip(declared, expected)):
        raise IntakeError(
            f"{config_file}: {ops_key} produce tensors of shape {expected}, "
            f"but {model_file.name} input {tensor.name!r} has shape {declared}"
        )


MODEL_FILE_SUFFIXES = (".pdmodel", ".pdiparams", ".info")  # program, params, params info


def copy_deploy_files(source_dir: Path, dest: Path, exclude: tuple[str, ...] = ()) -> None:
    """Copy an export's deploy yaml, label files, ... (everything but the model files and
    ``exclude``) into ``dest``: a derived export travels with them (FastDeploy made users copy them)."""
    import shutil

    for item in source_dir.iterdir():
        if item.is_file() and not item.name.endswith(MODEL_FILE_SUFFIXES) and item.name not in exclude:
            shutil.copy2(item, dest / item.name)


def find_model_files(directory: Path) -> tuple[Path, Path]:
    """The ``.pdmodel``/``.pdiparams`` pair of an export (inference.* or model.*)."""
    for stem in ("inference", "model"):
        model, params = directory / f"{stem}.pdmodel", directory / f"{stem}.pdiparams"
        if model.is_file():
            if not params.is_file():
                raise IntakeError(f"{directory}: {model.name} has no {params.name} beside it")
            return model, params
    candidates = sorted(directory.glob("*.pdmodel"))
    if len(candidates) == 1 and candidates[0].with_suffix(".pdiparams").is_file():
        return candidates[0], candidates[0].with_suffix(".pdiparams")
    if any(directory.glob("*.json")) and not candidates:
        raise IntakeError(
            f"{directory}: found a Paddle 3 PIR export (*.json) but no .pdmodel; re-export with "
            "FLAGS_enable_pir_api=0 (or Paddle 2.6) to get inference.pdmodel"
        )
    raise IntakeError(f"{directory}: no inference.pdmodel / model.pdmodel with its .pdiparams found")


def model_name_from(directory: Path) -> str:
    name = re.sub(r"[^A-Za-z0-9_-]+", "_", directory.resolve().name).strip("_")
    return name or "model"


@register_family
class PaddleClas(Family):
    """PaddleClas exports: inference.pdmodel/.pdiparams + inference_cls.yaml (deploy predictor config)."""

    name = "paddleclas"
    task = "classification"
    config_names = ("inference_cls.yaml", "inference_cls.yml")

    @classmethod
    def load(cls, directory: Path) -> ModelSpec:
        config_file, cfg = cls.read_config(directory)
        model_file, params_file = find_model_files(directory)
        program = read_program(model_file)

        ops = get_key(cfg, "PreProcess.transform_ops", config_file, list)
        if any(isinstance(op, dict) and "ToRGB" in op for op in ops):
            raise IntakeError(f"{config_file}: PreProcess.transform_ops: unsupported op 'ToRGB' (the predictor converts to RGB itself)")
        try:
            Pipeline.from_config(ops)  # validate with the yaml's own op numbering
            # The deploy predictor flips cv2's BGR to RGB before the yaml ops.
            pipeline = Pipeline.from_config([{"ToRGB": None}, *ops])
        except OpConfigError as exc:
            raise IntakeError(f"{config_file}: PreProcess.transform_ops: {exc}") from None

        topk_cfg = get_key(cfg, "PostProcess.Topk", config_file, dict, default={})
        unknown = sorted(set(topk_cfg) - {"topk", "class_id_map_file", "delimiter"})
        if unknown:
            raise IntakeError(f"{config_file}: unsupported key 'PostProcess.Topk.{unknown[0]}'")
        topk = get_key(cfg, "PostProcess.Topk.topk", config_file, int, default=5)
        if topk < 1:
            raise IntakeError(f"{config_file}: key 'PostProcess.Topk.topk' must be >= 1, got {topk}")
        notes: list[str] = []
        labels = cls._labels(directory, config_file, topk_cfg, notes)

        if len(program.inputs) != 1:
            names = [t.name for t in program.inputs]
            raise IntakeError(f"{model_file}: a PaddleClas model takes one image input, this one takes {names}")
        check_image_shape(config_file, "PreProcess.transform_ops", model_file, program.inputs[0], pipeline.output_shape())
        threads = get_key(cfg, "Global.cpu_num_threads", config_file, int, default=1)
        if threads < 1:
            raise IntakeError(f"{config_file}: key 'Global.cpu_num_threads' must be >= 1, got {threads}")
        runtime_options = PredictorOptions(
            enable_mkldnn=bool(get_key(cfg, "Global.enable_mkldnn", config_file, (bool, int), default=False)),
            threads=threads,
        )
        return cls.make_spec(
            directory, config_file, model_file, params_file, program,
            preprocess=pipeline.to_config(),
            postprocess=ClassificationSettings(topk=topk),
            labels=labels,
            runtime_options=runtime_options,
            notes=notes,
        )

    @staticmethod
    def _labels(directory: Path, config_file: Path, topk_cfg: dict[str, Any], notes: list[str]) -> list[str] | None:
        ref, delimiter = topk_cfg.get("class_id_map_file"), topk_cfg.get("delimiter")
        if ref is not None and not isinstance(ref, str):
            raise IntakeError(f"{config_file}: key 'PostProcess.Topk.class_id_map_file' must be a path, got {ref!r}")
        if delimiter is not None and (not isinstance(delimiter, str) or not delimiter):
            raise IntakeError(f"{config_file}: key 'PostProcess.Topk.delimiter' must be a non-empty string, got {delimiter!r}")
        if not ref:
            return None
        # Exports usually keep PaddleClas's repo-relative path; look beside the yaml too.
        candidates = [directory / ref, directory / Path(ref).name]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            notes.append(f"label file {ref!r} named in {config_file.name} not found; results carry class ids only (pass --labels FILE)")
            return None
        return labels_from_file(path, delimiter)


def labels_from_file(path: Path, delimiter: str | None = None) -> list[str]:
    try:
        mapping = parse_label_file(path, delimiter)
    except (OSError, UnicodeDecodeError) as exc:
        raise IntakeError(f"{path}: cannot read the label file ({exc})") from None
    except ValueError as exc:
        raise IntakeError(str(exc)) from None
    if not mapping:
        raise IntakeError(f"{path}: the label file is empty")
    if min(mapping) < 0:
        raise IntakeError(f"{path}: class ids must be >= 0")
    if max(mapping) > MAX_CLASS_ID:
        raise IntakeError(f"{path}: class id {max(mapping)} is implausibly large (limit {MAX_CLASS_ID})")
    return [mapping.get(i, "") for i in range(max(mapping) + 1)]
