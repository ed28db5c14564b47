"""Pure-torch references for the fastspec kernels, and the constants they share.

Everything here takes plain tensors and numbers (no config objects; the four numbers of the log
step travel together as a :class:`LogScale`), so that the Triton launchers, the ``torch`` front-end
backend, tests and benchmarks all run the same math. Each function computes in the dtype of its
tensor inputs: tests call it in float64 as the ground truth, the front end calls it in float32 as
the CPU/GPU fallback.

Log-mel front end (``logmel_ref``), in the order Kaldi and torchaudio apply the steps::

    wave [B, S] --frame--> [B, T, frame_length] --(DC removal, pre-emphasis, window)-->
    --rfft(n_fft), |.|^power--> [B, T, n_fft // 2 + 1] --@ mel_fb--> [B, T, n_mels]
    --log(max(., floor)) * log_mult, per-clip top_db clamp, * norm_mul + norm_add,
      frames past each clip's length set to 0--> [B, T, n_mels]
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "LogScale",
    "frame_count",
    "window_ref",
    "kaldi_mel_banks",
    "htk_mel_banks",
    "frame_spectrum_basis",
    "frame_signal_ref",
    "logmel_ref",
    "dot_emulated",
]

WINDOW_KINDS = ("hann", "hamming", "povey", "rectangular")


@dataclass(frozen=True)
class LogScale:
    """How mel energies become log-mel, the same numbers for the reference and the kernel plan:
    ``|X|^power`` before the mel filter bank, then ``log_mult * ln(max(mel, log_floor))``
    (``10 / ln 10`` gives dB), then each clip clamped at its maximum over valid frames minus
    ``top_db`` (None: no clamp; AmplitudeToDB's top_db)."""

    power: float  # 2 for the power spectrum, 1 for magnitude
    log_floor: float
    log_mult: float
    top_db: float | None


def frame_count(num_samples: int | Tensor, frame_length: int, hop_length: int, center: bool):
    """Frames produced from ``num_samples`` samples (int, or an int Tensor of any shape).

    ``center=False`` is Kaldi's ``snip_edges=True``: only frames that fit entirely, so
    ``1 + (S - frame_length) // hop`` for ``S >= frame_length`` and 0 below. ``center=True`` is
    ``torch.stft(center=True)``: the signal is padded by ``n_fft // 2`` on both sides, giving
    ``1 + S // hop`` frames for any ``S``.
    """
    if center:
        return 1 + num_samples // hop_length
    if isinstance(num_samples, Tensor):
        full = 1 + (num_samples - frame_length).clamp_min(0) // hop_length
        return torch.where(num_samples >= frame_length, full, torch.zeros_like(full))
    return 1 + (num_samples - frame_length) // hop_length if num_samples >= frame_length else 0


def window_ref(
    kind: str, win_length: int, periodic: bool, frame_length: int, *, dtype, device=None
):
    """Analysis window ``[frame_length]``: ``win_length`` taps, zero-padded to ``frame_length``.

    The padding is centred, as ``torch.stft`` does when ``win_length < n_fft``; with Kaldi framing
    ``frame_length == win_length`` and the zero-padding to ``n_fft`` happens in the rfft instead.
    Kaldi's "hanning" is the symmetric Hann (denominator ``N - 1``); torch's default
    ``hann_window`` is periodic (denominator ``N``). Computed in float64, then cast.
    """
    if kind not in WINDOW_KINDS:
        raise ValueError(f"window {kind!r} is not one of {WINDOW_KINDS}")
    n = torch.arange(win_length, dtype=torch.float64)
    denom = win_length if periodic else max(win_length - 1, 1)
    phase = 2.0 * math.pi * n / denom
    if kind == "hann":
        w = 0.5 - 0.5 * torch.cos(phase)
    elif kind == "hamming":
        w = 0.54 - 0.46 * torch.cos(phase)
    elif kind == "povey":
        # Kaldi's default: a Hann window raised to 0.85, zero at both ends
        w = (0.5 - 0.5 * torch.cos(phase)).pow(0.85)
    else:
        w = torch.ones(win_length, dtype=torch.float64)
    left = (frame_length - win_length) // 2
    w = torch.nn.functional.pad(w, (left, frame_length - win_length - left))
    return w.to(dtype=dtype, device=device)


def kaldi_mel_banks(n_mels, n_fft, sample_rate, f_min, f_max, *, dtype, device=None):
    """Kaldi / torchaudio ``compliance.kaldi`` triangular filters ``[n_fft // 2 + 1, n_mels]``.

    Mel is ``1127 ln(1 + f / 700)``; triangles are linear in mel, with edges equally spaced in
    mel between ``f_min`` and ``f_max``; only the first ``n_fft // 2`` FFT bins are covered and
    the Nyquist bin gets weight 0 (Kaldi pads that column with zeros). Filters narrower than one
    FFT bin come out empty (all zero), which torchaudio allows and kaldi-native-fbank refuses.

    ``f_min`` and ``f_max`` may also be [B] tensors (a mel range per clip, MaskSpec's training
    augmentation): the result is then ``[B, n_fft // 2 + 1, n_mels]``, built in one pass.
    """
    num_fft_bins = n_fft // 2
    f64 = {"dtype": torch.float64, "device": device}  # built in float64 where it is used

    def mel_of(f):  # [..., 1, 1]: a scalar range gives [F, M], a range per clip [B, F, M]
        return 1127.0 * torch.log1p(torch.as_tensor(f, **f64) / 700.0)[..., None, None]

    mel_lo, mel_hi = mel_of(f_min), mel_of(f_max)
    delta = (mel_hi - mel_lo) / (n_mels + 1)
    i = torch.arange(n_mels, **f64)[None, :]
    left, centre, right = mel_lo + i * delta, mel_lo + (i + 1) * delta, mel_lo + (i + 2) * delta
    freqs = torch.arange(num_fft_bins, **f64)[:, None] * (sample_rate / n_fft)
    mel = 1127.0 * torch.log1p(freqs / 700.0)
    up = (mel - left) / (centre - left)
    down = (right - mel) / (right - centre)
    fb = torch.clamp_min(torch.minimum(up, down), 0.0)  # [..., F - 1, M]
    fb = torch.cat([fb, fb.new_zeros(*fb.shape[:-2], 1, n_mels)], dim=-2)
    return fb.to(dtype=dtype)


def htk_mel_banks(n_mels, n_fft, sample_rate, f_min, f_max, *, dtype, device=None):
    """HTK-scale triangles as torchaudio ``MelScale(mel_scale="htk", norm=None)`` and librosa
    ``mel(htk=True, norm=None)`` build them: ``[n_fft // 2 + 1, n_mels]``.

    Mel is ``2595 log10(1 + f / 700)``; the ``n_mels + 2`` edges are equally spaced in mel, but the
    triangles are linear in Hz (unlike Kaldi's), over all ``n_fft // 2 + 1`` rfft bins.
    """
    n_freqs = n_fft // 2 + 1
    all_freqs = torch.linspace(0.0, sample_rate / 2.0, n_freqs, dtype=torch.float64)
    m_min = 2595.0 * math.log10(1.0 + f_min / 700.0)
    m_max = 2595.0 * math.log10(1.0 + f_max / 700.0)
    m_pts = torch.linspace(m_min, m_max, n_mels + 2, dtype=torch.float64)
    f_pts = 700.0 * (torch.pow(10.0, m_pts / 2595.0) - 1.0)
    f_diff = f_pts[1:] - f_pts[:-1]  # [n_mels + 1]
    slopes = f_pts[None, :] - all_freqs[:, None]  # [n_freqs, n_mels + 2]
    down = -slopes[:, :-2] / f_diff[:-1]
    up = slopes[:, 2:] / f_diff[1:]
    fb = torch.clamp_min(torch.minimum(down, up), 0.0)
    return fb.to(dtype=dtype, device=device)


def frame_spectrum_basis(window: Tensor, n_fft: int, remove_dc: bool, preemphasis: float):
    """The linear map from a raw frame to its spectrum: ``(cos_part, sin_part)``, each
    ``[frame_length, n_fft // 2 + 1]`` in float64, such that for a raw frame ``x``::

        rfft(window * preemph(x - mean(x)), n_fft) == x @ cos_part + 1j * (x @ sin_part)

    DC removal (``I - 11^T / N``), pre-emphasis (a bidiagonal matrix with Kaldi's replicated first
    sample) and the window (a diagonal) are all linear, so their product with the DFT matrix is one
    ``[frame_length, n_bins]`` matrix. The Triton kernel multiplies raw frames by it and never
    materialises the processed frame. Folding DC removal in also avoids the cancellation of
    subtracting a large mean in float32: the columns of the folded map sum to zero exactly in
    float64, so a DC offset contributes only rounding of the cast.
    """
    frame_length = window.numel()
    eye = torch.eye(frame_length, dtype=torch.float64)
    op = eye
    if remove_dc:
        op = op - 1.0 / frame_length
    if preemphasis != 0.0:
        # y[n] = x[n] - a x[n-1] for n >= 1 and y[0] = x[0] - a x[0] (Kaldi replicates x[0])
        shift = torch.diag(torch.ones(frame_length - 1, dtype=torch.float64), -1)
        shift[0, 0] = 1.0
        op = (eye - preemphasis * shift) @ op
    op = window.to(torch.float64)[:, None] * op  # rows scaled by the window: [out n, in m]
    n = torch.arange(frame_length, dtype=torch.float64)[:, None]
    k = torch.arange(n_fft // 2 + 1, dtype=torch.float64)[None, :]
    # reduce n * k modulo n_fft in integers before the float multiply keeps the phase exact
    phase = 2.0 * math.pi * torch.remainder(n * k, n_fft) / n_fft
    dft_re, dft_im = torch.cos(phase), -torch.sin(phase)  # [frame_length, n_bins]
    return op.T @ dft_re, op.T @ dft_im


def _center_pad(wave: Tensor, lengths: Tensor | None, pad: int, pad_mode: str) -> Tensor:
    """``wave [B, S]`` padded to ``[B, S + 2 * pad]`` as each clip alone would be padded.

    With per-clip lengths the reflection must happen at ``lengths[b]``, not at the end of the
    padded buffer, so a gather with mirrored indices replaces ``F.pad``. Mirroring is periodic
    (numpy / librosa ``np.pad`` semantics) so clips shorter than ``pad`` still work, where
    ``F.pad(mode="reflect")`` refuses them.
    """
    batch, num_samples = wave.shape
    if lengths is None and (pad_mode == "constant" or num_samples > pad):
        return torch.nn.functional.pad(wave[:, None], (pad, pad), mode=pad_mode)[:, 0]
    if lengths is None:
        lengths = torch.full((batch,), num_samples, dtype=torch.long, device=wave.device)
    src = torch.arange(-pad, num_samples + pad, device=wave.device)[None, :]  # [1, S + 2 pad]
    length = lengths.to(torch.long)[:, None]  # [B, 1]
    if pad_mode == "reflect":
        period = torch.clamp_min(2 * (length - 1), 1)
        idx = src.abs() % period
        idx = torch.where(idx > length - 1, period - idx, idx)
        valid = (length > 0).expand(-1, src.shape[1])
    else:
        idx, valid = src.expand(batch, -1), (src >= 0) & (src < length)
    idx = idx.clamp(0, max(num_samples - 1, 0)).expand(batch, -1)
    if num_samples == 0:
        return wave.new_zeros(batch, 2 * pad)
    padded = torch.gather(wave, 1, idx)
    return torch.where(valid, padded, torch.zeros((), dtype=wave.dtype, device=wave.device))


def frame_signal_ref(wave, lengths, frame_length, hop_length, center, pad_mode="reflect"):
    """Raw frames ``[B, T, frame_length]`` of ``wave [B, S]`` (a strided view when possible).

    ``center=True`` pads ``frame_length // 2`` on both sides first (``frame_length == n_fft``).
    """
    num_samples = wave.shape[1]
    n_frames = frame_count(num_samples, frame_length, hop_length, center)
    if center:
        # torch.stft pads n_fft // 2 each side; frame_length == n_fft in this mode
        wave = _center_pad(wave, lengths, frame_length // 2, pad_mode)
    if n_frames == 0:
        return wave.new_zeros(wave.shape[0], 0, frame_length)
    # unfold is an as_strided view: no copy of the overlapping frames
    return wave.unfold(1, frame_length, hop_length)[:, :n_frames]


_CPU_CHUNK_ELEMENTS = 1 << 20


def _log_mel_frames(frames, window, mel_fb, n_fft, remove_dc, preemphasis, power):
    """Mel energies ``[B, t, n_mels]`` of raw frames ``[B, t, frame_length]`` (before the log)."""
    if remove_dc:
        frames = frames - frames.mean(dim=-1, keepdim=True)
    if preemphasis != 0.0:
        prev = torch.cat([frames[..., :1], frames[..., :-1]], dim=-1)
        frames = frames - preemphasis * prev
    frames = frames * window
    spec = torch.fft.rfft(frames, n=n_fft, dim=-1)  # [B, t, n_fft // 2 + 1]
    # |X|^2 from the parts: abs() would take a square root only to square it again
    spec = spec.real.square() + spec.imag.square()
    if power == 1.0:
        spec = spec.sqrt()
    return spec @ mel_fb


def logmel_ref(
    wave: Tensor,
    lengths: Tensor | None,
    window: Tensor,
    mel_fb: Tensor,
    *,
    hop_length: int,
    n_fft: int,
    center: bool,
    pad_mode: str = "reflect",
    remove_dc: bool,
    preemphasis: float,
    log_scale: LogScale,
    norm_mul: float,
    norm_add: float,
    log_offset: float = 0.0,
) -> Tensor:
    """Log-mel features ``[B, T, n_mels]`` in the dtype of ``wave``.

    Args:
        wave: ``[B, S]`` float samples (already scaled to [-1, 1]).
        lengths: ``[B]`` int valid samples per clip, or None for all ``S``.
        window: ``[frame_length]`` analysis window (``frame_length`` = Kaldi window size, or
            ``n_fft`` with ``center=True``), same dtype as ``wave``.
        mel_fb: ``[n_fft // 2 + 1, n_mels]`` filter bank, or one per clip
            ``[B, n_fft // 2 + 1, n_mels]``, same dtype as ``wave``.
        hop_length, n_fft, center, pad_mode: framing (see ``frame_count``).
        remove_dc, preemphasis: per-frame mean removal, then ``y[n] = x[n] - a x[n-1]``.
        log_scale: spectrum power, log floor and multiplier, per-clip ``top_db`` clamp; the log
            is ``log_mult * ln(max(mel + log_offset, log_floor))``.
        norm_mul, norm_add: affine normalisation applied last.

    Frames ``t >= frame_count(lengths[b])`` are exactly 0. The front end runs this without
    gradient; all ops are out-of-place, so autograd works through it if a caller needs it.
    """
    frame_length = window.numel()
    frames = frame_signal_ref(wave, lengths, frame_length, hop_length, center, pad_mode)
    batch, n_frames = frames.shape[:2]
    out = wave.new_zeros(batch, n_frames, mel_fb.shape[-1])
    if frames.numel() == 0:
        # MKL's rfft rejects empty batches; no frames (or no clips) means an empty result
        return out
    # On the CPU, slices of frames small enough for their ~10 temporaries to stay in cache run
    # about 2x faster than one pass over a 32 x 10 s batch; a GPU wants the whole batch at once.
    step = n_frames
    if wave.device.type == "cpu":
        step = max(1, _CPU_CHUNK_ELEMENTS // (batch * frame_length))
    for t0 in range(0, n_frames, step):
        out[:, t0 : t0 + step] = _log_mel_frames(
            frames[:, t0 : t0 + step],
            window,
            mel_fb,
            n_fft,
            remove_dc,
            preemphasis,
            log_scale.power,
        )
    # MaskSpec's log(x + 1e-5) adds log_offset first (0: Kaldi's floored ln)
    out = log_scale.log_mult * torch.log(torch.clamp_min(out + log_offset, log_scale.log_floor))

    if lengths is None:
        valid = torch.ones(batch, n_frames, dtype=torch.bool, device=out.device)
    else:
        n_valid = frame_count(lengths.to(torch.long), frame_length, hop_length, center)
        valid = torch.arange(n_frames, device=out.device)[None, :] < n_valid[:, None]
    if log_scale.top_db is not None and n_frames > 0:
        # the clip maximum ignores padding frames, so a padded clip equals the clip alone
        clip_max = out.masked_fill(~valid[..., None], -math.inf).amax(dim=(1, 2))
        out = torch.maximum(out, (clip_max - log_scale.top_db)[:, None, None])
    out = out * norm_mul + norm_add
    return torch.where(valid[..., None], out, torch.zeros((), dtype=out.dtype, device=out.device))


# ----- tensor-core precision modes, emulated (the interpreter computes every mode in fp32) -----


def _round_tf32(x: Tensor) -> Tensor:
    """float32 -> tf32 (10 explicit mantissa bits), round half away from zero like cvt.rna."""
    bits = x.contiguous().view(torch.int32)
    return ((bits + 0x1000) & ~0x1FFF).view(torch.float32)


def _round_bf16(x: Tensor) -> Tensor:
    return x.to(torch.bfloat16).to(torch.float32)


def _split(x: Tensor, rounding, parts: int) -> list[Tensor]:
    """``x`` as a sum of ``parts`` terms, each exactly representable after ``rounding``."""
    out, rest = [], x
    for _ in range(parts):
        out.append(rounding(rest))
        rest = rest - out[-1]
    return out


def dot_emulated(a: Tensor, b: Tensor, precision: str) -> Tensor:
    """``a @ b`` (float32) as ``tl.dot(..., input_precision=precision)`` computes it on NVIDIA
    tensor cores: operands rounded (and split, for the x3 / x6 modes, as Triton's F32DotTC pass
    does: the small cross products are summed first, then added to the big one), products exact
    (they fit in float32), sums in float32. ``ieee`` is a plain float32 matmul.
    """
    if precision == "ieee":
        return a.float() @ b.float()
    if precision in ("tf32", "tf32x3"):
        rounding = _round_tf32
    elif precision in ("bf16x3", "bf16x6"):
        rounding = _round_bf16
    else:
        raise ValueError(f"unknown precision {precision!r}")
    if precision == "tf32":
        return rounding(a) @ rounding(b)
    n = 3 if precision == "bf16x6" else 2
    a_parts, b_parts = _split(a.float(), rounding, n), _split(b.float(), rounding, n)
    # tf32x3 / bf16x3: hi*lo + lo*hi, then + hi*hi; bf16x6 adds the products of order 2^-16
    small = None
    for i, j in sorted(((i, j) for i in range(n) for j in range(n) if 0 < i + j < n), reverse=True):
        term = a_parts[i] @ b_parts[j]
        small = term if small is None else small + term
    return a_parts[0] @ b_parts[0] + small
