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
# Writes results/studies/gpu/figures.json and figures.md, the Table 4 slice's runs under
# results/studies/gpu/runs and its report under results/studies/gpu/slice (bench/tools/gpu_figures.py).
set -euo pipefail

WHEELS="${1:?usage: bash bench/tools/gpu_check.sh WHEELS_DIR [MODEL]}"
MODEL="${2:-}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
VENV="${VENV:-.venv-gpu}"
OUT="${OUT:-results/studies/gpu}"

test -d "$WHEELS" || { echo "error: $WHEELS is not a folder of wheels" >&2; exit 2; }
test -x "$VENV/bin/python" || python3 -m venv "$VENV"
PY="$VENV/bin/python"
PIP=("$PY" -m pip install -q --disable-pip-version-check --no-index --find-links "$WHEELS")
# torch first (the CUDA build in WHEELS), then the project with the quant extra, then the GGUF readers.
"${PIP[@]}" setuptools
"${PIP[@]}" torch==2.13.0
"${PIP[@]}" --no-build-isolation -e ".[quant]"
"${PIP[@]}" gguf accelerate || echo "warning: gguf/accelerate not in $WHEELS: a GGUF model cannot be converted" >&2

"$PY" - <<'EOF'
import torch
assert torch.cuda.is_available(), "no CUDA GPU visible to torch: this script measures the GPU path"
print(f"GPU: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, bf16: {torch.cuda.is_bf16_supported()}")
EOF
# The batched-vs-sequential round needs federation.client_batch (issue 16 item 1); gpu_figures says
# in figures.json when this checkout has none.
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
"$PY" -m bench.tools.gpu_figures --device cuda ${MODEL:+--model "$MODEL"} --out "$OUT" "${@:3}"
echo "wrote $OUT/figures.json, $OUT/figures.md, $OUT/runs, $OUT/slice"
