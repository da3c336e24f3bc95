#!/usr/bin/env bash
# Continue training the factorized quality-3 baseline across sessions, without touching the shipped family:
# the run trains at lr 1e-4 in runs/q3long/ (resumable), and each call ends by annealing a copy of it
# (ANNEAL steps at ANNEAL_LR), exporting that copy to artifacts/in-training/ and writing its model card there
# (Kodak, real bitstreams, against CompressAI's published curve). The next session resumes the run in runs/q3long/
# or, on a fresh clone, the committed copy in artifacts/in-training/ (none: the shipped quality 3). Once it is far
# enough ahead, it replaces artifacts/bmshj2018-factorized-q3.pth.tar (copy it there; artifacts/in-training/ then goes)
# and tools/train_family.sh fine-tunes the other qualities from it (docs/TRAINING.md).
#
#   bash tools/run.sh bash tools/continue_baseline.sh STEPS   # train up to STEPS (total, counting the baseline's own)
#   MINUTES=120                                     # stop the 1e-4 phase after 120 minutes (then anneal and card as usual)
#   ANNEAL=300 ANNEAL_LR=1e-5 THREADS=2
#
# Training sees only ../shared/data/train (a validation split of it decides the learning-rate decay); Kodak is only
# evaluated, for the card.
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:?usage: tools/continue_baseline.sh STEPS (the total step count to train up to)}
ANNEAL=${ANNEAL:-300}
ANNEAL_LR=${ANNEAL_LR:-1e-5}
PY=${PY:-python}
RUN=runs/q3long/q3.train.pth.tar
ANNEALED=runs/q3long/q3-annealed.train.pth.tar
OUT=artifacts/in-training/bmshj2018-factorized-q3.pth.tar
START=$OUT
[ -f "$START" ] || START=artifacts/bmshj2018-factorized-q3.pth.tar
common=(--quality 3 --batch-size 8 --patch-size 128 ${THREADS:+--threads $THREADS})
mkdir -p runs/q3long "$(dirname "$OUT")"

# the 1e-4 phase: the run in runs/q3long/ continues itself; a fresh one resumes START (which may end at 1e-5)
"$PY" -m deepcomp.cli train "${common[@]}" --resume "$START" -o "$RUN" --steps "$STEPS" --lr 1e-4 --val-every 250 \
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
