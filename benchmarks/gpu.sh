#!/usr/bin/env bash
# The GPU leg, for a machine with CUDA (never part of CI): the cuda tests, the real-shape suite in
# bf16 on the GPU, and (where vLLM is installed) the EFT/DLF composite served by vLLM's
# GPU runner (V2). Numbers go to benchmarks/results/{shapes,vllm-fusion-cuda}.json and rows of RESULTS.md.
#   bash benchmarks/gpu.sh            (from the repository root, in a venv with a CUDA torch)
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python -m pytest -q -m cuda tests/decoding/test_cuda.py
python -m benchmarks shapes --build --device cuda --rounds 3
if python -c "import vllm" 2> /dev/null; then
  python -m pytest -q -m vllm tests/test_vllm_fusion.py  # the composite under Model Runner V2
  python -m benchmarks vllm-fusion --device cuda --rounds 3
else
  echo "vllm not installed in this venv: vllm-fusion skipped (pip install vllm, then rerun)"
fi
