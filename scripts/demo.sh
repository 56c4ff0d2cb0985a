#!/usr/bin/env bash
# The main job, as far as nimbus goes today: import the example CNN through torch.export,
# show its IR and cost table, then run the default optimization pipeline over it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
nimbus=.venv/bin/nimbus
"$nimbus" import examples/cnn.py:build --input-shape 1,3,32,32 -o "$work/cnn.nir"
"$nimbus" show "$work/cnn.nir" --batch 1
"$nimbus" opt "$work/cnn.nir" -o "$work/cnn.opt.nir"
"$nimbus" show "$work/cnn.opt.nir" --batch 8
