"""Fixed 2-D sin-cos position embeddings over a (time, frequency) patch grid, as in MAE.

Nothing is learned, so an encoder accepts any number of time patches: the table for a grid is
computed on first use, on the target device (no host-to-device copy), and cached.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor


def sincos_1d(positions: Tensor, dim: int) -> Tensor:
    """Transformer sin-cos features of integer positions.

    Args:
        positions: [L] float positions.
        dim: even number of channels.

    Returns:
        [L, dim]: ``sin(pos * w_i)`` in the first half and ``cos(pos * w_i)`` in the second,
        with ``w_i = 10000 ** (-i / (dim / 2))``, ``i < dim / 2`` (MAE's 1-D layout).
    """
    if dim % 2:
        raise ValueError(f"sincos_1d: dim must be even, got {dim}")
    half = dim // 2
    omega = torch.arange(half, dtype=positions.dtype, device=positions.device) / half
    omega = 1.0 / 10000.0**omega  # [dim/2] angular frequencies, 1 down to ~1e-4
    angles = positions[:, None] * omega[None, :]  # [L, dim/2]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


def sincos_2d(
    grid: tuple[int, int],
    dim: int,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """2-D sin-cos table for a ``(T_patches, F_patches)`` grid, uncached.

    Returns:
        [T_patches * F_patches, dim] in token order ``n = t * F_patches + f``; channels
        ``[:dim/2]`` encode the time index ``t`` and ``[dim/2:]`` the frequency index ``f``.
    """
    if dim % 4:
        raise ValueError(f"sincos_2d: dim must be a multiple of 4, got {dim}")
    t_patches, f_patches = grid
    device = torch.device(device) if device is not None else torch.device("cpu")
    # compute in float64 (MAE uses numpy float64) so every dtype rounds the same values;
    # MPS has no float64
    work = torch.float32 if device.type == "mps" else torch.float64
    t_idx = torch.arange(t_patches, dtype=work, device=device).repeat_interleave(f_patches)
    f_idx = torch.arange(f_patches, dtype=work, device=device).repeat(t_patches)
    table = torch.cat([sincos_1d(t_idx, dim // 2), sincos_1d(f_idx, dim // 2)], dim=1)
    return table.to(dtype or torch.get_default_dtype())


def cached_sincos_2d(
    grid: tuple[int, int], dim: int, device: torch.device, dtype: torch.dtype
) -> Tensor:
    """:func:`sincos_2d`, cached per (grid, dim, device, dtype). Treat the result as read-only.

    Built outside inference mode and autograd, so a table first made under
    ``torch.inference_mode()`` can still be used in training later. Under ``torch.compile`` the
    table is computed inside the graph instead (dynamo cannot honour an lru_cache).
    """
    if torch.compiler.is_compiling():
        return sincos_2d(grid, dim, device=device, dtype=dtype)
    return _cached_table(tuple(grid), dim, torch.device(device), dtype)


@functools.lru_cache(maxsize=64)
def _cached_table(grid: tuple[int, int], dim: int, device: torch.device, dtype) -> Tensor:
    with torch.inference_mode(False), torch.no_grad():
        return sincos_2d(grid, dim, device=device, dtype=dtype)
