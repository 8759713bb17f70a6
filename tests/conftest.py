"""Shared fixtures: small real Paddle exports, real photos, a real tritonserver."""
from __future__ import annotations

import zlib  # noqa: F401  (before paddle: paddle 2.6 shadows zlib)

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
TRITONGEN = [sys.executable, "-m", "tritongen.cli"]

# A deliberately non-default PaddleClas deploy config: non-square crop given as [w, h],
# bicubic resize, string scale, custom mean/std, top-3.
NON_DEFAULT_OPS = [
    {"ResizeImage": {"resize_short": 80, "interpolation": "bicubic"}},
    {"CropImage": {"size": [64, 48]}},
    {"NormalizeImage": {"scale": "1.0/255.0", "mean": [0.5, 0.45, 0.4], "std": [0.25, 0.2, 0.22], "order": ""}},
    {"ToCHWImage": None},
]


def skimage_photo(name: str) -> np.ndarray:
    """A real photo shipped in the scikit-image wheel, as BGR."""
    import skimage.data

    path = Path(skimage.data.__file__).parent / name
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert img is not None, path
    return img


@pytest.fixture(scope="session")
def photos(tmp_path_factory) -> list[Path]:
    """Encoded real photos of several sizes and formats."""
    d = tmp_path_factory.mktemp("photos")
    specs = [
        ("astronaut.png", "astronaut.jpg", None),
        ("chelsea.png", "chelsea.png", None),
        ("coffee.png", "coffee.jpg", None),
        ("rocket.jpg", "rocket.png", (97, 233)),  # tall and odd-sized
        ("hubble_deep_field.jpg", "hubble.bmp", (300, 120)),  # wide, BMP
    ]
    paths = []
    for src, dst, size in specs:
        img = skimage_photo(src)
        if size:
            img = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
        path = d / dst
        assert cv2.imwrite(str(path), img)
        paths.append(path)
    return paths


@pytest.fixture(scope="session")
def clas_export(tmp_path_factory) -> Path:
    from tritongen.demo import make_classifier

    return make_classifier(
        tmp_path_factory.mktemp("exports") / "tiny_clas", transform_ops=NON_DEFAULT_OPS, input_hw=(48, 64), topk=3, seed=7
    )


def run_cli(*args: str, check: bool = True, timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run([*TRITONGEN, *map(str, args)], capture_output=True, text=True, timeout=timeout, **kwargs)
    if check and proc.returncode != 0:
        raise AssertionError(f"tritongen {' '.join(map(str, args))} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def free_port() -> int:
    from tritongen.serve.server import free_port as _free

    return _free()


@dataclass
class Served:
    repo: Path
    grpc_url: str
    http_url: str
    process: subprocess.Popen
    stdout_path: Path


def start_serve_cli(repo: Path, log_dir: Path, timeout: float = 300) -> Served:
    """Run `tritongen serve` in a child process and wait for its ready line."""
    grpc, http, metrics = free_port(), free_port(), free_port()
    stdout_path = log_dir / f"serve-{grpc}.out"
    with open(stdout_path, "w") as out:
        proc = subprocess.Popen(
            [*TRITONGEN, "serve", str(repo), "--grpc-port", str(grpc), "--http-port", str(http),
             "--metrics-port", str(metrics), "--log-file", str(log_dir / f"triton-{grpc}.log")],
            stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "COLUMNS": "200"},
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = stdout_path.read_text()
        if "Ctrl-C to stop" in text:
            return Served(repo, f"127.0.0.1:{grpc}", f"127.0.0.1:{http}", proc, stdout_path)
        if proc.poll() is not None:
            raise AssertionError(f"tritongen serve exited {proc.returncode}:\n{text}")
        time.sleep(0.3)
    proc.kill()
    raise AssertionError(f"tritongen serve not ready after {timeout}s:\n{stdout_path.read_text()}")


def stop_serve_cli(served: Served, timeout: float = 60, sig: int | None = None) -> int:
    import signal

    if served.process.poll() is None:
        served.process.send_signal(signal.SIGTERM if sig is None else sig)
    return served.process.wait(timeout)


@pytest.fixture(scope="session")
def served_repo(tmp_path_factory, clas_export) -> Served:
    """One repository with the same model as python-paddle (`tiny`) and python-onnxruntime
    (`tiny_ort`), built and served through the CLI exactly as a user would."""
    repo = tmp_path_factory.mktemp("repo")
    run_cli("build", clas_export, "--name", "tiny", "--backend", "python-paddle", "--output", repo)
    run_cli("build", clas_export, "--name", "tiny_ort", "--backend", "python-onnxruntime", "--output", repo)
    served = start_serve_cli(repo, tmp_path_factory.mktemp("serve-logs"))
    yield served
    stop_serve_cli(served)


def pid_children_alive(pattern: str) -> list[str]:
    out = subprocess.run(["ps", "-ww", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if pattern in line and "ps -eo" not in line]


__all__ = ["REPO_ROOT", "run_cli", "free_port", "start_serve_cli", "stop_serve_cli", "skimage_photo", "shutil"]
