"""What a deepcomp file holds, tensor by tensor: sizes, densities, entropy bounds."""

from __future__ import annotations

import numpy as np

from . import codec, huffman
from .container import Container


def _stream_stats(c: Container, entry: dict, alphabet: int) -> tuple[int, float]:
    """(payload bits, order-0 entropy bound in bits) of one Huffman stream."""
    symbols = codec._uncode(c, entry, "file")
    freq = np.bincount(symbols, minlength=alphabet) if symbols.size else np.zeros(1, np.int64)
    return int(entry["nbits"]), float(huffman.entropy_bits(freq))


def describe(c: Container, file_bytes: int) -> dict:
    """Per-tensor rows and totals for ``deepcomp inspect``."""
    rows = []
    total_weights = 0
    for e in c.header["tensors"]:
        shape = tuple(e["shape"])
        size = int(np.prod(shape, dtype=np.int64))
        nbytes = sum(len(c.records[r]) for r in codec.tensor_records(e))
        row = {"name": e["name"], "shape": "x".join(map(str, shape)) or "scalar", "size": size, "encoding": e["encoding"], "bytes": nbytes}
        if e["encoding"] == "shared":
            k = e["codebook_shape"][-1]
            streams = [("indices", k + 1)]
            if e["layout"] == "gaps":
                streams.append(("positions", 1 << e["gap_bits"]))
            bits = ent = 0.0
            for key, alphabet in streams:
                b, h = _stream_stats(c, e[key], alphabet)
                bits += b
                ent += h
            row.update(
                density=e["kept"] / size if size else 1.0, bits=e["bits"], quantizer=e["quantizer"], codebook=k,
                layout=e["layout"], stream_bits=int(bits), entropy_bits=ent,
                huffman_overhead=(bits / ent - 1.0) if ent > 0 else 0.0,
            )
        else:
            row.update(density=float(np.count_nonzero(codec._decode_raw(c, e, "file"))) / size if size else 1.0,
                       bits=None, quantizer=e["storage"], codebook=None, layout="raw", stream_bits=None, entropy_bits=None, huffman_overhead=None)
        row["bits_per_weight"] = 8.0 * nbytes / size if size else 0.0
        total_weights += size
        rows.append(row)
    ref = c.header.get("reference") or {}
    totals = {
        "tensors": len(rows),
        "weights": total_weights,
        "file_bytes": file_bytes,
        "payload_bytes": sum(r["bytes"] for r in rows),
        "overhead_bytes": file_bytes - sum(r["bytes"] for r in rows),
        "bits_per_weight": 8.0 * file_bytes / max(total_weights, 1),
        "fp32_bytes": ref.get("fp32_bytes"),
        "checkpoint_bytes": ref.get("checkpoint_bytes"),
        "ratio_to_fp32": ref["fp32_bytes"] / file_bytes if ref.get("fp32_bytes") else None,
        "ratio_to_checkpoint": ref["checkpoint_bytes"] / file_bytes if ref.get("checkpoint_bytes") else None,
        "density": sum(r["density"] * r["size"] for r in rows) / max(total_weights, 1),
    }
    return {"arch": c.header.get("arch"), "quality": c.header.get("quality"), "tensors": rows, "totals": totals}


def format_table(info: dict) -> str:
    """A fixed-width text table of ``describe``'s rows and totals."""
    head = f"{'tensor':<38} {'shape':>14} {'density':>7} {'bits':>4} {'k':>4} {'layout':>11} {'bytes':>9} {'bit/w':>6} {'H0 bytes':>9} {'+Huff':>6}"
    lines = [f"arch: {info['arch']}  quality: {info['quality']}", head, "-" * len(head)]
    for r in info["tensors"]:
        h0 = f"{r['entropy_bits'] / 8:9.0f}" if r["entropy_bits"] is not None else f"{'-':>9}"
        over = f"{100 * r['huffman_overhead']:5.1f}%" if r["huffman_overhead"] is not None else f"{'-':>6}"
        lines.append(
            f"{r['name'][:38]:<38} {r['shape']:>14} {r['density']:7.3f} {r['bits'] if r['bits'] else '-':>4} "
            f"{r['codebook'] if r['codebook'] else '-':>4} {r['layout']:>11} {r['bytes']:9d} {r['bits_per_weight']:6.2f} {h0} {over}"
        )
    t = info["totals"]
    lines.append("-" * len(head))
    lines.append(
        f"{t['tensors']} tensors, {t['weights']:,} weights, density {t['density']:.3f}; file {t['file_bytes']:,} bytes "
        f"({t['overhead_bytes']:,} header and framing), {t['bits_per_weight']:.2f} bits/weight"
    )
    if t["ratio_to_fp32"]:
        lines.append(f"fp32 weights {t['fp32_bytes']:,} bytes: {t['ratio_to_fp32']:.2f}x smaller")
    if t["ratio_to_checkpoint"]:
        lines.append(f"source checkpoint {t['checkpoint_bytes']:,} bytes: {t['ratio_to_checkpoint']:.2f}x smaller")
    return "\n".join(lines)
