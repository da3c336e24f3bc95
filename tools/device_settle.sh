#!/usr/bin/env bash
# After a device call (tools/device_train.sh), here on the CPU: settle each returned model on the PNG training photos
# (ANNEAL steps at ANNEAL_LR, as every baseline ends; the device trained on JPEG copies at lr 1e-4), export it to
# artifacts/in-training/ and write its model card there (Kodak, real bitstreams). The validation loss each run logs is
# on the same validation crops as the shipped baselines' cards, so the two compare; a model replaces the shipped one
# only when its validation loss is lower (Kodak never decides), by copying it over artifacts/bmshj2018-factorized-qQ.pth.tar.
#
#   bash tools/run.sh bash tools/device_settle.sh DIR      # DIR: where the device call's files landed (files_at)
#   ANNEAL=300 ANNEAL_LR=1e-5 THREADS=2
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:?usage: tools/device_settle.sh DIR (the folder holding the bmshj2018-factorized-q*.pth.tar returned by the device call)}
ANNEAL=${ANNEAL:-300}
ANNEAL_LR=${ANNEAL_LR:-1e-5}
PY=${PY:-python}
shopt -s nullglob
models=("$DIR"/bmshj2018-factorized-q[1-6].pth.tar)
[ ${#models[@]} -gt 0 ] || { echo "device_settle: no bmshj2018-factorized-q*.pth.tar in $DIR" >&2; exit 1; }
mkdir -p runs/device artifacts/in-training
out=()
for f in "${models[@]}"; do
  name=$(basename "$f" .pth.tar)
  q=${name##*-q}
  step=$("$PY" tools/checkpoint_step.py "$f")
  run=runs/device/$name-settled.train.pth.tar
  rm -f "$run"
  "$PY" -m deepcomp.cli train --quality "$q" --resume "$f" -o "$run" --steps $((step + ANNEAL)) --lr "$ANNEAL_LR" \
    --val-every 100 --batch-size 8 --patch-size 128 ${THREADS:+--threads $THREADS} --quiet
  "$PY" -m deepcomp.cli export "$run" -o "artifacts/in-training/$name.pth.tar"
  out+=("artifacts/in-training/$name.pth.tar")
done
"$PY" tools/baseline_card.py "${out[@]}" --data ../shared/data/kodak
