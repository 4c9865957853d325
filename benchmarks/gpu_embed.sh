#!/usr/bin/env bash
# Embedding throughput on a GPU: benchmarks/bench_embed.py with --device cuda (< 3 minutes).
#
# Made for a lent NVIDIA machine (its image has Python 3.12 with torch, torchvision, timm,
# numpy, pandas, scikit-learn, rich; nothing can be fetched there). The patch store needs
# zarr, which travels as wheels:
#   here, once:   bash benchmarks/gpu_embed.sh prepare      # wheels into .whl/ (git-ignored)
#   there:        bash benchmarks/gpu_embed.sh run          # device tool: carry=[".whl"]
# On any machine with a CUDA torch, timm and the project installed: bash benchmarks/gpu_embed.sh local
set -euo pipefail
cd "$(dirname "$0")/.."
ARGS=(--device cuda --n 4096 --batch 256 --model vit_base_patch16_224 --naive-max 256 --loader-workers 8)
case "${1:-run}" in
  prepare)
    exclude=$(git rev-parse --git-path info/exclude)
    grep -qx '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >>"$exclude"
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      -d .whl zarr==3.1.6 numcodecs==0.16.6 donfig==0.8.1.post1 google-crc32c==1.9.0
    ;;
  run)
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="$PWD/src:/tmp/site" STIMAGE_SD_NO_PROGRESS=1 PYTHONUNBUFFERED=1
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
    python3 benchmarks/bench_embed.py "${ARGS[@]}"
    python3 benchmarks/bench_embed.py "${ARGS[@]}" --amp
    ;;
  local)
    export STIMAGE_SD_NO_PROGRESS=1 PYTHONUNBUFFERED=1
    python3 benchmarks/bench_embed.py "${ARGS[@]}"
    python3 benchmarks/bench_embed.py "${ARGS[@]}" --amp
    ;;
  *)
    echo "usage: $0 [prepare|run|local]" >&2
    exit 2
    ;;
esac
