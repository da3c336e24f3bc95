#!/usr/bin/env bash
# The bmshj2018-factorized family: qualities 1, 2, 4 and 5 fine-tuned from the quality-3 baseline
# (they share N=128, M=192), each with its own CompressAI lambda, then exported next to it with
# model cards for all five (Kodak, real bitstreams; family BD-rate against CompressAI's published curve).
#
#   bash tools/run.sh bash tools/train_family.sh [STEPS]   # default 600 steps each at lr 1e-4, then ANNEAL steps at ANNEAL_LR;
#                                           # resumable: a rerun on the same quality-3 baseline continues
#                                           # runs/family/*, a newer baseline starts afresh
#   ANNEAL=200 ANNEAL_LR=1e-5               # the final low-learning-rate steps (0: none); see docs/TRAINING.md
#   JOBS=2 THREADS=1                        # qualities trained side by side (logs in runs/family/q*.log)
#   PRECISION=bf16 COMPILE=1                # deepcomp train --precision, --compile (docs/TRAINING.md)
#   LR=5e-5 LR_PATIENCE=12                  # the first phase's --lr (default: 1e-4 for a new run, a resumed run's own rate)
#                                           # and --lr-patience; with a larger STEPS, continues the runs in runs/family/
#   DEST=artifacts/in-training              # where the models and cards go (default artifacts/, the shipped family);
#                                           # the quality-3 seed is DEST's quality 3 unless BASE= names another
#
# Training sees only ../shared/data/train (a validation split of it decides the learning-rate decay).
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-600}
ANNEAL=${ANNEAL:-200}
ANNEAL_LR=${ANNEAL_LR:-1e-5}
JOBS=${JOBS:-1}
DEST=${DEST:-artifacts}
BASE=${BASE:-$DEST/bmshj2018-factorized-q3.pth.tar}
PY=${PY:-python}
mkdir -p runs/family
BASE_STEP=$("$PY" tools/checkpoint_step.py "$BASE")

fine_tune() {
  local q=$1 run="runs/family/q$1-from-q3-step$BASE_STEP.train.pth.tar"
  local common=(--quality "$q" -o "$run" --batch-size 8 --patch-size 128 --val-every 200 ${THREADS:+--threads $THREADS} ${PRECISION:+--precision $PRECISION})
  if [ "${COMPILE:-0}" = 1 ]; then common+=(--compile); fi
  "$PY" -m deepcomp.cli train "${common[@]}" --init "$BASE" --steps "$STEPS" ${LR:+--lr $LR} \
    ${LR_PATIENCE:+--lr-patience $LR_PATIENCE}
  if [ "$ANNEAL" -gt 0 ]; then
    "$PY" -m deepcomp.cli train "${common[@]}" --steps $((STEPS + ANNEAL)) --lr "$ANNEAL_LR"
  fi
  "$PY" -m deepcomp.cli export "$run" -o "$DEST/bmshj2018-factorized-q$q.pth.tar"
}

running=()
for q in ${QUALITIES:-1 2 4 5}; do
  if [ "$JOBS" -le 1 ]; then
    fine_tune "$q"
    continue
  fi
  fine_tune "$q" > "runs/family/q$q.log" 2>&1 &
  running+=($!)
  if [ ${#running[@]} -ge "$JOBS" ]; then
    wait "${running[0]}"
    running=("${running[@]:1}")
  fi
done
for pid in "${running[@]}"; do wait "$pid"; done
"$PY" tools/baseline_card.py "$DEST"/bmshj2018-factorized-q[1-5].pth.tar --data ../shared/data/kodak
