#!/usr/bin/env bash
# The whole test suite (real tritonserver, real tritonclient). Sets up first (scripts/setup.sh)
# when .venv is missing or stale. Extra arguments go to pytest: bash scripts/test.sh -k readme
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --if-needed
exec .venv/bin/python -m pytest -q "$@"
