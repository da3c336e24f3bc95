#!/usr/bin/env bash
# Continue training a baseline (the factorized quality 3 unless ARCH=, QUALITY=) across sessions, without touching the shipped
# family: the run trains in runs/qQlong/ (resumable; lr 1e-4 at first, halved on validation plateaus), and each call ends by annealing a copy of it
# (ANNEAL steps at ANNEAL_LR), exporting that copy to artifacts/in-training/ and writing its model card there
# (Kodak, real bitstreams, against CompressAI's published curve). The next session resumes the run in runs/q3long/
# or, on a fresh clone, the committed copy in artifacts/in-training/ (none: the shipped baseline). Once it is far
# enough ahead, it replaces the shipped artifacts/bmshj2018-factorized-qQ.pth.tar (copy it there; its copy in
# artifacts/in-training/ then goes); for quality 3, tools/train_family.sh then fine-tunes the other qualities from it
# (docs/TRAINING.md).
#
#   bash tools/run.sh bash tools/continue_baseline.sh STEPS   # train up to STEPS (total, counting the baseline's own)
#   MINUTES=120                                     # stop the training phase after 120 minutes (then anneal and card as usual)
#   ANNEAL=300 ANNEAL_LR=1e-5 THREADS=2
#   QUALITY=5                                       # another quality of the family (default 3)
#   ARCH=bmshj2018-hyperprior                       # another architecture (default bmshj2018-factorized): its run
#                                                   # trains in runs/hyperprior-q3long/, its export is
#                                                   # DEST/bmshj2018-hyperprior-q3.pth.tar (a fresh run resumes that)
#   PRECISION=bf16                                  # deepcomp train --precision (docs/TRAINING.md)
#   COMPILE=1                                       # deepcomp train --compile (torch.compile the transforms)
#   LR=1e-4 LR_PATIENCE=4                           # the training phase's rate (default: the rate the run in runs/qQlong/
#                                                   # had reached; 1e-4 for a fresh run), and validations without
#                                                   # improvement before it halves (deepcomp train --lr-patience)
#   PATCH=256                                       # crop size (default 128; batch 8 either way)
#   RUNDIR=runs/q3p256 DEST=runs/q3p256/model       # a branch beside the main run: its own run folder and export
#   START=artifacts/in-training/bmshj2018-factorized-q3.pth.tar   # what a fresh run resumes (default: DEST's model,
#                                                   # else the shipped one)
#
# Training sees only ../shared/data/train (a validation split of it decides the learning-rate decay); Kodak is only
# evaluated, for the card.
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:?usage: tools/continue_baseline.sh STEPS (the total step count to train up to)}
ANNEAL=${ANNEAL:-300}
ANNEAL_LR=${ANNEAL_LR:-1e-5}
PY=${PY:-python}
Q=${QUALITY:-3}
ARCH=${ARCH:-bmshj2018-factorized}
if [ "$ARCH" = bmshj2018-factorized ]; then RUNDIR=${RUNDIR:-runs/q${Q}long}; else RUNDIR=${RUNDIR:-runs/${ARCH#bmshj2018-}-q${Q}long}; fi
RUN=$RUNDIR/q$Q.train.pth.tar
ANNEALED=$RUNDIR/q$Q-annealed.train.pth.tar
OUT=${DEST:-artifacts/in-training}/$ARCH-q$Q.pth.tar
if [ -n "${START:-}" ]; then
  [ -f "$START" ] || { echo "continue_baseline.sh: START=$START: no such file" >&2; exit 1; }
else
  START=$OUT
  [ -f "$START" ] || START=artifacts/$ARCH-q$Q.pth.tar
fi
common=(--arch "$ARCH" --quality "$Q" --batch-size 8 --patch-size "${PATCH:-128}" ${THREADS:+--threads $THREADS} ${PRECISION:+--precision $PRECISION})
if [ "${COMPILE:-0}" = 1 ]; then common+=(--compile); fi
mkdir -p "$RUNDIR" "$(dirname "$OUT")"

# the training phase: the run in runs/qQlong/ continues itself at the rate its plateau rule had reached (LR= sets
# another); a fresh one resumes START (which ends at 1e-5) at LR, default 1e-4
lr=${LR:-}
[ -n "$lr" ] || [ -f "$RUN" ] || lr=1e-4
"$PY" -m deepcomp.cli train "${common[@]}" --resume "$START" -o "$RUN" --steps "$STEPS" ${lr:+--lr $lr} --val-every 250 \
  ${LR_PATIENCE:+--lr-patience $LR_PATIENCE} \
  ${MINUTES:+--minutes $MINUTES}
step=$("$PY" tools/checkpoint_step.py "$RUN")
# the annealed copy starts afresh from the run each time
rm -f "$ANNEALED"
EXPORT=$RUN
if [ "$ANNEAL" -gt 0 ]; then
  "$PY" -m deepcomp.cli train "${common[@]}" --resume "$RUN" -o "$ANNEALED" --steps $((step + ANNEAL)) --lr "$ANNEAL_LR" --val-every 100
  EXPORT=$ANNEALED
fi
"$PY" -m deepcomp.cli export "$EXPORT" -o "$OUT"
"$PY" tools/baseline_card.py "$OUT" --data ../shared/data/kodak
