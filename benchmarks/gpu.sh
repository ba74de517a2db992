#!/usr/bin/env bash
# The GPU leg, for a machine with CUDA (never part of CI): the cuda tests, then the suites with the
# same statistics as on CPU (interleaved races, median [IQR] per ratio, met by the unfavourable
# quartile; read on wall time, each call bracketed by torch.cuda.synchronize): decoding, switching
# and training on the testbed, the real-shape suite in bf16, and (where vLLM is installed) the
# EFT/DLF composite under vLLM's GPU runner (V2). Results go to benchmarks/results/NAME-cuda.json
# and RESULTS.md is regenerated from every results file.
#   bash benchmarks/gpu.sh            (from the repository root, in a venv with a CUDA torch)
#   ROUNDS=3 bash benchmarks/gpu.sh   (fewer rounds when device time is short)
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
ROUNDS="${ROUNDS:-5}"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python -m pytest -q -m cuda tests/decoding/test_cuda.py
python -m benchmarks decoding --device cuda --rounds-decoding "$ROUNDS"
python -m benchmarks switching --device cuda --rounds-decoding "$ROUNDS"
python -m benchmarks training --device cuda
python -m benchmarks shapes --build --device cuda --rounds "$ROUNDS" --only overhead
python -m benchmarks shapes --device cuda --rounds "$ROUNDS" --only speculative
if python -c "import vllm" 2> /dev/null; then
  python -m pytest -q -m vllm tests/test_vllm_fusion.py  # the composite under Model Runner V2
  python -m benchmarks vllm-fusion --device cuda --rounds "$ROUNDS"
else
  echo "vllm not installed in this venv: vllm-fusion skipped (pip install vllm, then rerun)"
fi
