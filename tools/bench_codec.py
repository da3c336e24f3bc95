"""Benchmark of the weight codec against issue #2's targets.

Measures, on a bmshj2018-factorized quality-3 checkpoint (the trained
baseline in artifacts/ when present, else a seeded random initialisation):
file size ratio to the fp32 .pth.tar, Huffman overhead over the order-0
entropy per stream, compress time, load() throughput, load_model() time
against torch.load of the fp32 checkpoint (same run), and the memory that
load() needs.

    bash tools/run.sh python tools/bench_codec.py [--checkpoint CKPT] [--prune 0.7] [--bits 5]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CKPT = ROOT / "artifacts" / "bmshj2018-factorized-q3.pth.tar"


def best_of(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def _rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize()


def rss_probe(path: str) -> None:
    """Run in a child process: memory that load() needs, in bytes.

    RSS is sampled every millisecond by a thread while load() runs; the
    figure is the peak minus the RSS just before (imports already done).
    """
    import threading
    import tracemalloc

    import numpy as np

    from deepcomp import container
    from deepcomp.model_file import load

    container.read(path)  # warm the imports without decoding
    np.zeros(1)
    before = _rss()
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss())
            time.sleep(0.001)

    sampler = threading.Thread(target=sample)
    sampler.start()
    tracemalloc.start()
    sd = load(path)
    _, peak_traced = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    done.set()
    sampler.join()
    peak[0] = max(peak[0], _rss())
    print(json.dumps({"traced_peak": peak_traced, "rss_before": before, "rss_peak": peak[0], "tensors": len(sd)}))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, default=None)
    ap.add_argument("--prune", type=float, default=0.7)
    ap.add_argument("--bits", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    ap.add_argument("--rss-probe", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rss_probe:
        rss_probe(args.rss_probe)
        return 0

    import torch

    from deepcomp import container, zoo
    from deepcomp.inspection import describe
    from deepcomp.model_file import compress_checkpoint, load, load_model
    from deepcomp.policy import Policy

    tmp = Path(tempfile.mkdtemp(prefix="deepcomp-bench-"))
    ckpt = args.checkpoint or (DEFAULT_CKPT if DEFAULT_CKPT.exists() else None)
    if ckpt is None:
        torch.manual_seed(0)
        model = zoo.build("bmshj2018-factorized", 3)
        model.update(force=True)
        ckpt = tmp / "random-init-q3.pth.tar"
        torch.save({"state_dict": model.state_dict()}, ckpt)
        source = "seeded random initialisation"
    else:
        source = str(ckpt)
    out = tmp / "model.dcmp"
    policy = Policy().with_weight_rule(prune=args.prune, bits=args.bits)

    t = time.perf_counter()
    size = compress_checkpoint(ckpt, out, policy, "bmshj2018-factorized", 3)
    compress_s = time.perf_counter() - t

    info = describe(container.read(out), size)
    # streams of a kilobyte or more: on tiny streams a relative overhead says little
    overheads = [r["huffman_overhead"] for r in info["tensors"] if r["huffman_overhead"] is not None and r["stream_bits"] >= 8192]
    coded = [r for r in info["tensors"] if r["stream_bits"] is not None]
    total_overhead = sum(r["stream_bits"] for r in coded) / sum(r["entropy_bits"] for r in coded) - 1
    weights = info["totals"]["weights"]
    load_s = best_of(lambda: load(out), args.repeat)
    load_model_s = best_of(lambda: load_model(out), args.repeat)
    torch_load_s = best_of(lambda: torch.load(ckpt, map_location="cpu", weights_only=True), args.repeat)

    def fp32_model():  # CompressAI's own path for an fp32 checkpoint (eval_model's load_checkpoint)
        from compressai.zoo.image import model_architectures

        net = model_architectures["bmshj2018-factorized"].from_state_dict(torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"])
        net.update(force=True)

    fp32_model_s = best_of(fp32_model, args.repeat)
    probe = json.loads(subprocess.run([sys.executable, __file__, "--rss-probe", str(out)], capture_output=True, text=True, check=True).stdout)
    fp32_bytes = info["totals"]["fp32_bytes"]
    ckpt_bytes = Path(ckpt).stat().st_size

    figures = {
        "source": source,
        "policy": f"--prune {args.prune} --bits {args.bits}",
        "checkpoint_bytes": ckpt_bytes,
        "file_bytes": size,
        "ratio_to_checkpoint": ckpt_bytes / size,
        "max_huffman_overhead": max(overheads),
        "total_huffman_overhead": total_overhead,
        "compress_seconds": compress_s,
        "load_weights_per_second": weights / load_s,
        "load_model_seconds": load_model_s,
        "torch_load_seconds": torch_load_s,
        "load_model_over_torch_load": load_model_s / torch_load_s,
        "fp32_model_seconds": fp32_model_s,
        "load_model_over_fp32_model": load_model_s / fp32_model_s,
        "load_traced_peak_over_fp32": probe["traced_peak"] / fp32_bytes,
        "load_rss_growth_over_fp32": max(probe["rss_peak"] - probe["rss_before"], 0) / fp32_bytes,
    }
    rows = [
        ("model", source, ""),
        ("file size", f"{size:,} B vs {ckpt_bytes:,} B .pth.tar", f"{figures['ratio_to_checkpoint']:.2f}x smaller (target >= 12x)"),
        ("Huffman vs order-0 entropy", f"worst tensor (>= 1 KiB) +{100 * figures['max_huffman_overhead']:.2f}%, all +{100 * total_overhead:.2f}%", "(target <= 3%)"),
        ("compress (k-means included)", f"{compress_s:.2f} s", "(target < 30 s)"),
        ("load()", f"{load_s * 1000:.1f} ms, {figures['load_weights_per_second'] / 1e6:.1f} M weights/s", "(target >= 20 M/s)"),
        ("load_model() / torch.load", f"{load_model_s * 1000:.1f} ms / {torch_load_s * 1000:.1f} ms", f"{figures['load_model_over_torch_load']:.2f}x (target <= 2x)"),
        ("load_model() / fp32 model", f"{load_model_s * 1000:.1f} ms / {fp32_model_s * 1000:.1f} ms", f"{figures['load_model_over_fp32_model']:.2f}x (torch.load + from_state_dict + update)"),
        ("load() memory / fp32 size", f"traced peak {figures['load_traced_peak_over_fp32']:.2f}x, RSS growth {figures['load_rss_growth_over_fp32']:.2f}x", "(target < 3x)"),
    ]
    for name, value, verdict in rows:
        print(f"{name:<30} {value:<48} {verdict}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
