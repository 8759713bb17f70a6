"""Layouts (`--layout ensemble|fused`), per-step instances and warm-up, on the real tritonserver.

One repository holds classification, detection (NMS in the graph and not) and segmentation
models in both layouts; the fused model NAME must answer exactly what the ensemble NAME answers
(and what `LocalPredictor` computes in-process), batched and one by one, so clients never notice.
"""
from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2
from tritonclient.utils import InferenceServerException

import tritongen  # noqa: F401
from tritongen.build import build
from tritongen.client import client_for
from tritongen.convert.runtime import RuntimeArtifact
from tritongen.emit.repository import DEFAULT_LAYOUT, InstanceCounts, Layout, plan_models
from tritongen.errors import EmitError
from tritongen.intake import load_model
from tritongen.predict import LocalPredictor
from tritongen.results import Classification, Detection, Segmentation
from tritongen.testing.demo_exports import make_detector, make_segmenter

from .conftest import run_cli, start_serve_cli, stop_serve_cli

SEG_TRANSFORMS = [{"type": "Resize", "target_size": [96, 64]},
                  {"type": "Normalize", "mean": [0.45, 0.5, 0.55], "std": [0.3, 0.25, 0.2]}]
# No fixed size: every aspect ratio gives another tensor shape (the fused model groups by shape).
SEG_VARSIZE = [{"type": "ResizeByLong", "long_size": 96}, {"type": "Normalize", "mean": [0.5], "std": [0.5]}]

# model -> (export, backend, layout); pairs "<x>_ens" / "<x>_fused" must answer alike.
MODELS = {
    "clas_ens": ("clas", "python-onnxruntime", "ensemble"),
    "clas_fused": ("clas", "python-onnxruntime", "fused"),
    "clas_fused_pd": ("clas", "python-paddle", "fused"),
    "det_ens": ("det_nms", "python-paddle", "ensemble"),
    "det_fused": ("det_nms", "python-paddle", "fused"),
    "det_fused_ort": ("det_nms", "python-onnxruntime", "fused"),  # ONNX NMS: one image per run
    "raw_ens": ("det_raw", "python-onnxruntime", "ensemble"),
    "raw_fused": ("det_raw", "python-onnxruntime", "fused"),
    "seg_ens": ("seg", "python-paddle", "ensemble"),
    "seg_fused": ("seg", "python-paddle", "fused"),
    "segvar_fused": ("seg_var", "python-paddle", "fused"),
}
PAIRS = [("clas_ens", "clas_fused"), ("clas_ens", "clas_fused_pd"), ("det_ens", "det_fused"),
         ("det_ens", "det_fused_ort"), ("raw_ens", "raw_fused"), ("seg_ens", "seg_fused")]
ENSEMBLE_OF = {fused: ensemble for ensemble, fused in PAIRS}


def read_config(path: Path) -> model_config_pb2.ModelConfig:
    config = model_config_pb2.ModelConfig()
    text_format.Parse(path.read_text(), config)
    return config


@pytest.fixture(scope="module")
def exports(clas_export, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("layout_exports")
    return {
        "clas": clas_export,
        "det_nms": make_detector(root / "det_nms", with_nms=True, seed=3),
        "det_raw": make_detector(root / "det_raw", with_nms=False, seed=4),
        "seg": make_segmenter(root / "seg", with_argmax=False, deploy_overrides={"transforms": SEG_TRANSFORMS}),
        "seg_var": make_segmenter(root / "seg_var", with_argmax=True, deploy_overrides={"transforms": SEG_VARSIZE}),
    }


@pytest.fixture(scope="module")
def served(exports, tmp_path_factory):
    repo = tmp_path_factory.mktemp("layout_repo")
    for name, (export, backend, layout) in MODELS.items():
        # One instance per step keeps the server small; segvar_fused keeps this machine's defaults.
        build(exports[export], repo, backend=backend, name=name, layout=layout, max_batch_size=8,
              instances=None if name == "segvar_fused" else 1)
    server = start_serve_cli(repo, tmp_path_factory.mktemp("layout_logs"))
    yield server
    stop_serve_cli(server)


@pytest.fixture(scope="module")
def local(exports, served):
    """In-process predictors running the same artifacts (the ONNX file the repository serves)."""
    cache: dict[str, LocalPredictor] = {}

    def get(model: str) -> LocalPredictor:
        if model not in cache:
            export, backend, _ = MODELS[model]
            spec = load_model(exports[export])
            if backend == "python-paddle":
                cache[model] = LocalPredictor(spec, "paddle")
            else:
                cache[model] = LocalPredictor(spec, "onnxruntime", onnx_path=next(served.repo.glob(f"{model}*/1/model.onnx")))
        return cache[model]

    return get


def assert_same(a, b, what: str, atol: float = 1e-5) -> None:
    """Same ids, labels and maps; scores within ``atol`` (boxes within 100x that, in pixels)."""
    assert type(a) is type(b), what
    if isinstance(a, Segmentation):
        np.testing.assert_array_equal(a.label_map, b.label_map, err_msg=what)
        return
    assert a.label_ids == b.label_ids, what
    assert a.labels == b.labels, what
    np.testing.assert_allclose(a.scores, b.scores, atol=atol, err_msg=what)
    if isinstance(a, Detection):
        np.testing.assert_allclose(np.reshape(a.boxes, (-1, 4)), np.reshape(b.boxes, (-1, 4)), atol=100 * atol,
                                   err_msg=what)


def answers(url: str, model: str, images, batched: bool) -> list:
    with client_for(model, url=url) as client:
        return client.run(images) if batched else [client.run([image])[0] for image in images]


def test_one_model_with_the_ensembles_contract(served):
    configs = {p.parent.name: read_config(p) for p in served.repo.glob("*/config.pbtxt")}
    for model, (_, backend, layout) in MODELS.items():
        info = json.loads((served.repo / model / "tritongen_build.json").read_text())
        assert info["layout"] == layout and info["backend"] == backend
        if layout == "fused":
            assert info["composing_models"] == [] and not any(f"{model}_{step}" in configs for step in ("preprocess", "runtime"))
            fused, ensemble = configs[model], configs.get(ENSEMBLE_OF.get(model, ""))
            assert fused.backend == "python" and fused.HasField("dynamic_batching")
            assert fused.model_warmup and (served.repo / model / "warmup" / "image.bin").is_file()
            if ensemble is not None:  # same inputs, outputs, max_batch_size
                for field in ("input", "output"):
                    assert [text_format.MessageToString(t) for t in getattr(fused, field)] == \
                           [text_format.MessageToString(t) for t in getattr(ensemble, field)], (model, field)
                assert fused.max_batch_size == ensemble.max_batch_size == 8
        else:
            assert configs[model].platform == "ensemble"
            for step in ("preprocess", "runtime", "postprocess"):
                assert configs[f"{model}_{step}"].HasField("dynamic_batching"), (model, step)
            runtime = configs[f"{model}_runtime"]
            (warmup,) = runtime.model_warmup  # every runtime here has fixed feed shapes
            assert set(warmup.inputs) == {t.name for t in runtime.input} and warmup.batch_size == 1
    # Detector feeds: the image is zeros, scale_factor a file of ones (Triton checks its size).
    det = configs["det_ens_runtime"].model_warmup[0].inputs
    assert det["image"].zero_data and list(det["image"].dims) == [3, 320, 320]
    scale = np.frombuffer((served.repo / "det_ens_runtime/warmup" / det["scale_factor"].input_data_file).read_bytes(),
                          np.float32)
    assert scale.tolist() == [1.0, 1.0]


@pytest.mark.parametrize("ensemble, fused", PAIRS)
def test_fused_answers_like_the_ensemble_and_in_process(served, photos, local, ensemble, fused):
    images = photos[:4] if not ensemble.startswith("clas") else photos
    ens_batch = answers(served.grpc_url, ensemble, images, batched=True)
    fused_batch = answers(served.grpc_url, fused, images, batched=True)
    fused_single = answers(served.grpc_url, fused, images, batched=False)
    ens_single = answers(served.grpc_url, ensemble, images, batched=False)
    expected = [local(fused).predict([image])[0] for image in images]
    # The same runtime answers alike to 1e-5; Paddle Inference vs ONNX Runtime within 1e-3.
    atol = 1e-5 if MODELS[ensemble][1] == MODELS[fused][1] else 1e-3
    for i, image in enumerate(images):
        what = f"{fused} {image.name}"
        assert_same(fused_batch[i], ens_batch[i], f"{what}: fused vs ensemble, batched", atol)
        assert_same(fused_single[i], ens_single[i], f"{what}: fused vs ensemble, one by one", atol)
        assert_same(ens_batch[i], ens_single[i], f"{what}: ensemble batched vs one by one")
        assert_same(fused_batch[i], fused_single[i], f"{what}: batched vs one by one")
        assert_same(fused_single[i], expected[i], f"{what}: served vs LocalPredictor")
    if isinstance(expected[0], Detection):
        assert sum(len(r.label_ids) for r in expected) > 3  # the comparison compared boxes
    if isinstance(expected[0], Classification):
        assert expected[0].labels


def test_concurrent_requests_batch_and_a_bad_image_fails_only_its_request(served, photos, local):
    """Different-shaped images queued together (segvar: one shape per aspect ratio) each get their
    own answer; a request with a bad image gets the preprocess model's error, the others don't."""
    model = "segvar_fused"
    expected = {p: local(model).predict([p])[0] for p in photos}
    bad = b"this is not an image"
    jobs = [photos[i % len(photos)] for i in range(20)] + [bad] * 4
    client = grpcclient.InferenceServerClient(served.grpc_url)
    before = client.get_inference_statistics(model).model_stats[0]

    def send(job):
        data = np.array([[job if isinstance(job, bytes) else job.read_bytes()]], dtype=np.object_)
        tensor = grpcclient.InferInput("IMAGE", [1, 1], "BYTES")
        tensor.set_data_from_numpy(data)
        try:
            result = client.infer(model, [tensor], client_timeout=60)
        except InferenceServerException as exc:
            return exc
        size = result.as_numpy("IMAGE_SIZE")[0]
        return result.as_numpy("LABEL_MAP")[0, : size[0], : size[1]]

    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(send, jobs))
    after = client.get_inference_statistics(model).model_stats[0]
    client.close()
    for job, answer in zip(jobs, got):
        if isinstance(job, bytes):
            assert isinstance(answer, InferenceServerException)
            assert answer.status() == "StatusCode.INVALID_ARGUMENT"
            assert answer.message().startswith("IMAGE: cannot decode image"), answer.message()
        else:
            assert not isinstance(answer, Exception), answer
            np.testing.assert_array_equal(answer, expected[job].label_map, err_msg=job.name)
    inferences = after.inference_count - before.inference_count
    executions = after.execution_count - before.execution_count
    assert inferences >= 20 and executions < 20  # requests were batched together (stats count some failures)


@pytest.mark.parametrize("model", ["clas_ens", "clas_fused"])
def test_bad_image_errors_match_between_layouts(served, photos, model):
    client = grpcclient.InferenceServerClient(served.grpc_url)
    data = np.array([[photos[0].read_bytes()], [b"garbage"]], dtype=np.object_)
    tensor = grpcclient.InferInput("IMAGE", list(data.shape), "BYTES")
    tensor.set_data_from_numpy(data)
    with pytest.raises(InferenceServerException) as info:
        client.infer(model, [tensor], client_timeout=30)
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "IMAGE: image 1: cannot decode image (7 bytes" in info.value.message()
    assert client.is_model_ready(model)
    client.close()


def test_instances_land_in_the_configs(clas_export, tmp_path):
    repo = tmp_path / "repo"
    run_cli("build", clas_export, "--name", "e", "--backend", "python-paddle", "--output", repo, "--layout", "ensemble",
            "--instances", "preprocess=2, postprocess=3")
    run_cli("build", clas_export, "--name", "f", "--backend", "python-paddle", "--output", repo, "--layout", "fused",
            "--instances", "fused=2", "--threads", "3")
    counts = {p.parent.name: read_config(p).instance_group[0].count for p in repo.glob("*/config.pbtxt")
              if read_config(p).instance_group}
    default = InstanceCounts.default("ensemble")
    assert counts == {"e_preprocess": 2, "e_runtime": default["runtime"], "e_postprocess": 3, "f": 2}
    info = json.loads((repo / "f/tritongen_build.json").read_text())
    assert info["instances"] == {"fused": 2} and info["threads"] == 3
    assert json.loads((repo / "f/1/runtime.json").read_text())["threads"] == 3
    # Rebuilding NAME in the other layout replaces it and removes its old composing models.
    build(clas_export, repo, backend="python-paddle", name="e", layout="fused", instances=1, force=True)
    assert sorted(p.name for p in repo.iterdir()) == ["e", "f"]


def test_instance_counts_parse_and_default():
    assert InstanceCounts.parse("2", "ensemble").counts == {"preprocess": 2, "runtime": 2, "postprocess": 2}
    assert InstanceCounts.parse(3, Layout.FUSED).counts == {"fused": 3}
    two_cores = InstanceCounts.parse(None, "ensemble", cores=2)
    assert two_cores.counts == {"preprocess": 1, "runtime": 1, "postprocess": 1} and two_cores.default_threads(2) == 1
    eight = InstanceCounts.parse("runtime=2", "ensemble", cores=8)
    assert eight.counts == {"preprocess": 4, "runtime": 2, "postprocess": 1} and eight.default_threads(8) == 2
    fused = InstanceCounts.parse(None, "fused", cores=2)
    assert fused.counts == {"fused": 2} and fused.default_threads(2) == 1
    assert InstanceCounts.parse("fused=1", "fused", cores=2).default_threads(2) == 2
    for text, message in [("fused=2", "unknown step 'fused' for the ensemble layout"), ("preprocess=0", ">= 1"),
                          ("runtime=two", "STEP=N"), ("-1", ">= 1"), ("runtime=1,runtime=2", "twice"), ("=2", "STEP=N")]:
        with pytest.raises(EmitError, match=message):
            InstanceCounts.parse(text, "ensemble")
    assert DEFAULT_LAYOUT is Layout.FUSED  # measured; platform runtimes keep the ensemble


def test_warmup_only_where_shapes_are_fixed(exports, tmp_path):
    """A runtime whose image shape depends on the image gets no warm-up (Triton needs full dims);
    platform runtimes with fixed shapes get one, and their configs parse."""
    models = plan_models(load_model(exports["seg_var"]), "python-paddle", "v", None, layout="ensemble")
    runtime = next(m for m in models if m.name == "v_runtime")
    assert not runtime.config.model_warmup and not any(k.startswith("warmup/") for k in runtime.files)
    spec = load_model(exports["clas"])
    platform = plan_models(spec, "onnxruntime", "p", RuntimeArtifact(tmp_path / "model.onnx"),
                           instances="runtime=2")
    runtime = next(m for m in platform if m.name == "p_runtime")
    assert runtime.config.model_warmup[0].inputs["x"].zero_data
    assert runtime.config.instance_group[0].count == 2 and not runtime.config.instance_group[0].kind


@pytest.mark.parametrize("args, message", [
    (["--layout", "fused", "--backend", "onnxruntime"], "--layout fused runs the network inside one Python model"),
    (["--layout", "sideways"], "unknown layout 'sideways'"),
    (["--layout", "ensemble", "--instances", "preprocess=0"], "instance counts must be whole numbers >= 1"),
    (["--layout", "ensemble", "--instances", "fused=2"], "unknown step 'fused' for the ensemble layout"),
    (["--instances", "preprocess=2"], "unknown step 'preprocess' for the fused layout"),  # the default layout
])
def test_cli_errors_are_one_line(clas_export, tmp_path, args, message):
    proc = run_cli("build", clas_export, "--output", tmp_path / "repo", *args, check=False, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], proc.stderr
    assert not (tmp_path / "repo").exists()
