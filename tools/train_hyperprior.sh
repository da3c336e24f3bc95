#!/usr/bin/env bash
# The bmshj2018-hyperprior baseline at quality 3, seeded with the factorized quality-3 baseline's transforms:
# the two models share g_a and g_s (N=128, M=192), so only h_a, h_s and the entropy bottleneck on z start from
# scratch (`deepcomp train --init-matching`), at SCRATCH_LR (the seeded transforms at 1e-4). Then ANNEAL steps at
# ANNEAL_LR, the export and its model card (Kodak, real bitstreams, against CompressAI's published hyperprior curve).
#
#   bash tools/run.sh bash tools/train_hyperprior.sh [STEPS]   # default 6000 steps at lr 1e-4, then ANNEAL steps;
#                                                # resumable: a rerun on the same factorized baseline continues its run
#                                                # in runs/hyperprior/, a newer factorized baseline starts afresh
#   MINUTES=50                                   # stop the 1e-4 phase after 50 minutes (a rerun continues it)
#   SCRATCH_LR=1e-3 ANNEAL=300 ANNEAL_LR=1e-5 THREADS=1
#   PRECISION=bf16 COMPILE=1                     # deepcomp train --precision, --compile (docs/TRAINING.md)
#   DEST=artifacts/in-training                   # where the model and its card go (default artifacts/, the shipped one)
#   BASE=artifacts/bmshj2018-factorized-q3.pth.tar     # the factorized model whose transforms seed it (default: DEST's
#                                                # factorized quality 3)
#
# Training sees only ../shared/data/train (a validation split of it decides the learning-rate decay).
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-6000}
ANNEAL=${ANNEAL:-300}
ANNEAL_LR=${ANNEAL_LR:-1e-5}
SCRATCH_LR=${SCRATCH_LR:-1e-3}
PY=${PY:-python}
DEST=${DEST:-artifacts}
BASE=${BASE:-$DEST/bmshj2018-factorized-q3.pth.tar}
RUN=runs/hyperprior/q3-from-factorized-step$("$PY" tools/checkpoint_step.py "$BASE").train.pth.tar
OUT=$DEST/bmshj2018-hyperprior-q3.pth.tar
common=(--arch bmshj2018-hyperprior --quality 3 -o "$RUN" --batch-size 8 --patch-size 128 --val-every 250 ${THREADS:+--threads $THREADS}
  ${PRECISION:+--precision $PRECISION})
if [ "${COMPILE:-0}" = 1 ]; then common+=(--compile); fi
mkdir -p runs/hyperprior
"$PY" -m deepcomp.cli train "${common[@]}" --init "$BASE" --init-matching \
  --scratch-lr "$SCRATCH_LR" --steps "$STEPS" ${MINUTES:+--minutes $MINUTES}
step=$("$PY" tools/checkpoint_step.py "$RUN")
if [ "$step" -lt "$STEPS" ]; then
  echo "tools/train_hyperprior.sh: stopped at step $step of $STEPS (time limit); rerun to continue" >&2
  exit 0
fi
if [ "$ANNEAL" -gt 0 ]; then
  "$PY" -m deepcomp.cli train "${common[@]}" --steps $((STEPS + ANNEAL)) --lr "$ANNEAL_LR"
fi
"$PY" -m deepcomp.cli export "$RUN" -o "$OUT"
"$PY" tools/baseline_card.py "$OUT" --data ../shared/data/kodak
