"""Intake of PaddleClas exports: the valid path and every bad input, each a clear IntakeError.

Every test works on a copy of the session's real export (``clas_export``), edited on disk.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np
import pytest
import yaml

from tritongen.demo import COLOURS
from tritongen.errors import IntakeError
from tritongen.intake import ModelSpec, TensorSpec, load_model
from tritongen.intake.spec import PredictorOptions
from tritongen.processing.classification import ClassificationSettings
from tritongen.processing.ops import Pipeline

from .conftest import run_cli

YAML_NAME = "inference_cls.yaml"
OUTPUT_NAME = "save_infer_model/scale_0.tmp_0"


# ---------------------------------------------------------------- helpers


def copy_export(src: Path, tmp_path: Path, name: str = "model") -> Path:
    dst = tmp_path / name
    shutil.copytree(src, dst)
    return dst


def edit_yaml(directory: Path, mutate: Callable[[dict[str, Any]], None]) -> Path:
    path = directory / YAML_NAME
    cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
    mutate(cfg)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    return path


def transform_ops(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    return cfg["PreProcess"]["transform_ops"]


def op_params(cfg: dict[str, Any], name: str) -> dict[str, Any]:
    return next(op[name] for op in transform_ops(cfg) if name in op)


def intake_error(source: Any, *fragments: str, **kwargs: Any) -> str:
    """load_model(source) must raise IntakeError whose message holds every fragment."""
    with pytest.raises(IntakeError) as info:
        load_model(source, **kwargs)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in error message:\n{message}"
    return message


@pytest.fixture
def export(clas_export: Path, tmp_path: Path) -> Path:
    """A private, editable copy of the session export."""
    return copy_export(clas_export, tmp_path)


# ---------------------------------------------------------------- the valid export


def test_valid_export_gives_a_complete_model_spec(clas_export: Path):
    spec = load_model(clas_export)
    assert isinstance(spec, ModelSpec)
    assert (spec.family, spec.task) == ("paddleclas", "classification")
    assert spec.name == "tiny_clas"  # the directory name
    assert spec.source_dir == clas_export
    assert spec.model_file == clas_export / "inference.pdmodel"
    assert spec.params_file == clas_export / "inference.pdiparams"
    assert spec.config_file == clas_export / YAML_NAME
    assert spec.inputs == [TensorSpec("x", "float32", (-1, 3, 48, 64))]
    assert spec.outputs == [TensorSpec(OUTPUT_NAME, "float32", (-1, len(COLOURS)))]
    assert {"conv2d", "softmax", "batch_norm"} <= spec.op_types
    assert not spec.op_types & {"feed", "fetch"}
    assert spec.postprocess == ClassificationSettings(topk=3)
    assert spec.labels == list(COLOURS)
    assert spec.runtime_options == PredictorOptions(enable_mkldnn=False, threads=1)


def test_preprocess_is_the_yaml_ops_after_a_leading_torgb(clas_export: Path):
    spec = load_model(clas_export)
    assert [next(iter(op)) for op in spec.preprocess] == [
        "ToRGB", "ResizeImage", "CropImage", "NormalizeImage", "ToCHWImage"
    ]
    resize, crop, normalize = spec.preprocess[1]["ResizeImage"], spec.preprocess[2]["CropImage"], spec.preprocess[3]["NormalizeImage"]
    assert resize == {"resize_short": 80, "interpolation": "bicubic"}
    assert crop == {"size": [64, 48]}  # PaddleClas order: [w, h]
    assert normalize["scale"] == "1.0/255.0"
    assert normalize["mean"] == [0.5, 0.45, 0.4] and normalize["std"] == [0.25, 0.2, 0.22]
    assert spec.preprocessed_shape == [3, 48, 64]

    # The leading ToRGB really flips cv2's BGR: a pure-blue BGR image ends up blue in channel 2.
    bgr_blue = np.zeros((100, 120, 3), np.uint8)
    bgr_blue[:, :, 0] = 255
    tensor = Pipeline.from_config(spec.preprocess)(bgr_blue)
    assert tensor.shape == (3, 48, 64) and tensor.dtype == np.float32
    np.testing.assert_allclose(tensor[0], (0.0 - 0.5) / 0.25, rtol=1e-5)
    np.testing.assert_allclose(tensor[2], (1.0 - 0.4) / 0.22, rtol=1e-5)


def test_preprocess_runs_on_real_photos(clas_export: Path, photos: list[Path]):
    pipeline = Pipeline.from_config(load_model(clas_export).preprocess)
    for photo in photos:
        tensor = pipeline(cv2.imread(str(photo), cv2.IMREAD_COLOR))
        assert tensor.shape == (3, 48, 64), photo
        assert np.isfinite(tensor).all()


def test_name_override_and_sanitised_default_name(clas_export: Path, tmp_path: Path):
    assert load_model(clas_export, name="custom_name").name == "custom_name"
    odd = copy_export(clas_export, tmp_path, "my model.v2")
    assert load_model(str(odd)).name == "my_model_v2"


def test_model_files_named_model_or_anything_single(export: Path):
    for suffix in ("pdmodel", "pdiparams"):
        (export / f"inference.{suffix}").rename(export / f"model.{suffix}")
    spec = load_model(export)
    assert spec.model_file.name == "model.pdmodel" and spec.params_file.name == "model.pdiparams"
    for suffix in ("pdmodel", "pdiparams"):
        (export / f"model.{suffix}").rename(export / f"resnet.{suffix}")
    spec = load_model(export)
    assert spec.model_file.name == "resnet.pdmodel" and spec.params_file.name == "resnet.pdiparams"


def test_labels_found_by_basename_of_paddleclas_repo_path(export: Path):
    (export / "imagenet1k_label_list.txt").write_text("0 tench, Tinca tinca\n1 goldfish\n", encoding="utf-8")
    edit_yaml(export, lambda c: c["PostProcess"]["Topk"].update(class_id_map_file="../ppcls/utils/imagenet1k_label_list.txt"))
    assert load_model(export).labels == ["tench, Tinca tinca", "goldfish"]


def test_labels_with_a_custom_delimiter(export: Path):
    (export / "colour_labels.txt").write_text("0\tdark red\n2\tlight blue\n", encoding="utf-8")
    edit_yaml(export, lambda c: c["PostProcess"]["Topk"].update(delimiter="\t"))
    assert load_model(export).labels == ["dark red", "", "light blue"]


def test_no_labels_when_the_label_file_is_absent(export: Path):
    edit_yaml(export, lambda c: c["PostProcess"]["Topk"].update(class_id_map_file="../ppcls/utils/imagenet1k_label_list.txt"))
    spec = load_model(export)
    assert spec.labels is None
    assert any("imagenet1k_label_list.txt" in note and "--labels" in note for note in spec.notes)


def test_no_labels_and_default_topk_without_postprocess(export: Path):
    edit_yaml(export, lambda c: c.pop("PostProcess"))
    spec = load_model(export)
    assert spec.labels is None
    assert spec.postprocess == ClassificationSettings(topk=5)  # PaddleClas's default


def test_labels_override(clas_export: Path, tmp_path: Path):
    labels = tmp_path / "mine.txt"
    labels.write_text("0 cat\n2 dog\n", encoding="utf-8")
    assert load_model(clas_export, labels=labels).labels == ["cat", "", "dog"]
    assert load_model(clas_export, labels=str(labels)).labels == ["cat", "", "dog"]


def test_labels_override_that_is_missing_or_bad(clas_export: Path, tmp_path: Path):
    missing = tmp_path / "nope.txt"
    intake_error(clas_export, str(missing), "cannot read the label file", labels=missing)
    bad = tmp_path / "bad.txt"
    bad.write_text("0 cat\ndog 1\n", encoding="utf-8")
    intake_error(clas_export, f"{bad}:2", "'dog 1'", labels=bad)


# ---------------------------------------------------------------- the directory


def test_missing_directory(tmp_path: Path):
    missing = tmp_path / "does_not_exist"
    intake_error(missing, str(missing), "no such directory")
    intake_error(str(missing), str(missing), "no such directory")


def test_a_file_instead_of_a_directory(clas_export: Path):
    model_file = clas_export / "inference.pdmodel"
    intake_error(model_file, str(model_file), "expected an exported model directory, got a file")


def test_directory_without_a_deploy_yaml(export: Path):
    (export / YAML_NAME).unlink()
    intake_error(export, str(export), "no deploy config found", "inference_cls.yaml")


def test_yaml_but_no_pdmodel(export: Path):
    (export / "inference.pdmodel").unlink()
    (export / "inference.pdiparams").unlink()
    intake_error(export, str(export), "no inference.pdmodel")


def test_pdmodel_without_pdiparams(export: Path):
    (export / "inference.pdiparams").unlink()
    intake_error(export, str(export), "inference.pdmodel has no inference.pdiparams")


def test_paddle3_json_export_asks_to_reexport(export: Path):
    (export / "inference.pdmodel").unlink()
    (export / "inference.json").write_text('{"base_code": {"magic": "pir"}, "program": {}}', encoding="utf-8")
    message = intake_error(export, str(export), "json", "pdmodel")
    assert "re-export" in message


@pytest.mark.parametrize("content", ["random", "truncated", "empty"])
def test_corrupt_pdmodel(export: Path, content: str):
    model_file = export / "inference.pdmodel"
    data = {
        "random": np.random.default_rng(0).bytes(4096),
        "truncated": model_file.read_bytes()[:300],
        "empty": b"",
    }[content]
    model_file.write_bytes(data)
    message = intake_error(export, str(model_file))
    assert "not a Paddle inference program" in message or "no blocks" in message


# ---------------------------------------------------------------- the yaml


def test_malformed_yaml_names_file_and_line(export: Path):
    path = export / YAML_NAME
    path.write_text("Global:\n  batch_size: 1\n  use_gpu: false: true\nPreProcess:\n  transform_ops: []\n", encoding="utf-8")
    intake_error(export, str(path), "malformed YAML", "line 3")


def test_yaml_with_python_tags_is_not_executed(export: Path, tmp_path: Path):
    marker = tmp_path / "pwned"
    path = export / YAML_NAME
    path.write_text(f"a: !!python/object/apply:os.system ['touch {marker}']\n", encoding="utf-8")
    intake_error(export, str(path), "malformed YAML", "line 1")
    assert not marker.exists()


@pytest.mark.parametrize(
    "text, kind", [("- a\n- b\n", "list"), ("", "NoneType"), ("just a string\n", "str")]
)
def test_yaml_top_level_not_a_mapping(export: Path, text: str, kind: str):
    path = export / YAML_NAME
    path.write_text(text, encoding="utf-8")
    intake_error(export, str(path), "expected a mapping at the top level", kind)


def test_yaml_not_utf8(export: Path):
    path = export / YAML_NAME
    path.write_bytes(path.read_bytes() + b"# caf\xe9\n")
    intake_error(export, str(path), "not a UTF-8 text file")


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(lambda c: c["PreProcess"].pop("transform_ops"), id="no-transform_ops"),
        pytest.param(lambda c: c.pop("PreProcess"), id="no-PreProcess"),
    ],
)
def test_missing_transform_ops(export: Path, mutate):
    path = edit_yaml(export, mutate)
    intake_error(export, str(path), "missing key 'PreProcess.transform_ops'")


def test_transform_ops_not_a_list(export: Path):
    path = edit_yaml(export, lambda c: c["PreProcess"].update(transform_ops={"ResizeImage": {"resize_short": 80}}))
    intake_error(export, str(path), "'PreProcess.transform_ops' must be a list")


def test_unknown_op_is_named(export: Path):
    path = edit_yaml(export, lambda c: transform_ops(c).insert(0, {"RandCropImage": {"size": 224}}))
    intake_error(export, str(path), "PreProcess.transform_ops", "unsupported op 'RandCropImage'", "CropImage")


def test_op_entry_that_is_not_a_mapping(export: Path):
    path = edit_yaml(export, lambda c: transform_ops(c).insert(0, "ResizeImage"))
    intake_error(export, str(path), "PreProcess.transform_ops", "expected a mapping with one op name", "'ResizeImage'")


def test_unknown_parameter_of_a_known_op(export: Path):
    path = edit_yaml(export, lambda c: op_params(c, "NormalizeImage").update(foo=1))
    intake_error(export, str(path), "NormalizeImage", "unsupported parameter 'foo'")


@pytest.mark.parametrize(
    "op, key, value",
    [
        ("CropImage", "size", "abc"),
        ("CropImage", "size", [64, 0]),
        ("CropImage", "size", [64, 48, 3]),
        ("NormalizeImage", "std", [0.25, 0, 0.22]),
        ("NormalizeImage", "mean", [0.5, 0.5]),
        ("NormalizeImage", "mean", "abc"),
        ("NormalizeImage", "scale", "abc"),
        ("NormalizeImage", "scale", "1/0"),
        ("NormalizeImage", "scale", "2**8"),
        ("NormalizeImage", "output_fp16", True),
        ("ResizeImage", "backend", "pil"),
        ("ResizeImage", "interpolation", "foo"),
        ("ResizeImage", "resize_short", "80"),
    ],
)
def test_bad_op_values_name_op_and_key(export: Path, op: str, key: str, value: Any):
    path = edit_yaml(export, lambda c: op_params(c, op).update({key: value}))
    intake_error(export, str(path), "PreProcess.transform_ops", f"{op}: ", key)


def test_string_scale_is_rejected_not_evaluated(export: Path, tmp_path: Path):
    marker = tmp_path / "pwned"
    for scale in ["__import__('os')", f"__import__('pathlib').Path({str(marker)!r}).touch() or 1.0"]:
        path = edit_yaml(export, lambda c: op_params(c, "NormalizeImage").update(scale=scale))
        intake_error(export, str(path), "NormalizeImage", "'scale'", "arithmetic")
    assert not marker.exists()


def test_arithmetic_string_scale_is_accepted(export: Path):
    edit_yaml(export, lambda c: op_params(c, "NormalizeImage").update(scale="2.0/510.0"))
    spec = load_model(export)
    assert Pipeline.from_config(spec.preprocess).ops[3].scale == pytest.approx(1 / 255)


def test_unknown_key_under_topk(export: Path):
    path = edit_yaml(export, lambda c: c["PostProcess"]["Topk"].update(class_id_map_fle="x.txt"))
    intake_error(export, str(path), "unsupported key 'PostProcess.Topk.class_id_map_fle'")


@pytest.mark.parametrize("topk, problem", [(0, "must be >= 1"), (-2, "must be >= 1"), ("5", "must be a int")])
def test_bad_topk(export: Path, topk: Any, problem: str):
    path = edit_yaml(export, lambda c: c["PostProcess"]["Topk"].update(topk=topk))
    intake_error(export, str(path), "'PostProcess.Topk.topk'", problem)


def test_topk_that_is_not_a_mapping(export: Path):
    path = edit_yaml(export, lambda c: c["PostProcess"].update(Topk=None))
    intake_error(export, str(path), "'PostProcess.Topk' must be a dict")


@pytest.mark.parametrize(
    "key, value, problem",
    [
        ("class_id_map_file", 5, "must be a path"),
        ("delimiter", 5, "must be a non-empty string"),
        ("delimiter", "", "must be a non-empty string"),
    ],
)
def test_bad_label_settings_under_topk(export: Path, key: str, value: Any, problem: str):
    path = edit_yaml(export, lambda c: c["PostProcess"]["Topk"].update({key: value}))
    intake_error(export, str(path), f"'PostProcess.Topk.{key}'", problem)


def test_bad_global_option(export: Path):
    path = edit_yaml(export, lambda c: c["Global"].update(enable_mkldnn="yes"))
    intake_error(export, str(path), "'Global.enable_mkldnn'")


@pytest.mark.parametrize("size, produced", [(224, "[3, 224, 224]"), ([48, 64], "[3, 64, 48]")])
def test_crop_size_that_does_not_match_the_model_input(export: Path, size: Any, produced: str):
    path = edit_yaml(export, lambda c: op_params(c, "CropImage").update(size=size))
    intake_error(export, str(path), produced, "inference.pdmodel", "[3, 48, 64]")


def test_normalize_channel_num_4_does_not_match_a_3_channel_model(export: Path):
    path = edit_yaml(export, lambda c: op_params(c, "NormalizeImage").update(channel_num=4))
    intake_error(export, str(path), "[4, 48, 64]", "[3, 48, 64]")


def test_without_chw_the_layout_does_not_match(export: Path):
    path = edit_yaml(export, lambda c: transform_ops(c).pop())  # drop ToCHWImage
    intake_error(export, str(path), "[48, 64, 3]", "[3, 48, 64]")


# ---------------------------------------------------------------- label files


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("0 red\nred 1\n", "colour_labels.txt:2"),
        ("0 red\n\n1 green\nthree blue\n", "colour_labels.txt:4"),
        ("\n\n", "the label file is empty"),
        ("-1 red\n", "class ids must be >= 0"),
    ],
)
def test_bad_label_file(export: Path, text: str, fragment: str):
    (export / "colour_labels.txt").write_text(text, encoding="utf-8")
    intake_error(export, str(export / "colour_labels.txt"), fragment)


def test_label_file_not_utf8(export: Path):
    (export / "colour_labels.txt").write_bytes(b"0 caf\xe9\n")
    intake_error(export, str(export / "colour_labels.txt"), "cannot read the label file")


# ---------------------------------------------------------------- the CLI surface


def test_cli_reports_intake_errors_without_a_traceback(export: Path, tmp_path: Path):
    (export / YAML_NAME).unlink()
    out = tmp_path / "repo"
    proc = run_cli("build", export, "--output", out, check=False, timeout=120,
                   env={**os.environ, "COLUMNS": "1000"})
    assert proc.returncode == 1, proc.stderr
    assert "error:" in proc.stderr
    assert "no deploy config found" in proc.stderr and str(export) in proc.stderr
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    assert not (out / "model").exists()


# ---------------------------------------------------------------- stricter yaml typing


@pytest.mark.parametrize(
    "mutate, fragments",
    [
        (lambda c: c["PostProcess"]["Topk"].update(topk=True), ("PostProcess.Topk.topk", "int")),
        (lambda c: c.update(PostProcess=["Topk"]), ("'PostProcess' must be a mapping",)),
        (lambda c: c.update(Global=None), ("'Global' must be a mapping",)),
        (lambda c: transform_ops(c).insert(0, {"ToRGB": None}), ("ToRGB",)),
        (lambda c: op_params(c, "NormalizeImage").update(scale={"a": 1}), ("NormalizeImage", "scale")),
        (lambda c: op_params(c, "NormalizeImage").update(scale=[0.1]), ("NormalizeImage", "scale")),
    ],
    ids=["bool-topk", "postprocess-list", "global-null", "torgb-in-yaml", "scale-mapping", "scale-list"],
)
def test_wrong_types_are_errors_not_defaults(export: Path, mutate, fragments):
    edit_yaml(export, mutate)
    intake_error(export, YAML_NAME, *fragments)


def test_op_numbers_in_errors_follow_the_yaml(export: Path):
    edit_yaml(export, lambda c: transform_ops(c).insert(0, {"RandCropImage": {"size": 3}}))
    intake_error(export, "op #0", "RandCropImage")


def test_label_file_with_an_absurd_class_id(export: Path):
    (export / "colour_labels.txt").write_text("0 a\n1000000000 b\n")
    intake_error(export, "colour_labels.txt", "implausibly large")
