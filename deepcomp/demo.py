"""The project's demo: the shipped baseline, compressed at a few settings, evaluated on Kodak.

    deepcomp demo [--model CKPT] [--data KODAK] [-o runs/demo]

Compresses the baseline with each setting of ``SETTINGS`` (no retraining),
evaluates the baseline and every compressed file on the images with real
bitstreams, and writes the report (table, BD-rate where families allow it,
plots) to the output folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from .errors import DeepCompError

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = ROOT / "artifacts" / "bmshj2018-factorized-q3.pth.tar"

#: (label, --prune, --bits): what each compressed file of the demo uses.
SETTINGS = (
    ("share8", None, 8),
    ("share5", None, 5),
    ("prune0.5-share5", 0.5, 5),
)


def run_demo(model: Path, data: Path, out: Path, arch: str = "bmshj2018-factorized", quality: int = 3,
             progress: bool = True, log: Callable[[str], None] = print) -> dict:
    from . import evaluation, report
    from .checkpoints import read_state_dict
    from .model_file import compress_checkpoint
    from .policy import Policy

    if not Path(model).is_file():
        raise DeepCompError(f"baseline model not found: {model} (the repository ships artifacts/bmshj2018-factorized-q3.pth.tar)")
    evaluation.image_list(data)  # a clear error before any work if the images are missing
    read_state_dict(model)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for label, prune, bits in SETTINGS:
        path = out / f"{Path(model).name.split('.')[0]}-{label}.dcmp"
        size = compress_checkpoint(model, path, Policy().with_weight_rule(prune=prune, bits=bits), arch, quality)
        log(f"compressed {model.name} -> {path.name}: {size:,} bytes ({Path(model).stat().st_size / size:.1f}x smaller)")
        files.append((label, path))
    # one thread count for every model, chosen before any of them runs: the load
    # average after the first evaluation counts this process itself as busy
    threads = evaluation.default_threads()
    done = evaluation.evaluate_paths([model], data, out / "results", arch=arch, quality=quality, family="baseline", threads=threads,
                                     progress=progress)
    for label, path in files:
        done += evaluation.evaluate_paths([path], data, out / "results", family=label, threads=threads, progress=progress)
    rep = report.write_report(report.collect_results([d["json"] for d in done]), out / "report", plots=True)
    log("")
    log(report.markdown_table(rep["rows"]))
    log(f"report: {rep['paths']['markdown']}")
    return rep
