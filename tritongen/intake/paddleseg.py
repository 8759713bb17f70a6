"""PaddleSeg exports: model.pdmodel/.pdiparams + deploy.yaml (``tools/export.py`` of PaddleSeg 2.x).

deploy.yaml::

    Deploy:
      model: model.pdmodel
      params: model.pdiparams
      transforms:            # the val_dataset transforms, PaddleSeg's {type: Name, ...} form
      - type: Normalize
      input_shape: [null, 3, null, null]   # optional
      output_op: argmax      # optional: argmax | softmax | none
      output_dtype: int32    # optional

The deploy predictor reads with cv2 as float32, converts to RGB, runs the transforms and
transposes to CHW; the spec's preprocess is therefore
``[ToRGB, ToFloat32, *transforms, ToCHW]``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import IntakeError
from ..processing.errors import OpConfigError
from ..processing.ops import Pipeline, build_op
from ..processing.segmentation import SegmentationOutput, SegmentationSettings
from .families import Family, check_image_shape, get_key, register_family
from .program import read_program
from .spec import ModelSpec

DEPLOY_KEYS = {"model", "params", "transforms", "input_shape", "output_op", "output_dtype"}
OUTPUT_OPS = tuple(o.value for o in SegmentationOutput)  # argmax, softmax, none
INTERNAL_OPS = ("ToRGB", "ToFloat32", "ToCHW")  # what the predictor does around the transforms


@register_family
class PaddleSeg(Family):
    name = "paddleseg"
    task = "segmentation"
    config_names = ("deploy.yaml", "deploy.yml")

    @classmethod
    def load(cls, directory: Path) -> ModelSpec:
        config_file, cfg = cls.read_config(directory)
        unknown = sorted(set(cfg) - {"Deploy"})
        if unknown:
            raise IntakeError(f"{config_file}: unsupported key {unknown[0]!r} (a PaddleSeg deploy.yaml has only 'Deploy')")
        deploy = get_key(cfg, "Deploy", config_file, dict)
        unknown = sorted(set(deploy) - DEPLOY_KEYS, key=str)
        if unknown:
            raise IntakeError(f"{config_file}: unsupported key 'Deploy.{unknown[0]}' (supported: {', '.join(sorted(DEPLOY_KEYS))})")

        model_file = cls._file(directory, config_file, get_key(cfg, "Deploy.model", config_file, str), "Deploy.model")
        params_file = cls._file(directory, config_file, get_key(cfg, "Deploy.params", config_file, str), "Deploy.params")
        transforms = get_key(cfg, "Deploy.transforms", config_file, list)
        ops = [cls._op(entry, i, config_file) for i, entry in enumerate(transforms)]
        for i, op in enumerate(ops):
            try:
                build_op(op, i, cls.name)
            except OpConfigError as exc:
                raise IntakeError(f"{config_file}: Deploy.transforms[{i}]: {exc}") from None
        pipeline = Pipeline.from_config([{"ToRGB": None}, {"ToFloat32": None}, *ops, {"ToCHW": None}], cls.name)

        input_shape = get_key(cfg, "Deploy.input_shape", config_file, (list, type(None)), default=None)
        if input_shape is not None and (
            len(input_shape) != 4 or not all(v is None or (isinstance(v, int) and not isinstance(v, bool)) for v in input_shape)
        ):
            raise IntakeError(f"{config_file}: key 'Deploy.input_shape' must be [N, C, H, W] (integers or null), got {input_shape!r}")
        output_op = get_key(cfg, "Deploy.output_op", config_file, (str, type(None)), default=None)
        if output_op is not None and output_op not in OUTPUT_OPS:
            raise IntakeError(f"{config_file}: key 'Deploy.output_op' must be one of {', '.join(OUTPUT_OPS)}, got {output_op!r}")
        output_dtype = get_key(cfg, "Deploy.output_dtype", config_file, (str, type(None)), default=None)
        if output_dtype is not None and output_dtype not in ("int32", "int64", "float32", "float16"):
            raise IntakeError(f"{config_file}: key 'Deploy.output_dtype' must be int32, int64, float32 or float16, got {output_dtype!r}")

        program = read_program(model_file)
        if len(program.inputs) != 1:
            names = [t.name for t in program.inputs]
            raise IntakeError(f"{model_file}: a PaddleSeg model takes one image input, this one takes {names}")
        check_image_shape(config_file, "Deploy.transforms", model_file, program.inputs[0], pipeline.output_shape())
        out = program.outputs[0]
        rank = len(out.shape)
        if rank not in (3, 4):
            raise IntakeError(f"{model_file}: output {out.name!r} has shape {list(out.shape)}; expected [N, C, H, W] or [N, H, W]")
        if output_op is None:  # exports before PaddleSeg 2.6 carry no output_op
            output_op = "argmax" if rank == 3 else "none"
        if output_op == "argmax" and rank == 4 and out.shape[1] not in (1, -1):
            raise IntakeError(
                f"{config_file}: Deploy.output_op is 'argmax' but {model_file.name} outputs {list(out.shape)} (class scores)")
        if output_op != "argmax" and rank == 3:
            raise IntakeError(
                f"{config_file}: Deploy.output_op is {output_op!r} but {model_file.name} outputs a label map {list(out.shape)}")
        num_classes = int(out.shape[1]) if rank == 4 and output_op != "argmax" and out.shape[1] > 0 else None
        postprocess = SegmentationSettings(SegmentationOutput(output_op), num_classes)
        return cls.make_spec(
            directory, config_file, model_file, params_file, program,
            preprocess=pipeline.to_config(),
            postprocess=postprocess,
            feeds={program.inputs[0].name: "image"},
            side=["ORIG_SIZE"],
        )

    @staticmethod
    def _file(directory: Path, config_file: Path, ref: str, key: str) -> Path:
        path = directory / ref
        if not path.is_file():
            raise IntakeError(f"{config_file}: key '{key}' names {ref!r}, which is not a file in {directory}")
        return path

    @staticmethod
    def _op(entry: Any, index: int, config_file: Path) -> dict[str, Any]:
        """PaddleSeg's ``{type: Name, param: value}`` -> the ``{Name: {param: value}}`` op form."""
        where = f"{config_file}: Deploy.transforms[{index}]"
        if not isinstance(entry, dict):
            raise IntakeError(f"{where}: expected a mapping with a 'type' key, got {entry!r}")
        if "type" not in entry:
            raise IntakeError(f"{where}: missing key 'type'")
        params = {k: v for k, v in entry.items() if k != "type"}
        name = entry["type"]
        if not isinstance(name, str):
            raise IntakeError(f"{where}: key 'type' must be a transform name, got {name!r}")
        if name in INTERNAL_OPS:
            raise IntakeError(f"{where}: unsupported transform {name!r} (the predictor does this itself)")
        bad = next((k for k in params if not isinstance(k, str)), None)
        if bad is not None:
            raise IntakeError(f"{where}: unsupported key {bad!r}")
        return {name: params}
