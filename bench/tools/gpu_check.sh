#!/usr/bin/env bash
# The GPU path, measured (issue 16 item 4), on a machine with one CUDA GPU and NO package index.
#
#   bash bench/tools/gpu_check.sh WHEELS_DIR [MODEL]
#
# WHEELS_DIR: a folder of wheels made beforehand on a machine with an index, e.g.
#   pip download -d wheels --index-url https://download.pytorch.org/whl/cu128 torch==2.13.0
#   pip download -d wheels ".[quant]" gguf accelerate setuptools
# Beyond torch, transformers and peft (and the project's other dependencies in pyproject.toml), the
# GPU path needs: bitsandbytes (QLoRA's 4-bit layers, the `quant` extra), gguf and accelerate (to
# dequantise the GGUF file of SmolLM2-135M into an HF directory), setuptools (to install the project
# without an index). Nothing is fetched from a network.
# MODEL: a registered model name (e.g. smollm2-135m), an HF directory, or a GGUF file / folder
#   (default: the smollm2-135m model source where the checkout has one, else the GGUF file in
#   ../shared/models/smollm2-135m, see ../shared/models/README.md).
# PYTHON=python3: use that interpreter and its own CUDA torch instead of a venv (the wheels then install
#   with --no-deps into $SITE: name every package the machine lacks; bench/tools/gpu_wheels.sh makes them).
# Options after MODEL go to gpu_figures, e.g. --random-weights with MODEL a folder holding only
#   SmolLM2-135M's config and tokenizer (python -m bench.tools.gpu_figures --write-architecture DIR): for a
#   machine its 98 MB of weights cannot reach; speed and memory figures only.
# Writes $GPU_OUT (default results/studies/gpu): figures.json and figures.md, the Table 4 slice's runs under
# results/studies/gpu/runs and its report under results/studies/gpu/slice (bench/tools/gpu_figures.py).
set -euo pipefail

WHEELS="${1:?usage: bash bench/tools/gpu_check.sh WHEELS_DIR [MODEL] [gpu_figures options]}"
MODEL="${2:-}"
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"
GPU_OUT="${GPU_OUT:-results/studies/gpu}"

test -d "$WHEELS" || { echo "error: $WHEELS is not a folder of wheels" >&2; exit 2; }
if [ -n "${PYTHON:-}" ]; then
  # The machine's own Python and its CUDA torch (a GPU image rarely lets a 2 GB torch wheel travel): the
  # wheels go, without their dependencies, into a folder put first on the path; the project runs from here.
  PY="$PYTHON"
  SITE="${SITE:-/tmp/tierbench-site}"
  "$PY" -m pip install -q --disable-pip-version-check --no-index --no-deps --no-compile --upgrade --target "$SITE" "$WHEELS"/*.whl
  export PYTHONPATH="$SITE:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
else
  VENV="${VENV:-.venv-gpu}"
  test -x "$VENV/bin/python" || python3 -m venv "$VENV"
  PY="$VENV/bin/python"
  PIP=("$PY" -m pip install -q --disable-pip-version-check --no-index --find-links "$WHEELS")
  # torch first (the CUDA build in WHEELS), then the project with the quant extra, then the GGUF readers.
  "${PIP[@]}" setuptools
  "${PIP[@]}" torch==2.13.0
  "${PIP[@]}" --no-build-isolation -e ".[quant]"
  "${PIP[@]}" gguf accelerate || echo "warning: gguf/accelerate not in $WHEELS: a GGUF model cannot be converted" >&2
fi

"$PY" - <<'PYEOF'
import torch
assert torch.cuda.is_available(), "no CUDA GPU visible to torch: this script measures the GPU path"
print(f"GPU: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, bf16: {torch.cuda.is_bf16_supported()}")
PYEOF
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
"$PY" -m bench.tools.gpu_figures --device cuda ${MODEL:+--model "$MODEL"} --out "$GPU_OUT" "${@:3}"
echo "wrote $GPU_OUT/figures.json, $GPU_OUT/figures.md, $GPU_OUT/runs, $GPU_OUT/slice"
