#!/usr/bin/env bash
# Install everything tritongen needs on a fresh Debian 12 machine into ./.venv.
# Idempotent: re-running only installs what is missing.
#
#   bash scripts/setup.sh             set up (or bring up to date), then stamp .venv
#   bash scripts/setup.sh --check     exit 0 when .venv is set up and current; else print why, exit 1
#   bash scripts/setup.sh --if-needed set up only when --check fails (what demo.sh and test.sh run)
#   bash scripts/setup.sh --digest    print the digest of what defines the environment
#
# The stamp (.venv/.tritongen-setup) holds a digest of the files that define the environment:
# pyproject.toml and this script (its apt packages and no-deps pins). It is written only after a
# complete, verified setup, so an interrupted one leaves the environment stale.
set -euo pipefail
cd "$(dirname "$0")/.."

STAMP=.venv/.tritongen-setup
DEFINES=(pyproject.toml scripts/setup.sh)

digest() { sha256sum "${DEFINES[@]}" | sha256sum | cut -d' ' -f1; }

# Why the environment needs setting up (one line), or nothing when it is current.
stale_reason() {
  if [ ! -d .venv ]; then echo "no .venv yet"
  elif ! .venv/bin/python -c "" 2>/dev/null; then echo ".venv's python does not run"
  elif [ ! -f "$STAMP" ]; then echo ".venv has no setup stamp (setup never completed)"
  elif [ "$(cat "$STAMP")" != "$(digest)" ]; then echo "pyproject.toml or scripts/setup.sh changed since the last setup"
  elif ! .venv-kserve/bin/python -c "" 2>/dev/null; then echo ".venv-kserve (KServe's SDK, for deploy checks) does not run"
  fi
}

case "${1:-}" in
  "") ;;
  --digest) digest; exit 0 ;;
  --check)
    why=$(stale_reason)
    if [ -n "$why" ]; then echo "stale: $why"; exit 1; fi
    exit 0 ;;
  --if-needed)
    why=$(stale_reason)
    [ -z "$why" ] && exit 0
    echo "tritongen: $why; setting up: bash scripts/setup.sh" >&2 ;;
  *) echo "usage: bash scripts/setup.sh [--check | --if-needed | --digest]" >&2; exit 2 ;;
esac
rm -f "$STAMP"

SUDO=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null; then SUDO="sudo"; fi

# System packages: Python 3.11 with venv, the shared libraries OpenCV loads (paddleslim pulls in the
# non-headless opencv-python, which links libGL and glib, before it is replaced below), and libb64, which the
# C++ perf_analyzer in the tritonclient wheel links (`tritongen bench serving`).
need_apt=()
command -v python3.11 >/dev/null || need_apt+=(python3.11 python3.11-venv python3.11-dev)
python3.11 -c "import venv, ensurepip" 2>/dev/null || need_apt+=(python3.11-venv)
ldconfig -p | grep -q 'libGL.so.1' || need_apt+=(libgl1)
ldconfig -p | grep -q 'libglib-2.0.so.0' || need_apt+=(libglib2.0-0)
ldconfig -p | grep -q 'libgomp.so.1' || need_apt+=(libgomp1)
command -v ps >/dev/null || need_apt+=(procps)
ldconfig -p | grep -q 'libb64.so.0d' || need_apt+=(libb64-0d)
if [ ${#need_apt[@]} -gt 0 ]; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}"
fi

[ -x .venv/bin/python ] || python3.11 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test,s3,deploy]'
# PaddleClas/PaddleDetection/PaddleSeg code is the tests' oracle for pre/post-processing; their wheels pin
# conflict with ours, so it comes without dependencies (never a runtime dependency).
.venv/bin/python -m pip install -q --no-deps 'paddleclas==2.6.0' 'paddledet==2.6.0' 'paddleseg==2.8.0'
# The compose specification's JSON schema (`tritongen deploy` checks compose files against it) ships in
# docker-compose 1.29.2, whose pins (PyYAML<6, jsonschema<4) clash with ours: its files only, no dependencies.
.venv/bin/python -m pip install -q --no-deps 'docker-compose==1.29.2'
# KServe's SDK checks InferenceService manifests; it pins protobuf>=6.33, which the Paddle/tritonclient pins
# exclude, so it gets a venv of its own that `tritongen deploy --target kserve` runs for that one check.
[ -x .venv-kserve/bin/python ] || python3.11 -m venv .venv-kserve
.venv-kserve/bin/python -m pip install -q 'kserve==0.21.0'
# Exactly one OpenCV: paddleslim pins the GUI opencv-python, whose cv2/ shares its files with
# opencv-python-headless (ours), so whichever installed last wins. Remove it and reinstall the headless files.
if .venv/bin/python -m pip show -q opencv-python >/dev/null 2>&1; then
  .venv/bin/python -m pip uninstall -q -y opencv-python
  headless=$(.venv/bin/python -m pip show opencv-python-headless | sed -n 's/^Version: //p')
  .venv/bin/python -m pip install -q --force-reinstall --no-deps "opencv-python-headless==$headless"
fi
.venv/bin/python - <<'PY'
import zlib  # noqa: F401
import importlib.metadata as md
import cv2, paddle, paddle2onnx, paddleslim, onnxruntime, tritonclient.grpc  # noqa: F401
from tritongen.perf.perf_analyzer import find_perf_analyzer, perf_analyzer_problem
from tritongen.serve import find_tritonserver

opencv = [d for d in ("opencv-python", "opencv-contrib-python", "opencv-contrib-python-headless")
          if any(True for _ in md.distributions(name=d))]
assert not opencv, f"more than one OpenCV installed: {opencv} beside opencv-python-headless"
assert md.version("opencv-python-headless").startswith(cv2.__version__), (cv2.__version__, cv2.__file__)
analyzer = find_perf_analyzer()
assert analyzer is not None, perf_analyzer_problem()
print("tritongen environment ready:", "paddle", paddle.__version__, "| paddle2onnx", paddle2onnx.__version__,
      "| onnxruntime", onnxruntime.__version__, "| opencv-python-headless", cv2.__version__, cv2.__file__,
      "| tritonserver", find_tritonserver().binary, "| perf_analyzer", analyzer.binary)
PY
digest > "$STAMP"
