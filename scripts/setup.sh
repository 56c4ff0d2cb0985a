#!/usr/bin/env bash
# Installs nimbus editable, with its compiler and test extras, into .venv (created if missing).
# Sourced by scripts/test.sh and scripts/demo.sh; re-running it is cheap: installed packages
# are kept and the native build is incremental.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [[ ! -x .venv/bin/python ]]; then
    python3 -m venv .venv
fi
python=.venv/bin/python

"$python" -m pip install --quiet --upgrade pip
# The build requirements live in .venv, so the editable build runs without isolation.
"$python" scripts/install_build_requirements.py
"$python" -m pip install --quiet --constraint constraints.txt --no-build-isolation \
    --editable ".[compiler,cuda,serve,test]"
