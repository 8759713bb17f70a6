"""The whole path on a real tritonserver with the real tritonclient.

The session fixture `served_repo` builds one tiny PaddleClas-style export twice through the
CLI (python-paddle as `tiny`, python-onnxruntime as `tiny_ort`) into one repository and
serves it with `tritongen serve`.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import yaml
from tritonclient.utils import InferenceServerException

from tritongen.client import ClassificationClient
from tritongen.errors import ClientError
from tritongen.processing.runners import PaddleInferenceRunner

from . import paddleclas_oracle
from .conftest import REPO_ROOT, free_port, pid_children_alive, run_cli, start_serve_cli, stop_serve_cli

MODELS = ["tiny", "tiny_ort"]


def paddleclas_reference(export, image_path):
    """What PaddleClas's deploy predictor answers: its own preprocess + Paddle Inference + Topk."""
    preprocess, postprocess = paddleclas_oracle.load()
    cfg = yaml.safe_load((export / "inference_cls.yaml").read_text())
    img = cv2.imread(str(image_path))[:, :, ::-1]
    for op in preprocess.create_operators(cfg["PreProcess"]["transform_ops"]):
        img = op(img)
    runner = PaddleInferenceRunner(export / "inference.pdmodel", export / "inference.pdiparams")
    (probs,) = runner.run({"x": img[None].astype(np.float32)}).values()
    topk_cfg = dict(cfg["PostProcess"]["Topk"])
    topk_cfg["class_id_map_file"] = str(export / topk_cfg["class_id_map_file"])
    (result,) = postprocess.Topk(**topk_cfg)(probs)
    return result, probs[0]


@pytest.fixture(scope="module")
def grpc(served_repo):
    client = grpcclient.InferenceServerClient(served_repo.grpc_url)
    yield client
    client.close()


def infer_raw(client, model, items, dtype="BYTES", shape=None):
    data = np.array([[x] for x in items], dtype=np.object_) if dtype == "BYTES" else items
    tensor = grpcclient.InferInput("IMAGE", list(shape or data.shape), dtype)
    tensor.set_data_from_numpy(data)
    return client.infer(model, [tensor], client_timeout=60)


@pytest.mark.parametrize("model", MODELS)
def test_served_answers_equal_paddleclas_deploy(served_repo, clas_export, photos, model):
    with ClassificationClient(model, url=served_repo.grpc_url) as client:
        for photo in photos:
            (served,) = client.classify([photo])
            expected, probs = paddleclas_reference(clas_export, photo)
            assert served.label_ids == expected["class_ids"], photo.name
            np.testing.assert_allclose(served.scores, probs[served.label_ids], atol=1e-3)
            assert served.labels == expected["label_names"]


@pytest.mark.parametrize("model", MODELS)
def test_batch_of_four_equals_one_by_one(served_repo, photos, model):
    with ClassificationClient(model, url=served_repo.grpc_url) as client:
        batch = client.classify(photos[:4])
        single = [client.classify([p])[0] for p in photos[:4]]
    assert len(batch) == 4
    for b, s in zip(batch, single):
        assert b.label_ids == s.label_ids
        np.testing.assert_allclose(b.scores, s.scores, atol=1e-5)


def test_concurrent_requests_are_batched_exactly(served_repo, photos):
    """Dynamic batching merges concurrent requests in the runtime model; each gets its own answer."""
    with ClassificationClient("tiny_ort", url=served_repo.grpc_url) as client:
        expected = {p: client.classify([p])[0] for p in photos}
        jobs = [photos[i % len(photos)] for i in range(24)]
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda p: (p, client.classify([p])[0]), jobs))
    for photo, answer in answers:
        assert answer.label_ids == expected[photo].label_ids
        np.testing.assert_allclose(answer.scores, expected[photo].scores, atol=1e-5)


def _png(h, w):
    return cv2.imencode(".png", np.full((h, w, 3), 127, np.uint8))[1].tobytes()


@pytest.mark.parametrize(
    "items, message",
    [
        ([b"this is not an image"], "cannot decode"),
        ([b""], "empty image"),
        ([_png(1, 1)], "1x1 pixels"),
        ([_png(64, 64), b"garbage"], "image 1"),
    ],
    ids=["non-image", "empty", "1x1", "one-bad-in-batch"],
)
@pytest.mark.parametrize("model", MODELS)
def test_bad_images_get_clear_errors_and_server_stays_ready(grpc, model, items, message):
    with pytest.raises(InferenceServerException) as info:
        infer_raw(grpc, model, items)
    assert message in info.value.message()
    assert grpc.is_server_ready() and grpc.is_model_ready(model)


@pytest.mark.parametrize(
    "kind", ["wrong-dtype", "wrong-shape", "too-large-batch"]
)
def test_malformed_tensors_are_rejected_by_triton(grpc, photos, kind):
    if kind == "wrong-dtype":
        data, dtype, message = np.zeros((1, 1), np.float32), "FP32", "data-type"
    elif kind == "wrong-shape":
        data, dtype, message = np.array([[photos[0].read_bytes()] * 2], np.object_), "BYTES", "shape"
    else:
        data, dtype, message = np.array([[photos[0].read_bytes()]] * 9, np.object_), "BYTES", "batch"
    tensor = grpcclient.InferInput("IMAGE", list(data.shape), dtype)
    tensor.set_data_from_numpy(data)
    with pytest.raises(InferenceServerException) as info:
        grpc.infer("tiny", [tensor], client_timeout=30)
    assert message in info.value.message().lower()
    assert grpc.is_server_ready()


def test_sdk_errors_are_one_exception_type(served_repo, tmp_path):
    with pytest.raises(ClientError, match="unknown model|not found"):
        ClassificationClient("no_such_model", url=served_repo.grpc_url).classify([tmp_path])
    with pytest.raises(ClientError, match="cannot read image"):
        ClassificationClient("tiny", url=served_repo.grpc_url).classify([tmp_path / "missing.jpg"])
    with pytest.raises(ClientError, match="cannot reach Triton"):
        ClassificationClient("tiny", url=f"127.0.0.1:{free_port()}", timeout=5).classify([tmp_path])


def test_infer_cli_prints_topk_with_labels(served_repo, clas_export, photos):
    proc = run_cli("infer", "tiny", photos[0], photos[1], "--url", served_repo.grpc_url, "--json")
    results = json.loads(proc.stdout)
    expected, _ = paddleclas_reference(clas_export, photos[1])
    assert [r["image"] for r in results] == [str(photos[0]), str(photos[1])]
    assert results[1]["label_ids"] == expected["class_ids"] and results[1]["labels"] == expected["label_names"]
    table = run_cli("infer", "tiny", photos[1], "--url", served_repo.grpc_url, env={"COLUMNS": "200", "PATH": ""}).stdout
    assert expected["label_names"][0] in table


def test_infer_cli_errors_are_messages_not_tracebacks(served_repo, photos, tmp_path):
    cases = [
        ("no_such_model", photos[0], served_repo.grpc_url, "error:"),
        ("tiny", tmp_path / "missing.jpg", served_repo.grpc_url, "cannot read image"),
        ("tiny", photos[0], f"127.0.0.1:{free_port()}", "cannot reach Triton"),
    ]
    for model, image, url, message in cases:
        start = time.monotonic()
        proc = run_cli("infer", model, image, "--url", url, "--timeout", "10", check=False)
        assert proc.returncode == 1
        assert message in proc.stderr and "Traceback" not in proc.stderr
        assert time.monotonic() - start < 30


def test_clients_example_script(served_repo, photos):
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "clients/classify.py"), "tiny_ort", str(photos[2]), "--url", served_repo.grpc_url],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert str(photos[2]) in proc.stdout and len(proc.stdout.splitlines()) == 4  # path + top-3


def test_serve_refuses_platforms_it_cannot_host(clas_export, tmp_path):
    repo = tmp_path / "repo"
    run_cli("build", clas_export, "--name", "ortplat", "--backend", "onnxruntime", "--output", repo)
    proc = run_cli("serve", repo, "--grpc-port", free_port(), "--http-port", free_port(), "--metrics-port", free_port(),
                   check=False, timeout=60)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "ortplat_runtime (onnxruntime_onnx)" in proc.stderr and "docker/" in proc.stderr


def test_serve_reports_port_in_use(served_repo):
    busy = served_repo.grpc_url.rsplit(":", 1)[1]
    proc = run_cli("serve", served_repo.repo, "--grpc-port", busy, "--http-port", free_port(),
                   "--metrics-port", free_port(), check=False, timeout=60)
    assert proc.returncode == 1 and "already in use" in proc.stderr


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])  # SIGINT is what Ctrl-C sends
def test_signal_stops_server_and_its_stubs(clas_export, tmp_path, sig):
    import signal

    repo = tmp_path / "repo"
    run_cli("build", clas_export, "--name", "stopme", "--backend", "python-onnxruntime", "--layout", "ensemble", "--output", repo)
    served = start_serve_cli(repo, tmp_path)
    try:
        assert pid_children_alive(str(repo / "stopme_runtime"))  # its stub runs
    finally:
        code = stop_serve_cli(served, sig=getattr(signal, sig))
    assert code == 0
    assert "tritonserver stopped" in served.stdout_path.read_text()
    deadline = time.monotonic() + 10
    while pid_children_alive(str(repo)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not pid_children_alive(str(repo)), "orphaned tritonserver / stub processes"


def test_serve_names_the_model_that_fails_to_load(clas_export, tmp_path):
    repo = tmp_path / "repo"
    run_cli("build", clas_export, "--name", "broken", "--backend", "python-onnxruntime", "--layout", "ensemble", "--output", repo)
    (repo / "broken_runtime/1/model.onnx").write_bytes(b"not an onnx model")
    start = time.monotonic()
    proc = run_cli("serve", repo, "--grpc-port", free_port(), "--http-port", free_port(), "--metrics-port", free_port(),
                   check=False, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "broken_runtime" in proc.stderr and "full log" in proc.stderr
    assert time.monotonic() - start < 90
    assert not pid_children_alive(str(repo))
