"""Random views of a batch, on device: the crops and rolls of teacher-student recipes.

ATST-Clip takes two independent crops of a clip's log-mel, ATST-Frame one
(:func:`random_crops`, :func:`crop_lengths`); ASiT, as its reference code, rolls each clip's
waveform and cuts two crops of samples, which the front end then turns into features
(:func:`random_roll`, then :func:`random_crops` on the samples). Every draw comes from
the recipe's generator (the loop's per-clip :class:`~fastspec.masking.clip_rng.ClipRng`), so a
resumed run, or the same clip on another rank, draws the same views; nothing returns to the host.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fastspec.masking.clip_rng import ClipRng, uniform_rows


def random_crops(
    x: Tensor,
    crop: int,
    n_views: int,
    *,
    lengths: Tensor | None = None,
    generator: torch.Generator | ClipRng | None = None,
) -> tuple[Tensor, Tensor]:
    """Independent random crops of ``crop`` steps along dim 1 of every clip.

    x: [B, L, ...] (a log-mel [B, T, F], or a waveform [B, S]); lengths: [B] valid steps per
    clip (default: all L). A crop starts uniformly at one of the ``max(length - crop, 0) + 1``
    places where it fits inside the clip's own steps; a clip shorter than a crop is zero-padded
    and cropped from 0 (ASiT's ``data_transformations.py``: pad to the crop, then
    ``RandomResizedCrop``, which despite its name draws only an offset, no resize).

    Returns (views [n_views, B, crop, ...], starts [n_views, B] int64).
    """
    batch, n_steps = x.shape[:2]
    if crop < 1:
        raise ValueError(f"crop must be >= 1 step, got {crop}")
    if n_steps < crop:  # pad so every crop is in range
        x = torch.cat([x, x.new_zeros(batch, crop - n_steps, *x.shape[2:])], dim=1)
    if lengths is None:
        valid = torch.full((batch,), n_steps, device=x.device, dtype=torch.long)
    else:
        valid = lengths.to(device=x.device, dtype=torch.long)
    room = (valid - crop).clamp_min(0) + 1  # [B] number of admissible starts
    u = uniform_rows(generator, (n_views, batch), x.device, row_dim=1)  # per clip if keyed
    starts = (u * room).long().clamp_max(room - 1)  # uniform integer in [0, room)
    # gather steps start..start+crop for each (view, clip): index [V, B, crop, ...]
    idx = starts[..., None] + torch.arange(crop, device=x.device)
    trailing = x.shape[2:]
    idx = idx.reshape(*idx.shape, *(1,) * len(trailing)).expand(n_views, batch, crop, *trailing)
    views = torch.gather(x.unsqueeze(0).expand(n_views, *x.shape), 2, idx)
    return views, starts


def crop_lengths(starts: Tensor, lengths: Tensor | None, n_steps: int, crop: int) -> Tensor | None:
    """Valid steps of crops that start at ``starts`` [...] in clips of ``lengths`` [B]
    (default: all ``n_steps``), between 1 and ``crop``.

    None when every crop is whole, known on the host without a sync: no clip is padded
    (``lengths`` None, as the loop passes it then) and clips hold a crop. The encoders then
    run without a padding mask, the path that reaches the fast attention kernels.
    """
    if lengths is None and n_steps >= crop:
        return None
    if lengths is None:
        total = torch.full_like(starts, n_steps)
    else:
        total = lengths.to(device=starts.device, dtype=torch.long).expand_as(starts)
    return (total - starts).clamp(1, crop)


def random_roll(
    wave: Tensor,
    prob: float,
    *,
    lengths: Tensor | None = None,
    generator: torch.Generator | ClipRng | None = None,
) -> tuple[Tensor, Tensor]:
    """Circular shift of each clip's valid samples, with probability ``prob``.

    As ASiT's ``dataloader.py`` (``torch.roll(waveform, random.randint(0, L), 1)`` when
    ``random.random() > 0.5``): the shift is uniform over the integers 0..L inclusive (L and 0
    both leave the clip as it is), and only the clip's own L valid samples turn; the padding
    after them stays in place. wave: [B, S]; lengths: [B] valid samples (default: all S).

    Returns (rolled [B, S], shifts [B] int64: 0 for a clip left unrolled).
    """
    batch, n_samples = wave.shape
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"roll probability must be in [0, 1], got {prob}")
    if lengths is None:
        valid = torch.full((batch,), n_samples, device=wave.device, dtype=torch.long)
    else:
        valid = lengths.to(device=wave.device, dtype=torch.long)
    u = uniform_rows(generator, (batch, 2), wave.device)  # [B, 2]: roll or not, the shift
    # float64: a float32 product could round up to L + 1 on long clips (clamped all the same)
    shifts = (u[:, 1].double() * (valid + 1)).long().clamp_max(valid)
    shifts = torch.where(u[:, 0] < prob, shifts, torch.zeros_like(shifts))
    # out[i] = wave[(i - shift) mod L] inside the clip (torch.roll's rule), out[i] = wave[i] after
    pos = torch.arange(n_samples, device=wave.device)[None, :]
    inside = (pos - shifts[:, None]) % valid.clamp_min(1)[:, None]
    source = torch.where(pos < valid[:, None], inside, pos)
    return torch.gather(wave, 1, source), shifts


__all__ = ["crop_lengths", "random_crops", "random_roll"]
