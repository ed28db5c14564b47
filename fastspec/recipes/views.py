"""Random crops of a log-mel batch, on device: the views of teacher-student recipes.

ASiT takes two 6 s crops per clip, ATST-Clip two independent crops; cropping the features of one
longer clip on the device avoids a second front-end pass and any host round trip. Offsets come
from the recipe's generator (seeded per step by the training loop), so a resumed run draws the
same views.
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
