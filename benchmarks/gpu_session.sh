#!/usr/bin/env bash
# One lent-GPU session in one command: install nimbus on the GPU machine's own torch and Triton,
# then check and time every Triton kernel (gpu_check.py) and the whole models (gpu_models.py).
#
#   bash benchmarks/gpu_session.sh [OUT_DIR]      (default: $OUT, else /tmp/nimbus-gpu)
#
# Environment: CHECK_ONLY (gpu_check --only: kernel modules, default all), CHECK_BUDGET_S,
# MODEL_VARIANTS (default fp16,int8), MODEL_BUDGET_S.
#
# The machine has no package registry: wheels it lacks (lark, for the compiler) travel in .whl/
# and are installed with --no-index. The native extension is built there (its Python differs
# from the development machine's). The defaults keep the whole run under 9.5 minutes (a lent
# machine's command limit is 10; a larger MODEL_BUDGET_S wants a smaller CHECK_ONLY). Every
# log and JSON lands in OUT_DIR and is saved as each case ends, so a run cut short keeps what
# it measured. The tables are printed last.
#
# The wheels: `pip download --no-deps --only-binary=:all: --python-version 3.12 --platform
# manylinux_2_28_x86_64 -d .whl lark` on a machine with a registry, then send .whl/ along with
# the checkout.
set -uo pipefail
out=${1:-${OUT:-/tmp/nimbus-gpu}}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 NIMBUS_TUNING_CACHE="$out/tuning.json" CMAKE_BUILD_PARALLEL_LEVEL=16
started=$(date +%s)

nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,power.draw \
  --format=csv | tee "$out/gpu.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" \
  | tee -a "$out/gpu.txt"

if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \
    .whl/*.whl && export PYTHONPATH=/tmp/site
fi
# The native extension is needed by the models' CPU cross-check, not by the kernel checks.
if ! timeout 90 python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . \
    >"$out/build.log" 2>&1; then
  echo "nimbus build failed (tail of $out/build.log):"; tail -20 "$out/build.log"
fi
echo "set-up took $(( $(date +%s) - started )) s"

timeout 210 python3 benchmarks/gpu_check.py --only "${CHECK_ONLY:-}" --budget-s "${CHECK_BUDGET_S:-60}" \
  --json "$out/check.json" \
  >"$out/check.log" 2>&1
model_budget=${MODEL_BUDGET_S:-180}  # the last step may start just before the budget ends
timeout $(( model_budget + 90 )) python3 benchmarks/gpu_models.py --variants "${MODEL_VARIANTS:-fp16,int8}" \
  --budget-s "$model_budget" --json "$out/models.json" >"$out/models.log" 2>&1

echo "=== errors ==="
grep -hE "FAIL|Error|Traceback" "$out/check.log" "$out/models.log" | cut -c1-300 | head -20
echo "=== kernels ==="  # the final table, or each case's line where the run was cut short
if grep -q "^case" "$out/check.log"; then sed -n '/^case/,$p' "$out/check.log"; else cat "$out/check.log"; fi \
  | cut -c1-220
echo "=== models ==="
if grep -q ", torch " "$out/models.log"; then sed -n '/, torch /,$p' "$out/models.log"
else tail -20 "$out/models.log"; fi
echo "total $(( $(date +%s) - started )) s"
