"""Model cards for the baselines in artifacts/: training facts and Kodak results.

    bash tools/run.sh python tools/baseline_card.py artifacts/bmshj2018-factorized-q*.pth.tar [--data ../shared/data/kodak]

For each checkpoint (written by `deepcomp train` + `training.export_baseline`)
it evaluates Kodak with real bitstreams (compress/decompress) and writes
``<stem>.md`` and ``<stem>.json`` next to it, comparing with CompressAI's
published curve of its architecture (bmshj2018-factorized, bmshj2018-hyperprior):
BD-rate (PSNR) once four or more qualities of one architecture exist, else the
PSNR gap at the same bpp and the bpp gap at the same PSNR where the point lies
inside the published range.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from deepcomp import evaluation, report, zoo
from deepcomp.checkpoints import atomic_write_bytes

COMMAND = "bash tools/run.sh python tools/baseline_card.py {paths} --data {data}"


def published_gap(arch: str, bpp: float, psnr: float) -> dict:
    """PSNR gap at equal bpp and bpp gap at equal PSNR against the published curve (log-bpp, linear)."""
    if arch not in zoo.PUBLISHED_KODAK:
        return {}
    pts = sorted(zoo.PUBLISHED_KODAK[arch].values())
    lr = np.log([b for b, _ in pts])
    ps = np.array([p for _, p in pts])
    out = {"published_bpp_range": [pts[0][0], pts[-1][0]], "published_psnr_range": [pts[0][1], pts[-1][1]]}
    lb = math.log(bpp)
    out["psnr_gap_db_at_same_bpp"] = float(psnr - np.interp(lb, lr, ps)) if lr[0] <= lb <= lr[-1] else None
    out["bpp_gap_pct_at_same_psnr"] = float(100 * (bpp / math.exp(np.interp(psnr, ps, lr)) - 1)) if ps[0] <= psnr <= ps[-1] else None
    return out


def step_pieces(history: list[dict], value) -> list[list]:
    """Consecutive validations with the same ``value(entry)``, as ``[value, last step]`` pieces."""
    pieces: list[list] = []
    for h in history:
        v = value(h)
        if pieces and pieces[-1][0] == v:
            pieces[-1][1] = h["step"]
        else:
            pieces.append([v, h["step"]])
    return pieces


def lr_schedule(history: list[dict]) -> list[list]:
    """The learning rates a run trained at, as ``[lr, last step]`` pieces, from its validation history."""
    return step_pieces(history, lambda h: h["lr"])


def crop_schedule(history: list[dict], patch: int | None) -> list[list]:
    """The crop sizes a run trained on, as ``[size, last step]`` pieces; entries from before sizes were recorded
    count as ``patch`` (the run's configured size)."""
    return step_pieces(history, lambda h: h.get("patch", patch))


def steps_text(f: dict) -> str:
    pieces = f.get("crop_schedule") or [[f["patch_size"], f["steps"]]]
    if len(pieces) < 2:
        return f"{f['steps']} (batch {f['batch_size']}, {pieces[0][0]}x{pieces[0][0]} crops)"
    crops = ", then ".join(f"{size}x{size} crops to step {step}" for size, step in pieces)
    return f"{f['steps']} (batch {f['batch_size']}; {crops})"


def schedule_text(f: dict) -> str:
    pieces = f.get("learning_rate_schedule") or []
    if len(pieces) < 2:
        return f"{f['learning_rate']} → {f['final_learning_rate']} (halved on validation plateaus)"
    return ", then ".join(f"{lr:g} to step {step}" for lr, step in pieces) + " (validation plateaus halve it; a final low-rate phase is given with --lr)"


def card_stem(path: Path) -> str:
    """The name a checkpoint's card files share: ``<stem>.md``, ``<stem>.json``, ``<stem>.training.png``."""
    return path.name.split(".")[0]


def card(path: Path, data: Path, out_dir: Path) -> dict:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    cfg = ckpt.get("config") or {}
    state = ckpt.get("train_state") or {}
    arch, quality = cfg.get("arch", "bmshj2018-factorized"), int(cfg.get("quality", 3))
    with tempfile.TemporaryDirectory() as tmp:
        done = evaluation.evaluate_paths([path], data, tmp, arch=arch, quality=quality, family="baseline")
        doc = report.collect_results([done[0]["json"]])[0]
    mean = doc["mean"]
    history = state.get("history") or []
    facts = {
        "file": path.name,
        "arch": arch,
        "quality": quality,
        "lambda": cfg.get("lmbda") or zoo.mse_lambda(quality),
        "steps": state.get("step"),
        "batch_size": cfg.get("batch_size"),
        "patch_size": cfg.get("patch_size"),
        "learning_rate": cfg.get("lr"),
        "final_learning_rate": history[-1]["lr"] if history else None,
        "learning_rate_schedule": lr_schedule(history),
        "crop_schedule": crop_schedule(history, cfg.get("patch_size")),
        "device": ckpt.get("device"),
        "training_seconds": state.get("seconds"),
        "init": state.get("init"),
        "last_validation": {k: history[-1][k] for k in ("step", "val_loss", "val_bpp", "val_psnr")} if history else None,
        "kodak": {"images": mean["images"], "bpp": mean["bpp"], "psnr": mean["psnr"], "ssim": mean["ssim"], "ms_ssim": mean["ms_ssim"],
                  "encode_s": mean["encode_s"], "decode_s": mean["decode_s"]},
        "published": zoo.PUBLISHED_KODAK.get(arch, {}).get(quality),
        "gap": published_gap(arch, mean["bpp"], mean["psnr"]),
        "evaluated": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    stem = card_stem(path)
    curve = report.plot_training(history, out_dir / f"{stem}.training.png", title=stem)
    facts["training_plot"] = curve.name if curve else None
    return facts


def markdown(f: dict, command: str, family_bd: float | None) -> str:
    k = f["kodak"]
    hours = f["training_seconds"] / 3600 if f["training_seconds"] else None
    lines = [
        f"# {f['file']}",
        "",
        f"CompressAI `{f['arch']}` at quality {f['quality']} (MSE, λ = {f['lambda']}), trained by deepcomp on `../shared/data/train/` "
        "(random crops with flips; a validation split of the same photos; never Kodak).",
        "",
        "| | |",
        "|---|---|",
        f"| steps | {steps_text(f)} |",
    ]
    init = f.get("init")
    if init:
        src = Path(init["path"]).name
        if init.get("step") is not None:
            lmbda = init.get("lmbda") or (zoo.mse_lambda(init["quality"]) if init.get("quality") in zoo.MSE_LAMBDAS else None)
            src += f" (quality {init.get('quality')}, λ = {lmbda}, step {init['step']}"
            src += f", {init['seconds'] / 3600:.2f} h)" if init.get("seconds") else ")"
        if init.get("copied"):
            src += f": only {', '.join(f'`{m}`' for m in init['copied'])}; {', '.join(f'`{m}`' for m in init.get('kept') or []) or 'nothing'} trained from scratch"
        lines.append(f"| initialised from | {src}; the steps above are this run's own |")
    lines += [
        f"| learning rate | {schedule_text(f)} |",
        f"| device, wall time | {f['device']}, {hours:.2f} h |" if hours is not None else f"| device | {f['device']} |",
    ]
    if f["last_validation"]:
        v = f["last_validation"]
        lines.append(f"| last validation (step {v['step']}) | loss {v['val_loss']:.4f}, bpp {v['val_bpp']:.4f} (likelihoods), PSNR {v['val_psnr']:.2f} dB |")
    lines += [
        f"| **Kodak ({k['images']} images, real bitstreams)** | **bpp {k['bpp']:.4f}, PSNR {k['psnr']:.2f} dB, SSIM {k['ssim']:.4f}, MS-SSIM {k['ms_ssim']:.4f}** |",
        f"| encode / decode per image | {k['encode_s']:.3f} s / {k['decode_s']:.3f} s (CPU) |",
    ]
    if f["published"]:
        b, p = f["published"]
        g = f["gap"]
        lines.append(f"| CompressAI published, same quality | bpp {b}, PSNR {p} dB |")
        same_bpp = f"{g['psnr_gap_db_at_same_bpp']:+.2f} dB" if g.get("psnr_gap_db_at_same_bpp") is not None else \
            f"n/a (bpp outside the published range {g['published_bpp_range'][0]}–{g['published_bpp_range'][1]})"
        same_psnr = f"{g['bpp_gap_pct_at_same_psnr']:+.1f} %" if g.get("bpp_gap_pct_at_same_psnr") is not None else \
            f"n/a (PSNR outside the published range {g['published_psnr_range'][0]}–{g['published_psnr_range'][1]} dB)"
        lines.append(f"| gap to the published curve | PSNR at the same bpp: {same_bpp}; bpp at the same PSNR: {same_psnr} |")
        lines.append(f"| family BD-rate (PSNR) vs published | {family_bd:+.1f} % |" if family_bd is not None else
                     "| family BD-rate (PSNR) vs published | n/a (needs four or more qualities whose PSNR range overlaps the published one) |")
        bdp = f.get("family_bd_psnr_vs_published")
        lines.append(f"| family BD-PSNR vs published (same bpp) | {bdp:+.2f} dB |" if bdp is not None else
                     "| family BD-PSNR vs published (same bpp) | n/a (needs four or more qualities whose bpp range overlaps the published one) |")
    if f.get("training_plot"):
        lines += ["", f"![validation loss and PSNR against the step]({f['training_plot']})"]
    lines += ["", "Reproduce the numbers:", "", f"```sh\n{command}\n```", ""]
    return "\n".join(lines)


def family_vs_published(arch: str, facts: list[dict]) -> tuple[float | None, float | None]:
    """BD-rate (%) and BD-PSNR (dB) of ``arch``'s cards against its published curve; None below four qualities."""
    published = zoo.PUBLISHED_KODAK.get(arch, {})
    fam = [f for f in facts if f["arch"] == arch and f["quality"] in published]
    if len({f["quality"] for f in fam}) < 4:
        return None, None
    pub = [published[q] for q in sorted(published)]
    ours = sorted((f["kodak"]["bpp"], f["kodak"]["psnr"]) for f in fam)
    bd = report.bd_rate([b for b, _ in pub], [p for _, p in pub], [b for b, _ in ours], [p for _, p in ours])
    bdp = report.bd_psnr([b for b, _ in pub], [p for _, p in pub], [b for b, _ in ours], [p for _, p in ours])
    return (None if math.isnan(bd) else bd), (None if math.isnan(bdp) else bdp)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoints", type=Path, nargs="+")
    ap.add_argument("--data", type=Path, default=Path("../shared/data/kodak"))
    args = ap.parse_args()
    facts = [card(p, args.data, p.parent) for p in args.checkpoints]
    family = {arch: family_vs_published(arch, facts) for arch in {f["arch"] for f in facts}}
    command = COMMAND.format(paths=" ".join(str(p) for p in args.checkpoints), data=args.data)
    for p, f in zip(args.checkpoints, facts):
        f["family_bd_rate_vs_published"], f["family_bd_psnr_vs_published"] = family[f["arch"]]
        f["command"] = command
        stem = card_stem(p)
        atomic_write_bytes(p.parent / f"{stem}.json", (json.dumps(f, indent=1) + "\n").encode())
        atomic_write_bytes(p.parent / f"{stem}.md", markdown(f, command, f["family_bd_rate_vs_published"]).encode())
        print(f"{p.parent / (stem + '.md')}: Kodak bpp {f['kodak']['bpp']:.4f}, PSNR {f['kodak']['psnr']:.2f} dB, MS-SSIM {f['kodak']['ms_ssim']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
