#!/usr/bin/env bash
# One short GPU session (a lent H100/H200). Steps 1-5: CUDA training throughput (benchmark c) with and
# without torch.compile, the tiny distributed run with NCCL (world size 1), the device-side NaN
# check, and `gptcli train` on CUDA with its defaults. Needs only torch, tiktoken, typer, rich,
# pyyaml and numpy on the GPU machine; gptcli comes from this checkout via PYTHONPATH.
# Steps 6-9 (issue 16): CUDA-graph decode equality, the sampling benchmark, a profile of one 124M
# step, the 1558M largest micro-batch. All steps together exceed one 10-minute device call:
#   OUT=/some/dir bash benchmarks/gpu_session.sh                  # everything
#   ISSUE16_ONLY=1 OUT=/some/dir bash benchmarks/gpu_session.sh   # steps 6-9 only (~15 min at most)
set -uo pipefail
OUT=${OUT:-/tmp/gptcli_gpu}
mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
WORK=$(mktemp -d)
TINY="--context-length 64 --emb-dim 64 --n-heads 4 --n-layers 2 --batch-size 8 --eval-freq 10"

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" | tee -a "$OUT/gpu.txt"

if [ -z "${ISSUE16_ONLY:-}" ]; then
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
fi  # ISSUE16_ONLY

# ---- issue 16: sampling at the hardware's limit, the profile, the largest model ----
echo "== 6. GPU paths on CUDA: static-cache CUDA-graph decode vs eager, padded batches (fp32 tokens identical)"
timeout 120 python3 - > "$OUT/gpu_paths.log" 2>&1 <<'PY'
import json, os, torch
from gptcli.config import ModelConfig
from gptcli.generation import _generate_static, generate
from gptcli.model import GPT
torch.manual_seed(0)
m = GPT(ModelConfig(context_length=256, emb_dim=128, n_heads=4, n_layers=4, drop_rate=0.0)).cuda().eval()
kw = dict(max_new_tokens=100, device=torch.device("cuda"), temperature=0.0, top_k=None, top_p=None,
          eos_id=None, generator=None, on_token=None)
prompts = [[1, 2, 3, 4], [5], [6, 7, 8, 9, 10, 11, 12]]
graph = _generate_static(m, prompts, capture=True, **kw)
eager = _generate_static(m, prompts, capture=False, **kw)
alone = [_generate_static(m, [p], capture=False, **kw)[0] for p in prompts]
dynamic = [generate(m, torch.tensor([p], device="cpu").cuda(), max_new_tokens=100, use_cache=False)[0] for p in prompts]
r = {"graph_equals_eager": graph == eager, "batch_equals_alone": eager == alone, "static_equals_uncached": alone == dynamic}
print(r); json.dump(r, open(os.environ["OUT"] + "/gpu_paths.json", "w"))
PY
echo "exit $?"; tail -2 "$OUT/gpu_paths.log"

echo "== 7. sampling benchmark: gptcli vs transformers (dynamic, static) vs the book, 124M and 1558M"
timeout 420 python3 benchmarks/bench_sample_cuda.py --reps 2 --out "$OUT/sample_cuda.json" > "$OUT/bench_sample.log" 2>&1
echo "exit $?"; tail -30 "$OUT/bench_sample.log"

echo "== 8. profile of one 124M training step (top kernels)"
timeout 240 python3 benchmarks/bench_memory_cuda.py --profile --out "$OUT/profile_124m.json" > "$OUT/profile.log" 2>&1
echo "exit $?"; head -40 "$OUT/profile.log"

echo "== 9. 1558M: largest micro-batch and tokens/s, with and without activation checkpointing / fused loss"
timeout 420 python3 benchmarks/bench_memory_cuda.py --max-batch --out "$OUT/max_batch_1558m.json" > "$OUT/max_batch.log" 2>&1
echo "exit $?"; tail -30 "$OUT/max_batch.log"
