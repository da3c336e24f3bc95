"""Layer-wise distillation from the uncompressed model (deepcomp.distillation) and its use in fine-tuning."""

import pytest
import torch
from torch import nn

from deepcomp import zoo
from deepcomp.distillation import LayerDistiller, matched_layers, relative_error
from deepcomp.errors import DeepCompError
from deepcomp.training import CropSampler, TrainConfig, rd_loss, train_steps

ARCH = "bmshj2018-factorized"

pytestmark = pytest.mark.usefixtures("one_thread")


def pair(seed=0):
    torch.manual_seed(seed)
    teacher = zoo.build(ARCH, 1)
    student = zoo.build(ARCH, 1)
    student.load_state_dict(teacher.state_dict())
    return student, teacher


def prune_half(model):
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 4:
                p.mul_((p.abs() > p.abs().median()).to(p.dtype))


def test_layers_are_the_convolutions_and_gdns_of_both_transforms():
    student, _ = pair()
    layers = matched_layers(student)
    assert layers == [f"{t}.{i}" for t in ("g_a", "g_s") for i in range(7)]


def test_identical_models_give_zero_and_a_pruned_student_a_positive_loss_with_gradients_only_for_it():
    student, teacher = pair()
    d = LayerDistiller(student, teacher, 2.0)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    student.train()  # the entropy bottleneck adds noise; the teacher's synthesis sees the same noisy latent
    student(x)
    assert d.loss(x).item() == 0.0
    prune_half(student)
    student(x)
    loss = d.loss(x)
    assert loss.item() > 0
    loss.backward()
    assert student.g_a[0].weight.grad is not None and student.g_a[0].weight.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    # the weight scales the term (eval mode: no noise, the same forward twice)
    student.eval()
    student(x)
    twice = d.loss(x).item()
    d.weight = 1.0
    student(x)
    assert twice == pytest.approx(2 * d.loss(x).item())
    d.close()
    assert not student.g_a[0]._forward_hooks and not teacher.g_a[0]._forward_hooks and not student.g_s._forward_pre_hooks


def test_relative_error():
    t = torch.tensor([3.0, 4.0])
    assert relative_error(t, t).item() == 0.0
    assert relative_error(torch.zeros(2), t).item() == pytest.approx(1.0)


def test_refusals():
    student, teacher = pair()
    with pytest.raises(DeepCompError, match="weight"):
        LayerDistiller(student, teacher, 0.0)
    d = LayerDistiller(student, teacher, 1.0)
    with pytest.raises(DeepCompError, match="forward first"):
        d.loss(torch.rand(1, 3, 32, 32))
    with pytest.raises(DeepCompError, match="g_a and g_s"):
        LayerDistiller(nn.Sequential(nn.Conv2d(3, 3, 3)), nn.Sequential(nn.Conv2d(3, 3, 3)), 1.0)


def test_training_with_the_distiller_keeps_a_pruned_student_near_its_teacher(synthetic_photos):
    files = sorted(synthetic_photos.iterdir())
    crops = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    cfg = TrainConfig(arch=ARCH, quality=1, steps=6, batch_size=2, patch_size=32, lr=1e-4, val_every=1000)
    distances = {}
    for weight in (0.0, 100.0):
        student, teacher = pair()
        prune_half(student)
        probe = LayerDistiller(student, teacher, 1.0)  # measures the distance (its hooks also feed a training distiller)

        def distance():
            student.eval()
            with torch.no_grad():
                student(crops)
                return probe.loss(crops).item()

        before = distance()
        d = LayerDistiller(student, teacher, weight) if weight else None
        state = train_steps(student, CropSampler(files, 32, seed=0), cfg, {}, progress=False, log=lambda _: None, distiller=d)
        assert state["step"] == 6
        distances[weight] = (before, distance())
    # the random model's RD loss alone pulls it away from the teacher; the distillation term holds it near
    assert distances[0.0][0] == distances[100.0][0]
    assert distances[100.0][1] < distances[100.0][0] < distances[0.0][1]
