#!/usr/bin/env bash
# Serve a tritongen model repository in the official Triton container.
#
#   docker/serve.sh REPO [IMAGE_TAG]
#
# Builds tritongen-serving:IMAGE_TAG from docker/Dockerfile when that image is absent, then
# runs it with REPO mounted read-only at /models. GPUs are passed in when nvidia-smi works on
# this machine; otherwise the server runs on CPU. Ports 8000 (HTTP), 8001 (gRPC) and
# 8002 (metrics) are published on the same host ports. WITH_PADDLE=0 in the environment
# builds/uses an image without paddlepaddle (tagged IMAGE_TAG-nopaddle).
set -euo pipefail

DEFAULT_TAG=24.10 # NGC release of Triton 2.51, the server the local `tritongen serve` runs
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"

usage() {
    cat <<EOF
usage: docker/serve.sh REPO [IMAGE_TAG]

  REPO       model repository written by \`tritongen build\` (REPO/NAME/config.pbtxt)
  IMAGE_TAG  nvcr.io/nvidia/tritonserver release to build on, e.g. 24.10 (default $DEFAULT_TAG)

Environment:
  WITH_PADDLE=0  build without paddlepaddle (repositories without --backend python-paddle)

Serves HTTP on :8000, gRPC on :8001 and metrics on :8002; stop with Ctrl-C.
EOF
}

die() {
    echo "serve.sh: $*" >&2
    exit 1
}

case "${1:-}" in
    -h | --help)
        usage
        exit 0
        ;;
esac
if [[ $# -lt 1 || $# -gt 2 ]]; then
    usage >&2
    exit 2
fi

[[ -d "$1" ]] || die "$1 is not a directory"
repo="$(cd "$1" && pwd -P)"
tag="${2:-$DEFAULT_TAG}"
with_paddle="${WITH_PADDLE:-1}"

[[ "$tag" =~ ^[0-9]{2}\.[0-9]{2}$ ]] || die "IMAGE_TAG must look like 24.10 (a tritonserver YY.MM release), not '$tag'"
[[ "$with_paddle" == 0 || "$with_paddle" == 1 ]] || die "WITH_PADDLE must be 0 or 1, not '$with_paddle'"
[[ "$repo" != *,* ]] || die "REPO path must not contain a comma (docker --mount syntax): $repo"

# A Triton repository holds one directory per model, each with its config.pbtxt.
shopt -s nullglob
configs=("$repo"/*/config.pbtxt)
shopt -u nullglob
if [[ ${#configs[@]} -eq 0 ]]; then
    die "no model configs in $repo (expected $repo/NAME/config.pbtxt); pass the directory \`tritongen build\` wrote"
fi

command -v docker >/dev/null 2>&1 || die "docker is not installed"
docker version --format '{{.Server.Version}}' >/dev/null 2>&1 ||
    die "cannot reach a Docker engine (is the daemon running, and may this user use it?)"

image="tritongen-serving:$tag"
[[ "$with_paddle" == 1 ]] || image="$image-nopaddle"

if ! docker image inspect "$image" >/dev/null 2>&1; then
    echo "serve.sh: building $image on nvcr.io/nvidia/tritonserver:$tag-py3 (first run pulls several GB)" >&2
    docker build \
        --build-arg "TRITON_TAG=$tag" \
        --build-arg "WITH_PADDLE=$with_paddle" \
        -t "$image" \
        -f "$here/Dockerfile" \
        "$here"
fi

gpu_args=()
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    gpu_args=(--gpus all) # needs the NVIDIA Container Toolkit on this host
    echo "serve.sh: GPUs found; running with --gpus all" >&2
else
    echo "serve.sh: no working nvidia-smi; running on CPU" >&2
fi

echo "serve.sh: serving $repo (${#configs[@]} model configs) with $image" >&2
# --shm-size: the Python backend passes tensors through /dev/shm; Docker's 64 MB default
# is too small for image batches.
exec docker run --rm \
    ${gpu_args[@]+"${gpu_args[@]}"} \
    --shm-size=1g \
    -p 8000-8002:8000-8002 \
    --mount "type=bind,source=$repo,target=/models,readonly" \
    "$image"
