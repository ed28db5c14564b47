"""ASiT's views from the waveform: the roll and the crops against a NumPy re-implementation of
the reference's (Sara-Ahmed/ASiT ``dataloader.py``, ``data_transformations.py``) given the same
draws, keyed per clip; and a teacher without stochastic depth."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fastspec.masking.clip_rng import ClipRng
from fastspec.models import create_model
from fastspec.recipes.asit import ASiT
from fastspec.recipes.views import random_roll

CROP = 500  # samples per crop


def recipe(roll_prob: float = 0.5, drop_path: float = 0.0) -> ASiT:
    torch.manual_seed(0)
    encoder = create_model(
        "vit_mini_patch16", n_mels=32, embed_dim=16, depth=2, num_heads=2, drop_path_rate=drop_path
    )
    return ASiT(encoder, crop_samples=CROP, crop_frames=16, roll_prob=roll_prob,
                out_dim_global=8, out_dim_local=4, head_hidden_dim=8, head_bottleneck_dim=4,
                rec_hidden_dim=8, rec_bottleneck_dim=4)  # fmt: skip


def reference_views(wave, lengths, u_roll, u_crop, roll_prob, crop):
    """The reference per clip, in NumPy: ``if random.random() > 0.5: torch.roll(w, randint(0, L))``
    on the clip's own L samples, zero-pad to the crop, then two ``RandomResizedCrop``s (an offset
    ``randint(0, L - crop)``). Draws u in [0, 1) stand for the reference's: an integer in [0, n]
    is floor(u * (n + 1)); ``random.random() > 0.5`` is ``u < roll_prob`` at p = 0.5."""
    views = np.zeros((2, len(wave), crop), dtype=np.float32)
    for b, (clip, length) in enumerate(zip(wave, lengths)):
        x = clip[:length].astype(np.float32)
        if u_roll[b, 0] < roll_prob:
            x = np.roll(x, min(int(np.floor(np.float64(u_roll[b, 1]) * (length + 1))), length))
        x = np.concatenate([x, np.zeros(max(crop - length, 0), np.float32)])
        room = max(length - crop, 0) + 1
        for v in range(2):
            # float32 product, as the device computes the offset
            start = min(int(np.floor(np.float32(u_crop[v, b]) * np.float32(room))), room - 1)
            views[v, b] = x[start : start + crop]
    return views.reshape(2 * len(wave), crop)


@pytest.mark.parametrize("roll_prob", [0.5, 1.0, 0.0])
def test_waveform_views_roll_then_crop_as_the_numpy_reference(roll_prob):
    rng = np.random.default_rng(0)
    lengths = np.array([2000, 1999, 1203, 640, 500, 311])  # the last clip: shorter than a crop
    wave = rng.standard_normal((6, 2000)).astype(np.float32)
    for b, length in enumerate(lengths):
        wave[b, length:] = 0.0  # the loader's zero padding
    asit = recipe(roll_prob)
    views = asit.waveform_views(
        torch.from_numpy(wave), torch.from_numpy(lengths), torch.Generator().manual_seed(4)
    )
    # the same draws, replayed: the roll's [B, 2] (roll or not, shift), then the crops' [2, B]
    replay = torch.Generator().manual_seed(4)
    u_roll = torch.rand((6, 2), generator=replay).numpy()
    u_crop = torch.rand((2, 6), generator=replay).numpy()
    expected = reference_views(wave, lengths, u_roll, u_crop, roll_prob, CROP)
    assert views.shape == (12, CROP)
    np.testing.assert_array_equal(views.numpy(), expected)
    if roll_prob == 0.5:  # these draws roll some clips and leave others: both paths are checked
        assert 0 < (u_roll[:, 0] < 0.5).sum() < 6


def test_roll_probability_and_shifts_are_uniform_over_0_to_length():
    length, rows = 7, 8000
    wave = torch.arange(length, dtype=torch.float32).repeat(rows, 1)
    rolled, shifts = random_roll(wave, 0.5, generator=torch.Generator().manual_seed(0))
    # a shift of 0 or L leaves the clip; the others turn it as torch.roll does
    for r in range(0, rows, 997):
        assert torch.equal(rolled[r], torch.roll(wave[r], int(shifts[r])))
    moved = (rolled != wave).any(dim=1)
    share = moved.float().mean().item()
    # P(rolled and shift not in {0, L}) = 0.5 * 6 / 8
    assert abs(share - 0.5 * 6 / 8) < 0.02, share
    counts = torch.bincount(shifts[shifts > 0], minlength=length + 1)[1:]
    assert counts.shape == (length,)
    expected = 0.5 * rows / (length + 1)  # each of 1..L, among the rolled half
    assert ((counts - expected).abs() < 5 * expected**0.5).all(), counts
    with pytest.raises(ValueError, match="probability"):
        random_roll(wave, 1.5)


def test_views_are_keyed_per_clip_whatever_the_split():
    """Two ranks of 2 clips draw the views one process draws for the 4 clips."""
    wave = torch.randn(4, 1500, generator=torch.Generator().manual_seed(1))
    lengths = torch.tensor([1500, 900, 1500, 420])
    asit = recipe()
    whole = asit.waveform_views(wave, lengths, ClipRng.for_clips(3, 5, 0, 4, "cpu"))
    halves = [asit.waveform_views(wave[i : i + 2], lengths[i : i + 2],
                                  ClipRng.for_clips(3, 5, i, 2, "cpu")) for i in (0, 2)]  # fmt: skip
    for v in range(2):  # crop-major rows: view v of clip b is row v * B + b
        torch.testing.assert_close(
            torch.cat([h[v * 2 : v * 2 + 2] for h in halves]), whole[v * 4 : v * 4 + 4],
            rtol=0, atol=0,
        )  # fmt: skip


def test_forward_refuses_what_is_not_two_whole_views():
    asit = recipe()
    with pytest.raises(ValueError, match="two crops per clip"):
        asit(torch.randn(3, 20, 32), generator=torch.Generator())
    with pytest.raises(ValueError, match="crop_frames=16"):
        asit(torch.randn(4, 15, 32), generator=torch.Generator())
    with pytest.raises(ValueError, match="frame_lengths"):
        asit(torch.randn(4, 20, 32), frame_lengths=torch.tensor([20, 20, 20, 20]))


def test_teacher_has_no_stochastic_depth_and_the_student_has():
    asit = recipe(drop_path=0.5).train()
    assert asit.training and asit.student.training and not asit.teacher.training
    assert not any(m.training for m in asit.teacher.modules())
    crops = torch.randn(4, 16, 32)
    torch.manual_seed(1)
    teacher = [asit.forward_teacher(crops)[1] for _ in range(2)]
    student = [asit.student(crops)[1] for _ in range(2)]
    assert torch.equal(*teacher)  # no draw: the same output twice
    assert not torch.equal(*student)  # the student drops paths at random
    asit.eval()
    assert not asit.training and not asit.student.training
