#!/usr/bin/env bash
# The accelerator check: run once on a GPU machine (about 5-7 minutes): the devices, `bench train`
# of :char and :gpt2_124m in bf16 with MFU, cuDNN vs XLA attention, the sampler's tokens/s and a
# short shakespeare_char recipe run; a JSON file per step and the README's table filled.
#   experiments/accelerator/run.sh [--input input.txt] [--out DIR] [--recipe_iters N] [--only a,b]
#   experiments/accelerator/run.sh --dry --input FILE --out DIR    every step at toy size, any CPU
# The logic is in check.py (steps), probes.py (in-process measurements) and table.py (README).
set -euo pipefail
cd "$(dirname "$0")/../.."
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
exec "$PYTHON" experiments/accelerator/check.py "$@"
