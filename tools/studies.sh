#!/usr/bin/env bash
# Every study result in artifacts/ (what the README shows), one step each or all of them:
#
#   bash tools/run.sh bash tools/studies.sh [STEP ...]      # default: every step, in this order
#
#   sensitivity  per-layer RD sensitivity of the quality-3 baseline to pruning ratio and bit width on validation
#                crops of the training photos, and the allocator's per-layer policy for a 20x file
#                (artifacts/sensitivity/: sensitivity.json/.png, policy.json; ~25 min on one core)
#   allocated    deepcomp pipeline on quality 3 with that allocated 20x policy, retrained like the headline
#                (artifacts/sensitivity/allocated-20x-q3-stages.md; ~20 min on 2 cores), and allocated for 23.5x with
#                4, 5 or 6 bits per layer (alloc23.5-bits456-q3-stages.md / -policy.json; ~35 min on one core)
#   headline     deepcomp pipeline on qualities 1-4 at nine settings: one pruning ratio for every conv weight (prune
#                0.8 / 0.7 with 4-bit sharing, 0.85 / 0.6 / 0.5 with 5 bits) and per-layer ratios that the allocator picks
#                from each quality's own sensitivity for a 23.5x, a 21x, a 15x and a 13x file, with 5-bit sharing
#                (alloc23.5-bits5, alloc21-bits5, alloc15-bits5, alloc13-bits5); each pruned in four AGP rounds over 1,000 steps of
#                masked retraining, then 200 centroid steps, the tensors left unshared (biases, GDN betas, the entropy
#                bottleneck) stored in fp16 (free: tools/raw_fp16.py); the family's BD-rate per stage, and every quality's control:
#                the baseline trained on, unpruned, for the same 1,200 steps, the last 200 at the centroid fine-tuning's
#                lr 1e-5 as the pipeline ends; the headline is judged against the controls (artifacts/headline/;
#                ~15-25 min a quality and setting, about as long for each control, on one core; settings can run side
#                by side as separate headline.py calls with one --setting each and the same --work, then one call with
#                all of them reports)
#   controls     the same controls against the shipped >= 20x setting's (alloc21-bits5) final files in
#                artifacts/headline/models, as a family BD-rate (artifacts/headline/controls.md). The controls need no
#                final file to train: to use both cores, run `THREADS=1 ... studies.sh controls` beside
#                `THREADS=1 ... studies.sh headline` (it stops with "no final file" once its controls are trained),
#                then `studies.sh headline controls` again, which only reports
#   retraining   the shipped setting (alloc21-bits5) retrained three times as long: 3,000 masked steps in four AGP rounds,
#                300 centroid steps, against controls trained as long (3,000 at lr 1e-4 + 300 at 1e-5); qualities
#                LONG_QUALITIES (default 3; "1 2 3 4" gives the family BD-rate), settings LONG_SETTINGS (default the
#                shipped one; the controls are shared) (artifacts/retraining/<setting>-3000steps/;
#                ~55 min a quality and setting for the pipeline and ~45 min a quality for its control, on one core)
#   qat          the longer retraining's final files of qualities LONG_QUALITIES (the pipelines of step retraining, run
#                here without the controls if missing), each fine-tuned quantization-aware with `deepcomp finetune --mode
#                nearest` (a weight may change cluster; 600 steps at lr 3e-5), against the baselines on Kodak
#                and against the controls of step retraining, or else of the headline, when trained (artifacts/quantization-aware/;
#                ~30 min a quality on one core after its pipeline)
#   granularity  quality 3 at the shipped setting pruned by whole kernels instead of single weights
#                (alloc21-bits5-kernel: the kept kernels' positions cost one gap each), against the same setting pruned
#                weight by weight and the control, the headline's retraining (artifacts/granularity/; ~45 min on one core
#                beside the headline's work, which it shares)
#   anneal       quality 3 at the shipped setting with the retraining's last 200 steps at lr 1e-5 after the last pruning
#                round (--anneal-steps 200; rounds over the first 800), against a control annealed as long (800 steps at
#                1e-4, 400 at 1e-5) (artifacts/anneal/; ~45 min on one core)
#   distill      quality 3 at the shipped setting with layer-wise distillation from the baseline in both fine-tunings
#                (--distill W for each W in DISTILL_WEIGHTS, default 10; 100 was stopped early), against the headline's control
#                (artifacts/distillation/weight<W>/; ~70 min a weight on one core: the teacher's forward makes a step about
#                40 % longer; the headline's control, baseline evaluation and sensitivity are reused when present)
#   parts        the encoder, decoder and probability model pruned alone and together at 0.3/0.5/0.7, with and
#                without retraining, and a retrained unpruned control (artifacts/parts/; ~1 h)
#   structured   channel pruning of quality 3 to 25 % and 50 % fewer MACs, allocated from the RD sensitivity and
#                uniform, fine-tuned, shared and timed, with the unpruned baseline fine-tuned as long (control) (artifacts/structured/; ~1 h)
#   comparison   gzip/xz/zstd/fp16/int8/NNC against deepcomp without retraining and the headline's files on
#                qualities 1-4, and LZMA latents against the range coder (artifacts/comparison/; ~40 min; NNC
#                needs `pip install nncodec`)
#
# HEADLINE_SETTINGS (default: the nine above) runs the headline on some settings only; its report then has only those.
# THREADS (default 2) sets the torch threads; the committed runs used THREADS=1 with two studies side by side.
# Each step is resumable: the large intermediate files stay in runs/studies-<hash of the baselines>/ and a rerun skips
# what is finished.
# Training and every analysis read only ../shared/data/train; Kodak is only evaluated.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python}
THREADS=${THREADS:-2}
B=artifacts/bmshj2018-factorized
FAMILY=($B-q1.pth.tar $B-q2.pth.tar $B-q3.pth.tar $B-q4.pth.tar)
# the work folders are named after the baselines they study (a hash of q1-q5): once a baseline is retrained, every
# step starts afresh in new folders instead of resuming (or refusing) work done on the old one
W=runs/studies-$(cat $B-q[1-5].pth.tar | sha256sum | cut -c1-8)
mkdir -p "$W"
HEADLINE=(--retrain-steps 1000 --prune-rounds 4 --centroid-steps 200 --lr 1e-4 --centroid-lr 1e-5
          --control-schedule matched --raw-storage fp16 -o artifacts/headline --work $W/headline)
SHIPPED=alloc21-bits5  # the setting whose files headline.py ships at >= 20x (models/): the controls and the comparison read them
SETTINGS=()
for s in ${HEADLINE_SETTINGS:-prune0.85-bits5 prune0.8-bits4 prune0.7-bits4 prune0.6-bits5 prune0.5-bits5 alloc23.5-bits5 alloc21-bits5 alloc15-bits5 alloc13-bits5}; do
  SETTINGS+=(--setting "$s")
done
# the sensitivity does not depend on the retraining: the longer retraining of setting $1 reuses the headline's
long_sensitivity() {
  for q in ${LONG_QUALITIES:-3}; do
    mkdir -p $W/long3000/$1/q$q
    [ -f $W/headline/$1/q$q/sensitivity.json ] && cp -n $W/headline/$1/q$q/sensitivity.json $W/long3000/$1/q$q/ || true
  done
}
steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(sensitivity allocated headline controls retraining qat granularity anneal distill parts structured comparison)
for step in "${steps[@]}"; do
  case "$step" in
    sensitivity)
      "$PY" -m deepcomp.cli pipeline $B-q3.pth.tar -o $W/sensitivity-q3 --target-ratio 20 --stop-after policy \
        --threads "$THREADS" --quiet
      mkdir -p artifacts/sensitivity
      cp $W/sensitivity-q3/sensitivity.json $W/sensitivity-q3/sensitivity.png $W/sensitivity-q3/policy.json \
        artifacts/sensitivity/ ;;
    allocated)
      mkdir -p $W/alloc20-q3
      [ -f $W/alloc20-q3/sensitivity.json ] || cp artifacts/sensitivity/sensitivity.json $W/alloc20-q3/
      "$PY" -m deepcomp.cli pipeline $B-q3.pth.tar -o $W/alloc20-q3 --target-ratio 20 --retrain-steps 1000 --prune-rounds 4 \
        --centroid-steps 200 --lr 1e-4 --centroid-lr 1e-5 --batch-size 8 --patch-size 128 --val-every 200 --threads "$THREADS" --quiet
      cp $W/alloc20-q3/stages.md artifacts/sensitivity/allocated-20x-q3-stages.md
      "$PY" -m deepcomp.cli pipeline $B-q3.pth.tar -o $W/alloc23.5-bits456-q3 --target-ratio 23.5 --sens-bits 4 5 6 \
        --sens-ratios 0 0.5 0.6 0.7 0.75 0.8 0.85 0.9 0.95 0.97 --retrain-steps 1000 --prune-rounds 4 --centroid-steps 200 \
        --lr 1e-4 --centroid-lr 1e-5 --batch-size 8 --patch-size 128 --val-every 200 --threads "$THREADS" --quiet
      cp $W/alloc23.5-bits456-q3/stages.md artifacts/sensitivity/alloc23.5-bits456-q3-stages.md
      cp $W/alloc23.5-bits456-q3/policy.json artifacts/sensitivity/alloc23.5-bits456-q3-policy.json ;;
    headline)
      "$PY" tools/headline.py "${FAMILY[@]}" "${SETTINGS[@]}" "${HEADLINE[@]}" --control --threads "$THREADS" --quiet ;;
    controls)
      "$PY" tools/headline.py "${FAMILY[@]}" --setting "$SHIPPED" "${HEADLINE[@]}" --control --controls-only --threads "$THREADS" --quiet ;;
    retraining)
      long=(); for q in ${LONG_QUALITIES:-3}; do long+=($B-q$q.pth.tar); done
      for s in ${LONG_SETTINGS:-$SHIPPED}; do
        long_sensitivity "$s"
        "$PY" tools/headline.py "${long[@]}" --setting "$s" --retrain-steps 3000 --prune-rounds 4 --centroid-steps 300 \
          --lr 1e-4 --centroid-lr 1e-5 --batch-size 8 --patch-size 128 --val-every 250 --control --control-schedule matched \
          --raw-storage fp16 -o artifacts/retraining/$s-3000steps --work $W/long3000 --threads "$THREADS" --quiet
      done ;;
    qat)
      # the longer retraining's final files (step retraining, pipelines only; its controls are not needed here), each
      # fine-tuned quantization-aware (a weight may change cluster) for 600 steps at lr 3e-5, against the baselines
      long_sensitivity $SHIPPED
      long=(); fam=(); for q in ${LONG_QUALITIES:-3}; do
        long+=($B-q$q.pth.tar); fam+=(--baseline $B-q$q.pth.tar --file $W/long3000/$SHIPPED/q$q/final.dcmp)
      done
      "$PY" tools/headline.py "${long[@]}" --setting $SHIPPED --retrain-steps 3000 --prune-rounds 4 --centroid-steps 300 \
        --lr 1e-4 --centroid-lr 1e-5 --batch-size 8 --patch-size 128 --val-every 250 --control-schedule matched \
        --raw-storage fp16 -o $W/long3000/report --work $W/long3000 --threads "$THREADS" --quiet
      # against controls too: step retraining's (3,300 unpruned steps) when every quality's is trained, else the headline's (1,200)
      ctl=()
      for cdir in $W/long3000/control-3300steps-lr0.0001-then1e-05from3000 $W/headline/control-1200steps-lr0.0001-then1e-05from1000; do
        ok=1; for q in ${LONG_QUALITIES:-3}; do grep -qs '"done": true' $cdir/q$q/record.json || ok=0; done
        if [ $ok = 1 ]; then ctl=(--controls $cdir); break; fi
      done
      "$PY" tools/finetune_family.py "${fam[@]}" "${ctl[@]}" --mode nearest --steps 600 --lr 3e-5 --val-every 150 --work $W/qat600 \
        -o artifacts/quantization-aware/$SHIPPED-3000steps-nearest600 --keep --threads "$THREADS" --quiet ;;
    granularity)
      "$PY" tools/headline.py $B-q3.pth.tar --setting $SHIPPED --setting $SHIPPED-kernel "${HEADLINE[@]/artifacts\/headline/artifacts/granularity}" \
        --control --threads "$THREADS" --quiet ;;
    anneal)
      "$PY" tools/headline.py $B-q3.pth.tar --setting $SHIPPED --retrain-steps 1000 --anneal-steps 200 --prune-rounds 4 --centroid-steps 200 \
        --lr 1e-4 --centroid-lr 1e-5 --control-schedule matched --raw-storage fp16 -o artifacts/anneal --work $W/anneal200 \
        --control --threads "$THREADS" --quiet ;;
    distill)
      for w in ${DISTILL_WEIGHTS:-10}; do
        mkdir -p $W/distill$w/$SHIPPED/q3
        # the control, the baselines' evaluation and the sensitivity do not depend on the distillation
        for d in $W/headline/control-* $W/headline/baselines; do [ -d "$d" ] && cp -rn "$d" $W/distill$w/; done
        [ -f $W/headline/$SHIPPED/q3/sensitivity.json ] && cp -n $W/headline/$SHIPPED/q3/sensitivity.json $W/distill$w/$SHIPPED/q3/
        args=("${HEADLINE[@]/artifacts\/headline/artifacts/distillation/weight$w}")
        "$PY" tools/headline.py $B-q3.pth.tar --setting $SHIPPED --distill $w "${args[@]/$W\/headline/$W/distill$w}" \
          --control --threads "$THREADS" --quiet
      done ;;
    parts)
      "$PY" tools/part_pruning.py $B-q3.pth.tar -o artifacts/parts --work $W/parts --retrain-steps 200 \
        --batch-size 8 --patch-size 128 --threads "$THREADS" --quiet ;;
    structured)
      "$PY" tools/structured_pruning.py $B-q3.pth.tar -o artifacts/structured --targets 0.25 0.5 --cost macs --uniform --control \
        --finetune-steps 500 --batch-size 8 --patch-size 128 --bits 8 --threads "$THREADS" --quiet ;;
    comparison)
      models=()
      for q in 1 2 3 4; do models+=(--model "deepcomp-retrained=artifacts/headline/models/bmshj2018-factorized-q$q-$SHIPPED.dcmp"); done
      "$PY" tools/compare_storage.py "${FAMILY[@]}" --data ../shared/data/kodak -o artifacts/comparison \
        --work $W/comparison --deepcomp share8 share5 "${models[@]}" --threads "$THREADS" --quiet ;;
    *) echo "tools/studies.sh: unknown step '$step' (sensitivity allocated headline controls retraining qat granularity anneal distill parts structured comparison)" >&2; exit 2 ;;
  esac
done
