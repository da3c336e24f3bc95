import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
KODAK = ROOT.parent / "shared" / "data" / "kodak"
TRAIN = ROOT.parent / "shared" / "data" / "train"


@pytest.fixture(scope="session")
def random_checkpoint(tmp_path_factory) -> Path:
    """A seeded random-init bmshj2018-factorized q3 checkpoint, update() applied."""
    from deepcomp import zoo

    torch.manual_seed(0)
    model = zoo.build("bmshj2018-factorized", 3)
    model.update(force=True)
    path = tmp_path_factory.mktemp("ckpt") / "factorized-q3.pth.tar"
    torch.save({"state_dict": model.state_dict()}, path)
    return path


def _copied(tmp_path_factory, source: Path, names: tuple[str, ...], what: str) -> Path:
    if not source.is_dir():
        pytest.skip(f"{what} not found at {source}")
    folder = tmp_path_factory.mktemp(what.split()[0])
    for name in names:
        shutil.copy(source / name, folder / name)
    return folder


@pytest.fixture(scope="session")
def kodak_two(tmp_path_factory) -> Path:
    """Two real Kodak images (evaluation only) in a folder of their own."""
    return _copied(tmp_path_factory, KODAK, ("kodim01.png", "kodim23.png"), "Kodak")


@pytest.fixture(scope="session")
def train_two(tmp_path_factory) -> Path:
    """Two real training photos in a folder of their own; at val_fraction 0.5 the second is the validation split."""
    return _copied(tmp_path_factory, TRAIN, ("001.png", "002.png"), "training photos")


@pytest.fixture
def one_thread():
    """One torch thread for the test (the training tests are small; threads only contend)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def synthetic_photos(tmp_path_factory) -> Path:
    """Four small synthetic training photos (blocky noise, 96x96): half of them the validation split at 0.5."""
    folder = tmp_path_factory.mktemp("train")
    rng = np.random.default_rng(0)
    for i in range(4):
        im = np.kron(rng.random((12, 12, 3)), np.ones((8, 8, 1))) * 255
        Image.fromarray(im.astype(np.uint8)).save(folder / f"{i:03d}.png")
    return folder


@pytest.fixture(scope="session")
def load_tool():
    """Import a script of tools/ as a module: ``load_tool("headline")``."""

    def load(stem: str, module_name: str | None = None):
        spec = importlib.util.spec_from_file_location(module_name or stem, ROOT / "tools" / f"{stem}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod

    return load
