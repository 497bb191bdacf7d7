#!/usr/bin/env bash
# Reproduce the book's chapter-5 run: train a GPT-2 124M-sized model on "The Verdict" for 10
# epochs with the book's settings (examples/configs/verdict.yaml), then sample from it and draw
# the loss curves. Afterwards `gptcli info runs/book` shows what the checkpoint holds.
#
#   bash examples/book_run.sh                  # run from anywhere; writes runs/book in the current directory
#   OUT=runs/book2 bash examples/book_run.sh --device cpu   # extra flags go to `gptcli train`
#
# GPTCLI_EXAMPLE_TINY=1 swaps in a tiny model and a few steps: it checks the script in seconds.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
GPTCLI="${GPTCLI:-gptcli}"
OUT="${OUT:-runs/book}"
TINY=()
if [[ "${GPTCLI_EXAMPLE_TINY:-0}" != 0 ]]; then
  TINY=(--epochs 1 --context-length 12 --emb-dim 32 --n-heads 4 --n-layers 2 --batch-size 4 --stride 100 --eval-iter 1)
fi

$GPTCLI train "$HERE/the-verdict.txt" --config "$HERE/configs/verdict.yaml" --out "$OUT" ${TINY[@]+"${TINY[@]}"} "$@"
# The book's sampling settings from section 5.3: temperature 1.4, top-k 25.
$GPTCLI sample --checkpoint "$OUT" --temperature 1.4 --top-k 25 --seed 123
$GPTCLI plot "$OUT" -o "$OUT/loss.png"
