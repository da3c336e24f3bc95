"""Per-layer sensitivity (real codec, RD loss on crops) and the allocator."""

import itertools

import numpy as np
import pytest
import torch

from deepcomp import codec, zoo
from deepcomp.errors import DeepCompError
from deepcomp.policy import Policy, Rule
from deepcomp.sensitivity import (
    Allocation, SensitivityTable, allocate, analyze, candidate_layers, encode_tensor, plot_sensitivity, setting_rule,
)

ARCH = "bmshj2018-factorized"


pytestmark = pytest.mark.usefixtures("one_thread")


def synthetic_table(seed=0, layers=4, ratios=(0.0, 0.5, 0.8), bits=(2, 4, 8)):
    """Bytes fall and losses rise with the ratio and as bits fall; layers differ in size and sensitivity."""
    rng = np.random.default_rng(seed)
    info, entries = {}, []
    for i in range(layers):
        name = f"l{i}.weight"
        size = int(rng.integers(1000, 20000))
        info[name] = {"shape": [size, 1], "size": size, "prunable": i != layers - 1, "rule": None}
        sens = float(rng.uniform(0.01, 1.0))
        for r in (ratios if i != layers - 1 else (0.0,)):
            for b in bits:
                nbytes = int(size * (1 - r) * (b + (1 if r else 0)) / 8) + 4 * (1 << b)
                loss = 1.0 + sens * (r**2 * 2 + 2.0 ** (-b) * 4) + rng.uniform(0, 1e-3)
                entries.append({"layer": name, "ratio": r, "bits": b, "bytes": nbytes, "loss": loss})
    return SensitivityTable(base={"loss": 1.0}, layers=info, entries=entries, ratios=list(ratios), bits=list(bits),
                            mode="joint", fixed_bytes=500, fp32_bytes=4 * sum(v["size"] for v in info.values()))


def brute_force(table, target_bytes=None, target_loss=None):
    layers = list(table.layers)
    best = None
    for combo in itertools.product(*[table.options(l) for l in layers]):
        size = table.fixed_bytes + sum(o["bytes"] for o in combo)
        delta = sum(o["delta"] for o in combo)
        if target_bytes is not None and size <= target_bytes and (best is None or delta < best[1]):
            best = (size, delta)
        if target_loss is not None and delta <= target_loss and (best is None or size < best[0]):
            best = (size, delta)
    return best


@pytest.mark.parametrize("seed", range(5))
def test_allocator_meets_a_size_budget(seed):
    t = synthetic_table(seed)
    total_max = t.fixed_bytes + sum(max(o["bytes"] for o in t.options(l)) for l in t.layers)
    for frac in (0.9, 0.5, 0.25, 0.12):
        target = int(total_max * frac)
        opt = brute_force(t, target_bytes=target)
        if opt is None:
            with pytest.raises(DeepCompError, match="smallest predicted file"):
                allocate(t, target_bytes=target)
            continue
        a = allocate(t, target_bytes=target)
        # the prediction is the sum of the chosen settings, and it meets the budget
        assert a.bytes == t.fixed_bytes + sum(t.nbytes(l, *a.choices[l]) for l in t.layers) <= target
        assert a.delta == pytest.approx(sum(t.delta(l, *a.choices[l]) for l in t.layers))
        assert a.delta <= opt[1] + 0.1  # close to the optimum
        assert all(a.choices[l][0] == 0.0 for l in t.layers if not t.layers[l]["prunable"])


@pytest.mark.parametrize("seed", range(5))
def test_allocator_meets_a_loss_budget(seed):
    t = synthetic_table(seed)
    for budget in (0.05, 0.2, 1.0):
        a = allocate(t, target_loss=budget)
        assert a.delta <= budget + 1e-12
        assert a.bytes == t.fixed_bytes + sum(t.nbytes(l, *a.choices[l]) for l in t.layers)
        opt = brute_force(t, target_loss=budget)
        assert a.bytes <= opt[0] * 1.5
    with pytest.raises(DeepCompError, match="smallest predicted increase"):
        allocate(t, target_loss=-1.0)
    with pytest.raises(DeepCompError):
        allocate(t)
    with pytest.raises(DeepCompError):
        allocate(t, target_bytes=10, target_loss=1)


def test_allocator_is_optimal_on_convex_curves():
    # each layer: bytes 100, 60, 30, 10 with convex loss increases; optimum = greedy by slope
    info, entries = {}, []
    for i, scale in enumerate((1.0, 3.0)):
        name = f"l{i}.weight"
        info[name] = {"shape": [10, 10], "size": 100, "prunable": False, "rule": None}
        for b, (nbytes, d) in zip((8, 6, 4, 2), ((100, 0.0), (60, 0.1), (30, 0.4), (10, 1.2))):
            entries.append({"layer": name, "ratio": 0.0, "bits": b, "bytes": nbytes, "loss": 1.0 + scale * d})
    t = SensitivityTable(base={"loss": 1.0}, layers=info, entries=entries, ratios=[0.0], bits=[2, 4, 6, 8], fixed_bytes=0, fp32_bytes=800)
    for target in (200, 160, 120, 90, 70, 40, 20):
        assert allocate(t, target_bytes=target).delta == pytest.approx(brute_force(t, target_bytes=target)[1])


def test_separable_mode_predicts_additively():
    t = synthetic_table(1)
    t.mode = "separable"
    layer = next(l for l in t.layers if t.layers[l]["prunable"])
    measured = set(t.measured_settings(layer))
    assert measured == {(r, 8) for r in t.ratios} | {(0.0, b) for b in t.bits}
    for e in t.entries:
        if e["layer"] == layer and (e["ratio"], e["bits"]) not in measured:
            e["loss"] = None
    pred = t.delta(layer, 0.5, 2)
    expect = (t.entry(layer, 0.5, 8)["loss"] - 1.0) + (t.entry(layer, 0.0, 2)["loss"] - 1.0) - (t.entry(layer, 0.0, 8)["loss"] - 1.0)
    assert pred == pytest.approx(expect)


def test_allocation_policy_applies_per_layer_rules():
    base = Policy()
    alloc = Allocation({"g_a.0.weight": (0.7, 3), "g_a.1.gamma": (0.0, 4)}, 0, 0.0,
                       rules={"g_a.0.weight": {**Rule(kind="weight", bits=8, init="density").__dict__}})
    p = alloc.policy(base)
    r = p.rule_for("g_a.0.weight", (128, 3, 5, 5))
    assert (r.prune, r.bits, r.init) == (0.7, 3, "density")
    g = p.rule_for("g_a.1.gamma", (128, 128))
    assert (g.prune, g.bits) == (None, 4)
    assert p.rule_for("g_a.2.weight", (128, 128, 5, 5)).bits == 8  # the base policy for the rest
    assert Policy.from_json(p.to_json()) == p


def test_encode_tensor_sizes_follow_the_setting():
    w = np.random.default_rng(0).normal(size=(32, 16, 3, 3)).astype(np.float32)
    rule = Rule(kind="weight", bits=8)
    # kernel pruning keeps its granularity through the sweep, and its positions are cheaper
    dk, bk = encode_tensor("x.weight", w, setting_rule(Rule(kind="weight", bits=8, granularity="kernel"), 0.8, 3))
    assert np.count_nonzero(dk.reshape(-1, 9).any(axis=1)) == round(0.2 * 32 * 16)
    assert bk < encode_tensor("x.weight", w, setting_rule(rule, 0.8, 3))[1]
    d8, b8 = encode_tensor("x.weight", w, setting_rule(rule, 0.0, 8))
    d3, b3 = encode_tensor("x.weight", w, setting_rule(rule, 0.0, 3))
    p3, bp = encode_tensor("x.weight", w, setting_rule(rule, 0.8, 3))
    assert bp < b3 < b8 < w.size * 4
    assert np.unique(d3).size <= 8 and np.count_nonzero(p3) == round(0.2 * w.size)
    assert np.abs(d8 - w).max() < np.abs(d3 - w).max()


def test_analyze_measures_restores_and_resumes(tmp_path):
    torch.manual_seed(0)
    model = zoo.build(ARCH, 1).eval()
    with torch.no_grad():  # latents that depend on the image
        model.g_a[6].weight.mul_(30.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    crops = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    policy = Policy()
    layers = candidate_layers(model, policy)
    assert "g_a.0.weight" in layers and "g_a.1.gamma" in layers and "g_a.0.bias" not in layers
    assert not any("entropy_bottleneck" in l for l in layers)
    saves = []
    table = analyze(model, crops, 0.0067, policy, ratios=(0.5,), bits=(2, 8), mode="joint", layers=["g_a.6.weight", "g_a.1.gamma"],
                    on_update=lambda t: saves.append(len(t.entries)), progress=False, meta={"arch": ARCH})
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # weights restored
    assert table.ratios == [0.0, 0.5] and table.bits == [2, 8] and table.complete()
    assert len(table.entries) == 4 + 2 and saves[-1] == 6
    assert table.layers["g_a.1.gamma"]["prunable"] is False and table.layer_ratios("g_a.1.gamma") == [0.0]
    # coarser settings cost fewer bytes; a 2-bit, half-pruned last analysis layer hurts more than 8 bits
    # (at 2 bits, half-pruning a random tensor saves nothing: zero is just a fifth symbol of about the same entropy)
    assert table.nbytes("g_a.6.weight", 0.5, 8) < table.nbytes("g_a.6.weight", 0.0, 8)
    assert table.nbytes("g_a.6.weight", 0.0, 2) < table.nbytes("g_a.6.weight", 0.0, 8)
    assert table.delta("g_a.6.weight", 0.5, 2) > abs(table.delta("g_a.6.weight", 0.0, 8))
    # the fixed part is the rest of the model as a file
    assert 0 < table.fixed_bytes < table.fp32_bytes
    # save / load / resume: nothing is measured again
    path = tmp_path / "sens.json"
    table.save(path)
    again = SensitivityTable.load(path)
    assert again.to_json() == table.to_json()
    calls = []
    analyze(model, crops, 0.0067, policy, ratios=(0.5,), bits=(2, 8), layers=["g_a.6.weight", "g_a.1.gamma"], table=again,
            on_update=lambda t: calls.append(1), progress=False)
    assert again.to_json()["entries"] == table.to_json()["entries"]
    with pytest.raises(DeepCompError, match="another grid"):
        analyze(model, crops, 0.0067, policy, ratios=(0.9,), bits=(2, 8), layers=["g_a.6.weight", "g_a.1.gamma"], table=again, progress=False)
    with pytest.raises(DeepCompError, match="granularity"):  # a table of single-weight pruning does not serve kernel pruning
        analyze(model, crops, 0.0067, policy.with_weight_rule(granularity="kernel"), ratios=(0.5,), bits=(2, 8),
                layers=["g_a.6.weight", "g_a.1.gamma"], table=again, progress=False)
    # separable: fewer measurements, every setting has a size
    sep = analyze(model, crops, 0.0067, policy, ratios=(0.5,), bits=(2, 4, 8), mode="separable", layers=["g_a.6.weight"], progress=False)
    measured = [e for e in sep.entries if e["loss"] is not None]
    assert len(sep.entries) == 6 and len(measured) == 4 and sep.complete()
    sep.delta("g_a.6.weight", 0.5, 2)
    # the plot, and an allocation that turns into a policy the codec takes
    assert plot_sensitivity(table, tmp_path / "s.png").stat().st_size > 1000
    alloc = allocate(table, target_bytes=table.fixed_bytes + table.nbytes("g_a.6.weight", 0.5, 2) + table.nbytes("g_a.1.gamma", 0.0, 8))
    pol = alloc.policy(policy)
    arrays = {k: v.numpy() for k, v in zoo.strip_derived(model.state_dict()).items()}
    codec.encode_arrays({k: arrays[k] for k in ("g_a.6.weight", "g_a.1.gamma")}, pol)
    with pytest.raises(DeepCompError, match="no parameter"):
        analyze(model, crops, 0.0067, policy, layers=["nope"], progress=False)
