#!/usr/bin/env bash
# The bmshj2018-hyperprior baseline at quality 3, seeded with the factorized quality-3 baseline's transforms:
# the two models share g_a and g_s (N=128, M=192), so only h_a, h_s and the entropy bottleneck on z start from
# scratch (`deepcomp train --init-matching`), at SCRATCH_LR (the seeded transforms at 1e-4). Then ANNEAL steps at
# ANNEAL_LR, all on 128x128 crops. Then LARGE_STEPS more at 1e-4 on LARGE_PATCH crops (in a run of its own) and
# ANNEAL steps again: on 128x128 crops z is 2x2, every position at a border, and the scales h_s learns there
# overestimate how cheap whole photos are (tools/size_dependence.py; docs/TRAINING.md). Last, the export and its
# model card (Kodak, real bitstreams, against CompressAI's published hyperprior curve).
#
#   bash tools/run.sh bash tools/train_hyperprior.sh [STEPS]   # default 6000 steps at lr 1e-4, then ANNEAL steps;
#                                                # resumable: a rerun on the same factorized baseline continues its run
#                                                # in runs/hyperprior/, a newer factorized baseline starts afresh
#   LARGE_STEPS=4000 LARGE_PATCH=256             # the second phase (default 4000 steps on 256x256; 0: none)
#   MINUTES=50                                   # stop each 1e-4 phase after 50 minutes (a rerun continues it)
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
shared=(--arch bmshj2018-hyperprior --quality 3 --batch-size 8 --val-every 250 ${THREADS:+--threads $THREADS}
  ${PRECISION:+--precision $PRECISION})
if [ "${COMPILE:-0}" = 1 ]; then shared+=(--compile); fi
common=(-o "$RUN" --patch-size 128 "${shared[@]}")
reached() {  # reached RUN STEPS [WHAT]: a run a time limit stopped short says so and ends the script (a rerun goes on)
  local step
  step=$("$PY" tools/checkpoint_step.py "$1")
  if [ "$step" -lt "$2" ]; then
    echo "tools/train_hyperprior.sh: stopped at step $step of $2${3:+ on $3} (time limit); rerun to continue" >&2
    exit 0
  fi
}
mkdir -p runs/hyperprior
"$PY" -m deepcomp.cli train "${common[@]}" --init "$BASE" --init-matching \
  --scratch-lr "$SCRATCH_LR" --steps "$STEPS" ${MINUTES:+--minutes $MINUTES}
reached "$RUN" "$STEPS"
if [ "$ANNEAL" -gt 0 ]; then
  "$PY" -m deepcomp.cli train "${common[@]}" --steps $((STEPS + ANNEAL)) --lr "$ANNEAL_LR"
fi
EXPORT=$RUN
LARGE_STEPS=${LARGE_STEPS:-4000}
if [ "$LARGE_STEPS" -gt 0 ]; then
  # the second phase continues the annealed run at 1e-4 (every parameter group) on larger crops, in a run of its own
  LARGE_PATCH=${LARGE_PATCH:-256}
  EXPORT=${RUN%.train.pth.tar}-p$LARGE_PATCH.train.pth.tar
  end=$((STEPS + ANNEAL + LARGE_STEPS))
  large=(-o "$EXPORT" --patch-size "$LARGE_PATCH" "${shared[@]}")
  "$PY" -m deepcomp.cli train "${large[@]}" --resume "$RUN" --steps "$end" --lr 1e-4 ${MINUTES:+--minutes $MINUTES}
  reached "$EXPORT" "$end" "${LARGE_PATCH}x$LARGE_PATCH crops"
  if [ "$ANNEAL" -gt 0 ]; then
    "$PY" -m deepcomp.cli train "${large[@]}" --steps $((end + ANNEAL)) --lr "$ANNEAL_LR"
  fi
fi
"$PY" -m deepcomp.cli export "$EXPORT" -o "$OUT"
"$PY" tools/baseline_card.py "$OUT" --data ../shared/data/kodak
