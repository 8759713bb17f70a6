"""Emitted repositories: proto-valid configs, consistent ensembles, atomic writes."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from tritongen.build import build
from tritongen.emit import BACKENDS, plan_models, write_repository
from tritongen.errors import EmitError
from tritongen.intake import load_model


def read_config(path: Path) -> model_config_pb2.ModelConfig:
    config = model_config_pb2.ModelConfig()
    text_format.Parse(path.read_text(), config)
    return config


@pytest.fixture(scope="module")
def repos(clas_export, tmp_path_factory):
    out = {}
    for backend in BACKENDS:
        repo = tmp_path_factory.mktemp(f"repo-{backend}")
        build(clas_export, repo, backend=backend, name="m", max_batch_size=16, layout="ensemble")
        out[backend] = repo
    return out


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_configs_parse_and_wire_up(repos, backend):
    repo = repos[backend]
    configs = {p.parent.name: read_config(p) for p in repo.glob("*/config.pbtxt")}
    assert set(configs) == {"m", "m_preprocess", "m_runtime", "m_postprocess"}
    ensemble = configs["m"]
    assert ensemble.platform == "ensemble" and ensemble.max_batch_size == 16
    (image,) = ensemble.input
    assert (image.name, image.data_type, list(image.dims)) == ("IMAGE", model_config_pb2.TYPE_STRING, [1])
    outputs = {o.name: (o.data_type, list(o.dims)) for o in ensemble.output}
    assert outputs == {
        "LABEL_IDS": (model_config_pb2.TYPE_INT32, [3]),
        "SCORES": (model_config_pb2.TYPE_FP32, [3]),
        "LABELS": (model_config_pb2.TYPE_STRING, [3]),
    }
    # Every step maps onto real tensors of the composing model, in order.
    produced = {"IMAGE"}
    for step in ensemble.ensemble_scheduling.step:
        composing = configs[step.model_name]
        assert composing.max_batch_size == 16
        assert set(step.input_map) == {t.name for t in composing.input}
        assert set(step.input_map.values()) <= produced
        assert set(step.output_map) <= {t.name for t in composing.output}
        produced |= set(step.output_map.values())
    assert set(outputs) <= produced
    runtime = configs["m_runtime"]
    assert runtime.HasField("dynamic_batching")
    assert list(runtime.input[0].dims) == [3, 48, 64]
    if backend == "onnxruntime":
        assert runtime.platform == "onnxruntime_onnx" and (repo / "m_runtime/1/model.onnx").is_file()
        assert not runtime.instance_group  # Triton picks GPU when the container has one
    elif backend == "tensorrt":
        assert runtime.platform == "tensorrt_plan" and not runtime.instance_group
    else:
        assert runtime.backend == "python"


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_generated_models_are_self_contained(repos, backend):
    """Nothing inside a repository imports tritongen: it must run in the stock container."""
    for path in repos[backend].rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                assert not any(m == "tritongen" or m.startswith("tritongen.") for m in modules), path


def test_no_labels_means_no_labels_output(clas_export, tmp_path):
    import shutil

    export = tmp_path / "nolabels"
    shutil.copytree(clas_export, export)
    (export / "colour_labels.txt").unlink()
    build(export, tmp_path / "repo", backend="python-paddle", name="nl")
    names = {o.name for o in read_config(tmp_path / "repo/nl/config.pbtxt").output}
    assert names == {"LABEL_IDS", "SCORES"}


def test_existing_models_need_force_and_failures_leave_no_trace(clas_export, tmp_path):
    repo = tmp_path / "repo"
    build(clas_export, repo, backend="python-paddle", name="m", layout="ensemble")
    before = (repo / "m_runtime/config.pbtxt").read_text()
    with pytest.raises(EmitError, match="--force"):
        build(clas_export, repo, backend="python-paddle", name="m", max_batch_size=4, layout="ensemble")
    assert (repo / "m_runtime/config.pbtxt").read_text() == before
    build(clas_export, repo, backend="python-paddle", name="m", max_batch_size=4, force=True, layout="ensemble")
    assert read_config(repo / "m_runtime/config.pbtxt").max_batch_size == 4
    assert not list(repo.glob(".tritongen-staging-*"))
    # A failing build (unknown backend) writes nothing at all.
    with pytest.raises(EmitError, match="unknown backend"):
        build(clas_export, repo, backend="tensorflow", name="other")
    assert sorted(p.name for p in repo.iterdir()) == ["m", "m_postprocess", "m_preprocess", "m_runtime"]


@pytest.mark.parametrize("bad", ['has"quote', "has/slash", "-leading", "sp ace"])
def test_bad_model_names_are_rejected(clas_export, tmp_path, bad):
    with pytest.raises(EmitError, match="model name"):
        build(clas_export, tmp_path, backend="python-paddle", name=bad)
    assert not any(tmp_path.iterdir())


def test_plan_validates_configs_before_writing(clas_export, tmp_path):
    spec = load_model(clas_export)
    spec.outputs[0] = type(spec.outputs[0])(spec.outputs[0].name, "complex64", spec.outputs[0].shape)
    with pytest.raises(EmitError, match="complex64"):
        plan_models(spec, "python-paddle", "m", None, layout="ensemble")
    models = plan_models(load_model(clas_export), "python-paddle", "m", None, layout="ensemble")
    assert all(m.config is not None for m in models)
    write_repository(models, tmp_path / "r")
    assert (tmp_path / "r/m_preprocess/1/tritongen_processing/ops.py").is_file()
