"""Print the training step a `deepcomp train` checkpoint (or an exported baseline) has reached.

    python tools/checkpoint_step.py runs/q3long/q3.train.pth.tar     # for the training scripts in tools/
"""

from __future__ import annotations

import sys

from deepcomp.errors import DeepCompError
from deepcomp.training import read_training_checkpoint


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: tools/checkpoint_step.py CHECKPOINT", file=sys.stderr)
        return 2
    try:
        step = (read_training_checkpoint(argv[0]).get("train_state") or {}).get("step")
    except DeepCompError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if step is None:
        print(f"error: {argv[0]} carries no training step (not written by deepcomp train or export)", file=sys.stderr)
        return 2
    print(step)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
