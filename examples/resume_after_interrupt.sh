#!/usr/bin/env bash
# Resume after an interruption. Starts the book's run, stops it part-way the way Ctrl-C would
# (SIGINT, sent here by the script once training has begun), then continues it exactly where it
# stopped: the resumed run ends with the same weights and losses as one never interrupted.
#
#   bash examples/resume_after_interrupt.sh [extra train flags]
#
# In a terminal you would press Ctrl-C yourself: gptcli saves a checkpoint at the end of the
# current step, exits with code 130 and prints the `gptcli resume` command to run.
# GPTCLI_EXAMPLE_TINY=1 uses a tiny model so the whole script takes seconds.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
GPTCLI="${GPTCLI:-gptcli}"
OUT="${OUT:-runs/interrupted}"
TINY=()
if [[ "${GPTCLI_EXAMPLE_TINY:-0}" != 0 ]]; then
  TINY=(--epochs 2 --context-length 12 --emb-dim 32 --n-heads 4 --n-layers 2 --batch-size 2 --stride 100 --eval-freq 5 --eval-iter 1)
fi

$GPTCLI train "$HERE/the-verdict.txt" --out "$OUT" ${TINY[@]+"${TINY[@]}"} "$@" &
pid=$!
# Wait until the first evaluation is logged, then interrupt.
until grep -q '"type": "eval"' "$OUT/metrics.jsonl" 2>/dev/null; do
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.2
done
kill -INT "$pid" 2>/dev/null || true
status=0
wait "$pid" || status=$?
if [[ $status -eq 0 ]]; then
  echo "training finished before it could be interrupted; nothing to resume" >&2
  exit 0
elif [[ $status -ne 130 ]]; then
  echo "training failed with exit code $status" >&2
  exit "$status"
fi
echo "interrupted (exit code 130); resuming from the checkpoint it saved" >&2
$GPTCLI resume "$OUT"
$GPTCLI runs
