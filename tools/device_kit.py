"""Get the working tree ready for one training call on the device machine, and put it back afterwards.

The device tool copies this checkout (tracked and untracked-not-ignored files plus the carried paths) and refuses
more than 64 MiB; the tracked files alone are about 200 MB (baselines, studies' model files, resume kits) and the
training photos 84 MB as PNG. So, for the length of one call, this leaves only what `tools/device_train.sh` needs:

    bash tools/run.sh python tools/device_kit.py prepare   # here: wheels -> .whl/, photos -> .devdata/photos/ (JPEG, see below),
                                            # deletes every other tracked file from the working tree (git keeps them)
    # the device call it prints: run(command="bash tools/device_train.sh 4 3", carry=[".whl", ".devdata"], timeout_s=600)
    bash tools/run.sh python tools/device_kit.py restore   # here, right after the call: `git checkout` of every deleted file
    bash tools/run.sh python tools/device_kit.py size      # what a call would send now, in MiB

`prepare` refuses a tree with uncommitted changes, so that `restore` gives back exactly the committed tree. The
photos travel as JPEG at quality 98 with 4:4:4 chroma (46.5 MB for the 49 photos; 45.2 dB mean PSNR against the
PNGs, 43.1 dB for the worst photo, 15 dB above the PSNR the models reach), because lossless WebP is still 66 MB.
The same file names (001.jpg ...) keep the validation split of `deepcomp train` (every tenth photo) the same.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
LIMIT = 64 * 2**20
WHEELS = ("compressai==1.2.8", "bitarray==3.12.3", "dahuffman==0.4.2", "pytorch-msssim==1.0.0")
PLATFORMS = ("manylinux_2_34_x86_64", "manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
CARRY = (".whl", ".devdata")
# what tools/device_train.sh reads from the tree, and tools/run.sh to call restore with (the seed is added by --seed)
KEEP_PREFIXES = ("deepcomp/",)
KEEP_FILES = ("pyproject.toml", ".gitignore", "tools/run.sh", "tools/device_train.sh", "tools/device_kit.py")


class KitError(Exception):
    pass


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True, text=True).stdout


def default_seed() -> Path:
    """The quality-3 baseline a device call continues (tools/device_train.sh's SEED picks the same): the one in
    training, artifacts/in-training/ (ahead of the shipped one), where there is one, else the shipped one."""
    shipped = ROOT / "artifacts" / "bmshj2018-factorized-q3.pth.tar"
    in_training = ROOT / "artifacts" / "in-training" / shipped.name
    return in_training if in_training.is_file() else shipped


def to_delete(tracked: list[str], seed: str) -> list[str]:
    """The tracked files a device call does not need: all but the package, the two device tools and the seed."""
    keep = set(KEEP_FILES) | {seed}
    return [f for f in tracked if f not in keep and not f.startswith(KEEP_PREFIXES)]


def travelling_bytes() -> int:
    """What a device call sends now: tracked files still present, untracked files git does not ignore, the carried folders."""
    files = [ROOT / f for f in git("ls-files").splitlines()] + [ROOT / f for f in git("ls-files", "-o", "--exclude-standard").splitlines()]
    for c in CARRY:
        files += [p for p in (ROOT / c).rglob("*")] if (ROOT / c).is_dir() else []
    return sum(p.stat().st_size for p in files if p.is_file())


def jpeg_photos(src: Path, dst: Path, quality: int) -> int:
    from PIL import Image

    from deepcomp.images import list_images

    dst.mkdir(parents=True, exist_ok=True)
    total = 0
    for f in list_images(src, hint="the training photos (../shared/data/train)"):
        out = dst / (f.stem + ".jpg")
        with Image.open(f) as im:
            im.convert("RGB").save(out, "JPEG", quality=quality, subsampling=0)
        total += out.stat().st_size
    return total


def prepare(args: argparse.Namespace) -> None:
    if git("status", "--porcelain", "--untracked-files=normal").strip():
        raise KitError("the working tree has uncommitted changes: commit them first, so that `restore` brings back exactly the committed tree")
    seed = Path(args.seed).resolve() if args.seed else default_seed()
    if not seed.is_file() or ROOT not in seed.parents:
        raise KitError(f"seed baseline not found in this checkout: {args.seed or seed}")
    seed = seed.relative_to(ROOT).as_posix()
    print(f"seed: {seed} (tools/device_train.sh continues it)")
    whl = ROOT / ".whl"
    if not any(whl.glob("compressai-*.whl")):
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
               "--implementation", "cp", "-d", str(whl)]
        for p in PLATFORMS:
            cmd += ["--platform", p]
        subprocess.run(cmd + list(WHEELS), check=True)
    photos = ROOT / ".devdata" / "photos"
    n = jpeg_photos(Path(args.data), photos, args.jpeg_quality)
    print(f"photos: {len(list(photos.glob('*.jpg')))} JPEG files, {n / 2**20:.1f} MiB in {photos.relative_to(ROOT)}")
    gone = to_delete(git("ls-files").splitlines(), seed)
    for f in gone:
        (ROOT / f).unlink(missing_ok=True)
    size = travelling_bytes()
    print(f"removed {len(gone)} tracked files from the working tree (`python tools/device_kit.py restore` brings them back)")
    print(f"a device call now sends {size / 2**20:.1f} MiB (limit 64 MiB)")
    if size > LIMIT:
        raise KitError("still over the device tool's 64 MiB: lower --jpeg-quality, then run prepare again after restore")
    print('device call: run(command="bash tools/device_train.sh 4 3", carry=[".whl", ".devdata"], timeout_s=600)')


def restore(_: argparse.Namespace) -> None:
    gone = git("ls-files", "-d").splitlines()
    if gone:
        subprocess.run(["git", "checkout", "--", *gone], cwd=ROOT, check=True)
    print(f"restored {len(gone)} tracked files")


def size(_: argparse.Namespace) -> None:
    print(f"{travelling_bytes() / 2**20:.1f} MiB would travel (limit 64 MiB)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="device_kit.py", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare", help="wheels, JPEG photos, a slim working tree")
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "train"), help="the training photos (never Kodak)")
    p.add_argument("--seed", help="the baseline the device continues (default: the quality 3 in artifacts/in-training/, "
                   "else the shipped one; tools/device_train.sh picks the same)")
    p.add_argument("--jpeg-quality", type=int, default=98)
    p.set_defaults(func=prepare)
    sub.add_parser("restore", help="bring back the tracked files prepare removed").set_defaults(func=restore)
    sub.add_parser("size", help="what a device call would send now").set_defaults(func=size)
    args = ap.parse_args(argv)
    try:
        args.func(args)
    except KitError as e:
        print(f"device_kit: {e}", file=sys.stderr)
        return 1
    except subprocess.CalledProcessError as e:
        print(f"device_kit: {' '.join(map(str, e.cmd[:3]))} ... failed (exit {e.returncode})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
