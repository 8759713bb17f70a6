"""PaddleDetection / PaddleYOLO exports: model.pdmodel/.pdiparams + infer_cfg.yml."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from ..errors import IntakeError
from ..processing.detection import DEFAULT_MAX_DETECTIONS, DetectionSettings, NmsSettings
from ..processing.errors import OpConfigError
from ..processing.ops import Pipeline
from .families import Family, check_image_shape, find_model_files, get_key, register_family
from .program import load_program_desc, read_program
from .spec import ModelSpec, TensorSpec

FEED_SOURCES = {"image": "image", "scale_factor": "scale_factor", "im_shape": "im_shape"}
# PP-YOLOE / PP-YOLOE+ MultiClassNMS (configs/ppyoloe/_base_/ppyoloe_plus_crn.yml): used for
# exports without NMS whose infer_cfg.yml has no NMS section.
PPYOLOE_NMS = {"score_threshold": 0.01, "nms_top_k": 1000, "keep_top_k": 300, "nms_threshold": 0.7}
NMS_OP = "multiclass_nms3"
NMS_KEYS = {"name", "score_threshold", "nms_top_k", "keep_top_k", "nms_threshold", "normalized", "nms_eta",
            "background_label", "return_index", "return_rois_num"}


def nms_op_attrs(model_file: Path) -> list[dict[str, Any]]:
    """Attributes of every multiclass_nms3 op of the program."""
    program = load_program_desc(model_file)
    found = []
    for block in program.blocks:
        for op in block.ops:
            if op.type == NMS_OP:
                attrs = {}
                for a in op.attrs:
                    if a.name in ("keep_top_k", "nms_top_k", "background_label"):
                        attrs[a.name] = int(a.i)
                    elif a.name in ("score_threshold", "nms_threshold", "nms_eta"):
                        attrs[a.name] = float(a.f)
                    elif a.name == "normalized":
                        attrs[a.name] = bool(a.b)
                found.append(attrs)
    return found


@register_family
class PaddleDetection(Family):
    """PaddleDetection 2.x ``tools/export_model.py`` exports (PP-YOLOE, PaddleYOLO's YOLOv5/6/7/8...)."""

    name = "paddledetection"
    task = "detection"
    config_names = ("infer_cfg.yml", "infer_cfg.yaml")

    @classmethod
    def load(cls, directory: Path) -> ModelSpec:
        config_file, cfg = cls.read_config(directory)
        model_file, params_file = find_model_files(directory)
        program = read_program(model_file)

        ops = get_key(cfg, "Preprocess", config_file, list)
        entries = []
        for i, op in enumerate(ops):
            if not isinstance(op, dict) or not isinstance(op.get("type"), str):
                raise IntakeError(f"{config_file}: key 'Preprocess' item #{i} must be a mapping with a 'type', got {op!r}")
            params = {k: v for k, v in op.items() if k != "type"}
            entries.append({op["type"]: params})
        try:
            Pipeline.from_config(entries, cls.name)  # validate with the yaml's own numbering
            pipeline = Pipeline.from_config([{"ToRGB": None}, *entries], cls.name)
        except OpConfigError as exc:
            raise IntakeError(f"{config_file}: Preprocess: {exc}") from None

        draw_threshold = get_key(cfg, "draw_threshold", config_file, (int, float), default=0.5)
        labels = get_key(cfg, "label_list", config_file, list, default=None)
        if labels is not None:
            if not labels or not all(isinstance(x, (str, int)) and not isinstance(x, bool) for x in labels):
                raise IntakeError(f"{config_file}: key 'label_list' must be a non-empty list of names, got {labels!r}")
            labels = [str(x) for x in labels]
        if get_key(cfg, "mask", config_file, bool, default=False):
            raise IntakeError(f"{config_file}: key 'mask' is true: instance segmentation exports are not supported")

        feeds: dict[str, str] = {}
        for t in program.inputs:
            if t.name not in FEED_SOURCES:
                raise IntakeError(
                    f"{model_file}: unsupported feed {t.name!r}; PaddleDetection feeds are {sorted(FEED_SOURCES)}"
                )
            feeds[t.name] = FEED_SOURCES[t.name]
        if "image" not in feeds:
            raise IntakeError(f"{model_file}: the program has no 'image' feed (feeds: {[t.name for t in program.inputs]})")
        image = next(t for t in program.inputs if t.name == "image")
        expected = pipeline.output_shape()
        declared = list(image.shape[1:])
        check_image_shape(config_file, "Preprocess ops", model_file, image, expected)
        if any(e == -1 for e in expected) and any(d > 0 for d in declared[1:]):
            raise IntakeError(
                f"{config_file}: Preprocess produces image-dependent sizes {expected}, "
                f"but {model_file.name} input 'image' is fixed at {declared}"
            )

        outputs = list(program.outputs)
        if len(outputs) != 2:
            raise IntakeError(f"{model_file}: expected 2 fetches (boxes and box counts or scores), got {[t.name for t in outputs]}")
        if not 0.0 <= float(draw_threshold) <= 1.0:
            raise IntakeError(f"{config_file}: key 'draw_threshold' must be within [0, 1], got {draw_threshold}")
        nms_in_graph = NMS_OP in program.op_types
        if nms_in_graph:
            attrs = nms_op_attrs(model_file)
            if len(attrs) != 1:
                raise IntakeError(f"{model_file}: expected one {NMS_OP} op, found {len(attrs)}")
            rows, counts = outputs
            if len(rows.shape) != 2 or rows.shape[1] != 6 or counts.dtype != "int32":
                raise IntakeError(
                    f"{model_file}: {NMS_OP} fetches must be rows [-1, 6] and int32 counts; got "
                    f"{rows.name} {list(rows.shape)} and {counts.name} {counts.dtype} {list(counts.shape)}"
                )
            keep_top_k = int(attrs[0].get("keep_top_k", -1))
            postprocess = DetectionSettings(score_threshold=float(draw_threshold), max_detections=DEFAULT_MAX_DETECTIONS,
                                            nms_in_graph=True, keep_top_k=keep_top_k)
            # The runtime model returns batch-major tensors (see processing.detection.nms_batch_major).
            k_dim = keep_top_k if keep_top_k > 0 else -1
            outputs = [TensorSpec(rows.name, rows.dtype, (-1, k_dim, 6)), TensorSpec(counts.name, "int32", (-1, 1))]
        else:
            boxes, scores = outputs
            if len(boxes.shape) != 3 or boxes.shape[2] != 4 or len(scores.shape) != 3:
                raise IntakeError(
                    f"{model_file}: without {NMS_OP} the fetches must be boxes [N, A, 4] and scores [N, C, A]; got "
                    f"{boxes.name} {list(boxes.shape)} and {scores.name} {list(scores.shape)}"
                )
            postprocess = DetectionSettings(score_threshold=float(draw_threshold), max_detections=DEFAULT_MAX_DETECTIONS,
                                            nms=cls._nms(cfg, config_file))
            if labels is not None and scores.shape[1] > 0 and scores.shape[1] != len(labels):
                raise IntakeError(
                    f"{config_file}: key 'label_list' has {len(labels)} names but {model_file.name} scores {scores.shape[1]} classes"
                )
        return cls.make_spec(
            directory, config_file, model_file, params_file, program,
            outputs=outputs,
            preprocess=pipeline.to_config(),
            postprocess=postprocess,
            labels=labels,
            feeds=feeds,
        )

    @staticmethod
    def _nms(cfg: dict[str, Any], config_file: Path) -> NmsSettings:
        section = get_key(cfg, "NMS", config_file, dict, default={})
        unknown = sorted(set(section) - NMS_KEYS)
        if unknown:
            raise IntakeError(f"{config_file}: unsupported key 'NMS.{unknown[0]}'")
        nms = dict(PPYOLOE_NMS)
        for key, kind in (("score_threshold", (int, float)), ("nms_threshold", (int, float)), ("nms_top_k", int),
                          ("keep_top_k", int), ("background_label", int), ("normalized", bool)):
            if key in section:
                nms[key] = get_key(cfg, f"NMS.{key}", config_file, kind)
        if section.get("nms_eta", 1.0) != 1.0:
            raise IntakeError(f"{config_file}: key 'NMS.nms_eta' must be 1.0 (adaptive NMS is not supported)")
        nms.setdefault("normalized", True)  # ppdet's MultiClassNMS default; PP-YOLOE's configs keep it
        nms.setdefault("background_label", -1)
        if not 0.0 <= float(nms["nms_threshold"]) <= 1.0:
            raise IntakeError(f"{config_file}: key 'NMS.nms_threshold' must be within [0, 1], got {nms['nms_threshold']}")
        return NmsSettings.from_dict(nms)


def apply_detection_options(spec: ModelSpec, score_threshold: float | None, max_detections: int | None) -> None:
    """``--score-threshold`` / ``--max-detections`` for a detection model."""
    if not isinstance(spec.postprocess, DetectionSettings):
        raise IntakeError(f"--score-threshold / --max-detections apply to detection models, not {spec.task}")
    if score_threshold is not None:
        if isinstance(score_threshold, bool) or not 0.0 <= float(score_threshold) <= 1.0:
            raise IntakeError(f"--score-threshold must be within [0, 1], got {score_threshold!r}")
        spec.postprocess = dataclasses.replace(spec.postprocess, score_threshold=float(score_threshold))
    if max_detections is not None:
        if isinstance(max_detections, bool) or not isinstance(max_detections, int) or max_detections < 1:
            raise IntakeError(f"--max-detections must be an integer >= 1, got {max_detections!r}")
        spec.postprocess = dataclasses.replace(spec.postprocess, max_detections=max_detections)
