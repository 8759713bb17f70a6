"""Typed model knowledge: per-task postprocess settings, the task registry, family capabilities."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tritongen.intake.families import FAMILIES, Family, register_family
from tritongen.intake.spec import ModelSpec, PredictorOptions, TensorSpec
from tritongen.predict import LocalPredictor
from tritongen.processing.classification import ClassificationSettings
from tritongen.processing.detection import DetectionSettings, NmsSettings
from tritongen.processing.ops import pads_batch
from tritongen.processing.pipeline import PipelineConfig
from tritongen.processing.segmentation import SegmentationOutput, SegmentationSettings
from tritongen.results import Classification, Detection, Segmentation
from tritongen.tasks import TASKS, Task, register_task, task_named

NMS = {"score_threshold": 0.01, "nms_threshold": 0.7, "nms_top_k": 1000, "keep_top_k": 300, "normalized": True,
       "background_label": -1}
# pipeline.json "postprocess" as intake and convert.nms wrote it before the settings were typed
OLD_FORMS = {
    "topk": ("classification", {"topk": 3}),
    "nms_in_graph": ("detection", {"nms_in_graph": True, "score_threshold": 0.5, "max_detections": 100,
                                   "keep_top_k": 300}),
    "exclude_nms": ("detection", {"nms_in_graph": False, "score_threshold": 0.3, "max_detections": 7, "nms": NMS}),
    "nms_cut": ("detection", {"nms_in_graph": False, "score_threshold": 0.5, "max_detections": 100,
                              "nms": {**NMS, "normalized": False}, "nms_cut_from_graph": True}),
    "seg_logits": ("segmentation", {"output_op": "none", "num_classes": 5}),
    "seg_softmax": ("segmentation", {"output_op": "softmax"}),
    "seg_argmax": ("segmentation", {"output_op": "argmax"}),
}
FAMILY_OF = {"classification": "paddleclas", "detection": "paddledetection", "segmentation": "paddleseg"}


@pytest.mark.parametrize("form", sorted(OLD_FORMS))
def test_pipeline_json_keeps_the_old_plain_form(form, tmp_path):
    task, old = OLD_FORMS[form]
    fields = dict(task=task, family=FAMILY_OF[task], feeds={"image": "image"}, outputs=["a", "b"],
                  preprocess=[{"ToCHWImage": None}], labels=["x", "y"], side=[])
    config = PipelineConfig(**fields, postprocess=old)
    assert isinstance(config.postprocess, TASKS[task].settings)
    config.save(tmp_path / "pipeline.json")
    saved = json.loads((tmp_path / "pipeline.json").read_text(encoding="utf-8"))
    assert saved == {**fields, "postprocess": old, "min_image_side": config.min_image_side,
                     "max_image_pixels": config.max_image_pixels}
    loaded = PipelineConfig.load(tmp_path / "pipeline.json")
    assert loaded == config and type(loaded.postprocess) is type(config.postprocess)
    assert TASKS[task].settings.from_dict(old).to_dict() == old


def test_typed_fields():
    seg = SegmentationSettings.from_dict({"output_op": "none", "num_classes": 5})
    assert seg.output_op is SegmentationOutput.LOGITS and seg.num_classes == 5
    det = DetectionSettings.from_dict(OLD_FORMS["exclude_nms"][1])
    assert det.nms == NmsSettings(**NMS) and det.graph_keep_top_k == -1
    assert DetectionSettings.from_dict(OLD_FORMS["nms_in_graph"][1]).graph_keep_top_k == 300
    assert NmsSettings(**{**NMS, "nms_threshold": 1}).nms_threshold == 1.0  # ints become floats


@pytest.mark.parametrize("make, message", [
    (lambda: ClassificationSettings(topk=0), r"topk must be >= 1"),
    (lambda: ClassificationSettings(topk=True), r"topk must be an integer"),
    (lambda: ClassificationSettings.from_dict({"topk": 3, "top_k": 2}), r"unknown classification postprocess setting 'top_k'"),
    (lambda: DetectionSettings(score_threshold=1.5, nms=NmsSettings(**NMS)), r"score_threshold must be within \[0.0, 1.0\]"),
    (lambda: DetectionSettings(max_detections=0, nms=NmsSettings(**NMS)), r"max_detections must be >= 1"),
    (lambda: DetectionSettings(), r"without NMS in the graph needs nms settings"),
    (lambda: DetectionSettings(nms_in_graph=True, nms=NmsSettings(**NMS)), r"but nms_in_graph is true"),
    (lambda: DetectionSettings(keep_top_k=5, nms=NmsSettings(**NMS)), r"keep_top_k applies to NMS in the graph"),
    (lambda: DetectionSettings(nms_in_graph="yes"), r"nms_in_graph must be true or false"),
    (lambda: NmsSettings(**{**NMS, "nms_threshold": 2.0}), r"nms.nms_threshold must be within"),
    (lambda: NmsSettings(**{**NMS, "normalized": 1}), r"nms.normalized must be true or false"),
    (lambda: NmsSettings.from_dict({"score_threshold": 0.1}), r"lack keep_top_k, nms_threshold, nms_top_k"),
    (lambda: SegmentationSettings("sigmoid"), r"output_op must be one of argmax, softmax, none, got 'sigmoid'"),
    (lambda: SegmentationSettings("none", num_classes=0), r"num_classes must be >= 1"),
    (lambda: SegmentationSettings("argmax", num_classes=3), r"num_classes applies to class scores"),
    (lambda: SegmentationSettings.from_dict({}), r"lack output_op"),
    (lambda: PredictorOptions(threads=0), r"threads must be an integer >= 1"),
    (lambda: PredictorOptions(enable_mkldnn=1), r"enable_mkldnn must be true or false"),
])
def test_settings_are_validated(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_pipeline_config_wants_its_tasks_settings():
    with pytest.raises(ValueError, match="classification postprocess settings must be ClassificationSettings"):
        PipelineConfig(task="classification", feeds={"x": "image"}, outputs=["y"], preprocess=[],
                       postprocess=SegmentationSettings("argmax"))
    with pytest.raises(ValueError, match="unknown task 'ocr'"):
        PipelineConfig(task="ocr", feeds={"x": "image"}, outputs=["y"], preprocess=[])


def test_task_registry_rejects_a_second_task_of_a_name():
    with pytest.raises(ValueError, match="task 'detection' is registered twice"):
        @register_task
        class OtherDetection(Task):
            name = "detection"
    assert TASKS["detection"].__name__ == "DetectionTask"
    with pytest.raises(ValueError, match="unknown task 'ocr'"):
        task_named("ocr")


def test_family_registry_rejects_a_second_family_of_a_name():
    with pytest.raises(ValueError, match="model family 'paddleseg' is registered twice"):
        @register_family
        class OtherSeg(Family):
            name = "paddleseg"
    assert FAMILIES["paddleseg"].__name__ == "PaddleSeg"


def test_capabilities_replace_name_checks():
    assert {name: t.keeps_tail_float for name, t in TASKS.items()} == {
        "classification": False, "detection": True, "segmentation": False}
    assert {name: t.result for name, t in TASKS.items()} == {
        "classification": Classification, "detection": Detection, "segmentation": Segmentation}
    assert {name: f.pads_batch() for name, f in FAMILIES.items()} == {
        "paddleclas": False, "paddledetection": True, "paddleseg": False}
    assert pads_batch("paddledetection") and not pads_batch("paddleclas")


def _spec(task: str, postprocess) -> ModelSpec:
    return ModelSpec(name="m", family=FAMILY_OF[task], task=task, source_dir=Path("."), model_file=Path("m.pdmodel"),
                     params_file=Path("m.pdiparams"), config_file=Path("c.yml"),
                     inputs=[TensorSpec("image", "float32", (-1, 3, 8, 8))],
                     outputs=[TensorSpec("a", "float32", (-1, 6)), TensorSpec("b", "int32", (-1,))],
                     preprocess=[], postprocess=postprocess)


def test_spec_properties():
    in_graph = _spec("detection", DetectionSettings.from_dict(OLD_FORMS["nms_in_graph"][1]))
    assert in_graph.nms_in_graph and in_graph.task_kind is TASKS["detection"] and in_graph.task_kind.keeps_tail_float
    assert not _spec("detection", DetectionSettings.from_dict(OLD_FORMS["nms_cut"][1])).nms_in_graph
    classifier = _spec("classification", ClassificationSettings(3))
    assert not classifier.nms_in_graph and not classifier.task_kind.keeps_tail_float
    assert classifier.runtime_options == PredictorOptions(enable_mkldnn=False, threads=1)
    with pytest.raises(TypeError, match="detection postprocess settings must be DetectionSettings"):
        _spec("detection", ClassificationSettings(3))


OUTPUTS = {
    "classification": {"LABEL_IDS": np.array([[2, 0]], np.int32), "SCORES": np.array([[0.9, 0.1]], np.float32)},
    "detection": {"NUM_DETECTIONS": np.array([[1]], np.int32), "BOXES": np.ones((1, 2, 4), np.float32),
                  "SCORES": np.array([[0.8, 0]], np.float32), "LABEL_IDS": np.array([[1, -1]], np.int32)},
    "segmentation": {"LABEL_MAP": np.zeros((1, 4, 5), np.int32), "IMAGE_SIZE": np.array([[4, 5]], np.int32)},
}


@pytest.mark.parametrize("task, settings, result", [
    ("classification", ClassificationSettings(2), Classification),
    ("detection", DetectionSettings.from_dict(OLD_FORMS["exclude_nms"][1]), Detection),
    ("segmentation", SegmentationSettings("argmax"), Segmentation),
])
def test_predict_picks_the_tasks_result_type(task, settings, result):
    predictor = LocalPredictor.__new__(LocalPredictor)  # no model to run: the stages are stand-ins
    predictor.spec = _spec(task, settings)
    predictor.config = predictor.spec.pipeline_config()
    predictor.preprocess = lambda images: {"image": np.zeros((len(images), 3, 8, 8), np.float32)}
    predictor.runner = type("Runner", (), {"run": lambda self, feeds: {}})()
    predictor.postprocess = lambda raw, batch: OUTPUTS[task]
    (got,) = predictor.predict([b"image"])
    assert type(got) is result
