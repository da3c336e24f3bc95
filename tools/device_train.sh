#!/usr/bin/env bash
# One training call on the device machine (CUDA): continue the factorized quality-3 baseline (SEED) for Q3_MINUTES at CompressAI's
# batch and crop (16 x 256x256), then fine-tune qualities 1, 2, 4 and 5 from it side by side on the same GPU for
# FAMILY_MINUTES, each with its own lambda. The five models come back through $OUT as CompressAI-loadable .pth.tar files
# (12 MB each, weights and training history; the Adam moments stay behind, as the 16 MiB-a-file limit wants) and one
# log, device.log (six files: the tool brings back at most eight).
#
#   bash tools/run.sh python tools/device_kit.py prepare   # here, first: wheels, photos, a working tree small enough to travel
#   run(command="bash tools/device_train.sh 4 3", carry=[".whl", ".devdata"], timeout_s=600)
#   bash tools/run.sh python tools/device_kit.py restore   # here, at once
#
# Then, here, on the CPU: settle each returned model on the PNG photos (300 steps at lr 1e-5, as every baseline ends),
# compare its validation loss with the shipped one's and write the cards (docs/TRAINING.md, "On the device machine").
#
# Environment: DATA (photos, default .devdata/photos), SEED (default: the quality 3 in training,
# artifacts/in-training/bmshj2018-factorized-q3.pth.tar, where the tree has it, else the shipped artifacts/bmshj2018-factorized-q3.pth.tar),
# BATCH (16), PATCH (256), QUALITIES (1 2 4 5; empty: quality 3 only), WORK (/tmp/devtrain), PY (python3),
# PRECISION (fp32; bf16 is measured on the CPU only, docs/TRAINING.md).
# It also runs on the CPU with small numbers (tests/test_device_kit.py does), which is how it is checked here.
set -euo pipefail
cd "$(dirname "$0")/.."
Q3_MINUTES=${1:?usage: tools/device_train.sh Q3_MINUTES FAMILY_MINUTES}
FAMILY_MINUTES=${2:?usage: tools/device_train.sh Q3_MINUTES FAMILY_MINUTES}
: "${OUT:?OUT must name the folder whose files come back (the device tool sets it)}"
PY=${PY:-python3}
DATA=${DATA:-.devdata/photos}
if [ -z "${SEED:-}" ]; then
  SEED=artifacts/in-training/bmshj2018-factorized-q3.pth.tar
  [ -f "$SEED" ] || SEED=artifacts/bmshj2018-factorized-q3.pth.tar
fi
BATCH=${BATCH:-16}
PATCH=${PATCH:-256}
QUALITIES=${QUALITIES-1 2 4 5}
WORK=${WORK:-/tmp/devtrain}
export PYTHONUNBUFFERED=1
mkdir -p "$WORK" "$OUT"

# compressai, bitarray, dahuffman and pytorch-msssim travel as cp312 wheels in .whl/ (the rest is on the machine)
if ! "$PY" -c "import compressai, bitarray, dahuffman, pytorch_msssim" 2>/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else '')" \
  | tee "$OUT/device.log"
echo "seed: $SEED" | tee -a "$OUT/device.log"

common=(--batch-size "$BATCH" --patch-size "$PATCH" --data "$DATA" --steps 100000000 --precision "${PRECISION:-fp32}" --quiet)
# quality 3 resumes the seed's run (its step, history and plateau state) at lr 1e-4
"$PY" -m deepcomp.cli train --quality 3 --resume "$SEED" -o "$WORK/q3.train.pth.tar" --lr 1e-4 --val-every 500 \
  --minutes "$Q3_MINUTES" "${common[@]}" > "$WORK/q3.log" 2>&1 || { cat "$WORK/q3.log" >> "$OUT/device.log"; tail -5 "$WORK/q3.log"; exit 1; }
"$PY" -m deepcomp.cli export "$WORK/q3.train.pth.tar" -o "$OUT/bmshj2018-factorized-q3.pth.tar" >> "$OUT/device.log"
tail -2 "$WORK/q3.log"

# the other qualities start from it, all at once (the model is small for the GPU)
pids=()
for q in $QUALITIES; do
  "$PY" -m deepcomp.cli train --quality "$q" --init "$OUT/bmshj2018-factorized-q3.pth.tar" -o "$WORK/q$q.train.pth.tar" \
    --val-every 250 --minutes "$FAMILY_MINUTES" "${common[@]}" > "$WORK/q$q.log" 2>&1 &
  pids+=($!)
done
failed=0
for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
for q in $QUALITIES; do
  if [ -f "$WORK/q$q.train.pth.tar" ]; then
    "$PY" -m deepcomp.cli export "$WORK/q$q.train.pth.tar" -o "$OUT/bmshj2018-factorized-q$q.pth.tar" >> "$OUT/device.log"
    tail -1 "$WORK/q$q.log"
  fi
done
for q in 3 $QUALITIES; do { echo "== q$q"; cat "$WORK/q$q.log"; } >> "$OUT/device.log"; done
[ "$failed" = 0 ] || { echo "a family fine-tune failed: see device.log"; exit 1; }
echo "done: $(ls "$OUT"/*.pth.tar | wc -l) models in \$OUT"
