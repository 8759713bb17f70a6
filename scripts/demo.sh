#!/usr/bin/env bash
# The offline demo: make a small PaddleClas-style export, build it for two backends, serve it
# with the real tritonserver, and classify real photos over gRPC. Needs no network once set up.
# Sets up first (scripts/setup.sh) when .venv is missing or stale.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --if-needed
export PATH="$PWD/.venv/bin:$PATH"
WORK=${DEMO_DIR:-demo}
GRPC=${GRPC_PORT:-8001}; HTTP=${HTTP_PORT:-8000}; METRICS=${METRICS_PORT:-8002}
PHOTOS=$(python -c "import skimage.data, os; print(os.path.dirname(skimage.data.__file__))")

tritongen demo "$WORK/colour_classifier"
tritongen build "$WORK/colour_classifier" --name colours --backend python-paddle --output "$WORK/repo" --force
tritongen build "$WORK/colour_classifier" --name colours_ort --backend python-onnxruntime --output "$WORK/repo" --force

tritongen serve "$WORK/repo" --grpc-port "$GRPC" --http-port "$HTTP" --metrics-port "$METRICS" > "$WORK/serve.log" 2>&1 &
SERVER=$!
trap 'kill -TERM $SERVER 2>/dev/null; wait $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 1 600); do
  grep -q "Ctrl-C to stop" "$WORK/serve.log" && break
  kill -0 $SERVER 2>/dev/null || { cat "$WORK/serve.log"; exit 1; }
  sleep 0.5
done
grep -q "Ctrl-C to stop" "$WORK/serve.log" || { cat "$WORK/serve.log"; exit 1; }

tritongen infer colours "$PHOTOS/coffee.png" "$PHOTOS/chelsea.png" --url "127.0.0.1:$GRPC"
python clients/classify.py colours_ort "$PHOTOS/astronaut.png" --url "127.0.0.1:$GRPC"
