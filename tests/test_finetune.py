"""Masked retraining and trained quantization (centroid fine-tuning), and writing the result exactly."""

from collections import OrderedDict
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from deepcomp import codec, container, zoo
from deepcomp.errors import DeepCompError
from deepcomp.finetune import (
    SharedParametrization, TrainData, agp_sparsity, attach_shared, centroids, codebook_indices, detach_shared, encode_exact,
    gradual_prune_retrain, masked_retrain, prune_targets, round_sparsity, schedule_masks, storage_policy, train_centroids, write_exact,
)
from deepcomp.model_file import compress_state_dict, load
from deepcomp.policy import Policy, Rule
from deepcomp.training import CropSampler, TrainConfig
from deepcomp.weight_sharing import kmeans_share

ARCH = "bmshj2018-factorized"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Tiny synthetic training photos (blocky noise) and fixed validation crops."""
    folder = tmp_path_factory.mktemp("train")
    rng = np.random.default_rng(0)
    files = []
    for i in range(3):
        im = np.kron(rng.random((8, 8, 3)), np.ones((8, 8, 1))) * 255
        files.append(folder / f"{i}.png")
        Image.fromarray(im.astype(np.uint8)).save(files[-1])
    return TrainData(CropSampler(files, 32, seed=0), torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)))


def cfg(steps, lr=1e-3):
    # a large lr so that a few steps visibly move the weights
    return TrainConfig(arch=ARCH, quality=1, steps=steps, batch_size=2, patch_size=32, lr=lr, val_every=1000)


def model(seed=0):
    torch.manual_seed(seed)
    return zoo.build(ARCH, 1)


def quiet(_):
    pass


# ---------------------------------------------------------------- schedules
def test_agp_schedule():
    assert agp_sparsity(0, 10, 0.8) == 0.0 and agp_sparsity(10, 10, 0.8) == pytest.approx(0.8) and agp_sparsity(20, 10, 0.8) == pytest.approx(0.8)
    assert agp_sparsity(5, 10, 0.8) == pytest.approx(0.8 * (1 - 0.5**3))
    assert agp_sparsity(0, 10, 0.8, initial=0.2) == pytest.approx(0.2)
    values = [agp_sparsity(t, 10, 0.9) for t in range(11)]
    assert all(a <= b for a, b in zip(values, values[1:]))
    steps = np.diff(values)
    assert all(a >= b - 1e-12 for a, b in zip(steps, steps[1:]))  # front-loaded (concave)
    assert round_sparsity(1, 4, 0.8, "linear") == pytest.approx(0.2) and round_sparsity(4, 4, 0.8, "linear") == pytest.approx(0.8)
    assert round_sparsity(1, 1, 0.7, "agp") == pytest.approx(0.7)
    with pytest.raises(DeepCompError):
        round_sparsity(1, 4, 0.8, "exponential")


def test_schedule_masks_are_nested_and_reach_the_target():
    rng = np.random.default_rng(0)
    arrays = {"a.weight": rng.normal(size=(8, 4, 3, 3)), "b.weight": rng.normal(size=(6, 6))}
    policy = Policy(rules=(Rule(pattern="a.*", prune=0.75, bits=4), Rule(pattern="b.*", prune_std=0.5, bits=4), Rule()))
    targets = prune_targets(arrays, policy)
    assert targets["tensors"]["a.weight"] == 0.75
    b = arrays["b.weight"]
    assert targets["tensors"]["b.weight"] == pytest.approx(np.mean(np.abs(b) <= 0.5 * b.std()))
    prev = None
    for r in (1, 2, 3):
        masks = schedule_masks(arrays, targets, r, 3, "agp", prev)
        if prev is not None:
            assert all(not np.any(masks[n] & ~prev[n]) for n in masks)  # pruned stays pruned
        prev = masks
        arrays = {n: np.where(masks.get(n, True), a, 0.0) for n, a in arrays.items()}
    assert (~prev["a.weight"]).sum() == round(0.75 * arrays["a.weight"].size)
    g = prune_targets(arrays, Policy(rules=(Rule(kind="weight", prune=0.5, bits=4),), global_prune=0.5))
    gm = schedule_masks(arrays, g, 1, 1)
    assert sum((~m).sum() for m in gm.values()) == round(0.5 * sum(a.size for a in arrays.values()))


def test_kernel_schedule_masks_prune_whole_kernels_round_by_round():
    rng = np.random.default_rng(1)
    arrays = {"a.weight": rng.normal(size=(8, 4, 3, 3)), "b.weight": rng.normal(size=(8, 4, 3, 3))}
    policy = Policy(rules=(Rule(pattern="a.*", prune=0.75, bits=4, granularity="kernel"), Rule(pattern="b.*", prune=0.5, bits=4), Rule()))
    targets = prune_targets(arrays, policy)
    assert targets["kernel"] == ["a.weight"]
    prev = None
    for r in (1, 2):
        masks = schedule_masks(arrays, targets, r, 2, "agp", prev)
        kernels = masks["a.weight"].reshape(32, 9)
        assert (kernels.all(axis=1) | ~kernels.any(axis=1)).all()
        if prev is not None:
            assert not np.any(masks["a.weight"] & ~prev["a.weight"])
        prev = masks
        arrays = {n: np.where(masks[n], a, 0.0) for n, a in arrays.items()}
    assert (~kernels.any(axis=1)).sum() == 24
    b = masks["b.weight"].reshape(32, 9)
    assert (b.any(axis=1) & ~b.all(axis=1)).any()  # the other tensor is pruned weight by weight
    with pytest.raises(DeepCompError, match="global"):
        prune_targets(arrays, replace(policy, global_prune=0.5))


# ---------------------------------------------------------------- masked retraining
def test_masks_hold_exactly_through_retraining(data):
    net = model()
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    masks = {n: torch.from_numpy(np.abs(p.detach().numpy()) > np.quantile(np.abs(p.detach().numpy()), 0.6))
             for n, p in net.named_parameters() if n.endswith("weight") and p.ndim == 4}
    saved = []
    state = masked_retrain(net, masks, cfg(3), data, on_checkpoint=saved.append, checkpoint_every=2, progress=False, log=quiet)
    assert state["step"] == 3 and len(saved) == 2  # at step 2 and at the end
    for n, p in net.named_parameters():
        if n in masks:
            assert torch.all(p[~masks[n]] == 0)  # exactly zero
            assert not torch.equal(p[masks[n]], before[n][masks[n]])  # the kept ones trained
    assert saved and set(saved[-1]["masks"]) == set(masks) and torch.all(saved[-1]["state_dict"]["g_a.0.weight"][~masks["g_a.0.weight"]] == 0)


def test_gradual_pruning_reaches_the_policy_and_resumes(data):
    policy = Policy(rules=(Rule(pattern="*entropy_bottleneck*"), Rule(kind="weight", prune=0.6, bits=4), Rule()))
    net = model()
    payloads = []

    class Stop(Exception):
        pass

    def interrupt(payload):
        payloads.append(payload)
        if payload["train_state"]["step"] == 2:
            raise Stop

    with pytest.raises(Stop):
        gradual_prune_retrain(net, policy, cfg(4), data, rounds=2, schedule="agp", on_checkpoint=interrupt, checkpoint_every=1, progress=False, log=quiet)
    saved = payloads[-1]
    assert saved["train_state"]["prune"]["round"] == 1
    first = {n: m.clone() for n, m in saved["train_state"]["masks"].items()}
    assert sum(int((~m).sum()) for m in first.values()) == pytest.approx(0.6 * 0.875 * sum(m.numel() for m in first.values()), rel=1e-3)
    # resume in a fresh model from the checkpoint
    net2 = model(seed=1)
    zoo.assign_weights(net2, saved["state_dict"])
    masks, state = gradual_prune_retrain(net2, policy, cfg(4), data, rounds=2, schedule="agp", state=saved["train_state"], progress=False, log=quiet)
    assert state["step"] == 4 and state["prune"]["round"] == 2
    params = dict(net2.named_parameters())
    for n, m in masks.items():
        assert int((~m).sum()) == round(0.6 * m.numel())
        assert torch.all(params[n][~m] == 0)
        assert not torch.any(m & ~first[n])  # round-1 pruned weights stayed pruned
    with pytest.raises(DeepCompError, match="rounds"):
        gradual_prune_retrain(net2, policy, cfg(4), data, rounds=3, state=state, progress=False, log=quiet)


def test_anneal_phase_trains_the_final_masks_at_its_own_rate(data):
    policy = Policy(rules=(Rule(pattern="*entropy_bottleneck*"), Rule(kind="weight", prune=0.5, bits=4), Rule()))
    net = model()
    lrs, lines = [], []
    record = lambda p: lrs.append(p["train_state"]["optimizer"]["param_groups"][0]["lr"])  # the state is updated in place
    masks, state = gradual_prune_retrain(net, policy, cfg(5), data, rounds=2, on_checkpoint=record, checkpoint_every=1,
                                         progress=False, log=lines.append, anneal_steps=2, anneal_lr=1e-6)
    # the two rounds share the first 3 steps (round 2 prunes at step 2), the last 2 anneal with the final masks
    assert state["step"] == 5 and state["prune"]["round"] == 2
    assert any("pruning round 2/2 (agp) at step 2" in line for line in lines)
    assert any(line.startswith("anneal at step 3") for line in lines)
    assert lrs[:3] == [1e-3] * 3 and lrs[3:] == [1e-6] * 2
    params = dict(net.named_parameters())
    assert all(torch.all(params[n][~m] == 0) for n, m in masks.items())
    with pytest.raises(DeepCompError, match="anneal"):
        gradual_prune_retrain(model(), policy, cfg(5), data, rounds=2, anneal_steps=5, anneal_lr=1e-6, progress=False, log=quiet)


# ---------------------------------------------------------------- trained quantization
def test_centroid_gradient_is_the_sum_over_its_weights():
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, 3)
    values = np.array([-0.5, 0.0, 0.25, 0.7], np.float32)
    w = torch.from_numpy(np.random.default_rng(0).choice(values, size=(3, 2, 3, 3)))
    with torch.no_grad():
        conv.weight.copy_(w)
    ref = nn.Conv2d(2, 3, 3)
    ref.load_state_dict(conv.state_dict())
    shared = attach_shared(conv, Policy(rules=(Rule(kind="weight", bits=2), Rule())))
    assert shared["weight"].k == 3 and torch.equal(conv.weight, w)
    x = torch.randn(4, 2, 6, 6, generator=torch.Generator().manual_seed(1))
    (conv(x) ** 2).mean().backward()
    (ref(x) ** 2).mean().backward()
    index = shared["weight"].index.long()
    manual = torch.stack([ref.weight.grad[index == j].sum() for j in range(3)])
    assert torch.allclose(centroids(conv, "weight").grad, manual, rtol=1e-5, atol=1e-7)
    assert torch.allclose(conv.bias.grad, ref.bias.grad)
    # a pruned zero is no parameter: it has no gradient path and stays 0
    assert torch.all(conv.weight[index == -1] == 0)
    detach_shared(conv, shared)
    assert [n for n, _ in conv.named_parameters()] == ["weight", "bias"] and torch.equal(conv.weight, w)


def test_parametrization_inverse_is_exact():
    rng = np.random.default_rng(0)
    book = np.sort(rng.normal(size=5)).astype(np.float32)
    idx = rng.integers(0, 6, size=(40,))
    w = np.where(idx < 5, book[np.minimum(idx, 4)], 0).astype(np.float32)
    b, i = codebook_indices(w)
    assert np.array_equal(b[i[w != 0]], w[w != 0]) and np.all(i[w == 0] == b.size)
    p = SharedParametrization(torch.from_numpy(i), b.size)
    c = p.right_inverse(torch.from_numpy(w))
    assert torch.equal(c, torch.from_numpy(b)) and torch.equal(p(c), torch.from_numpy(w))


def test_kmeans_reproduces_at_most_2_bits_distinct_values():
    rng = np.random.default_rng(3)
    for bits in (1, 3, 5):
        book = rng.normal(size=1 << bits).astype(np.float32)
        values = rng.choice(book, size=500)
        s = kmeans_share(values, bits)
        assert np.array_equal(s.reconstruct(), values)


POLICY = Policy(rules=(
    Rule(pattern="*entropy_bottleneck*"),
    Rule(pattern="g_s.6.weight", bits=4, quantizer="uniform", per_channel=True),
    Rule(kind="weight", prune=0.5, bits=3),
    Rule(min_size=1024, bits=5),
    Rule(pattern="g_a.0.bias", storage="fp16"),
    Rule(),
))


def test_centroid_finetuning_keeps_the_codebook_structure_and_the_file_is_exact(data, tmp_path):
    net = model()
    base = zoo.strip_derived(net.state_dict())
    shared_state = load_container(compress_state_dict(base, POLICY, ARCH, 1))
    net = model(seed=5)
    zoo.assign_weights(net, shared_state)
    payloads = []
    train_centroids(net, storage_policy(POLICY), cfg(3, lr=1e-2), data, on_checkpoint=payloads.append, checkpoint_every=2, progress=False, log=quiet)
    after = zoo.strip_derived(net.state_dict())
    assert [n for n, _ in net.named_parameters()] == [n for n, _ in model().named_parameters()]  # parametrizations removed
    moved = 0
    for a, b, ia, ib in kmeans_tensors_checked(shared_state, after):
        assert np.array_equal(ia, ib) or same_partition(ia, ib)  # the cluster of each weight is fixed
        moved += not np.array_equal(a, b)
    assert moved >= 8  # the centroids were trained
    assert not torch.equal(after["g_a.2.bias"], shared_state["g_a.2.bias"])  # raw parameters trained
    assert not torch.equal(after["entropy_bottleneck.quantiles"], shared_state["entropy_bottleneck.quantiles"])  # aux loss
    assert torch.equal(after["g_a.0.bias"], after["g_a.0.bias"].half().float())  # fp16-stored: rounded
    # the file holds exactly the fine-tuned weights
    path = tmp_path / "ft.dcmp"
    size = write_exact(path, net.state_dict(), POLICY, ARCH, 1)
    back = load(path)
    assert size == path.stat().st_size and set(back) == set(after)
    for name, t in after.items():
        assert torch.equal(back[name], t), name
    # a checkpoint's indices re-attach to its weights (resume)
    last = payloads[-1]
    fresh = model(seed=7)
    zoo.assign_weights(fresh, last["state_dict"])
    again = attach_shared(fresh, storage_policy(POLICY), last["indices"])
    assert {n for n, s in again.items() if s.index is not None} == set(last["indices"])
    assert all(torch.equal(again[n].index, last["indices"][n]) for n in last["indices"])


def test_frozen_raw_parameters(data):
    net = model()
    zoo.assign_weights(net, load_container(compress_state_dict(zoo.strip_derived(net.state_dict()), POLICY, ARCH, 1)))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    train_centroids(net, storage_policy(POLICY), cfg(1, lr=1e-2), data, train_raw=False, progress=False, log=quiet)
    after = net.state_dict()
    assert torch.equal(after["g_a.2.bias"], before["g_a.2.bias"]) and torch.equal(after["entropy_bottleneck.biases.0"], before["entropy_bottleneck.biases.0"])
    assert not torch.equal(after["g_a.2.weight"], before["g_a.2.weight"])
    assert not torch.equal(after["entropy_bottleneck.quantiles"], before["entropy_bottleneck.quantiles"])
    assert all(p.requires_grad for p in net.parameters())


def test_attach_refuses_unshared_weights_and_encode_exact_checks():
    net = model()
    with pytest.raises(DeepCompError, match="share the weights first"):
        attach_shared(net, Policy(rules=(Rule(kind="weight", bits=3), Rule())))
    assert not any("parametrizations" in n for n, _ in net.named_parameters())
    with pytest.raises(DeepCompError, match="would not be stored exactly"):
        encode_exact(net.state_dict(), Policy(rules=(Rule(kind="weight", bits=3), Rule())), ARCH, 1)


def test_storage_policy_drops_pruning_only():
    p = Policy(rules=(Rule(pattern="a*", prune=0.5, bits=4, init="density"), Rule(prune_std=1.0, bits=6), Rule()), global_prune=0.3)
    s = storage_policy(p)
    assert s.global_prune is None and all(not r.prunes for r in s.rules)
    assert [(r.pattern, r.bits, r.init) for r in s.rules] == [(r.pattern, r.bits, r.init) for r in p.rules]


# ---------------------------------------------------------------- helpers
def kmeans_tensors_checked(before, after, policy=POLICY):
    """``(before, after, their cluster indices)`` of each k-means-shared tensor of a fine-tuning, once the structure
    every fine-tuning keeps is checked: at most 2**bits values, the same zeros, uniform-shared tensors unchanged."""
    for name, t in after.items():
        a, b = before[name].numpy(), t.numpy()
        rule = policy.rule_for(name, a.shape)
        if rule.bits is not None and rule.quantizer == "kmeans":
            assert np.unique(b[b != 0]).size <= 1 << rule.bits
            assert np.array_equal(a == 0, b == 0)  # pruned zeros stay, no new zeros
            yield a, b, codebook_indices(a)[1], codebook_indices(b)[1]
        elif rule.quantizer == "uniform" and rule.bits is not None:
            assert np.array_equal(a, b)  # uniform-shared: frozen


def load_container(c):
    arrays = codec.decode_arrays(container.from_bytes(container.to_bytes(c)))
    return OrderedDict((k, torch.from_numpy(np.ascontiguousarray(v))) for k, v in arrays.items())


def same_partition(ia, ib):
    pairs = set(zip(ia.ravel().tolist(), ib.ravel().tolist()))
    return len(pairs) == len(set(ia.ravel().tolist())) == len(set(ib.ravel().tolist()))
