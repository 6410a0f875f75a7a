#!/usr/bin/env bash
# The wheels bench/tools/gpu_check.sh needs on a GPU machine that has its own Python and CUDA torch but no
# package index (PYTHON=python3 mode), made here where pip reaches an index:
#
#   bash bench/tools/gpu_wheels.sh DIR [PYTHON_VERSION] [CUDA_LIBRARY]
#
# PYTHON_VERSION: the GPU machine's (default 3.12); CUDA_LIBRARY: the bitsandbytes library to keep (default
# cuda130, for a torch built for CUDA 13.0: `python3 -c "import torch; print(torch.version.cuda)"` there).
# bitsandbytes ships one library per CUDA version (43 MB); the others are dropped so that the wheels fit
# a transfer of 64 MiB with the repository (session 22: 28 MB in all).
# Packages: what the project imports on the GPU path and such an image lacked (session 22, an H200 image
# with torch 2.11, transformers 5.17, accelerate, pandas, scikit-learn, scipy, matplotlib, pyyaml, tqdm,
# regex, click, joblib, absl-py): transformers and peft at the project's pins, opacus, bitsandbytes,
# cryptography (+ cffi, pycparser), rouge-score (+ nltk, defusedxml), gguf. Check the list against the
# machine's `pip list` before a run.
set -euo pipefail
DIR="${1:?usage: bash bench/tools/gpu_wheels.sh DIR [PYTHON_VERSION] [CUDA_LIBRARY]}"
PYVER="${2:-3.12}"
KEEP="${3:-cuda130}"
mkdir -p "$DIR"
PLATFORMS=()
for p in manylinux_2_34 manylinux_2_31 manylinux_2_28 manylinux_2_27 manylinux_2_24 manylinux_2_17 manylinux2014 manylinux1; do
  PLATFORMS+=(--platform "${p}_x86_64")
done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
  "${PLATFORMS[@]}" --platform any -d "$DIR" \
  transformers==5.23.0 peft==0.21.2 opacus==1.6.0 bitsandbytes==0.50.2 gguf==0.19.0 \
  cryptography==50.0.0 cffi pycparser nltk defusedxml
python3 -m pip wheel -q --no-deps -w "$DIR" rouge-score==0.1.2  # published as a source archive only
python3 - "$DIR" "$KEEP" <<'PYEOF'
import glob, os, sys, zipfile

folder, keep_cuda = sys.argv[1], sys.argv[2]
source = glob.glob(os.path.join(folder, "bitsandbytes-*.whl"))[0]
keep = lambda name: not name.endswith(".so") or "_cpu" in name or keep_cuda in name
with zipfile.ZipFile(source) as wheel, zipfile.ZipFile(source + ".part", "w", zipfile.ZIP_DEFLATED) as slim:
    for info in wheel.infolist():
        if keep(info.filename):
            data = wheel.read(info.filename)
            if info.filename.endswith("RECORD"):  # pip reads RECORD to uninstall: list only what is there
                data = b"\n".join(line for line in data.split(b"\n") if keep(line.split(b",")[0].decode()))
            slim.writestr(info, data)
os.replace(source + ".part", source)
PYEOF
du -sh "$DIR"
