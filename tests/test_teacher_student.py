"""Shared pieces of teacher-student recipes: EMA teacher, schedules, heads, monitors, views."""

import math

import pytest
import torch
from torch import nn

from fastspec.recipes.heads import DINOHead, MLPHead
from fastspec.recipes.monitors import (
    collapse_warnings,
    embedding_spread,
    marginal_entropy,
    softmax_entropy,
)
from fastspec.recipes.teacher import (
    EMATeacher,
    cosine_schedule,
    ema_momentum,
    warmup_then_constant,
)
from fastspec.recipes.views import random_crops


def _student():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 7), nn.BatchNorm1d(7), nn.Linear(7, 3))


def test_ema_teacher_is_the_float64_ema_of_the_student():
    student = _student()
    teacher = EMATeacher(student)
    assert all(not p.requires_grad for p in teacher.parameters())
    reference = {k: v.double().clone() for k, v in student.state_dict().items()}
    for m in [0.9, 0.99, 0.5]:
        with torch.no_grad():
            for p in student.parameters():
                p.add_(torch.randn_like(p))
        student(torch.randn(4, 5))  # moves the batch-norm running statistics
        teacher.update(student, m)
        for name, value in student.state_dict().items():
            if name.endswith(("running_mean", "running_var", "num_batches_tracked")):
                reference[name] = value.double().clone()  # buffers are copied, not averaged
            else:
                reference[name] = m * reference[name] + (1 - m) * value.double()
        for name, value in teacher.module.state_dict().items():
            torch.testing.assert_close(value.double(), reference[name], rtol=1e-6, atol=1e-6)


def test_ema_update_rejects_another_module():
    teacher = EMATeacher(_student())
    with pytest.raises(ValueError, match="not the module it was copied from"):
        teacher.update(nn.Linear(5, 3), 0.9)


def test_teacher_gets_no_gradient_and_is_in_the_state_dict():
    class Pair(nn.Module):
        def __init__(self):
            super().__init__()
            self.student = _student()
            self.teacher = EMATeacher(self.student)

    pair = Pair()
    x = torch.randn(4, 5)
    (pair.student(x).sum() + pair.teacher(x).sum()).backward()
    assert all(p.grad is not None for p in pair.student.parameters())
    assert all(p.grad is None for p in pair.teacher.parameters())
    assert any(k.startswith("teacher.module.") for k in pair.state_dict())


def test_schedules():
    assert cosine_schedule(0.996, 1.0, 0, 100) == pytest.approx(0.996)
    assert cosine_schedule(0.996, 1.0, 99, 100) == pytest.approx(1.0)
    assert cosine_schedule(0.0, 1.0, 50, 101) == pytest.approx(0.5)
    assert ema_momentum(0, 10, 0.99) == pytest.approx(0.99)
    assert ema_momentum(10**6, 10, 0.99) == pytest.approx(1.0)
    assert warmup_then_constant(0.04, 0.07, 0, 30) == pytest.approx(0.04)
    assert warmup_then_constant(0.04, 0.07, 15, 30) == pytest.approx(0.055)
    assert warmup_then_constant(0.04, 0.07, 31, 30) == pytest.approx(0.07)


def test_dino_head_shapes_and_fixed_last_layer_norm():
    head = DINOHead(16, 33, hidden_dim=24, bottleneck_dim=8)
    out = head(torch.randn(2, 5, 16))
    assert out.shape == (2, 5, 33)
    out.sum().backward()
    g = head.last_layer.parametrizations.weight.original0
    assert g.grad is None and torch.all(g == 1)
    # with unit-norm prototypes and a unit-norm bottleneck, logits are cosines: |logit| <= 1
    assert out.abs().max() <= 1 + 1e-5


def test_mlp_head_on_tokens_and_vectors():
    head = MLPHead(8, 32, 4)
    assert head(torch.randn(6, 8)).shape == (6, 4)
    assert head(torch.randn(3, 5, 8)).shape == (3, 5, 4)


def test_monitors_see_both_collapses():
    k = 50
    uniform = torch.full((8, k), 1.0 / k)
    one_hot = torch.nn.functional.one_hot(torch.zeros(8, dtype=torch.long), k).float()
    assert softmax_entropy(uniform).item() == pytest.approx(math.log(k), rel=1e-5)
    assert softmax_entropy(one_hot).item() == pytest.approx(0.0, abs=1e-6)
    assert marginal_entropy(one_hot).item() == pytest.approx(0.0, abs=1e-6)
    torch.manual_seed(0)
    healthy = embedding_spread(torch.randn(512, 64)).item()
    assert 0.9 < healthy < 1.1
    collapsed = embedding_spread(torch.ones(512, 64) + 1e-4 * torch.randn(512, 64)).item()
    assert collapsed < 0.01
    warn = collapse_warnings(
        {"spread": collapsed, "ent": 0.0}, spread_key="spread", entropy_key="ent", n_prototypes=k
    )
    assert len(warn) == 2
    assert collapse_warnings({"spread": healthy}, spread_key="spread") == []


def test_random_crops_stay_inside_each_clip():
    torch.manual_seed(0)
    mel = torch.arange(2 * 50 * 3, dtype=torch.float32).reshape(2, 50, 3)
    g = torch.Generator().manual_seed(1)
    views, starts = random_crops(mel, 20, 3, lengths=torch.tensor([50, 25]), generator=g)
    assert views.shape == (3, 2, 20, 3) and starts.shape == (3, 2)
    assert (starts[:, 1] <= 5).all() and (starts[:, 0] <= 30).all()
    for v in range(3):
        for b in range(2):
            s = starts[v, b].item()
            assert torch.equal(views[v, b], mel[b, s : s + 20])
    # same generator seed, same views; short clips are padded, the crop starts at 0
    g2 = torch.Generator().manual_seed(1)
    again, _ = random_crops(mel, 20, 3, lengths=torch.tensor([50, 25]), generator=g2)
    assert torch.equal(views, again)
    short, s0 = random_crops(mel[:, :10], 20, 1, generator=g)
    assert short.shape == (1, 2, 20, 3) and (s0 == 0).all() and (short[:, :, 10:] == 0).all()
