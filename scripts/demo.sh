#!/usr/bin/env bash
# The main job: train the example CNN on scikit-learn's digits, compile it with nimbus (float,
# and int8 with real calibration data), run both artifacts with the runtime, and compare
# accuracy and latency with ONNX Runtime (float and int8) and PyTorch in one run.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
.venv/bin/python examples/main_job.py "$@"
