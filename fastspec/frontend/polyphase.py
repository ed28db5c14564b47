"""Polyphase windowed-sinc resampling with torch ``conv1d`` (CPU and CUDA, batched).

Lives in the front end because :func:`fastspec.frontend.logmel` fuses it (``orig_sample_rate=``):
the Triton kernel folds this very filter into its frame basis (:func:`resampled_frame_basis`),
the other backends resample with :func:`resample` first, in the same call. The data pipeline
(clip crops, shard writing) imports it from here.

The filter is the one :func:`scipy.signal.resample_poly` designs by default, so the two agree to
floating-point rounding on any input (tests/test_resample.py):

- the rate ratio is reduced to ``up / down`` by the gcd;
- a low-pass FIR at the upsampled rate with cutoff ``1 / max(up, down)`` of its Nyquist (the
  lower of the two Nyquists), ``2 * half_width * max(up, down) + 1`` taps, a Kaiser window of
  ``beta`` (5.0: about 55 dB stop-band attenuation), normalised to unit DC gain and scaled by
  ``up`` to make up for the zeros upsampling inserts;
- zero-phase alignment: output ``k`` sits at input time ``k * down / up``, and the signal is zero
  outside ``[0, S)``, so the output has ``ceil(S * up / down)`` samples.

Polyphase form. With ``h`` centred at ``half_len``, output ``k`` is
``y[k] = sum_n x[n] * h[k * down + half_len - n * up]``. Writing ``k = r + m * up`` for phase
``r`` in ``[0, up)``, the taps used depend only on ``r``, and the input window moves by ``down``
per ``m``. So one ``conv1d`` with ``up`` output channels (one filter per phase, placed at its
offset inside a common window of ``K`` taps) and ``stride=down`` computes every phase at once;
interleaving the channels gives ``y``. That costs ``K`` multiply-adds per output sample, where
``K`` is about ``2 * half_width * max(up, down) / up + down``.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "resample",
    "resample_window",
    "resampled_length",
    "resampled_lengths",
    "reduced_ratio",
    "filter_taps",
    "resampled_frame_basis",
]

# scipy.signal.resample_poly's defaults: window=("kaiser", 5.0), half_len = 10 * max(up, down)
KAISER_BETA = 5.0
HALF_WIDTH = 10
# Refuse filter banks beyond this many coefficients (64 MiB in float32): they come from ratios
# such as 44100 -> 44101 that no audio pipeline should resample with a polyphase filter.
_MAX_WEIGHTS = 1 << 24


def reduced_ratio(orig_sr: int, new_sr: int) -> tuple[int, int]:
    """``(up, down)``: ``new_sr / orig_sr`` in lowest terms."""
    if int(orig_sr) != orig_sr or int(new_sr) != new_sr or orig_sr <= 0 or new_sr <= 0:
        raise ValueError(
            f"sample rates must be positive integers, got orig_sr={orig_sr!r}, new_sr={new_sr!r}"
        )
    g = math.gcd(int(orig_sr), int(new_sr))
    return int(new_sr) // g, int(orig_sr) // g


def resampled_length(num_samples: int, orig_sr: int, new_sr: int) -> int:
    """Samples :func:`resample` returns for ``num_samples`` inputs: ``ceil(S * up / down)``."""
    up, down = reduced_ratio(orig_sr, new_sr)
    return -(-num_samples * up // down)  # exact integer ceil


def resampled_lengths(lengths, orig_sr: int, new_sr: int):
    """:func:`resampled_length` of an int Tensor of lengths (elementwise, same device)."""
    up, down = reduced_ratio(orig_sr, new_sr)
    return -(-lengths * up // down)


@functools.lru_cache(maxsize=16)
def filter_taps(up: int, down: int, half_width: int = HALF_WIDTH, beta: float = KAISER_BETA):
    """``(h, half_len)``: the low-pass FIR at the upsampled rate, float64 ``[2 half_len + 1]``.

    Output ``k`` of the resampler is ``sum_n x[n] h[k down + half_len - n up]`` (zero outside
    the taps): the formula every path here (conv1d bank, folded Triton basis) implements.
    """
    max_rate = max(up, down)
    half_len = half_width * max_rate
    num_taps = 2 * half_len + 1
    # scipy.signal.firwin(num_taps, 1 / max_rate, window=("kaiser", beta)): cutoff is a fraction
    # of the Nyquist of the upsampled rate, and firwin scales to unit gain at DC.
    cutoff = 1.0 / max_rate
    offsets = np.arange(num_taps) - half_len
    h = cutoff * np.sinc(cutoff * offsets) * np.kaiser(num_taps, beta)
    h *= up / h.sum()
    h.flags.writeable = False  # cached: shared by every caller
    return h, half_len


@functools.lru_cache(maxsize=16)
def _polyphase_bank(up: int, down: int, half_width: int, beta: float) -> tuple[np.ndarray, int]:
    """The filter bank as a conv1d weight: ``([up, K] float64, left_pad)``.

    Row ``r`` holds the taps of output phase ``r``; ``left_pad`` is how many zeros go before the
    input so that window ``m`` of the strided convolution starts at input ``m * down - left_pad``.
    """
    h, half_len = filter_taps(up, down, half_width, beta)
    num_taps = h.size

    # Phase r of the output (k = r + m * up) reads x[base_r + m * down - j] * h[phase_r + j * up]
    # for j = 0, 1, ... while phase_r + j * up stays inside the filter.
    r = np.arange(up)
    centre = r * down + half_len
    phase, base = centre % up, centre // up
    taps = (num_taps - 1 - phase) // up + 1
    lo = int((base - taps + 1).min())  # lowest input offset any phase reads (negative)
    width = int(base.max()) - lo + 1
    if up * width > _MAX_WEIGHTS:
        raise ValueError(
            f"resampling ratio {up}/{down} needs a {up} x {width} polyphase filter bank; "
            "resample through an intermediate rate instead"
        )
    j = np.arange(int(taps.max()))
    rows, cols = np.broadcast_to(r[:, None], (up, j.size)), base[:, None] - lo - j[None, :]
    valid = j[None, :] < taps[:, None]
    bank = np.zeros((up, width))
    bank[rows[valid], cols[valid]] = h[(phase[:, None] + j[None, :] * up)[valid]]
    return bank, -lo


@functools.lru_cache(maxsize=32)
def _bank_tensor(
    up: int, down: int, half_width: int, beta: float, dtype: torch.dtype, device: torch.device
) -> tuple[torch.Tensor, int]:
    """:func:`_polyphase_bank` as a ``[up, 1, K]`` conv1d weight on ``device``, cached so that a
    training loop does not re-upload it for every clip."""
    bank, left_pad = _polyphase_bank(up, down, half_width, beta)
    weight = torch.from_numpy(bank).to(dtype=dtype, device=device).unsqueeze(1)
    return weight, left_pad


def _resample_tensor(
    x: torch.Tensor, up: int, down: int, half_width: int, beta: float
) -> torch.Tensor:
    """:func:`resample` on a tensor ``[..., S]`` with the ratio already reduced."""
    batch_shape, num_samples = x.shape[:-1], x.shape[-1]
    out_len = -(-num_samples * up // down)
    # conv1d needs a float type; half types are computed in float32 for accuracy (the filter
    # sums ~2 * half_width products per output) and cast back
    compute_dtype = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
    out_dtype = x.dtype if x.dtype.is_floating_point else torch.float32
    if x.numel() == 0:
        return x.new_zeros((*batch_shape, out_len), dtype=out_dtype)

    weight, left_pad = _bank_tensor(up, down, half_width, float(beta), compute_dtype, x.device)
    width = weight.shape[-1]
    windows = -(-out_len // up)  # outputs per phase: M with M * up >= out_len
    # pad so exactly `windows` strided windows fit; a negative right pad (possible when the last
    # windows end before the input does) crops instead, and F.pad accepts that
    right_pad = (windows - 1) * down + width - left_pad - num_samples
    rows = x.reshape(-1, 1, num_samples).to(compute_dtype)
    rows = F.pad(rows, (left_pad, right_pad))
    y = F.conv1d(rows, weight, stride=down)  # [N, up, M]: channel r holds outputs r, r+up, ...
    y = y.transpose(1, 2).reshape(rows.shape[0], windows * up)[:, :out_len]  # interleave phases
    return y.reshape(*batch_shape, out_len).to(out_dtype)


def resample(
    wave: torch.Tensor | np.ndarray,
    orig_sr: int,
    new_sr: int,
    *,
    half_width: int = HALF_WIDTH,
    beta: float = KAISER_BETA,
) -> torch.Tensor | np.ndarray:
    """Resample ``wave`` along its last axis from ``orig_sr`` to ``new_sr`` Hz.

    Args:
        wave: ``[..., S]`` torch Tensor (any device; batch dimensions are kept) or numpy array.
        orig_sr, new_sr: integer sample rates.
        half_width: filter half-length in zero crossings of the lower rate's sinc (10, as scipy).
        beta: Kaiser window parameter (5.0, as scipy).

    Returns:
        ``[..., ceil(S * up / down)]`` of the same type (Tensor on the same device, or numpy
        array); float16/bfloat16 are computed in float32, integer input gives float32. When the
        rates match, ``wave`` itself is returned (not a copy).
    """
    up, down = reduced_ratio(orig_sr, new_sr)
    if up == down:
        return wave
    if isinstance(wave, np.ndarray):
        # float64 stays float64 (scipy's precision); everything else is computed in float32
        dtype = np.float64 if wave.dtype == np.float64 else np.float32
        x = torch.from_numpy(np.ascontiguousarray(wave, dtype=dtype))
        return _resample_tensor(x, up, down, half_width, beta).numpy()
    if not isinstance(wave, torch.Tensor):
        raise TypeError(f"wave must be a torch.Tensor or numpy.ndarray, got {type(wave).__name__}")
    if wave.dim() == 0:
        raise ValueError("wave must have at least one dimension (samples last), got a scalar")
    return _resample_tensor(wave, up, down, half_width, beta)


def resample_window(
    wave: torch.Tensor | np.ndarray,
    orig_sr: int,
    new_sr: int,
    start: int,
    length: int,
    *,
    half_width: int = HALF_WIDTH,
    beta: float = KAISER_BETA,
) -> torch.Tensor | np.ndarray:
    """``resample(wave, ...)[..., start:start + length]``, computed from the input it needs only.

    A random crop of a long file then costs the crop, not the file. The result equals the slice
    of the full resample exactly: the input segment starts at a multiple of ``down`` so that its
    output grid lines up with the full one, and it extends ``half_len`` past the window on both
    sides so that every filter tap sees the same samples.

    Args:
        wave: ``[..., S]`` as for :func:`resample`.
        start, length: the output window, with ``0 <= start`` and
            ``start + length <= resampled_length(S, orig_sr, new_sr)``.

    Returns:
        ``[..., length]`` of the same type as ``wave``.
    """
    up, down = reduced_ratio(orig_sr, new_sr)
    num_samples = wave.shape[-1]
    total = -(-num_samples * up // down)
    if start < 0 or length < 0 or start + length > total:
        raise ValueError(
            f"window [{start}, {start + length}) is outside the {total} resampled samples"
        )
    if up == down:
        return wave[..., start : start + length]
    half_len = half_width * max(up, down)
    # inputs with a non-zero tap for outputs [start, start + length): |k*down - n*up| <= half_len
    first_in = max(0, -(-(start * down - half_len) // up))
    seg_start = (first_in // down) * down  # multiple of down: output k maps to k - out_offset
    out_offset = seg_start // down * up
    seg_stop = min(num_samples, ((start + length - 1) * down + half_len) // up + 1)
    y = resample(wave[..., seg_start:seg_stop], orig_sr, new_sr, half_width=half_width, beta=beta)
    return y[..., start - out_offset : start - out_offset + length]


def resampled_frame_basis(
    basis_re: torch.Tensor,
    basis_im: torch.Tensor,
    orig_sr: int,
    new_sr: int,
    hop_length: int,
    *,
    half_width: int = HALF_WIDTH,
    beta: float = KAISER_BETA,
) -> tuple[torch.Tensor, torch.Tensor, list[int], int]:
    """Fold the resampler into a frame basis, so frames are read at the source rate.

    A frame at the new rate is a linear function of a window of source samples (the resampler is
    linear), and so is its spectrum: ``spectrum = source_window @ (R^T @ basis)``. Target frame
    ``t`` starts at source time ``t hop down / up``; that is a whole number of source samples
    only every ``P = up / gcd(hop down, up)`` frames, so there are ``P`` folded bases (``P = 1``
    for 8, 32, 44.1 and 48 kHz -> 16 kHz with a 10 ms hop; 2 for 22.05 kHz).

    Exact for snip-edges framing (``center=False``): every valid frame lies inside the resampled
    clip, whose samples are defined from the zero-extended source. Centred framing pads the
    *resampled* clip, which a source window cannot express; callers resample first there.

    Args:
        basis_re, basis_im: ``[frame_length, n_bins]`` float64, target frame -> spectrum
            (``kernels.reference.frame_spectrum_basis``).
        hop_length: frame shift at the new rate.

    Returns:
        ``(re [P, K, n_bins], im [P, K, n_bins], phase_start, source_hop)`` in float64: frame
        ``t = ph + P u`` reads source samples ``u * source_hop + phase_start[ph] + k``, ``k < K``
        (negative or past-the-end indices read zeros).
    """
    up, down = reduced_ratio(orig_sr, new_sr)
    h, half_len = filter_taps(up, down, half_width, float(beta))
    frame_length = basis_re.shape[0]
    shift = hop_length * down  # target frame shift in units of 1 / (up * source rate)
    phases = up // math.gcd(shift, up)
    source_hop = phases * shift // up
    j = np.arange(frame_length)[:, None]
    # phase ph: first source sample any tap of any of its frame's samples reaches (may be < 0)
    starts = [-((half_len - ph * shift) // up) for ph in range(phases)]
    offsets = [ph * shift - start * up for ph, start in enumerate(starts)]
    width = max((d + (frame_length - 1) * down + half_len) // up + 1 for d in offsets)
    k = np.arange(width)[None, :]
    re, im = [], []
    for d in offsets:
        # R[j, k]: weight of source sample start + k in target sample j of the frame
        tap = d + j * down + half_len - k * up  # [frame_length, K]
        ok = (tap >= 0) & (tap < h.size)
        taps = torch.from_numpy(np.where(ok, h[np.clip(tap, 0, h.size - 1)], 0.0))
        re.append(taps.T @ basis_re.to(torch.float64))
        im.append(taps.T @ basis_im.to(torch.float64))
    return torch.stack(re), torch.stack(im), starts, source_hop
