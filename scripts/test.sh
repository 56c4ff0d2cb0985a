#!/usr/bin/env bash
# The project's test command: installs nimbus (scripts/setup.sh), then runs pytest with any
# arguments given, e.g.
#   bash scripts/test.sh tests/kernels -m "not slow"
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q "$@"
