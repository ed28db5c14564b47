"""Segment-wise augmentations of the ATST recipes (BYOL-A's), batched on the device.

ATST-Clip augments each of its two crops, and ATST-Frame its student copy, with two transforms
taken from BYOL-A (Niizumi et al. 2021), in this order:

- **log-mixup-exp** (:class:`MixupMemory`): each crop is mixed, in the linear domain, with a
  random past crop from a FIFO memory of earlier inputs:
  ``log((1 - a) exp(x) + a exp(z) + eps)`` with ``a ~ U(0, ratio)``. Like ATST's code it acts on
  the features as the recipe sees them (the ``atst`` preset's min-max normalised dB), and the
  memory holds crops *before* mixing.
- **random resize crop** (:func:`random_resize_crop`): the crop is placed in the centre of a
  larger zero canvas (``time_canvas`` x its length, ``freq_canvas`` x its bins), a random
  rectangle of ``U(freq_scale)`` x bins by ``U(time_scale)`` x frames is cut from the canvas
  and resized back to the crop's shape by bicubic interpolation (``align_corners=True``).

ATST's loaders run these per clip on the CPU (NumPy RNG, a Python list as memory, one
``F.interpolate`` per clip). Here one batch goes through at once on the device: all random draws
come from the recipe's generator (seeded per step by the training loop, so a resumed run draws
the same), the memory is a ring buffer of device tensors that the checkpoint holds, and the
per-clip resize is a separable 4-tap gather (:func:`resize_crop`) that reproduces
``F.interpolate(mode="bicubic", align_corners=True)`` of each clip's own crop without a host
sync or a Python loop.

Variable lengths: ``frame_lengths`` [B] marks each crop's valid frames; padding frames stay zero,
the resize crop works on each crop's valid frames only, and no frame is mixed with padding of a
memory entry.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from fastspec.masking.clip_rng import uniform_rows
from fastspec.recipes.collective import gather_view_major

_EPS = torch.finfo(torch.float32).eps  # ATST adds float32 eps inside the log of the mix
_CUBIC_A = -0.75  # the cubic convolution coefficient of PyTorch's (and OpenCV's) bicubic


# ---- log-mixup-exp ------------------------------------------------------------------------------


def log_mixup_exp(x: Tensor, background: Tensor, alpha: Tensor) -> Tensor:
    """``log((1 - alpha) exp(x) + alpha exp(background) + eps)``, elementwise.

    x, background: [B, T, F] log-scale features; alpha: weight of the background, broadcastable
    to x (e.g. [B, 1, 1], or [B, T, 1] to mix only some frames). Computed in float32 at least.
    """
    dtype = torch.promote_types(x.dtype, torch.float32)
    x, background, alpha = x.to(dtype), background.to(dtype), alpha.to(dtype)
    return torch.log((1.0 - alpha) * x.exp() + alpha * background.exp() + _EPS)


class MixupMemory(nn.Module):
    """Log-mixup-exp against a FIFO memory of past crops (BYOL-A's ``Mixup``), on the device.

    Each call mixes every crop of the batch with one uniformly drawn entry of the memory as it
    was before the call, with weight ``a ~ U(0, ratio)`` per crop, then appends the batch's
    unmixed crops (the oldest entries are overwritten once the memory is full). While the memory
    is empty (the first step) crops pass through unchanged, as in ATST.

    The memory is a set of buffers (``bank`` [size, T, F], ``bank_lengths`` [size], ``ptr`` and
    ``count``), so checkpoints hold it and a resumed run mixes exactly as the uninterrupted one.
    ATST keeps 2000 crops per loader worker; here one memory serves the whole batch.

    Args:
        size: crops the memory holds.
        n_frames, n_mels: the crop shape T x F every call must have.
        ratio: the largest background weight (BYOL-A / ATST: 0.4); 0 disables mixing.
    """

    def __init__(
        self,
        size: int,
        n_frames: int,
        n_mels: int,
        ratio: float = 0.4,
        device=None,
        dtype=torch.float32,
    ):
        super().__init__()
        if size < 1 or n_frames < 1 or n_mels < 1:
            raise ValueError(
                f"MixupMemory: size, n_frames and n_mels must be >= 1, got {size}, {n_frames}, "
                f"{n_mels}"
            )
        if not 0.0 <= ratio <= 1.0:
            raise ValueError(f"MixupMemory: ratio must be in [0, 1], got {ratio}")
        self.size, self.n_frames, self.n_mels, self.ratio = size, n_frames, n_mels, float(ratio)
        self.register_buffer(
            "bank", torch.zeros(size, n_frames, n_mels, device=device, dtype=dtype)
        )
        self.register_buffer("bank_lengths", torch.zeros(size, dtype=torch.long, device=device))
        # next slot to write and entries filled so far: device scalars, so no step reads them back
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long, device=device))
        self.register_buffer("count", torch.zeros((), dtype=torch.long, device=device))

    def extra_repr(self) -> str:
        return (
            f"size={self.size}, n_frames={self.n_frames}, n_mels={self.n_mels}, ratio={self.ratio}"
        )

    def draw(self, batch: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Background weight [B] float32 and memory index [B] int64 for ``batch`` crops.

        The weight is 0 while the memory is empty; indices fall in the filled part.
        """
        u = uniform_rows(generator, (2, batch), self.bank.device, row_dim=1)
        alpha = self.ratio * u[0] * (self.count > 0)  # no background to mix before the first push
        filled = self.count.clamp_min(1)
        index = (u[1] * filled).long().clamp_max(filled - 1)  # uniform over filled slots
        return alpha, index

    def mix(
        self, x: Tensor, alpha: Tensor, index: Tensor, frame_lengths: Tensor | None = None
    ) -> Tensor:
        """Mix crops ``x`` [B, T, F] with memory entries ``index`` [B] at weights ``alpha`` [B].

        Frames past a crop's own length, or past its background's length, are left as they are.
        """
        self._check(x)
        if self.ratio == 0.0:
            return x  # mixing disabled
        background = self.bank[index]  # [B, T, F]
        t = torch.arange(x.shape[1], device=x.device)
        mixable = t[None, :] < self.bank_lengths[index][:, None]  # [B, T] background is audio
        if frame_lengths is not None:
            mixable &= t[None, :] < frame_lengths[:, None]
        mixed = log_mixup_exp(x, background, alpha[:, None, None])
        return torch.where(mixable[..., None], mixed.to(x.dtype), x)

    @torch.no_grad()
    def push(self, x: Tensor, frame_lengths: Tensor | None = None) -> None:
        """Append crops ``x`` [B, T, F] (and their valid frames [B]) to the memory."""
        self._check(x)
        batch = x.shape[0]
        if frame_lengths is None:
            frame_lengths = torch.full((batch,), x.shape[1], dtype=torch.long, device=x.device)
        n_new = min(batch, self.size)  # of a batch larger than the memory only the last fit
        slots = (self.ptr + torch.arange(batch - n_new, batch, device=x.device)) % self.size
        self.bank.index_copy_(0, slots, x[batch - n_new :].to(self.bank.dtype))
        self.bank_lengths.index_copy_(0, slots, frame_lengths[batch - n_new :].long())
        self.ptr.copy_((self.ptr + batch) % self.size)
        self.count.copy_((self.count + batch).clamp_max(self.size))

    def forward(
        self,
        x: Tensor,
        generator: torch.Generator | None = None,
        frame_lengths: Tensor | None = None,
        n_views: int = 1,
    ) -> Tensor:
        """Mix ``x`` [B, T, F] with past crops, then remember ``x``; returns [B, T, F].

        Under torchrun every rank remembers the crops of the whole step's batch, in the order
        one process would (``x`` holds ``n_views`` view-major blocks), so the memories of all
        ranks stay one and the same memory.
        """
        alpha, index = self.draw(x.shape[0], generator)
        mixed = self.mix(x, alpha, index, frame_lengths)
        if frame_lengths is None:
            frame_lengths = torch.full((x.shape[0],), x.shape[1], dtype=torch.long, device=x.device)
        self.push(gather_view_major(x, n_views), gather_view_major(frame_lengths, n_views))
        return mixed

    def _check(self, x: Tensor) -> None:
        if x.dim() != 3 or x.shape[1:] != (self.n_frames, self.n_mels):
            raise ValueError(
                f"MixupMemory holds crops of [T, F] = [{self.n_frames}, {self.n_mels}], "
                f"got x of shape {tuple(x.shape)}"
            )


# ---- random resize crop ------------------------------------------------------------------------


class ResizeCropParams(NamedTuple):
    """One random resize crop per clip, in canvas coordinates, per axis (all [B] int64).

    The canvas of an axis of length L is ``int(L * canvas_scale)`` long with the input at offset
    ``(canvas - L) // 2``; the crop covers canvas positions ``start .. start + size - 1``.
    """

    freq_start: Tensor
    freq_size: Tensor
    freq_canvas: Tensor
    time_start: Tensor
    time_size: Tensor
    time_canvas: Tensor


def _draw_axis(
    length: Tensor, scale: tuple[float, float], canvas_scale: float, u_size: Tensor, u_start: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    # BYOL-A's get_params: size = clip(int(U(scale) * L), 1, canvas); start = randint(0,
    # canvas - size) with both ends included
    canvas = (length.double() * canvas_scale).long()
    size = ((scale[0] + (scale[1] - scale[0]) * u_size.double()) * length).long()
    size = torch.minimum(size.clamp_min(1), canvas)
    room = canvas - size + 1
    start = (u_start * room).long().clamp_max(room - 1)
    return start, size, canvas


def draw_resize_crop(
    batch: int,
    n_mels: int,
    frame_lengths: Tensor,
    *,
    freq_scale: tuple[float, float] = (0.6, 1.5),
    time_scale: tuple[float, float] = (0.6, 1.5),
    freq_canvas: float = 1.0,
    time_canvas: float = 1.5,
    generator: torch.Generator | None = None,
) -> ResizeCropParams:
    """Draw one random resize crop per clip (BYOL-A / ATST defaults).

    frame_lengths: [B] valid frames per clip (the time axis of each clip is its own length).
    The scales are fractions of the input length; the canvas factors are at least 1.
    """
    device = frame_lengths.device
    u = uniform_rows(generator, (4, batch), device, row_dim=1)  # per clip if keyed
    bins = torch.full((batch,), n_mels, dtype=torch.long, device=device)
    f_start, f_size, f_canvas = _draw_axis(bins, freq_scale, freq_canvas, u[0], u[2])
    t_start, t_size, t_canvas = _draw_axis(
        frame_lengths.long(), time_scale, time_canvas, u[1], u[3]
    )
    return ResizeCropParams(f_start, f_size, f_canvas, t_start, t_size, t_canvas)


def _cubic_weights(frac: Tensor) -> Tensor:
    """Cubic convolution weights [..., 4] of the taps at -1, 0, +1, +2 for offsets ``frac``."""
    a = _CUBIC_A
    x0, x1, x2, x3 = frac + 1.0, frac, 1.0 - frac, 2.0 - frac
    w0 = ((a * x0 - 5 * a) * x0 + 8 * a) * x0 - 4 * a  # |x| in [1, 2]
    w1 = ((a + 2) * x1 - (a + 3)) * x1 * x1 + 1  # |x| in [0, 1]
    w2 = ((a + 2) * x2 - (a + 3)) * x2 * x2 + 1
    w3 = ((a * x3 - 5 * a) * x3 + 8 * a) * x3 - 4 * a
    return torch.stack([w0, w1, w2, w3], dim=-1)


def _axis_taps(
    n_out: int, length: Tensor, start: Tensor, size: Tensor, canvas: Tensor, dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    """Source indices and weights of one axis of the resize crop.

    Output position o < length[b] reads the crop (canvas ``start .. start + size - 1``) at
    ``o * (size - 1) / (length - 1)`` (align_corners=True) through 4 cubic taps clamped to the
    crop, as ``F.interpolate`` does; a tap on the canvas outside the input reads zero.

    Returns index [B, n_out, 4] int64 into the input axis (clamped in range) and weight
    [B, n_out, 4] (zero for taps outside the input and for outputs past ``length``).
    """
    device = length.device
    o = torch.arange(n_out, device=device, dtype=dtype)[None, :]  # [1, n_out]
    scale = (size - 1).to(dtype) / (length - 1).clamp_min(1).to(dtype)  # [B]
    real = scale[:, None] * o  # [B, n_out] position in the crop
    base = real.floor()
    weight = _cubic_weights(real - base)  # [B, n_out, 4]
    taps = base.long()[..., None] + torch.arange(-1, 3, device=device)  # [B, n_out, 4]
    taps = torch.minimum(taps.clamp_min(0), (size - 1)[:, None, None])  # clamped to the crop
    src = taps + (start - (canvas - length) // 2)[:, None, None]  # crop -> canvas -> input
    inside = (src >= 0) & (src < length[:, None, None])  # else the canvas is zero there
    out_valid = (o < length[:, None].to(dtype))[..., None]  # [B, n_out, 1]
    weight = weight * (inside & out_valid).to(dtype)
    return src.clamp(0, n_out - 1), weight


def resize_crop(
    mel: Tensor, params: ResizeCropParams, frame_lengths: Tensor | None = None
) -> Tensor:
    """Apply the resize crops ``params`` to ``mel`` [B, T, F] -> [B, T, F].

    The time axis of clip b uses its first ``frame_lengths[b]`` frames (default: all T) as the
    input and the output; frames past it come out zero. Separable: time taps, then mel taps,
    the same sum as 2-D bicubic interpolation, in float32 at least.
    """
    batch, n_frames, n_mels = mel.shape
    dtype = torch.promote_types(mel.dtype, torch.float32)
    x = mel.to(dtype)
    if frame_lengths is None:
        frame_lengths = torch.full((batch,), n_frames, dtype=torch.long, device=mel.device)
    lengths = frame_lengths.long()
    bins = torch.full((batch,), n_mels, dtype=torch.long, device=mel.device)
    # time: gather 4 source frames per output frame, [B, T * 4, F] -> weighted sum over taps
    idx, w = _axis_taps(
        n_frames, lengths, params.time_start, params.time_size, params.time_canvas, dtype
    )
    src = torch.gather(x, 1, idx.reshape(batch, -1, 1).expand(-1, -1, n_mels))
    x = (src.view(batch, n_frames, 4, n_mels) * w[..., None]).sum(dim=2)
    # frequency: the same along the mel axis, shared by all frames of a clip
    idx, w = _axis_taps(
        n_mels, bins, params.freq_start, params.freq_size, params.freq_canvas, dtype
    )
    src = torch.gather(x, 2, idx.reshape(batch, 1, -1).expand(-1, n_frames, -1))
    return (src.view(batch, n_frames, n_mels, 4) * w[:, None]).sum(dim=3)


def random_resize_crop(
    mel: Tensor,
    *,
    frame_lengths: Tensor | None = None,
    generator: torch.Generator | None = None,
    freq_scale: tuple[float, float] = (0.6, 1.5),
    time_scale: tuple[float, float] = (0.6, 1.5),
    freq_canvas: float = 1.0,
    time_canvas: float = 1.5,
) -> Tensor:
    """BYOL-A's random resize crop of every clip of ``mel`` [B, T, F] -> [B, T, F] float32.

    Defaults are ATST-Clip's (canvas 1 x 1.5, scales 0.6-1.5 on both axes). ATST-Frame passes
    ``time_scale=(1, 1), time_canvas=1``: its frames must stay aligned with the teacher's copy,
    so only the mel axis is resized; the time axis is then the identity and is skipped.
    """
    _check_scales(freq_scale, freq_canvas, "freq")
    _check_scales(time_scale, time_canvas, "time")
    batch, n_frames, n_mels = mel.shape
    if frame_lengths is None:
        frame_lengths = torch.full((batch,), n_frames, dtype=torch.long, device=mel.device)
    params = draw_resize_crop(
        batch,
        n_mels,
        frame_lengths,
        freq_scale=freq_scale,
        time_scale=time_scale,
        freq_canvas=freq_canvas,
        time_canvas=time_canvas,
        generator=generator,
    )
    if time_scale == (1.0, 1.0) and time_canvas == 1.0:
        # size = length, start = 0, no canvas margin: every output frame is its input frame
        return resize_crop_freq_only(mel, params)
    return resize_crop(mel, params, frame_lengths)


def resize_crop_freq_only(mel: Tensor, params: ResizeCropParams) -> Tensor:
    """The mel-axis half of :func:`resize_crop`, for crops whose time axis is the identity."""
    batch, n_frames, n_mels = mel.shape
    dtype = torch.promote_types(mel.dtype, torch.float32)
    bins = torch.full((batch,), n_mels, dtype=torch.long, device=mel.device)
    idx, w = _axis_taps(
        n_mels, bins, params.freq_start, params.freq_size, params.freq_canvas, dtype
    )
    src = torch.gather(mel.to(dtype), 2, idx.reshape(batch, 1, -1).expand(-1, n_frames, -1))
    return (src.view(batch, n_frames, n_mels, 4) * w[:, None]).sum(dim=3)


def _check_scales(scale: tuple[float, float], canvas: float, axis: str) -> None:
    lo, hi = scale
    if not (0.0 < lo <= hi and hi >= 1.0):
        raise ValueError(f"{axis}_scale must satisfy 0 < low <= high and high >= 1, got {scale}")
    if canvas < 1.0:
        raise ValueError(f"{axis}_canvas must be >= 1 (the input fits on it), got {canvas}")


__all__ = [
    "MixupMemory",
    "ResizeCropParams",
    "draw_resize_crop",
    "log_mixup_exp",
    "random_resize_crop",
    "resize_crop",
    "resize_crop_freq_only",
]
