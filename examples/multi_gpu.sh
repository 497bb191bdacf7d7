#!/usr/bin/env bash
# Data-parallel training on several GPUs with torchrun: one process per GPU, each on its own
# share of every batch, gradients averaged (NCCL on CUDA; gloo on CPU, to try the wiring anywhere).
# Only rank 0 writes checkpoints and metrics.jsonl; `gptcli resume` continues such a run the same way.
#
#   bash examples/multi_gpu.sh                               # every GPU of this machine
#   NPROC=2 bash examples/multi_gpu.sh --device cpu          # two CPU processes
#   bash examples/multi_gpu.sh --preset gpt2-124M --precision bf16 data/   # extra flags and files go to `gptcli train`
#
# Several machines: run torchrun on each with --nnodes, --node-rank and --rdzv-endpoint instead
# of --standalone (see the README, "Multi-GPU and multi-node").
# GPTCLI_EXAMPLE_TINY=1 uses a tiny model and a few steps.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PYTHON="${PYTHON:-python}"
TORCHRUN="${TORCHRUN:-torchrun}"
OUT="${OUT:-runs/multi-gpu}"
NPROC="${NPROC:-$($PYTHON -c 'import torch; print(max(1, torch.cuda.device_count()))')}"
TINY=()
if [[ "${GPTCLI_EXAMPLE_TINY:-0}" != 0 ]]; then
  TINY=(--epochs 1 --context-length 12 --emb-dim 32 --n-heads 4 --n-layers 2 --batch-size 2 --stride 100 --eval-iter 1)
fi

$TORCHRUN --standalone --nproc_per_node="$NPROC" -m gptcli train "$HERE/the-verdict.txt" --out "$OUT" ${TINY[@]+"${TINY[@]}"} "$@"
