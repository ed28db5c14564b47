"""ATST's segment-wise augmentations against slow float64 references (BYOL-A semantics)."""

import math

import pytest
import torch
import torch.nn.functional as F

from fastspec.recipes.augment import (
    MixupMemory,
    draw_resize_crop,
    log_mixup_exp,
    random_resize_crop,
    resize_crop,
)

EPS32 = torch.finfo(torch.float32).eps


# ---- log-mixup-exp ------------------------------------------------------------------------------


def test_log_mixup_exp_is_the_log_of_the_linear_mix():
    g = torch.Generator().manual_seed(0)
    x, z = torch.randn(3, 7, 5, generator=g), torch.randn(3, 7, 5, generator=g)
    alpha = torch.tensor([0.0, 0.25, 0.4])
    out = log_mixup_exp(x, z, alpha[:, None, None])
    x64, z64 = x.double(), z.double()
    for b in range(3):
        a = alpha[b].item()
        want = torch.log((1 - a) * torch.exp(x64[b]) + a * torch.exp(z64[b]) + EPS32)
        torch.testing.assert_close(out[b].double(), want, rtol=1e-6, atol=1e-6)


def _slot_contents(pushed, size):
    """Reference ring buffer: slot s holds the latest pushed crop p with p % size == s."""
    slots = {}
    for p, item in enumerate(pushed):
        slots[p % size] = item
    return slots


@pytest.mark.parametrize("size, batches", [(5, [3, 3, 4]), (4, [6, 1])], ids=["M5", "M4-big"])
def test_mixup_memory_matches_a_list_fifo_reference(size, batches):
    n_frames, n_mels, ratio = 9, 4, 0.4
    memory = MixupMemory(size, n_frames, n_mels, ratio)
    g = torch.Generator().manual_seed(3)
    data = torch.Generator().manual_seed(4)
    pushed = []  # (crop [T, F] float64, valid frames), in push order
    for step, batch in enumerate(batches):
        x = torch.randn(batch, n_frames, n_mels, generator=data)
        lengths = torch.randint(2, n_frames + 1, (batch,), generator=data)
        for b in range(batch):
            x[b, lengths[b] :] = 0  # padding is zero, as the crops are
        state = g.get_state()
        alpha, index = memory.draw(batch, g)  # the draws the call below makes, for the reference
        g.set_state(state)
        out = memory(x, g, lengths)
        assert (alpha <= ratio).all() and (alpha >= 0).all()
        slots = _slot_contents(pushed, size)
        if step == 0:
            assert (alpha == 0).all()
            torch.testing.assert_close(out, x, rtol=0, atol=0)  # empty memory: unchanged
        for b in range(batch):
            want = x[b].double().clone()
            if pushed:
                assert index[b].item() in slots  # only filled slots are drawn
                z, z_len = slots[index[b].item()]
                n = min(int(lengths[b]), z_len)
                a = alpha[b].item()
                want[:n] = torch.log((1 - a) * torch.exp(want[:n]) + a * torch.exp(z[:n]) + EPS32)
            torch.testing.assert_close(out[b].double(), want, rtol=1e-6, atol=1e-6)
        pushed += [(x[b].double(), int(lengths[b])) for b in range(batch)]
        assert memory.count.item() == min(len(pushed), size)
        for slot, (crop, n) in _slot_contents(pushed, size).items():
            assert torch.equal(memory.bank[slot].double(), crop)
            assert memory.bank_lengths[slot].item() == n


def test_mixup_memory_rejects_other_crop_shapes():
    memory = MixupMemory(4, 10, 8)
    with pytest.raises(ValueError, match=r"\[T, F\] = \[10, 8\]"):
        memory(torch.zeros(2, 12, 8))


# ---- random resize crop -------------------------------------------------------------------------


def resize_crop_reference(mel, params, lengths):
    """BYOL-A's RandomResizeCrop, one clip at a time in mel's dtype: the clip's valid frames
    centred on a zero canvas, the crop cut out and resized back with F.interpolate."""
    out = torch.zeros_like(mel)
    n_mels = mel.shape[2]
    for b in range(mel.shape[0]):
        n = int(lengths[b])
        spec = mel[b, :n].T  # [F, T], the paper's layout
        f_canvas, t_canvas = int(params.freq_canvas[b]), int(params.time_canvas[b])
        canvas = torch.zeros(f_canvas, t_canvas, dtype=mel.dtype)
        y0, x0 = (f_canvas - n_mels) // 2, (t_canvas - n) // 2
        canvas[y0 : y0 + n_mels, x0 : x0 + n] = spec
        i, h = int(params.freq_start[b]), int(params.freq_size[b])
        j, w = int(params.time_start[b]), int(params.time_size[b])
        crop = canvas[i : i + h, j : j + w]
        resized = F.interpolate(
            crop[None, None], size=(n_mels, n), mode="bicubic", align_corners=True
        )[0, 0]
        out[b, :n] = resized.T
    return out


@pytest.mark.parametrize(
    "dtype, n_frames, n_mels, scales",
    [
        (torch.float64, 37, 16, ((0.6, 1.5), (0.6, 1.5), 1.0, 1.5)),  # ATST-Clip's
        (torch.float32, 53, 11, ((0.6, 1.5), (0.6, 1.5), 1.0, 1.5)),
        (torch.float64, 29, 13, ((0.5, 1.0), (0.9, 1.2), 1.3, 2.0)),  # canvases on both axes
    ],
    ids=["f64-T37-F16", "f32-T53-F11", "f64-T29-F13-canvas"],
)
def test_resize_crop_matches_per_clip_interpolate(dtype, n_frames, n_mels, scales):
    freq_scale, time_scale, freq_canvas, time_canvas = scales
    g = torch.Generator().manual_seed(0)
    batch = 12
    lengths = torch.tensor([n_frames, n_frames, 1, 2, 5] + [n_frames - 3 * k for k in range(7)])
    mel = torch.randn(batch, n_frames, n_mels, generator=g, dtype=torch.float64)
    for b in range(batch):
        mel[b, lengths[b] :] = 0
    params = draw_resize_crop(
        batch,
        n_mels,
        lengths,
        freq_scale=freq_scale,
        time_scale=time_scale,
        freq_canvas=freq_canvas,
        time_canvas=time_canvas,
        generator=g,
    )
    out = resize_crop(mel.to(dtype), params, lengths)
    want = resize_crop_reference(mel, params, lengths)  # float64
    if dtype == torch.float64:
        torch.testing.assert_close(out, want, rtol=1e-12, atol=1e-12)
    else:  # at most twice the error of PyTorch's own interpolate in the same dtype
        torch_err = (resize_crop_reference(mel.to(dtype), params, lengths).double() - want).abs()
        assert (out.double() - want).abs().max() <= 2 * torch_err.max() + 1e-7
    for b in range(batch):  # padding stays zero
        assert (out[b, lengths[b] :] == 0).all()


def test_resize_crop_draws_cover_byol_a_ranges():
    g = torch.Generator().manual_seed(1)
    n = 4000
    lengths = torch.full((n,), 100)
    p = draw_resize_crop(n, 64, lengths, generator=g)  # ATST-Clip defaults
    assert (p.time_canvas == 150).all() and (p.freq_canvas == 64).all()
    # size = clip(int(U(0.6, 1.5) * L), 1, canvas): frequency saturates at the 64 bins
    assert p.time_size.min() == 60 and p.time_size.max() == 149
    assert p.freq_size.min() == 38 and p.freq_size.max() == 64
    assert (p.freq_size == 64).float().mean() > 0.4  # U > 1 in 5/9 of the draws
    # start = randint(0, canvas - size), both ends reached
    room = p.time_canvas - p.time_size
    assert (p.time_start >= 0).all() and (p.time_start <= room).all()
    assert (p.time_start == room).any() and (p.time_start == 0).any()


def test_frequency_only_resize_keeps_frames_aligned():
    """ATST-Frame's student copy: time scale 1 and no canvas make the time axis the identity,
    and the shortcut equals the full separable resize."""
    g = torch.Generator().manual_seed(2)
    mel = torch.randn(6, 40, 64, generator=g)
    lengths = torch.tensor([40, 40, 33, 12, 40, 7])
    for b in range(6):
        mel[b, lengths[b] :] = 0
    kwargs = {"frame_lengths": lengths, "time_scale": (1.0, 1.0), "time_canvas": 1.0}
    fast = random_resize_crop(mel, generator=torch.Generator().manual_seed(5), **kwargs)
    params = draw_resize_crop(  # the same draws as the call above
        6,
        64,
        lengths,
        time_scale=(1.0, 1.0),
        time_canvas=1.0,
        generator=torch.Generator().manual_seed(5),
    )
    assert torch.equal(params.time_size, lengths) and (params.time_start == 0).all()
    torch.testing.assert_close(fast, resize_crop(mel, params, lengths), rtol=1e-6, atol=1e-6)
    # an impulse in frame t of a clip stays in frame t
    impulse = torch.zeros(1, 40, 64)
    impulse[0, 17] = 1.0
    out = random_resize_crop(impulse, generator=g, time_scale=(1.0, 1.0), time_canvas=1.0)
    energy = out[0].abs().sum(dim=1)
    assert energy.argmax().item() == 17 and math.isclose(energy.sum().item(), energy[17].item())


def test_resize_crop_rejects_bad_scales():
    mel = torch.zeros(2, 10, 8)
    with pytest.raises(ValueError, match="time_scale"):
        random_resize_crop(mel, time_scale=(0.5, 0.9))
    with pytest.raises(ValueError, match="freq_canvas"):
        random_resize_crop(mel, freq_canvas=0.5)
