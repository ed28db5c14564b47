"""Pure-torch references of the masking and token kernels (no Triton import).

``fastspec.masking`` runs these on CPU (and wherever Triton cannot run), the tests compare the
Triton kernels with them (in float64 where arithmetic is involved), and the benchmarks use them as
the "gather then linear" peer. Each mirrors one kernel:

- :func:`select_top_ref` <-> ``masking.select_top``: keep exactly K tokens per row, highest
  priority first, ties broken by a random key; returns the mask and both index tensors.
- :func:`rect_first_cover_ref` <-> ``masking.rect_first_cover``: index of the first rectangle
  covering each spectrogram bin (group masking).
- :func:`embed_kept_patches_ref` <-> ``patch_embed.embed_kept_patches``: gather kept patches
  from the log-mel, project, add positions.
- :func:`restore_tokens_ref` <-> ``masking_restore.restore_tokens``: scatter kept tokens back
  with a mask token (and optional positions).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "compact_keep",
    "embed_kept_patches_ref",
    "gather_patches_ref",
    "rect_first_cover_ref",
    "restore_tokens_ref",
    "select_top_ref",
]


def compact_keep(keep: Tensor, n_keep: int) -> tuple[Tensor, Tensor]:
    """Index tensors of a boolean keep mask with exactly ``n_keep`` True entries per row.

    Args:
        keep: [B, N] bool, True = kept.
        n_keep: K, the number of True entries in every row (not checked: counting would sync).

    Returns:
        ``ids_keep`` [B, K] int64 (kept grid indices, ascending) and ``ids_restore`` [B, N] int64
        (position of token n in ``cat(kept ascending, masked ascending)`` order).
    """
    b, n = keep.shape
    kept = keep.to(torch.int64)
    # running counts give each token its slot without a sort: kept tokens fill slots 0..K-1 in
    # grid order, masked tokens slots K..N-1
    slot_kept = kept.cumsum(1) - 1
    slot_masked = n_keep + (1 - kept).cumsum(1) - 1
    ids_restore = torch.where(keep, slot_kept, slot_masked)  # [B, N]
    positions = torch.arange(n, device=keep.device).expand(b, n)
    ids_order = torch.empty_like(ids_restore).scatter_(1, ids_restore, positions)  # inverse
    return ids_order[:, :n_keep], ids_restore


def select_top_ref(
    noise: Tensor, n_keep: int, priority: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Keep the ``n_keep`` tokens of highest ``priority`` per row; ``noise`` breaks ties.

    Args:
        noise: [B, N] float in [0, 1), i.i.d. uniform; among equal priorities the tokens with the
            smallest noise are kept (so with no priority this is Audio-MAE's argsort of noise).
        n_keep: K, 0 <= K <= N.
        priority: [B, N] integer, >= 0, or None (all equal).

    Returns:
        ``mask`` [B, N] bool (True = not kept), ``ids_keep`` [B, K], ``ids_restore`` [B, N].
    """
    score = -noise.double()  # larger score = kept first
    if priority is not None:
        # noise < 1, so integer priorities dominate and noise only orders within a priority
        score = score + 2.0 * priority.double()
    # a selection, not a sort: topk is ~10x cheaper than argsort on CPU for K << N
    kept = torch.topk(score, n_keep, dim=1, sorted=False).indices  # [B, K]
    keep = torch.zeros(noise.shape, dtype=torch.bool, device=noise.device)
    keep.scatter_(1, kept, True)
    ids_keep, ids_restore = compact_keep(keep, n_keep)
    return ~keep, ids_keep, ids_restore


def rect_first_cover_ref(rects: Tensor, n_time: int, n_freq: int) -> Tensor:
    """Index of the first rectangle that covers each bin, R where none does.

    Args:
        rects: [B, R, 4] int, half-open ``(t0, t1, f0, f1)`` per rectangle, in drawing order.
        n_time, n_freq: T, F of the spectrogram.

    Returns:
        [B, T, F] int16 in ``0..R``.
    """
    b, r, _ = rects.shape
    t = torch.arange(n_time, device=rects.device)
    f = torch.arange(n_freq, device=rects.device)
    t0, t1, f0, f1 = (rects[..., i, None] for i in range(4))  # each [B, R, 1]
    in_t = (t >= t0) & (t < t1)  # [B, R, T]
    in_f = (f >= f0) & (f < f1)  # [B, R, F]
    first = torch.full((b, n_time, n_freq), r, dtype=torch.int16, device=rects.device)
    # Rectangles are products of a time and a frequency interval, so the set of rectangles
    # covering bin (t, f) is (set covering t) AND (set covering f): as bit sets, one AND per
    # bin per 62 rectangles instead of one pass over the spectrogram per rectangle (~5x faster
    # on CPU at R ~ 100). The lowest set bit is the first rectangle; its position is the
    # exponent of its float32 value (powers of two convert exactly), read from the bits, ~6x
    # cheaper than frexp. Rows go in chunks to bound the int64 temporaries.
    for w0 in reversed(range(0, r, 62)):  # the lowest word last: its indices are smallest
        n = min(62, r - w0)
        shifts = torch.arange(n, device=rects.device)[:, None]  # [n, 1]
        bits_t = (in_t[:, w0 : w0 + n].long() << shifts).sum(1)  # [B, T]
        bits_f = (in_f[:, w0 : w0 + n].long() << shifts).sum(1)  # [B, F]
        for s in range(0, b, 16):
            both = bits_t[s : s + 16, :, None] & bits_f[s : s + 16, None, :]  # [rows, T, F]
            lowest = both & -both  # the lowest set bit, 2**i
            exponent = lowest.float().view(torch.int32) >> 23  # 127 + i (0 when none is set)
            index = (exponent + (w0 - 127)).to(torch.int16)
            first[s : s + 16] = torch.where(both != 0, index, first[s : s + 16])
    return first


def gather_patches_ref(mel: Tensor, ids_keep: Tensor | None, patch_size: tuple[int, int]) -> Tensor:
    """Kept patches read straight from the log-mel: [B, T, F] -> [B, K, pt * pf].

    Token ``n = t * F_p + f``; each patch is flattened time-major (``i_t * pf + i_f``).
    ``ids_keep`` None keeps all N tokens in grid order.
    """
    pt, pf = patch_size
    b, n_frames, n_mels = mel.shape
    t_p, f_p = n_frames // pt, n_mels // pf
    view = mel.reshape(b, t_p, pt, f_p, pf)
    if ids_keep is None:
        return view.permute(0, 1, 3, 2, 4).reshape(b, t_p * f_p, pt * pf)
    k = ids_keep.shape[1]
    t_idx = torch.div(ids_keep, f_p, rounding_mode="floor")
    f_idx = ids_keep - t_idx * f_p
    rows = torch.arange(b, device=mel.device).unsqueeze(1)  # [B, 1]
    # advanced indices split by a slice put the [B, K] index dims first: [B, K, pt, pf]
    return view[rows, t_idx, :, f_idx, :].reshape(b, k, pt * pf)


def embed_kept_patches_ref(
    mel: Tensor,
    ids_keep: Tensor | None,
    weight: Tensor,
    bias: Tensor | None,
    pos: Tensor,
    patch_size: tuple[int, int],
) -> Tensor:
    """``linear(gather(patches), weight, bias) + pos[ids_keep]``: [B, K, D].

    Args:
        mel: [B, T, F]; weight: [D, pt * pf]; bias: [D] or None; pos: [N, D] positions of the
            full grid; ids_keep: [B, K] grid indices or None (all tokens).

    Computed in the weight's dtype (pass float64 tensors for a float64 reference).
    """
    patches = gather_patches_ref(mel, ids_keep, patch_size).to(weight.dtype)
    out = torch.nn.functional.linear(patches, weight, bias)
    return out + (pos if ids_keep is None else pos[ids_keep])


def restore_tokens_ref(
    x_kept: Tensor, ids_restore: Tensor, mask_token: Tensor, pos: Tensor | None = None
) -> Tensor:
    """Kept tokens back at their grid positions, ``mask_token`` elsewhere, plus ``pos``.

    Args:
        x_kept: [B, K, D] in ``ids_keep`` order; ids_restore: [B, N]; mask_token: [D];
            pos: [N, D] or None.

    Returns:
        [B, N, D] in ``x_kept``'s dtype, promoted with ``pos``'s when given.
    """
    b, k, d = x_kept.shape
    n = ids_restore.shape[1]
    fill = mask_token.reshape(1, 1, d).to(x_kept.dtype).expand(b, n - k, d)
    full = torch.cat([x_kept, fill], dim=1)  # [B, N, D] in cat(kept, masked) order
    out = torch.gather(full, 1, ids_restore.unsqueeze(-1).expand(-1, -1, d))
    return out if pos is None else out + pos
