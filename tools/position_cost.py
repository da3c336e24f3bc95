"""Where a deepcomp file's bits go between the values and the positions of its shared weights, as entropy bounds.

For every shared tensor (two or more dimensions, at least 4,096 elements): its density, the order-0 entropy of its
codebook indices (what Huffman coding of the values approaches) and of its pruning mask taken as independent bits
(what coding the sparse positions approaches), and the same two entropies with a separate distribution per output
channel (what a coder that adapts per channel could approach, before the cost of learning 100-odd distributions).

    bash tools/run.sh python tools/position_cost.py artifacts/headline/models/bmshj2018-factorized-q3-alloc21-bits5.dcmp

Prints a table and the totals as a share of the file.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from deepcomp.errors import DeepCompError  # noqa: E402


def entropy_bits(counts: np.ndarray) -> float:
    """Total bits of order-0 coding of the symbols counted in ``counts`` (n · H)."""
    c = counts[counts > 0].astype(np.float64)
    return max(0.0, float(-(c * np.log2(c / c.sum())).sum()))


def mask_bits(mask: np.ndarray) -> float:
    """Bits of a mask coded as independent bits at its own density."""
    return entropy_bits(np.bincount(mask.ravel().astype(np.int64), minlength=2))


def tensor_costs(name: str, a: np.ndarray) -> dict:
    """The four entropy bounds of one shared tensor (bits); output channels on axis 1 for the synthesis (``g_s``)
    transposed convolutions, axis 0 otherwise."""
    axis = 1 if name.startswith("g_s") and a.ndim == 4 else 0
    nz = a != 0
    per_channel = np.moveaxis(nz, axis, 0).reshape(a.shape[axis], -1)
    values = np.moveaxis(a, axis, 0).reshape(a.shape[axis], -1)
    codebook, idx = np.unique(a[nz], return_inverse=True)
    k = max(codebook.size, 1)
    by_channel = sum(entropy_bits(np.bincount(np.searchsorted(codebook, values[c][per_channel[c]]), minlength=k))
                     for c in range(a.shape[axis]))
    return {"name": name, "shape": list(a.shape), "density": float(nz.mean()),
            "index_bits": entropy_bits(np.bincount(idx, minlength=k)), "index_bits_per_channel": by_channel,
            "mask_bits": mask_bits(nz), "mask_bits_per_channel": sum(mask_bits(m) for m in per_channel)}


def file_costs(path: Path) -> tuple[list[dict], int]:
    from deepcomp.model_file import file_info, load_arrays
    from deepcomp.policy import Policy

    if not path.is_file():
        raise DeepCompError(f"not found: {path}")
    policy = Policy.from_json(file_info(path)["policy"], str(path))
    rows = [tensor_costs(n, a) for n, a in load_arrays(path).items()
            if policy.rule_for(n, a.shape).bits is not None and a.ndim >= 2 and a.size >= 4096]
    return rows, path.stat().st_size


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("file", type=Path, help="a deepcomp file (.dcmp)")
    args = p.parse_args(argv)
    try:
        rows, size = file_costs(args.file)
    except DeepCompError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{'tensor':18s} {'density':>7s} {'values H0':>10s} {'per channel':>12s} {'positions H0':>13s} {'per channel':>12s}  (bytes)")
    for r in rows:
        print(f"{r['name']:18s} {r['density']:7.3f} {r['index_bits'] / 8:10,.0f} {r['index_bits_per_channel'] / 8:12,.0f} "
              f"{r['mask_bits'] / 8:13,.0f} {r['mask_bits_per_channel'] / 8:12,.0f}")
    tot = {k: sum(r[k] for r in rows) / 8 for k in ("index_bits", "index_bits_per_channel", "mask_bits", "mask_bits_per_channel")}
    print(f"file {size:,} bytes; values {tot['index_bits']:,.0f} ({100 * tot['index_bits'] / size:.1f} %), "
          f"positions {tot['mask_bits']:,.0f} ({100 * tot['mask_bits'] / size:.1f} %); with a distribution per output channel: "
          f"values {100 * (tot['index_bits_per_channel'] / tot['index_bits'] - 1):+.1f} %, "
          f"positions {100 * (tot['mask_bits_per_channel'] / max(tot['mask_bits'], 1e-9) - 1):+.1f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
