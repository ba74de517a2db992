#!/usr/bin/env bash
# The GPU leg, for a machine with CUDA (never part of CI): the cuda tests, then the real-shape suite
# in bf16 on the GPU. Numbers go to benchmarks/results/shapes.json and a row of RESULTS.md.
#   bash benchmarks/gpu.sh            (from the repository root, in a venv with a CUDA torch)
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python -m pytest -q -m cuda tests/decoding/test_cuda.py
python -m benchmarks shapes --build --device cuda --rounds 3
