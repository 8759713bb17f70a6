"""A wheel built from the checkout, installed outside it, builds a repository (everything build reads is package data)."""
from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_installed_wheel_builds_a_repository_outside_the_checkout(clas_export, tmp_path):
    dist, site, elsewhere = tmp_path / "dist", tmp_path / "site", tmp_path / "elsewhere"
    elsewhere.mkdir()
    # Build isolation: pip fetches a current setuptools from PyPI, as `pip install .` does on a user's machine.
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dist), str(REPO)], check=True,
                   cwd=elsewhere, timeout=600)
    wheel = next(dist.glob("tritongen-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"tritongen/templates/model/config.pbtxt.j2", "tritongen/templates/python/runtime.py",
            "tritongen/bench/data/fastdeploy_benchmarks.csv"} <= names
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
                   check=True, timeout=600)
    env = {**os.environ, "PYTHONPATH": str(site)}  # the installed copy first, the venv's dependencies after it
    where = subprocess.run([sys.executable, "-c", "import tritongen; print(tritongen.__file__)"], env=env, cwd=elsewhere,
                           capture_output=True, text=True, check=True).stdout.strip()
    assert Path(where).is_relative_to(site), where
    proc = subprocess.run([sys.executable, "-m", "tritongen.cli", "build", str(clas_export), "--name", "wheel_built",
                           "--backend", "python-paddle", "--output", "repo"], env=env, cwd=elsewhere,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    repo = elsewhere / "repo"
    assert (repo / "wheel_built/config.pbtxt").is_file() and (repo / "wheel_built/1/model.py").is_file()  # fused layout
    assert (repo / "wheel_built/1/tritongen_processing/pipeline.py").is_file()
