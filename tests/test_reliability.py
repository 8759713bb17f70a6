"""The bad-input corpus against served models of every task, on the real tritonserver.

Bombs (tiny files declaring 30000x30000 pixels, every format OpenCV reads), truncations and odd
colour formats go to a classifier, a detector and a segmenter built as a user would; every
request is counted (sent = answered + refused, nothing lost), bad ones get INVALID_ARGUMENT,
good ones an answer, the stubs' memory does not jump and the server stays ready.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from .conftest import run_cli, start_serve_cli, stop_serve_cli
from .test_image_guard import BOMBS, VALID

MODELS = ("cls", "det", "seg")


@pytest.fixture(scope="module")
def corpus_server(tmp_path_factory, clas_export):
    from tritongen.testing.demo_exports import make_detector, make_segmenter

    root = tmp_path_factory.mktemp("reliability")
    repo = root / "repo"
    run_cli("build", clas_export, "--name", "cls", "--output", repo)
    run_cli("build", make_detector(root / "det", with_nms=True, seed=5), "--name", "det", "--backend", "python-paddle",
            "--layout", "ensemble", "--output", repo)
    run_cli("build", make_segmenter(root / "seg", with_argmax=True), "--name", "seg", "--output", repo)
    served = start_serve_cli(repo, root)
    yield served
    stop_serve_cli(served)


def infer(client, model: str, data: bytes):
    tensor = grpcclient.InferInput("IMAGE", [1, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[data]], dtype=np.object_))
    return client.infer(model, [tensor], client_timeout=120)


def stub_rss_mb(repo: Path) -> dict[str, int]:
    """Resident MB of each Python-backend stub serving a model of ``repo``."""
    rss = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            args = (proc / "cmdline").read_bytes().split(b"\0")
            if not args[0].endswith(b"triton_python_backend_stub") or str(repo).encode() not in args[1]:
                continue
            status = (proc / "status").read_text()
        except OSError:
            continue
        rss[args[-3].decode()] = int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) // 1024
    return rss


def run_corpus(served, items: dict[str, bytes]) -> dict[str, dict[str, str]]:
    """Each item to each model: model -> item -> 'ok' or the refusal's status code."""
    client = grpcclient.InferenceServerClient(served.grpc_url)
    outcome: dict[str, dict[str, str]] = {m: {} for m in MODELS}
    for model in MODELS:
        for name, data in items.items():
            try:
                infer(client, model, data)
                outcome[model][name] = "ok"
            except InferenceServerException as exc:
                outcome[model][name] = f"{exc.status()}: {exc.message()[:160]}"
    assert client.is_server_ready() and all(client.is_model_ready(m) for m in MODELS)
    return outcome


def test_bombs_are_refused_before_decoding_by_every_task(corpus_server):
    before = stub_rss_mb(corpus_server.repo)
    outcome = run_corpus(corpus_server, {name: data for name, (data, _, _) in BOMBS.items()})
    for model, answers in outcome.items():
        assert len(answers) == len(BOMBS)  # every request answered: nothing lost
        for name, answer in answers.items():
            assert answer.startswith("StatusCode.INVALID_ARGUMENT") and "pixel limit" in answer, (model, name, answer)
    after = stub_rss_mb(corpus_server.repo)
    # A decoded 30000x30000 image alone is 2.7 GB; refused from its header, a stub does not grow.
    grown = {stub: after[stub] - before.get(stub, 0) for stub in after}
    assert max(grown.values()) < 100, grown


def test_truncated_images_are_refused_and_odd_formats_answered(corpus_server):
    good = {name: make() for name, make in VALID.items()}
    cut = {f"{name} cut": data[: len(data) // 2] for name, data in good.items()}
    outcome = run_corpus(corpus_server, {**good, **cut})
    for model, answers in outcome.items():
        wrong = {name: answer for name, answer in answers.items()
                 if (answer == "ok") != (not name.endswith(" cut"))
                 or (name.endswith(" cut") and not answer.startswith("StatusCode.INVALID_ARGUMENT"))}
        assert not wrong, (model, wrong)
