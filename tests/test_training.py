"""Training: a few real RD steps, checkpoint, resume, export of a CompressAI-loadable baseline."""

import dataclasses
import shutil

import pytest
import torch

from deepcomp import training
from deepcomp.errors import DeepCompError

from .conftest import TRAIN


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    if not TRAIN.is_dir():
        pytest.skip(f"training photos not found at {TRAIN}")
    folder = tmp_path_factory.mktemp("train")
    for p in sorted(TRAIN.glob("*.png"))[:4]:
        shutil.copy(p, folder / p.name)
    return folder


def cfg(steps):
    return training.TrainConfig(steps=steps, batch_size=2, patch_size=64, val_every=2, val_fraction=0.25, threads=1)


def test_split_is_deterministic_and_disjoint(photos):
    train, val = training.split_photos(photos, 0.25)
    assert len(val) == 1 and not set(train) & set(val)
    assert training.split_photos(photos, 0.25) == (train, val)


def test_train_resume_export(photos, tmp_path):
    out = tmp_path / "run.pth.tar"
    logs = []
    training.train(cfg(2), photos, out, progress=False, log=logs.append)
    first = torch.load(out, weights_only=True)
    assert first["train_state"]["step"] == 2 and len(first["train_state"]["history"]) == 1
    training.train(dataclasses.replace(cfg(4), patch_size=32), photos, out, progress=False, log=logs.append)
    second = torch.load(out, weights_only=True)
    assert second["train_state"]["step"] == 4 and any("resuming" in line for line in logs)
    # each validation records the crop size it trained on (a resumed run may change it; the model card says so)
    assert [h["patch"] for h in second["train_state"]["history"]] == [64, 32]
    assert not torch.equal(first["state_dict"]["g_a.0.weight"], second["state_dict"]["g_a.0.weight"])

    # the exported baseline loads in CompressAI unchanged and carries the run's state
    base = tmp_path / "base.pth.tar"
    from deepcomp import cli

    assert cli.main(["export", str(out), "-o", str(base)]) == 0
    from compressai.zoo.image import model_architectures

    ck = torch.load(base, weights_only=True)
    net = model_architectures["bmshj2018-factorized"].from_state_dict(ck["state_dict"])
    assert ck["state_dict"]["entropy_bottleneck._quantized_cdf"].numel() > 0  # update() applied
    assert "optimizer" not in ck["train_state"] and ck["train_state"]["step"] == 4
    with torch.no_grad():
        net.update(force=True)
        assert net.compress(torch.rand(1, 3, 64, 64))["strings"]

    # a later session continues the committed baseline
    cont = tmp_path / "cont.pth.tar"
    training.train(cfg(6), photos, cont, resume=base, progress=False, log=logs.append)
    assert torch.load(cont, weights_only=True)["train_state"]["step"] == 6

    # another lambda seeded with --init counts its own steps and records where it started
    other = tmp_path / "q1.pth.tar"
    c1 = training.TrainConfig(quality=1, steps=2, batch_size=2, patch_size=64, val_every=2, val_fraction=0.25, threads=1)
    training.train(c1, photos, other, init=base, progress=False, log=logs.append)
    st = torch.load(other, weights_only=True)["train_state"]
    assert st["step"] == 2
    assert st["init"]["path"] == str(base) and st["init"]["step"] == 4 and st["init"]["quality"] == 3


def test_masks_hold_pruned_weights_at_zero(photos):
    from deepcomp import zoo

    model = zoo.build("bmshj2018-factorized", 3)
    w = model.g_a[2].weight
    mask = (torch.rand_like(w) > 0.5).float()
    c = cfg(2)
    sampler = training.CropSampler(training.split_photos(photos, 0.25)[0], c.patch_size)
    training.train_steps(model, sampler, c, {}, masks={"g_a.2.weight": mask}, progress=False)
    assert torch.all(model.g_a[2].weight[mask == 0] == 0)
    assert torch.count_nonzero(model.g_a[2].weight[mask == 1]) == int(mask.sum())


def test_missing_data_is_clear(tmp_path):
    with pytest.raises(DeepCompError, match="image folder not found"):
        training.train(cfg(1), tmp_path / "nope", tmp_path / "x.pth.tar", progress=False)


def test_time_limit_stops_with_a_checkpoint_and_a_rerun_continues(photos, tmp_path):
    out = tmp_path / "run.pth.tar"
    logs = []
    training.train(cfg(50), photos, out, progress=False, log=logs.append, time_limit=0.0)
    st = torch.load(out, weights_only=True)["train_state"]
    assert st["step"] == 1 and st["history"][-1]["step"] == 1  # validated and saved where it stopped
    assert any("time limit reached at step 1 of 50" in line for line in logs)
    training.train(cfg(3), photos, out, progress=False, log=logs.append)
    assert torch.load(out, weights_only=True)["train_state"]["step"] == 3


def test_resumed_run_keeps_its_learning_rate_unless_one_is_given(photos, tmp_path):
    out = tmp_path / "run.pth.tar"
    training.train(cfg(2), photos, out, progress=False, log=lambda _: None)
    kept, given = tmp_path / "kept.pth.tar", tmp_path / "given.pth.tar"
    slow = training.TrainConfig(steps=4, batch_size=2, patch_size=64, val_every=2, val_fraction=0.25, threads=1, lr=3e-5)
    training.train(slow, photos, kept, resume=out, progress=False, log=lambda _: None)
    training.train(slow, photos, given, resume=out, progress=False, log=lambda _: None, override_lr=True)
    assert torch.load(kept, weights_only=True)["train_state"]["history"][-1]["lr"] == pytest.approx(1e-4)
    assert torch.load(given, weights_only=True)["train_state"]["history"][-1]["lr"] == pytest.approx(3e-5)


def test_a_given_learning_rate_restarts_the_plateau_count(photos, tmp_path):
    # an annealed baseline's scheduler remembers its low-rate best loss; a run resumed from it at a higher
    # rate is worse at first, and must not have that rate halved for not beating the old phase's best
    out, annealed = tmp_path / "run.pth.tar", tmp_path / "annealed.pth.tar"
    training.train(cfg(2), photos, out, progress=False, log=lambda _: None)
    ckpt = torch.load(out, weights_only=True)
    ckpt["train_state"]["scheduler"].update(best=0.0, num_bad_epochs=4)
    torch.save(ckpt, annealed)
    kept, given = tmp_path / "kept.pth.tar", tmp_path / "given.pth.tar"
    training.train(cfg(4), photos, kept, resume=annealed, progress=False, log=lambda _: None)
    training.train(cfg(4), photos, given, resume=annealed, progress=False, log=lambda _: None, override_lr=True)
    kept_state = torch.load(kept, weights_only=True)["train_state"]
    assert kept_state["scheduler"]["best"] == 0.0 and kept_state["history"][-1]["lr"] == pytest.approx(5e-5)  # halved
    given_state = torch.load(given, weights_only=True)["train_state"]
    assert given_state["scheduler"]["best"] == pytest.approx(given_state["history"][-1]["val_loss"])
    assert given_state["history"][-1]["lr"] == pytest.approx(1e-4)


def test_init_matching_seeds_a_hyperprior_with_factorized_transforms(photos, tmp_path):
    from deepcomp import cli, zoo

    src = zoo.build("bmshj2018-factorized", 3)
    base = tmp_path / "factorized.pth.tar"
    torch.save({"state_dict": src.state_dict()}, base)
    out = tmp_path / "hyper.pth.tar"
    hc = training.TrainConfig(arch="bmshj2018-hyperprior", quality=3, steps=1, batch_size=2, patch_size=64, val_every=1,
                              val_fraction=0.25, threads=1, lr=1e-12)
    logs = []
    training.train(hc, photos, out, init=base, init_matching=True, progress=False, log=logs.append)
    ck = torch.load(out, weights_only=True)
    init = ck["train_state"]["init"]
    assert init["copied"] == ["g_a", "g_s"] and init["kept"] == ["entropy_bottleneck", "h_a", "h_s"]
    # one step at a negligible learning rate: the transforms are the factorized model's, the rest is not
    assert torch.allclose(ck["state_dict"]["g_a.0.weight"], src.state_dict()["g_a.0.weight"], atol=1e-6)
    assert ck["state_dict"]["entropy_bottleneck.quantiles"].shape[0] == 128  # on z (N), not y (M = 192)
    assert any("g_a, g_s" in line and "as built" in line for line in logs)
    # the strict --init refuses the same file, and --init-matching refuses an unrelated one
    with pytest.raises(DeepCompError, match="does not fit"):
        training.train(hc, photos, tmp_path / "strict.pth.tar", init=base, progress=False, log=logs.append)
    torch.save({"state_dict": {"other.weight": torch.zeros(3)}}, tmp_path / "unrelated.pth.tar")
    with pytest.raises(DeepCompError, match="shares no tensor"):
        zoo.assign_matching_weights(zoo.build("bmshj2018-hyperprior", 3), {"other.weight": torch.zeros(3)})
    assert cli.main(["train", "--init-matching", "-o", str(tmp_path / "x.pth.tar")]) != 0
    assert cli.main(["train", "--scratch-lr", "1e-3", "-o", str(tmp_path / "x.pth.tar")]) != 0


def test_scratch_lr_trains_the_new_modules_faster_and_survives_a_resume(photos, tmp_path):
    from deepcomp import zoo

    base = tmp_path / "factorized.pth.tar"
    torch.save({"state_dict": zoo.build("bmshj2018-factorized", 3).state_dict()}, base)
    out = tmp_path / "hyper.pth.tar"
    hc = training.TrainConfig(arch="bmshj2018-hyperprior", quality=3, steps=1, batch_size=2, patch_size=64, val_every=1,
                              val_fraction=0.25, threads=1, scratch_lr=1e-3)
    training.train(hc, photos, out, init=base, init_matching=True, progress=False, log=lambda _: None)
    st = torch.load(out, weights_only=True)["train_state"]
    assert st["init"]["scratch_lr"] == 1e-3
    assert [g["lr"] for g in st["optimizer"]["param_groups"]] == [1e-4, 1e-3]
    new = [n for n, _ in zoo.build("bmshj2018-hyperprior", 3).named_parameters()
           if n.split(".")[0] in ("h_a", "h_s", "entropy_bottleneck") and not n.endswith("quantiles")]
    assert len(st["optimizer"]["param_groups"][1]["params"]) == len(new) > 0
    # resumed without the flag (its config is not what decides), the run keeps both groups; --lr sets both
    hc2 = training.TrainConfig(arch="bmshj2018-hyperprior", quality=3, steps=2, batch_size=2, patch_size=64, val_every=1,
                               val_fraction=0.25, threads=1, lr=1e-5)
    training.train(hc2, photos, out, progress=False, log=lambda _: None, override_lr=True)
    st = torch.load(out, weights_only=True)["train_state"]
    assert st["step"] == 2 and [g["lr"] for g in st["optimizer"]["param_groups"]] == [1e-5, 1e-5]
    # a run seeded without a scratch lr has one group, as before
    one = tmp_path / "one.pth.tar"
    training.train(dataclasses.replace(hc, scratch_lr=None), photos, one, init=base, init_matching=True, progress=False, log=lambda _: None)
    assert len(torch.load(one, weights_only=True)["train_state"]["optimizer"]["param_groups"]) == 1


def test_checkpoint_step_tool(photos, tmp_path, load_tool, capsys):
    tool = load_tool("checkpoint_step")
    out = tmp_path / "run.pth.tar"
    training.train(cfg(2), photos, out, progress=False, log=lambda _: None)
    training.export_baseline(out, tmp_path / "baseline.pth.tar")
    for path in (out, tmp_path / "baseline.pth.tar"):
        assert tool.main([str(path)]) == 0 and capsys.readouterr().out.strip() == "2"
    weights_only = tmp_path / "weights.pth.tar"
    torch.save({"state_dict": torch.load(out, weights_only=True)["state_dict"]}, weights_only)
    for bad in ([str(weights_only)], [str(tmp_path / "missing.pth.tar")], []):
        assert tool.main(bad) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_mixed_precision_keeps_the_entropy_model_in_fp32(random_checkpoint):
    from compressai.entropy_models import EntropyModel

    from deepcomp import zoo

    torch.manual_seed(0)
    model = zoo.build("bmshj2018-factorized", 3)
    model.load_state_dict(torch.load(random_checkpoint, weights_only=True)["state_dict"])
    x = torch.rand(2, 3, 64, 64)
    seen = {}
    model.entropy_bottleneck.register_forward_hook(lambda m, i, o: seen.update(y=i[0].dtype, y_hat=o[0].dtype, lik=o[1].dtype))
    torch.manual_seed(1)
    ref = model(x)
    torch.manual_seed(1)
    with zoo.mixed_precision(model, torch.bfloat16, "cpu"):
        out = model(x)
        assert seen == {"y": torch.bfloat16, "y_hat": torch.float32, "lik": torch.float32}  # g_a in bf16, the entropy model in fp32
        assert model.g_a(x).dtype == torch.bfloat16 and out["x_hat"].dtype == torch.bfloat16
    bits_ref, bits = (float(training.likelihood_bits(o).detach()) for o in (ref, out))
    assert abs(bits - bits_ref) < 0.01 * bits_ref
    # the patch is gone afterwards and the weights never changed dtype
    assert all("forward" not in vars(m) for m in model.modules() if isinstance(m, EntropyModel))
    assert model(x)["x_hat"].dtype == torch.float32 and model.g_a[0].weight.dtype == torch.float32


def test_bf16_training_runs_and_records_its_precision(photos, tmp_path):
    out = tmp_path / "bf16.pth.tar"
    training.train(dataclasses.replace(cfg(2), precision="bf16"), photos, out, progress=False, log=lambda _: None)
    ck = torch.load(out, weights_only=True)
    assert ck["config"]["precision"] == "bf16" and ck["train_state"]["step"] == 2
    assert all(v.dtype != torch.bfloat16 for v in ck["state_dict"].values())
    h = ck["train_state"]["history"][-1]
    assert h["val_loss"] == h["val_loss"] and 0 < h["val_bpp"] < 24  # finite, a plausible rate


def test_compiled_transforms_train_the_same_model_as_eager_ones(photos, tmp_path):
    runs, logs = {}, []
    for compiled in (False, True):
        out = tmp_path / f"compile-{compiled}.pth.tar"
        training.train(dataclasses.replace(cfg(2), compile=compiled), photos, out, progress=False, log=logs.append)
        runs[compiled] = torch.load(out, weights_only=True)
    assert any(line.startswith("compiling g_a, g_s ") for line in logs)
    eager, compiled = runs[False], runs[True]
    assert compiled["config"]["compile"] and list(compiled["state_dict"]) == list(eager["state_dict"])
    # the same seed, crops and arithmetic up to float rounding: the same losses, and not the untrained model's
    he, hc = eager["train_state"]["history"][-1], compiled["train_state"]["history"][-1]
    assert hc["train_loss"] == pytest.approx(he["train_loss"], rel=1e-4)
    assert hc["val_loss"] == pytest.approx(he["val_loss"], rel=1e-4)
    from deepcomp import zoo

    torch.manual_seed(cfg(2).seed)  # train() builds its model right after seeding
    init = zoo.build("bmshj2018-factorized", 3).g_a[0].weight.detach()
    w_eager, w_compiled = eager["state_dict"]["g_a.0.weight"], compiled["state_dict"]["g_a.0.weight"]
    moved = (w_eager - init).abs().max()
    assert moved > 0 and (w_compiled - w_eager).abs().max() < 0.1 * moved



def test_a_run_uses_its_own_plateau_patience_not_the_checkpoints(photos, tmp_path):
    # a scheduler's state_dict carries its patience: resuming must not bring the old run's back
    out, longer = tmp_path / "run.pth.tar", tmp_path / "longer.pth.tar"
    training.train(cfg(2), photos, out, progress=False, log=lambda _: None)
    assert torch.load(out, weights_only=True)["train_state"]["scheduler"]["patience"] == training.TrainConfig.lr_patience
    patient = dataclasses.replace(cfg(4), lr_patience=12)
    training.train(patient, photos, longer, resume=out, progress=False, log=lambda _: None)
    assert torch.load(longer, weights_only=True)["train_state"]["scheduler"]["patience"] == 12


def test_evaluate_rd_weights_images_of_any_size_by_their_pixels(random_checkpoint):
    from deepcomp import zoo

    model = zoo.build("bmshj2018-factorized", 3)
    model.load_state_dict(torch.load(random_checkpoint, weights_only=True)["state_dict"])
    lmbda = zoo.mse_lambda(3)
    torch.manual_seed(0)
    small, large = torch.rand(1, 3, 64, 64), torch.rand(1, 3, 128, 192)
    each = [training.evaluate_rd(model, x, lmbda) for x in (small, large)]
    both = training.evaluate_rd(model, [small, large], lmbda)
    weights = (64 * 64, 128 * 192)
    for k in ("loss", "bpp", "mse"):
        assert both[k] == pytest.approx(sum(w * e[k] for w, e in zip(weights, each)) / sum(weights), rel=1e-6)
    assert both["psnr"] == pytest.approx(training.psnr_from_mse(both["mse"]))
    # a batch of equal crops gives what the crops give one at a time
    crops = torch.rand(5, 3, 64, 64)
    assert training.evaluate_rd(model, crops, lmbda, batch=2)["loss"] == pytest.approx(
        training.evaluate_rd(model, list(crops.split(1)), lmbda)["loss"], rel=1e-5)
