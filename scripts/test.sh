#!/usr/bin/env bash
# The project's test command: installs nimbus (scripts/setup.sh), then runs pytest with any
# arguments given, e.g.
#   bash scripts/test.sh tests/kernels -m "not slow"
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
# The oldest Triton that pyproject.toml allows, beside the venv's own (not on its path):
# tests/kernels/triton/test_triton_compiles.py compiles every kernel under both.
oldest_triton=$(sed -n 's/.*"triton>=\([0-9.]*\).*/\1/p' pyproject.toml)
if [[ ! -f .venv/triton-oldest/triton/__init__.py ]]; then
    .venv/bin/python -m pip install --quiet --no-deps --target .venv/triton-oldest "triton==${oldest_triton}.*"
fi
exec .venv/bin/python -m pytest -q "$@"
