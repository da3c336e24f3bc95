#!/usr/bin/env bash
# The bmshj2018-factorized family: qualities 1, 2, 4 and 5 fine-tuned from the quality-3 baseline
# (they share N=128, M=192), each with its own CompressAI lambda, then exported next to it with
# model cards for all five (Kodak, real bitstreams; family BD-rate against CompressAI's published curve).
#
#   bash tools/train_family.sh [STEPS]      # default 600 steps each; resumable: a rerun on the same quality-3
#                                           # baseline continues runs/family/*, a newer baseline starts afresh
#
# Training sees only ../shared/data/train (a validation split of it decides the learning-rate decay).
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-600}
BASE=${BASE:-artifacts/bmshj2018-factorized-q3.pth.tar}
PY=${PY:-.venv/bin/python}
mkdir -p runs/family
BASE_STEP=$("$PY" -c "import sys, torch; print(torch.load(sys.argv[1], map_location='cpu', weights_only=True)['train_state']['step'])" "$BASE")
for q in ${QUALITIES:-1 2 4 5}; do
  run="runs/family/q$q-from-q3-step$BASE_STEP.train.pth.tar"
  "$PY" -m deepcomp.cli train --quality "$q" --init "$BASE" -o "$run" \
    --steps "$STEPS" --batch-size 8 --patch-size 128 --val-every 200 ${THREADS:+--threads $THREADS}
  "$PY" -m deepcomp.cli export "$run" -o "artifacts/bmshj2018-factorized-q$q.pth.tar"
done
"$PY" tools/baseline_card.py artifacts/bmshj2018-factorized-q[1-5].pth.tar --data ../shared/data/kodak
