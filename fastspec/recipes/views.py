"""Random views of a batch, on device: the crops and rolls of teacher-student recipes.

ATST-Clip takes two independent crops of a clip's log-mel (:func:`random_time_crops`); ASiT, as
its reference code, rolls each clip's waveform and cuts two crops of samples, which the front end
then turns into features (:func:`random_roll`, :func:`random_wave_crops`). Every draw comes from
the recipe's generator (the loop's per-clip :class:`~fastspec.masking.clip_rng.ClipRng`), so a
resumed run, or the same clip on another rank, draws the same views; nothing returns to the host.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fastspec.masking.clip_rng import ClipRng, uniform_rows


def random_time_crops(
    mel: Tensor,
    crop_frames: int,
    n_views: int,
    *,
    frame_lengths: Tensor | None = None,
    generator: torch.Generator | ClipRng | None = None,
) -> tuple[Tensor, Tensor]:
    """Independent random time crops of every clip.

    mel: [B, T, F] log-mel; crop_frames: frames per crop (clips shorter than that are
    zero-padded: the crop then starts at 0); frame_lengths: [B] valid frames per clip (default:
    all T), so crops start only where a whole crop fits within the clip's own frames.

    Returns (views [n_views, B, crop_frames, F], starts [n_views, B] int64).
    """
    batch, n_frames, n_bins = mel.shape
    if crop_frames < 1:
        raise ValueError(f"crop_frames must be >= 1, got {crop_frames}")
    if n_frames < crop_frames:  # pad so every crop is in range
        mel = torch.nn.functional.pad(mel, (0, 0, 0, crop_frames - n_frames))
    if frame_lengths is None:
        valid = torch.full((batch,), n_frames, device=mel.device, dtype=torch.long)
    else:
        valid = frame_lengths.to(device=mel.device, dtype=torch.long)
    room = (valid - crop_frames).clamp_min(0) + 1  # [B] number of admissible starts
    u = uniform_rows(generator, (n_views, batch), mel.device, row_dim=1)  # per clip if keyed
    starts = (u * room).long().clamp_max(room - 1)  # uniform integer in [0, room)
    # gather frames start..start+crop for each (view, clip): index [V, B, crop, F]
    idx = starts[..., None] + torch.arange(crop_frames, device=mel.device)
    idx = idx[..., None].expand(n_views, batch, crop_frames, n_bins)
    views = torch.gather(mel.unsqueeze(0).expand(n_views, -1, -1, -1), 2, idx)
    return views, starts


def random_wave_crops(
    wave: Tensor,
    crop_samples: int,
    n_views: int,
    *,
    lengths: Tensor | None = None,
    generator: torch.Generator | ClipRng | None = None,
) -> tuple[Tensor, Tensor]:
    """Independent random crops of ``crop_samples`` samples of every clip's waveform.

    wave: [B, S]; lengths: [B] valid samples (default: all S). A crop starts uniformly at one of
    the ``max(length - crop_samples, 0) + 1`` places where it fits inside the clip; a clip shorter
    than a crop is zero-padded and cropped from 0 (ASiT's ``data_transformations.py``: pad to the
    crop, then ``RandomResizedCrop``, which despite its name draws only an offset, no resize).

    Returns (views [n_views, B, crop_samples], starts [n_views, B] int64).
    """
    # the frame crop over a single "bin": the same draw and the same gather, one sample per row
    views, starts = random_time_crops(
        wave[..., None], crop_samples, n_views, frame_lengths=lengths, generator=generator
    )
    return views[..., 0], starts


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


__all__ = ["random_roll", "random_time_crops", "random_wave_crops"]
