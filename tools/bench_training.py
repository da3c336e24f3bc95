"""Time training steps of `deepcomp train` by precision, memory layout and compilation, as ratios against fp32 in PyTorch's default layout.

    bash tools/run.sh python tools/bench_training.py [--baseline CKPT] [--threads 1] [--steps 4] [--rounds 3]

Each mode trains its own copy of the baseline through `training.train_steps` (the code `deepcomp train` runs: RD loss,
backward, clipping, both Adams) on the same random crops of the training photos (batch 8, 128x128 unless given);
rounds alternate the modes, so a load that comes and goes weighs on all of them alike; round 0 warms up (and compiles)
uncounted. Prints the best round's seconds a step and the speed-up over `fp32` (the layout `deepcomp train` used
before channels-last). `--modes` picks some of them (comma-separated names; fp32 always runs, as the reference).
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from deepcomp import zoo  # noqa: E402
from deepcomp.checkpoints import read_state_dict  # noqa: E402
from deepcomp.errors import DeepCompError  # noqa: E402
from deepcomp.training import CropSampler, TrainConfig, split_photos, train_steps  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODES = {  # name: (precision, channels-last, compiled transforms: deepcomp train --compile)
    "fp32": ("fp32", False, False),
    "fp32 channels-last": ("fp32", True, False),
    "bf16": ("bf16", False, False),
    "bf16 channels-last": ("bf16", True, False),
    "bf16 channels-last compiled": ("bf16", True, True),
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--baseline", type=Path, default=ROOT / "artifacts" / "bmshj2018-factorized-q3.pth.tar")
    p.add_argument("--quality", type=int, default=3)
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "train", help="training photos (never Kodak)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--patch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=4, help="steps a mode trains in each round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--modes", default=",".join(MODES), help="comma-separated modes to time (fp32 always runs); default: all")
    args = p.parse_args(argv)
    asked = set(args.modes.split(","))
    if asked - set(MODES):
        print(f"bench_training: unknown mode(s) {', '.join(sorted(asked - set(MODES)))}; choose from: {', '.join(MODES)}", file=sys.stderr)
        return 1
    modes = [m for m in MODES if m == "fp32" or m in asked]
    try:
        torch.set_num_threads(args.threads)
        base = zoo.build("bmshj2018-factorized", args.quality)
        zoo.assign_weights(base, read_state_dict(args.baseline), str(args.baseline))
        files, _ = split_photos(args.data, 0.1)
        runs = {}
        for name in modes:
            precision, channels_last, compiled = MODES[name]
            model = copy.deepcopy(base)
            if channels_last:
                model.to(memory_format=torch.channels_last)
            if compiled:  # as train() does; train_steps, timed here, does not compile itself
                zoo.compile_transforms(model)
            cfg = TrainConfig(quality=args.quality, batch_size=args.batch_size, patch_size=args.patch_size, lr=1e-5,
                              precision=precision, steps=0)
            runs[name] = [model, cfg, {}, CropSampler(files, args.patch_size, seed=0)]
    except DeepCompError as e:
        print(f"bench_training: {e}", file=sys.stderr)
        return 1
    times: dict[str, list[float]] = {name: [] for name in modes}
    for r in range(args.rounds + 1):  # round 0 warms up (first-call allocations, oneDNN primitive caches, compilation)
        for name, run in runs.items():
            model, cfg, state, sampler = run
            cfg.steps += args.steps
            t = time.perf_counter()
            train_steps(model, sampler, cfg, state, progress=False, log=lambda _: None)
            if r:
                times[name].append((time.perf_counter() - t) / args.steps)
    ref = min(times["fp32"])
    print(f"bmshj2018-factorized q{args.quality}, batch {args.batch_size} x {args.patch_size}x{args.patch_size}, "
          f"{args.threads} thread(s), best of {args.rounds} rounds of {args.steps} steps")
    print("| mode | s/step | speed-up vs fp32 |\n|---|---:|---:|")
    for name, ts in times.items():
        print(f"| {name} | {min(ts):.3f} | {ref / min(ts):.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
