"""Fine-tune the deepcomp files of a family (`deepcomp finetune`) and report them against the baselines on Kodak.

    bash tools/run.sh python tools/finetune_family.py \\
        --baseline artifacts/bmshj2018-factorized-q3.pth.tar --file runs/.../q3/final.dcmp \\
        --baseline artifacts/bmshj2018-factorized-q4.pth.tar --file runs/.../q4/final.dcmp \\
        --mode nearest --steps 600 --lr 3e-5 --work runs/finetune-family -o artifacts/quantization-aware/NAME

One ``--file`` per ``--baseline`` (the file compressed from that baseline). Each file is fine-tuned on the training
photos (resumable: WORK/q<Q>.dcmp and its summary are kept, an interrupted run resumes from its partial checkpoint),
then the baselines, the files as given and the fine-tuned files are coded on the evaluation images (Kodak, real
bitstreams; results reused when the file is unchanged). Writes OUT/README.md (per quality: size, ratios to the fp32
state_dict and checkpoint, bpp and PSNR, validation RD loss before and after, the share of weights that changed cluster;
the family's BD-rates in PSNR and MS-SSIM against the baselines), OUT/results.json and OUT/rd.png; the fine-tuned files go to OUT/models/
with ``--keep``. With ``--controls DIR`` (the folder of controls that ``tools/headline.py --control`` trains: the
baselines trained on unpruned, ``DIR/q<Q>/record.json``), also the BD-rates against those controls. Kodak is only
evaluated, never trained or tuned on.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from deepcomp.errors import DeepCompError  # noqa: E402

#: The families of the report: the baselines (the BD anchor), the files as given, the fine-tuned files.
FAMILIES = ("baseline", "given", "finetuned")


def family_labels(args) -> dict[str, str]:
    return {"baseline": "baseline", "given": "files as given", "finetuned": f"+ {args.mode} fine-tuning, {args.steps} steps"}


def finetune_all(args, pairs: list[tuple[int, Path, Path]]) -> dict[int, dict]:
    from deepcomp.file_finetune import FinetuneConfig, finetune_file

    args.work.mkdir(parents=True, exist_ok=True)
    out = {}
    for q, _, f in pairs:
        dst, summary = args.work / f"q{q}.dcmp", args.work / f"q{q}.json"
        cfg = FinetuneConfig(mode=args.mode, steps=args.steps, lr=args.lr, batch_size=args.batch_size, patch_size=args.patch_size,
                             val_every=args.val_every, val_fraction=args.val_fraction, val_patch=args.val_patch, seed=args.seed)
        if dst.exists() and summary.exists():
            doc = json.loads(summary.read_text())
            given = {k: v for k, v in vars(cfg).items() if k != "lmbda"}  # the summary records the lambda used
            if doc.get("settings", {}).get("source_sha256") == _sha(f) and all(doc["settings"].get(k) == v for k, v in given.items()):
                print(f"q{q}: fine-tuned already ({dst})")
                out[q] = doc
                continue
            raise DeepCompError(f"{dst} was fine-tuned from another file or with other settings; use another --work")
        print(f"q{q}: fine-tuning {f} ({args.mode}, {args.steps} steps, lr {args.lr:g})")
        doc = finetune_file(f, dst, args.data, cfg, progress=not args.quiet)
        from deepcomp.checkpoints import atomic_write_bytes
        from deepcomp.evaluation import _clean

        atomic_write_bytes(summary, (json.dumps(_clean(doc), indent=1) + "\n").encode())
        out[q] = doc
    return out


def _sha(path: Path) -> str:
    from deepcomp.checkpoints import sha256_file

    return sha256_file(path)


def evaluate_all(args, pairs, tuned: dict[int, dict]) -> list[dict]:
    """Results rows of the three families (evaluations reused when the files are unchanged)."""
    from deepcomp.evaluation import evaluate_paths, image_list, read_results, reusable_results
    from deepcomp.report import model_rows

    n = len(image_list(args.eval_data, args.eval_limit))
    rows = []
    for family, paths in (("baseline", [b for _, b, _ in pairs]), ("given", [f for _, _, f in pairs]),
                          ("finetuned", [args.work / f"q{q}.dcmp" for q, _, _ in pairs])):
        folder = args.work / "eval" / family
        for (q, _, _), p in zip(pairs, paths):
            jpath = folder / f"q{q}.json"
            doc = reusable_results(jpath, p, args.eval_data, n)
            if doc is None:
                tmp = folder / f"q{q}"
                done = evaluate_paths([p], args.eval_data, tmp, family=family, threads=args.threads, limit=args.eval_limit, progress=not args.quiet)
                doc = read_results(done[0]["json"])
                folder.mkdir(parents=True, exist_ok=True)
                Path(done[0]["json"]).replace(jpath)
                shutil.rmtree(tmp, ignore_errors=True)
            doc["model"]["family"] = family_labels(args)[family]
            row = model_rows([doc])[0]
            row["quality"], row["checkpoint_bytes"] = q, pairs[[x[0] for x in pairs].index(q)][1].stat().st_size
            rows.append(row)
    return rows


def control_rows(args, pairs, rows: list[dict]) -> list[dict]:
    """Rows of the family ``control`` from ``--controls`` (empty without it): each quality's finished control, trained
    from this very baseline (``tools/headline.py --control`` records the baseline's sha256 and the Kodak means)."""
    if args.controls is None:
        return []
    from deepcomp.report import ms_ssim_db

    out = []
    for q, b, _ in pairs:
        path = args.controls / f"q{q}" / "record.json"
        try:
            rec = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise DeepCompError(f"no finished control of quality {q}: cannot read {path} ({e.__class__.__name__})") from None
        if not rec.get("done"):
            raise DeepCompError(f"the control of quality {q} ({path}) is not finished")
        if rec.get("settings", {}).get("sha256") != _sha(b):
            raise DeepCompError(f"the control {path} was not trained from {b}")
        base = next(r for r in rows if r["quality"] == q and r["family"] == "baseline")
        if rec.get("images") != base.get("images"):
            raise DeepCompError(f"the control {path} was evaluated on {rec.get('images')} images, not on these")
        out.append(base | {"family": "control", "model": str(path.parent), "bpp": rec["bpp"], "psnr": rec["psnr"],
                           "ssim": rec.get("ssim"), "ms_ssim": rec["ms_ssim"], "ms_ssim_db": ms_ssim_db(rec["ms_ssim"]),
                           "val_loss": rec.get("val_loss"), "steps": rec["settings"].get("steps")})
    return out


def _u(v, fmt: str, unit: str = "") -> str:
    return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:{fmt}}{unit}"


def report(args, pairs, tuned: dict[int, dict], rows: list[dict], command: str, controls: list[dict] = ()) -> dict:
    from deepcomp.report import bd_rows, plot_rd

    key = {label: fam for fam, label in family_labels(args).items()}
    bd = {key[r["family"]]: r for r in bd_rows(rows)}
    bd_control = {key[r["family"]]: r for r in bd_rows(list(rows) + list(controls), baseline="control")
                  if r["family"] in key and r["family"] != family_labels(args)["baseline"]}
    by = {(key[r["family"]], r["quality"]): r for r in rows}
    lines = [f"# `deepcomp finetune --mode {args.mode}`: {args.steps} steps at lr {args.lr:g} on a family of deepcomp files", "",
             f"Each file fine-tuned on the training photos (`{args.data}`), then coded on `{args.eval_data}` with real bitstreams. "
             "Ratio: the fp32 state_dict's bytes (as the headline counts) and the fp32 checkpoint file's over the file's. Val: RD loss on the validation crops of the training photos "
             "(baseline / file as given / fine-tuned). *Changed*: the share of the kept shared weights in another cluster "
             "after the fine-tuning.", "",
             "| Quality | Bytes (given → fine-tuned) | Ratio (fp32 / .pth.tar) | Baseline bpp / PSNR | Given bpp / PSNR | Fine-tuned bpp / PSNR | Val: given → fine-tuned | Changed |",
             "|---:|---:|---:|---|---|---|---|---:|"]
    for q, _, _ in pairs:
        b, g, t = by[("baseline", q)], by[("given", q)], by[("finetuned", q)]
        s = tuned[q]
        lines.append(f"| {q} | {g['file_bytes']:,} → {t['file_bytes']:,} | {t['ratio']:.1f}x / {t['checkpoint_bytes'] / t['file_bytes']:.1f}x | "
                     f"{b['bpp']:.4f} / {b['psnr']:.2f} dB | {g['bpp']:.4f} / {g['psnr']:.2f} dB | {t['bpp']:.4f} / {t['psnr']:.2f} dB | "
                     f"{s['val_before']['loss']:.4f} → {s['val_after']['loss']:.4f} | {_u(s.get('changed'), '.1%')} |")
    lines += ["", f"Against the baselines (Bjøntegaard, pchip, qualities {', '.join(str(q) for q, _, _ in pairs)}):", "",
              "| Files | BD-rate (PSNR) | BD-rate (MS-SSIM) | BD-PSNR |", "|---|---:|---:|---:|"]
    bd_lines = lambda table: [  # noqa: E731
        f"| {label} | {_u(table.get(fam, {}).get('bd_rate_psnr'), '+.2f', ' %')} | {_u(table.get(fam, {}).get('bd_rate_ms_ssim'), '+.2f', ' %')} | "
        f"{_u(table.get(fam, {}).get('bd_psnr'), '+.3f', ' dB')} |" for fam, label in (("given", "as given"), ("finetuned", f"+ {args.mode} fine-tuning"))]
    lines += bd_lines(bd)
    if controls:
        lines += ["", f"Against the controls (`{args.controls}`: each baseline trained on, unpruned, for "
                  f"{' / '.join(sorted({str(c['steps']) for c in controls}))} steps on the training photos):", "",
                  "| Quality | Control bpp / PSNR | Control val | Fine-tuned Δ bpp / Δ PSNR |", "|---:|---|---:|---|"]
        for c in controls:
            t = by[("finetuned", c["quality"])]
            lines.append(f"| {c['quality']} | {c['bpp']:.4f} / {c['psnr']:.2f} dB | {_u(c.get('val_loss'), '.4f')} | "
                         f"{(t['bpp'] / c['bpp'] - 1) * 100:+.1f} % / {t['psnr'] - c['psnr']:+.2f} dB |")
        lines += ["", "| Files | BD-rate (PSNR) vs controls | BD-rate (MS-SSIM) vs controls | BD-PSNR vs controls |", "|---|---:|---:|---:|"]
        lines += bd_lines(bd_control)
    lines += ["", "![RD](rd.png)", "", "Command:", "", "```sh", command, "```", ""]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "README.md").write_text("\n".join(lines))
    plot_rd(list(rows) + list(controls), args.out / "rd.png")
    doc = {"rows": rows, "bd": list(bd.values()), "controls": list(controls), "bd_vs_controls": list(bd_control.values()), "finetune": {q: {k: v for k, v in s.items() if k != "history"} | {"history": s.get("history")}
                                                            for q, s in tuned.items()}, "command": command}
    from deepcomp.evaluation import _clean

    (args.out / "results.json").write_text(json.dumps(_clean(doc), indent=1) + "\n")
    if args.keep:
        (args.out / "models").mkdir(exist_ok=True)
        for q, _, _ in pairs:
            shutil.copyfile(args.work / f"q{q}.dcmp", args.out / "models" / f"q{q}.dcmp")
    print("\n".join(lines))
    return doc


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--baseline", type=Path, action="append", required=True, help="a baseline checkpoint (repeat, one per quality)")
    p.add_argument("--file", type=Path, action="append", required=True, help="the deepcomp file compressed from it (same order)")
    p.add_argument("--mode", choices=("nearest", "fixed"), default="nearest")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--lr", type=float, default=3e-5)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--patch-size", type=int, default=128)
    p.add_argument("--val-every", type=int, default=150)
    p.add_argument("--val-fraction", type=float, default=0.1, help="share of the training photos held out for validation")
    p.add_argument("--val-patch", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", type=Path, default=Path("../shared/data/train"), help="training photos (never Kodak)")
    p.add_argument("--eval-data", type=Path, default=Path("../shared/data/kodak"))
    p.add_argument("--eval-limit", type=int, default=None)
    p.add_argument("--work", type=Path, required=True, help="fine-tuned files and evaluations (resumable)")
    p.add_argument("--controls", type=Path, default=None,
                   help="a folder of controls (DIR/q<Q>/record.json, as tools/headline.py --control trains them) to report against too")
    p.add_argument("-o", "--out", type=Path, required=True)
    p.add_argument("--keep", action="store_true", help="copy the fine-tuned files to OUT/models/")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    command = "python tools/finetune_family.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    try:
        if len(args.baseline) != len(args.file):
            raise DeepCompError("give one --file per --baseline")
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        from deepcomp.checkpoints import checkpoint_config
        from deepcomp.model_file import file_info

        pairs = []
        for b, f in zip(args.baseline, args.file):
            for path in (b, f):
                if not path.is_file():
                    raise DeepCompError(f"file not found: {path}")
            q = checkpoint_config(b).get("quality")
            if q is None or file_info(f).get("quality") != q:
                raise DeepCompError(f"{f} is not of the quality of {b} ({q})")
            pairs.append((int(q), b, f))
        tuned = finetune_all(args, pairs)
        rows = evaluate_all(args, pairs, tuned)
        report(args, pairs, tuned, rows, command, control_rows(args, pairs, rows))
    except DeepCompError as e:
        print(f"finetune_family: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
