#!/usr/bin/env bash
# Continue pretraining OpenAI's GPT-2 124M on your own text (examples/configs/gpt2-124M-continue.yaml),
# then sample from the result. Downloads and converts the weights once (about 500 MB).
#
#   bash examples/continue_gpt2.sh my-notes.txt more-text/        # text files or directories
#   bash examples/continue_gpt2.sh my-notes.txt --epochs 1        # flags after the files go to `gptcli train`
#   bash examples/continue_gpt2.sh                                # no files: the bundled the-verdict.txt
#
# GPTCLI_EXAMPLE_TINY=1 takes only a few steps (CI runs it against a tiny fake "gpt2-124M").
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
GPTCLI="${GPTCLI:-gptcli}"
OUT="${OUT:-runs/gpt2-continued}"
FILES=()
while [[ $# -gt 0 && "$1" != -* ]]; do FILES+=("$1"); shift; done
if [[ ${#FILES[@]} -eq 0 ]]; then FILES=("$HERE/the-verdict.txt"); fi
TINY=()
if [[ "${GPTCLI_EXAMPLE_TINY:-0}" != 0 ]]; then
  TINY=(--epochs 1 --stride 200 --eval-freq 5 --eval-iter 1)
fi

WEIGHTS="${GPTCLI_HOME:-$HOME/.cache/gptcli}/gpt2/124M/model.pth"
if [[ ! -f "$WEIGHTS" ]]; then
  $GPTCLI download --size 124M
fi
$GPTCLI train "${FILES[@]}" --config "$HERE/configs/gpt2-124M-continue.yaml" --out "$OUT" ${TINY[@]+"${TINY[@]}"} "$@"
$GPTCLI sample --checkpoint "$OUT" --prompt "Every effort moves you" --temperature 0.8 --top-k 50 --seed 1
$GPTCLI eval "${FILES[@]}" --checkpoint "$OUT"
