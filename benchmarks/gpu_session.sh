#!/usr/bin/env bash
# One short GPU session (a lent H100/H200): CUDA training throughput (benchmark c) with and
# without torch.compile, the tiny distributed run with NCCL (world size 1), the device-side NaN
# check, and `gptcli train` on CUDA with its defaults. Needs only torch, tiktoken, typer, rich,
# pyyaml and numpy on the GPU machine; gptcli comes from this checkout via PYTHONPATH.
#   OUT=/some/dir bash benchmarks/gpu_session.sh
set -uo pipefail
OUT=${OUT:-/tmp/gptcli_gpu}
mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
WORK=$(mktemp -d)
TINY="--context-length 64 --emb-dim 64 --n-heads 4 --n-layers 2 --batch-size 8 --eval-freq 10"

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" | tee -a "$OUT/gpu.txt"

echo "== 1. tiny run under torchrun with NCCL (world size 1)"
timeout 120 torchrun --nproc_per_node=1 -m gptcli train examples/the-verdict.txt --epochs 1 $TINY --no-compile \
  --out "$WORK/nccl" > "$OUT/nccl.log" 2>&1
echo "exit $?"; tail -4 "$OUT/nccl.log"; cp "$WORK/nccl/metrics.jsonl" "$OUT/nccl_metrics.jsonl" 2>/dev/null

echo "== 2. non-finite loss caught on the device"
timeout 90 python3 -m gptcli train examples/the-verdict.txt --epochs 1 $TINY --no-compile --lr 1e30 \
  --out "$WORK/nan" > "$OUT/nan.log" 2>&1
echo "exit $? (1 expected)"; tail -2 "$OUT/nan.log"

echo "== 5. gptcli train on CUDA with defaults (the book's shape, compile on), 1 epoch"
timeout 100 python3 -m gptcli train examples/the-verdict.txt --epochs 1 --out "$WORK/book" > "$OUT/book.log" 2>&1
echo "exit $?"; tail -6 "$OUT/book.log"; cp "$WORK/book/metrics.jsonl" "$OUT/book_metrics.jsonl" 2>/dev/null

echo "== 3. benchmark (c), compiled"
timeout 200 python3 benchmarks/bench_train_cuda.py --rounds 2 --out "$OUT/train_cuda_compile.json" > "$OUT/bench_compile.log" 2>&1
echo "exit $?"; tail -12 "$OUT/bench_compile.log"

if [ -z "${SKIP_NOCOMPILE:-}" ]; then
echo "== 4. benchmark (c), not compiled"
timeout 110 python3 benchmarks/bench_train_cuda.py --no-compile --rounds 2 --out "$OUT/train_cuda_nocompile.json" \
  > "$OUT/bench_nocompile.log" 2>&1
echo "exit $?"; tail -8 "$OUT/bench_nocompile.log"

fi
