"""What storing a deepcomp file's raw tensors in fp16 gives: the same file with every tensor its policy keeps raw
(the entropy bottleneck's density model, biases, GDN betas) rounded to fp16 and stored in 16 bits, the shared and
pruned tensors bit-identical; both files evaluated on Kodak with real bitstreams.

    bash tools/run.sh python tools/raw_fp16.py artifacts/headline/models/*-alloc21-bits5.dcmp -o runs/raw-fp16

Prints a table (size, ratio to the fp32 checkpoint, bpp, PSNR, MS-SSIM before and after) and writes it to
OUT/raw-fp16.md; the fp16 files are OUT/<name>. Kodak is only evaluated.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from deepcomp.errors import DeepCompError  # noqa: E402


def recode(src: Path, dst: Path) -> dict:
    """Write ``src`` again as ``dst`` with its raw tensors in fp16; returns both sizes."""
    from collections import OrderedDict

    import torch

    from deepcomp.finetune import write_exact
    from deepcomp.model_file import file_info, load_arrays
    from deepcomp.policy import Policy

    head = file_info(src)
    if not head.get("arch") or not head.get("quality"):
        raise DeepCompError(f"{src} does not name its architecture")
    policy = Policy.from_json(head["policy"], str(src))
    policy = policy.with_raw_storage("fp16")
    state = OrderedDict()
    for name, a in load_arrays(src).items():
        t = torch.from_numpy(a.copy())
        rule = policy.rule_for(name, a.shape)
        if rule.bits is None and t.is_floating_point():
            t = t.half().float()
        state[name] = t
    ref = head.get("reference") or {}
    size = write_exact(dst, state, policy, head["arch"], int(head["quality"]), reference_bytes=ref.get("checkpoint_bytes"),
                       reference_sha256=ref.get("checkpoint_sha256"))
    return {"fp32_raw_bytes": src.stat().st_size, "fp16_raw_bytes": size, "checkpoint_bytes": ref.get("checkpoint_bytes")}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("files", type=Path, nargs="+", help="deepcomp files (.dcmp)")
    p.add_argument("-o", "--out", type=Path, required=True, help="folder for the fp16 files, their results and the table")
    p.add_argument("--data", type=Path, default=Path("../shared/data/kodak"))
    p.add_argument("--limit", type=int, default=None, help="first N images only")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    try:
        return run(args, argv)
    except DeepCompError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def run(args, argv) -> int:
    import torch

    from deepcomp import evaluation

    for src in args.files:
        if not src.is_file():
            raise DeepCompError(f"not found: {src}")
    if args.threads:
        torch.set_num_threads(args.threads)
    images = [str(i) for i in evaluation.image_list(args.data, args.limit)]
    args.out.mkdir(parents=True, exist_ok=True)
    lines = ["# Raw tensors in fp16", "",
             f"Kodak ({len(images)} images of `{args.data}`), real bitstreams. Every tensor the file's policy keeps raw "
             "is rounded to fp16 and stored in 16 bits; the shared tensors are bit-identical.", "",
             "| File | Size fp32 raw → fp16 raw | Ratio to the checkpoint | bpp | PSNR | MS-SSIM |",
             "|---|---:|---:|---:|---:|---:|"]
    for src in args.files:
        dst = args.out / src.name
        sizes = recode(src, dst)
        means = []
        for path, stem in ((src, src.stem + "-fp32raw"), (dst, src.stem + "-fp16raw")):
            jpath = args.out / stem / f"{stem}.json"
            doc = evaluation.reusable_results(jpath, path, args.data, len(images))
            if doc is None:
                evaluation.run_one(str(path), stem, images, str(args.data), str(jpath.parent), None, None, stem, True, True)
                doc = evaluation.read_results(jpath)
            means.append(doc["mean"])
        a, b = means
        ck = sizes["checkpoint_bytes"]
        ratio = f"{ck / sizes['fp32_raw_bytes']:.2f}x → {ck / sizes['fp16_raw_bytes']:.2f}x" if ck else "n/a"
        lines.append(f"| {src.name} | {sizes['fp32_raw_bytes']:,} → {sizes['fp16_raw_bytes']:,} B "
                     f"({100 * (sizes['fp16_raw_bytes'] / sizes['fp32_raw_bytes'] - 1):+.1f} %) | {ratio} | "
                     f"{a['bpp']:.4f} → {b['bpp']:.4f} | {a['psnr']:.3f} → {b['psnr']:.3f} | {a['ms_ssim']:.5f} → {b['ms_ssim']:.5f} |")
    lines += ["", "```sh", "bash tools/run.sh python tools/raw_fp16.py " + " ".join(sys.argv[1:] if argv is None else argv), "```", ""]
    (args.out / "raw-fp16.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
