"""MaskSpec's training augmentation: a random Kaldi mel range per clip.

MaskSpec's reference (WangHelin1997/MaskSpec ``models/models_mae.py``, ``AugmentMelSTFT`` as
``MaskedAutoencoderViT`` builds it: ``fmin_aug_range=10``, ``fmax_aug_range=2000``) rebuilds its
Kaldi mel banks at every training forward from a random range,

    f_min' = f_min + randint(low)          (0 .. low - 1 Hz above the evaluation low edge)
    f_max' = f_max + high // 2 - randint(high)

and evaluates at ``(f_min, f_max)``. The reference draws one range per batch; here each clip
draws its own from its keyed stream (:class:`~fastspec.masking.clip_rng.ClipRng` in the loop),
so the features of a clip do not depend on the batch or the number of ranks it trains on. The
features are the torch reference path's in float32, with one filter bank per clip
(``[B, n_fft // 2 + 1, n_mels]``, a batched matmul): the fused backends take one bank.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fastspec.kernels import reference as ref

from .config import FrontendConfig
from .op import check_values, reference_logmel


def check_mel_range_jitter(cfg: FrontendConfig, jitter: tuple[int, int]) -> None:
    """ValueError unless ``jitter = (low, high)`` Hz can widen ``cfg``'s Kaldi mel range."""
    low, high = jitter
    if low < 0 or high < 0:
        raise ValueError(f"frontend.mel_range_jitter={jitter}: both ranges must be >= 0 Hz")
    if cfg.mel_scale != "kaldi":
        raise ValueError(
            f"frontend.mel_range_jitter needs Kaldi mel banks (MaskSpec's), not {cfg.mel_scale!r}"
        )
    top = cfg.f_max + high // 2
    if top > cfg.sample_rate / 2:
        raise ValueError(
            f"frontend.mel_range_jitter={jitter}: the high edge reaches {top} Hz, above Nyquist "
            f"({cfg.sample_rate / 2:g} Hz)"
        )
    if cfg.f_min + max(low - 1, 0) >= top - max(high - 1, 0):
        raise ValueError(f"frontend.mel_range_jitter={jitter}: the range can close up")


def draw_mel_ranges(
    uniforms: Tensor, cfg: FrontendConfig, jitter: tuple[int, int]
) -> tuple[Tensor, Tensor]:
    """Integer Hz edges ``(f_min [B], f_max [B])`` from ``uniforms [B, 2]`` in [0, 1)."""
    low, high = jitter
    steps = (uniforms.double() * torch.tensor([low, high], device=uniforms.device)).floor()
    steps = torch.minimum(
        steps, torch.tensor([max(low - 1, 0), max(high - 1, 0)], device=steps.device)
    )
    return cfg.f_min + steps[:, 0], cfg.f_max + high // 2 - steps[:, 1]


def logmel_mel_range(
    wave: Tensor,
    lengths: Tensor | None,
    cfg: FrontendConfig,
    f_min: Tensor,
    f_max: Tensor,
    *,
    normalize: bool = True,
) -> Tensor:
    """Features ``[B, T, n_mels]`` float32 of ``wave [B, S]`` (at ``cfg.sample_rate``), each
    clip's Kaldi mel banks spanning its own ``f_min[b]``..``f_max[b]`` Hz; otherwise exactly
    the front end's (pre-emphasis, log, per-bin statistics, zeros past each clip's frames)."""
    if cfg.mel_scale != "kaldi":
        raise ValueError(f"a mel range per clip needs Kaldi mel banks, not {cfg.mel_scale!r}")
    if lengths is not None:
        lengths = lengths.to(device=wave.device, dtype=torch.int64)
    check_values(wave, lengths, cfg)
    banks = ref.kaldi_mel_banks(
        cfg.n_mels,
        cfg.n_fft,
        cfg.sample_rate,
        f_min,
        f_max,
        dtype=torch.float32,
        device=wave.device,
    )  # [B, n_fft // 2 + 1, n_mels]
    with torch.no_grad():
        return reference_logmel(wave, lengths, cfg, normalize, torch.float32, mel_fb=banks)


__all__ = ["check_mel_range_jitter", "draw_mel_ranges", "logmel_mel_range"]
