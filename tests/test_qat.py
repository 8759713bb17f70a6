"""Quant-aware distillation training with PaddleSlim ACT, and ACT config validation.

Fidelity is measured two ways. Paddle Inference (plain CPU) runs the QDQ program with FP32
activations (PaddleSlim's quantize_linear ops are ``only_observer``): it checks the weights and
everything ACT trained. ONNX Runtime on the paddle2onnx export executes every QuantizeLinear /
DequantizeLinear, so it checks the activation scales too; that is where ACT's own default
distillation nodes break the model (the negative control below).
"""
from __future__ import annotations

import dataclasses
import logging
import re
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from tritongen.errors import TritongenError
from tritongen.intake import load_model
from tritongen.intake.program import load_program_desc, read_program
from tritongen.processing.runners import OnnxRuntimeRunner, PaddleInferenceRunner
from tritongen.quantize.act_config import (
    ActConfigError,
    default_qat_config,
    effective_config,
    load_act_config,
    valid_keys,
)
from tritongen.quantize.calibration import load_calibration
from tritongen.quantize.qat import LOG_FILE, QatError, quantize_qat

from .conftest import NON_DEFAULT_OPS, skimage_photo

# 16 real photos from the scikit-image wheel: colour and grey, natural and man-made.
PHOTOS = [
    "astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "hubble_deep_field.jpg", "retina.jpg",
    "motorcycle_left.png", "motorcycle_right.png", "ihc.png", "camera.png", "brick.png", "grass.png",
    "gravel.png", "moon.png", "coins.png", "page.png",
]
QAT_SECONDS = 60  # the CI budget for one QAT run on the tiny model


@pytest.fixture(scope="module")
def qat_photos(tmp_path_factory) -> Path:
    import cv2

    d = tmp_path_factory.mktemp("qat_photos")
    for name in PHOTOS:
        assert cv2.imwrite(str(d / (Path(name).stem + ".png")), skimage_photo(name))
    return d


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tritongen.demo import make_classifier

    export = make_classifier(tmp_path_factory.mktemp("qat_export") / "tiny", transform_ops=NON_DEFAULT_OPS,
                             input_hw=(48, 64), topk=3, seed=7)
    return load_model(export)


@pytest.fixture(scope="module")
def data(tiny, qat_photos):
    data = load_calibration(tiny, qat_photos, holdout_fraction=0.25)
    assert (len(data.calibration), len(data.holdout)) == (12, 4)
    return data


@pytest.fixture(scope="module")
def fp32_outputs(tiny, data):
    runner = PaddleInferenceRunner(tiny.model_file, tiny.params_file)
    return {name: runner.run({tiny.image_input.name: np.stack(s.tensors)})[tiny.outputs[0].name]
            for name, s in (("holdout", data.holdout), ("calibration", data.calibration))}


@pytest.fixture(scope="module")
def default_run(tiny, data, tmp_path_factory):
    work = tmp_path_factory.mktemp("qat_default")
    start = time.monotonic()
    effective = quantize_qat(tiny, data, work)
    return work, effective, time.monotonic() - start


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)


def onnx_runner(spec, work: Path) -> OnnxRuntimeRunner:
    """paddle2onnx of the quantized program: ONNX Runtime executes its QDQ ops for real."""
    from tritongen.convert.onnx import paddle_to_onnx

    int8 = dataclasses.replace(spec, source_dir=work, model_file=work / "inference.pdmodel",
                               params_file=work / "inference.pdiparams")
    return OnnxRuntimeRunner(paddle_to_onnx(int8, work / "int8.onnx", validate=False).path)


def holdout_cosine(runner, spec, data, fp32_outputs) -> np.ndarray:
    out = runner.run({spec.image_input.name: np.stack(data.holdout.tensors)})
    return cosine(fp32_outputs["holdout"], next(iter(out.values())))


# --------------------------------------------------------------------------- QAT itself


def test_qat_writes_a_quantized_program_in_ci_time(default_run, tiny, data):
    work, effective, seconds = default_run
    print(f"QAT (300 iterations, 12 images) took {seconds:.1f}s")
    assert seconds < QAT_SECONDS, f"QAT took {seconds:.1f}s"
    assert {"inference.pdmodel", "inference.pdiparams"} <= {p.name for p in work.iterdir()}
    assert not [p for p in work.iterdir() if p.name.startswith(".qat-")], "the staging folder is left behind"
    program = read_program(work / "inference.pdmodel")
    assert {"quantize_linear", "dequantize_linear"} <= program.op_types
    # same feeds and fetches as the FP32 model (ACT's save would rename the output)
    assert [t.name for t in program.inputs] == [t.name for t in tiny.inputs]
    assert [t.name for t in program.outputs] == [t.name for t in tiny.outputs]
    # the user's export is untouched (ACT rewrites the model file in its model_dir)
    assert not {"quantize_linear", "dequantize_linear"} & read_program(tiny.model_file).op_types
    log = (work / LOG_FILE).read_text()
    assert "Selected strategies: ['qat_dis']" in log and "Total iter: 0," in log


def test_default_effective_config(default_run, tiny, data):
    _, effective, _ = default_run
    assert set(effective) == {"Global", "QuantAware", "Distillation", "TrainConfig"}
    assert effective["QuantAware"]["onnx_format"] is True
    assert effective["QuantAware"]["weight_bits"] == effective["QuantAware"]["activation_bits"] == 8
    distill = effective["Distillation"]
    assert distill["loss"] == "l2" and distill["node"] == [t.name for t in tiny.outputs]
    assert distill["teacher_model_dir"] is None  # = the FP32 model itself
    train = effective["TrainConfig"]
    assert train["train_iter"] == 300 and train["epochs"] == 100  # 12 images / batch 4 = 3 per epoch
    assert train["learning_rate"]["type"] == "CosineAnnealingDecay" and train["learning_rate"]["T_max"] == 300
    assert effective["Global"]["model_dir"] == str(tiny.source_dir) and effective["Global"]["batch_size"] == 4
    assert set(effective["QuantAware"]) == set(valid_keys("QuantAware"))  # every key spelled out


def test_effective_config_round_trips(default_run, tmp_path):
    _, effective, _ = default_run
    path = tmp_path / "effective.yaml"
    path.write_text(yaml.safe_dump(effective, sort_keys=False))
    again = load_act_config(path)
    assert again.sections["TrainConfig"] == effective["TrainConfig"]
    assert any("Global.model_dir" in n and "ignored" in n for n in again.notes)


def test_quantized_model_follows_fp32_in_paddle_inference(default_run, tiny, data, fp32_outputs):
    work, _, _ = default_run
    runner = PaddleInferenceRunner(work / "inference.pdmodel", work / "inference.pdiparams")
    cos = holdout_cosine(runner, tiny, data, fp32_outputs)
    print(f"Paddle Inference (FP32 activations, INT8-rounded weights) held-out 1 - cosine: {1 - cos}")
    assert cos.mean() > 0.99 and cos.min() > 0.97, cos
    # oneDNN INT8 (what `tritongen quantize` measures with) loads and runs it
    int8 = PaddleInferenceRunner(work / "inference.pdmodel", work / "inference.pdiparams", int8=True)
    out = int8.run({tiny.image_input.name: np.stack(data.holdout.tensors)})[int8.output_names[0]]
    assert np.isfinite(out).all() and np.allclose(out.sum(1), 1, atol=0.05)
    print(f"Paddle Inference oneDNN INT8 held-out 1 - cosine: {1 - cosine(fp32_outputs['holdout'], out)}")


def test_quantized_model_follows_fp32_with_real_int8_activations(default_run, tiny, data, fp32_outputs):
    work, _, _ = default_run
    cos = holdout_cosine(onnx_runner(tiny, work), tiny, data, fp32_outputs)
    print(f"ONNX Runtime (QDQ executed) held-out 1 - cosine: {1 - cos}")
    assert cos.mean() > 0.95, cos


def test_acts_default_distillation_nodes_fail_the_bound(tiny, data, fp32_outputs, tmp_path, caplog):
    """Negative control: distilling only the last weighted layers (what ACT does with node: [])
    leaves the activation scales after them at 1.0; the bound above must catch that."""
    last_weighted = ["fc_0.tmp_1", "fc_1.tmp_1"]  # the tiny model's two heads, ACT's find_final_nodes
    config = {"QuantAware": {}, "Distillation": {"node": last_weighted}, "TrainConfig": {"train_iter": 60}}
    with caplog.at_level(logging.WARNING, logger="tritongen.quantize.qat"):
        quantize_qat(tiny, data, tmp_path, config=config)
    assert any("does not include the model outputs" in r.message for r in caplog.records)
    plain = holdout_cosine(PaddleInferenceRunner(tmp_path / "inference.pdmodel", tmp_path / "inference.pdiparams"),
                           tiny, data, fp32_outputs)
    real = holdout_cosine(onnx_runner(tiny, tmp_path), tiny, data, fp32_outputs)
    print(f"broken quantizer: Paddle Inference cosine {plain.mean():.4f}, ONNX Runtime cosine {real.mean():.4f}")
    assert plain.mean() > 0.99  # invisible to Paddle's own executor ...
    assert real.mean() < 0.9  # ... but not to a backend that quantizes activations


def test_yaml_keys_are_honoured(tiny, data, tmp_path):
    config_file = tmp_path / "act.yaml"
    config_file.write_text(
        "Global:\n  model_dir: ./MobileNetV1_infer   # from an ACT example: ignored, SOURCE wins\n  batch_size: 3\n"
        "QuantAware:\n  weight_bits: 4\n  onnx_format: true\n"
        "Distillation:\n  loss: l2\n"
        "TrainConfig:\n  train_iter: 5\n  logging_iter: 1\n  learning_rate: 1e-4\n"
    )
    config = load_act_config(config_file)
    assert config.sections["TrainConfig"]["learning_rate"] == 1e-4  # YAML 1.2 float, not the string '1e-4'
    assert any("Global.model_dir" in n for n in config.notes)
    work = tmp_path / "out"
    effective = quantize_qat(tiny, data, work, config=config)
    assert effective["QuantAware"]["weight_bits"] == 4 and effective["TrainConfig"]["train_iter"] == 5
    assert effective["Global"]["batch_size"] == 3 and effective["Global"]["model_dir"] == str(tiny.source_dir)
    # TrainConfig.train_iter (and logging_iter: 1) -> exactly iterations 0..4 in ACT's log
    iters = [int(m) for m in re.findall(r"Total iter: (\d+),", (work / LOG_FILE).read_text())]
    assert iters == [0, 1, 2, 3, 4]
    # QuantAware.weight_bits -> the weights' dequantize ops carry bit_length 4, activations 8
    program = load_program_desc(work / "inference.pdmodel")
    persistable = {v.name for v in program.blocks[0].vars if v.persistable}
    bits = {"weight": set(), "activation": set()}
    for op in program.blocks[0].ops:
        if op.type == "dequantize_linear":
            x = next(i.arguments[0] for i in op.inputs if i.parameter == "X")
            bit_length = next(a.i for a in op.attrs if a.name == "bit_length")
            bits["weight" if x in persistable else "activation"].add(bit_length)
    assert bits == {"weight": {4}, "activation": {8}}
    # no op writes its own input (ACT's save leaves an in-place scale x -> x before the fetch)
    for op in program.blocks[0].ops:
        ins = {a for i in op.inputs for a in i.arguments}
        assert not ins & {a for o in op.outputs for a in o.arguments} or op.type == "batch_norm", op.type


def test_train_iters_argument_overrides_the_config(tiny, data):
    effective, notes = effective_config({"TrainConfig": {"train_iter": 50}}, n_images=12, train_iters=7)
    assert effective["TrainConfig"]["train_iter"] == 7 and effective["TrainConfig"]["epochs"] == 3
    assert any("overridden" in n for n in notes)
    # epochs alone: no train_iter cap; the default schedule spans the epochs
    effective, _ = effective_config({"TrainConfig": {"epochs": 2}}, n_images=12, batch_size=4)
    assert effective["TrainConfig"]["train_iter"] is None and effective["TrainConfig"]["learning_rate"]["T_max"] == 6
    assert default_qat_config(train_iters=20)["TrainConfig"]["train_iter"] == 20


def test_act_failure_becomes_a_tritongen_error(tiny, data, tmp_path):
    # passes validation, fails inside ACT's child process: CosineAnnealingDecay needs T_max
    config = {"TrainConfig": {"train_iter": 2, "learning_rate": {"type": "CosineAnnealingDecay", "learning_rate": 0.1}}}
    with pytest.raises(QatError) as err:
        quantize_qat(tiny, data, tmp_path, config=config)
    message = str(err.value)
    assert isinstance(err.value, TritongenError)
    assert "PaddleSlim ACT failed" in message and "T_max" in message and str(tmp_path / LOG_FILE) in message
    assert not (tmp_path / "inference.pdmodel").exists()


def test_model_checks_happen_before_training(tiny, data, tmp_path):
    with pytest.raises(ActConfigError, match=r"'fc_9\.tmp_1' is not a variable of .*inference\.pdmodel"):
        quantize_qat(tiny, data, tmp_path, config={"QuantAware": {}, "Distillation": {"node": ["fc_9.tmp_1"]}})
    with pytest.raises(ActConfigError, match=r"input_list.*\['image'\].*'x'"):
        quantize_qat(tiny, data, tmp_path, config={"Global": {"input_list": ["image"]}})
    assert not (tmp_path / LOG_FILE).exists()


# --------------------------------------------------------------------------- config validation


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "act.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("section, key, a_valid_key", [
    ("Global", "data_dir", "batch_size"),
    ("QuantAware", "weight_bit", "weight_bits"),
    ("QuantPost", "algorithm", "algo"),
    ("Distillation", "losss", "loss"),
    ("TrainConfig", "train_iters", "train_iter"),
])
def test_unknown_key_in_each_section(tmp_path, section, key, a_valid_key):
    path = write(tmp_path, f"{section}:\n  {key}: 1\n")
    with pytest.raises(ActConfigError) as err:
        load_act_config(path)
    message = str(err.value)
    assert str(path) in message and f"section '{section}'" in message and f"'{key}'" in message
    assert "Valid keys:" in message and a_valid_key in message.split("Valid keys:")[1]
    if key != "data_dir":
        assert f"did you mean '{a_valid_key}'" in message


def test_valid_keys_come_from_paddleslim():
    import inspect

    from paddleslim.auto_compression import strategy_config as sc

    for section, cls in (("QuantAware", sc.QuantAware), ("Distillation", sc.Distillation), ("QuantPost", sc.QuantPost)):
        assert set(valid_keys(section)) == set(inspect.signature(cls.__init__).parameters) - {"self"}
    assert set(valid_keys("TrainConfig")) == set(inspect.signature(sc.TrainConfig.__init__).parameters) - {
        "self", "origin_metric", "target_metric", "amp_config", "recompute_config", "sharding_config"}


@pytest.mark.parametrize("text, expected", [
    ("QuantAwre:\n  weight_bits: 8\n", r"unknown section 'QuantAwre' \(did you mean 'QuantAware'\?\)\. Valid sections: Global"),
    ("ChannelPrune:\n  pruned_ratio: 0.5\n", r"unknown section 'ChannelPrune' \(an ACT strategy tritongen does not run"),
    ("- QuantAware\n", r"must be a mapping of sections"),
    ("QuantAware: 8\n", r"section 'QuantAware' must be a mapping of keys, got 8"),
    ("QuantAware:\n  weight_bits: eight\n", r"section 'QuantAware', key 'weight_bits' must be an integer, got 'eight'"),
    ("QuantAware:\n  onnx_format: 'true'\n", r"key 'onnx_format' must be a boolean, got 'true'"),
    ("QuantAware:\n  quantize_op_types: conv2d\n", r"key 'quantize_op_types' must be a list"),
    ("TrainConfig:\n  learning_rate: fast\n", r"key 'learning_rate' must be a number or mapping, got 'fast'"),
    ("TrainConfig:\n  train_iter: 0\n", r"key 'train_iter' must be at least 1"),
    ("TrainConfig:\n  origin_metric: 0.7\n", r"key 'origin_metric' is not supported by tritongen: it needs a labelled"),
    ("TrainConfig:\n  learning_rate: {type: Cosine}\n", r"'learning_rate' as a mapping needs 'type': a class of paddle.optimizer.lr"),
    ("TrainConfig:\n  optimizer_builder: {optimizer: {type: Adamm}}\n", r"naming a class of paddle.optimizer"),
    ("Global:\n  deploy_hardware: gpu\n", r"'deploy_hardware' is not supported by tritongen: .*trains on CPU"),
    ("Global:\n  input_shapes: [-1, 3, 48, 64]\n", r"'input_shapes' is not supported by tritongen: .*fixed input shape"),
    ("QuantAware:\n  dtype: uint8\n", r"key 'dtype': 'uint8' would be silently ignored"),
    ("QuantAware:\n  onnx_format: false\n", r"'onnx_format': false writes PaddleSlim's legacy fake_quantize"),
    ("QuantAware:\n  activation_quantize_type: range_abs_max\n", r"'range_abs_max' would be silently ignored"),
    ("QuantAware: {}\nQuantPost: {}\n", r"'QuantAware' and 'QuantPost' together"),
    ("QuantPost:\n  lr: 0.1\n", r"'lr' is used by ACT only with 'recon_level'"),
    ("QuantPost: {}\nTrainConfig: {}\n", r"'TrainConfig' has no effect with 'QuantPost'"),
    ("Distillation:\n  alpha: 0\n", r"'alpha' must be > 0, got 0.0 \(ACT silently replaces 0 with 1.0\)"),
    ("Distillation:\n  loss: l3\n", r"unknown loss 'l3'; ACT's pairwise losses are dkd, l2, skd, soft_label"),
    ("Distillation:\n  loss: [l2, soft_label]\n  node: [a, b]\n", r"give 'loss' and 'alpha' as lists of the same length"),
    ("Distillation:\n  teacher_model_filename: t.pdmodel\n", r"needs 'teacher_model_dir'"),
])
def test_config_errors_are_clear(tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(ActConfigError, match=expected) as err:
        load_act_config(path)
    assert str(err.value).startswith(str(path))


@pytest.mark.parametrize("text, line", [
    ("QuantAware:\n  weight_bits: 8\n  quantize_op_types: [conv2d, mul\nTrainConfig: {}\n", 4),
    ("QuantAware:\n  weight_bits: 8\n weight_bits: 4\n", 3),
    ("TrainConfig:\n  train_iter: 10\n  train_iter: 20\n", 3),
])
def test_malformed_yaml_names_file_and_line(tmp_path, text, line):
    path = write(tmp_path, text)
    with pytest.raises(ActConfigError) as err:
        load_act_config(path)
    message = str(err.value)
    assert message.startswith(f"{path}, line {line},") and "malformed YAML" in message


def test_missing_file_and_conversions(tmp_path):
    with pytest.raises(ActConfigError, match="not found"):
        load_act_config(tmp_path / "nope.yaml")
    config = load_act_config(write(tmp_path, "TrainConfig:\n  learning_rate: 1\nDistillation:\n  alpha: 2\n"
                                             "  teacher_model_dir: teacher\nQuantAware:\n"))
    # ACT tests isinstance(float): ints would crash it (learning_rate) or fail an assert (alpha)
    assert config.sections["TrainConfig"]["learning_rate"] == 1.0 and isinstance(config.sections["TrainConfig"]["learning_rate"], float)
    assert isinstance(config.sections["Distillation"]["alpha"], float)
    assert config.sections["Distillation"]["teacher_model_dir"] == str(tmp_path / "teacher")  # relative to the yaml
    assert config.sections["QuantAware"] == {}  # an empty section = ACT's defaults
    effective, notes = effective_config(load_act_config(write(tmp_path, "QuantAware:\n  weight_bits: 8\n")), 12)
    assert "Distillation" in effective and any("no Distillation section" in n for n in notes)
